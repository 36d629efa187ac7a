package producer

// The producer under randomized simulation: a seed chooses the producer's
// settings, a workload (records of random sizes, keys, partitions, client
// timestamps including absurd ones, caller deadlines, callers that leave,
// Start/Wait streams and Enqueue calls) and a schedule of broker faults
// (latency, black-holed and dropped connections, every class of error the
// broker answers, errors after the append, sequence errors, leader moves),
// and the invariants below are checked while it runs and once it ends.
//
// The broker is kfake over loopback and the producer runs on its own
// goroutines and the real clock, so a seed fixes the workload and the
// faults, not the interleaving the scheduler picks: a failing seed replays
// the same requests and faults, and mostly the same failure; run it with
// -count to see it again. Each seed that failed once is kept in
// simulationRegressions and runs every time.
//
//	go test -run '^TestSimulation$' ./internal/producer                     # CI's budget
//	go test -run '^TestSimulation$' ./internal/producer -sim.seed 123 -v     # one seed
//	go test -run '^TestSimulation$' ./internal/producer -sim.seeds 0 \
//	    -sim.duration 4h -sim.first $(date +%s) -timeout 5h                 # for hours

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap"
)

var (
	simSeed     = flag.Uint64("sim.seed", 0, "run this one seed of the simulation (0: a range of seeds)")
	simFirst    = flag.Uint64("sim.first", 1, "the first seed of the range")
	simSeeds    = flag.Int("sim.seeds", 12, "how many seeds of the range to run (0: until -sim.duration)")
	simDuration = flag.Duration("sim.duration", 0, "stop starting seeds after this long (0: no limit)")
)

// simulationRegressions are seeds that found a defect; they run first,
// every time.
var simulationRegressions = []uint64{
	1, // a record stamped in the future held its partition, then left an empty batch
	7, // a broker that held InitProducerId held every partition of the sink
	// the invariants were checked before Close's flush ended, with a
	// record whose caller was answered still in flight
	20578,
}

// Totals over a run of TestSimulation, reported at its end.
var simTotals struct {
	seeds, ops, records, faults, acked, notWritten, unknown atomic.Int64
}

func TestSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("the simulation is not short")
	}
	var seeds []uint64
	if *simSeed != 0 {
		seeds = []uint64{*simSeed}
	} else {
		seeds = slices.Clone(simulationRegressions)
	}
	start := time.Now()
	next := *simFirst
	for i := 0; ; i++ {
		var seed uint64
		switch {
		case i < len(seeds):
			seed = seeds[i]
		case *simSeed != 0:
		case *simSeeds > 0 && i-len(seeds) >= *simSeeds:
		case *simDuration > 0 && time.Since(start) > *simDuration:
		default:
			seed, next = next, next+1
		}
		if seed == 0 {
			break
		}
		if !t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { simulate(t, seed) }) {
			t.Logf("replay with: go test -run '^TestSimulation$' ./internal/producer -sim.seed %d -v", seed)
		}
		if *simSeeds == 0 && *simDuration == 0 && i >= len(seeds) {
			break
		}
	}
	t.Logf("simulation: %d seeds, %d operations, %d records (%d acknowledged, %d not written, %d outcome unknown), %d faults, in %v",
		simTotals.seeds.Load(), simTotals.ops.Load(), simTotals.records.Load(), simTotals.acked.Load(),
		simTotals.notWritten.Load(), simTotals.unknown.Load(), simTotals.faults.Load(), time.Since(start).Round(time.Millisecond))
}

// simRecord is one record of the workload and what its caller learned.
type simRecord struct {
	rec    *Record
	value  string
	stream int // the records of one stream were queued in this order
	// enqueued: sent with Enqueue and OnDone, not waited for.
	enqueued bool
	onDone   atomic.Int32
	// onDoneErr is the outcome OnDone was given.
	onDoneErr atomic.Pointer[Error]
	// answer is the outcome the caller read once its wait returned (the
	// caller's answer), for waited records.
	answer *Error
	waited bool
}

// simWorld is one seed's run.
type simWorld struct {
	t          *testing.T
	seed       uint64
	c          *kfake.Cluster
	p          *Producer
	partitions int
	brokers    int
	idempotent bool

	mu      sync.Mutex
	records []*simRecord
	streams int

	callers sync.WaitGroup
	healed  atomic.Bool
	net     simNet
	faults  []*kfake.FaultHandle
	ops     int
}

const simTopic = "sim"

func simulate(t *testing.T, seed uint64) {
	kafkatest.NoLeaks(t)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	w := &simWorld{t: t, seed: seed, partitions: 1 + rng.IntN(4), brokers: 1 + rng.IntN(3)}
	w.c = kafkatest.NewCluster(t, kfake.NumBrokers(w.brokers), kfake.SeedTopics(int32(w.partitions), simTopic),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": "60000"}))
	cfg := Config{
		Brokers:         w.c.ListenAddrs(),
		Acks:            AcksAll,
		Idempotence:     []Idempotence{IdempotenceOn, IdempotenceAuto, IdempotenceOff}[rng.IntN(3)],
		MaxBatchRecords: []int{1, 3, 20, 1000}[rng.IntN(4)],
		MaxBatchBytes:   []int{500, 5000, 50000}[rng.IntN(3)],
		MaxInFlight:     1 + rng.IntN(3),
		Compression:     []Compression{0, CompressionSnappy, CompressionLZ4}[rng.IntN(3)],
		// Longer than any caller waits here, so that a batch that
		// stalls its partition until the delivery timeout shows.
		DeliveryTimeout: 15 * time.Second,
	}
	if rng.IntN(3) == 0 {
		cfg.Linger = time.Millisecond
	}
	cfg.Dial = w.net.dial
	w.idempotent = cfg.Idempotence != IdempotenceOff
	w.p = mustProducer(t, cfg, zap.NewNop())
	closed := false
	t.Cleanup(func() {
		if !closed {
			w.p.Close()
		}
	})
	t.Logf("seed %d: %d brokers, %d partitions, %+v", seed, w.brokers, w.partitions, cfg)

	// The workload and the faults, interleaved, over about a second.
	ops := 60 + rng.IntN(120)
	for range ops {
		w.ops++
		switch n := rng.IntN(100); {
		case n < 45:
			w.call(rng.Uint64())
		case n < 60:
			w.stream(rng.Uint64())
		case n < 72:
			w.enqueue(rng.Uint64())
		case n < 92:
			w.fault(rng)
		default:
			w.pause(rng)
		}
		w.checkPartitions()
	}

	// The faults end; every partition serves again within a caller's
	// timeout.
	w.heal()
	w.probe(3 * time.Second)
	w.callers.Wait()
	w.checkPartitions()
	// Close returns once the producer takes no more records; its
	// channel closes once every record it holds is settled, which
	// check holds it to (a record whose caller was answered may still
	// be in flight until its deadline).
	<-w.p.Close()
	closed = true
	w.check()
	simTotals.seeds.Add(1)
	simTotals.ops.Add(int64(w.ops))
	simTotals.faults.Add(int64(len(w.faults)))
}

// newRecord is a record of the workload, with values chosen by rng.
func (w *simWorld) newRecord(rng *rand.Rand, stream int, now time.Time) *simRecord {
	w.mu.Lock()
	id := len(w.records)
	sr := &simRecord{stream: stream}
	w.records = append(w.records, sr)
	w.mu.Unlock()
	size := []int{0, 10, 200, 3000, 20000, 70000}[rng.IntN(6)] // the broker takes at most 60000
	sr.value = fmt.Sprintf("%d:%d:%0*d", w.seed, id, size, 0)
	timeout := []time.Duration{-10 * time.Millisecond, time.Millisecond, 20 * time.Millisecond, 200 * time.Millisecond,
		time.Second, 2 * time.Second}[rng.IntN(6)]
	rec := NewRecord([]byte(sr.value), now, timeout)
	rec.Topic = simTopic
	// A client's timestamp is data, not a clock: absurd ones too.
	rec.Time = []time.Time{now, now, now.Add(-time.Hour), time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), time.Unix(0, 0), time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		{}}[rng.IntN(8)]
	switch rng.IntN(4) {
	case 0:
		rec.Key = fmt.Appendf(nil, "key-%d", rng.IntN(5))
	case 1:
		rec.Partition = rng.IntN(w.partitions)
	}
	if rng.IntN(4) == 0 {
		rec.Headers = []Header{{Key: "h", Value: []byte(sr.value[:min(len(sr.value), 8)])}}
	}
	if rng.IntN(4) == 0 {
		rec.AckBy = rec.Deadline.Add(time.Duration(rng.IntN(1000)) * time.Millisecond)
	}
	sr.rec = rec
	return sr
}

func (w *simWorld) newStream() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.streams++
	return w.streams
}

// call is a caller that sends 1 to 20 records in one Produce and waits for
// them, or leaves early.
func (w *simWorld) call(seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	stream := w.newStream()
	now := time.Now()
	srs := make([]*simRecord, 1+rng.IntN(20))
	recs := make([]*Record, len(srs))
	for i := range srs {
		srs[i] = w.newRecord(rng, stream, now)
		recs[i] = srs[i].rec
	}
	// One call shares one deadline.
	for _, rec := range recs {
		rec.Deadline = recs[0].Deadline
		rec.AckBy = recs[0].AckBy
	}
	leave := time.Duration(-1)
	if rng.IntN(4) == 0 {
		leave = time.Duration(rng.IntN(300)) * time.Millisecond
	}
	w.callers.Go(func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if leave >= 0 {
			timer := time.AfterFunc(leave, cancel)
			defer timer.Stop()
		}
		if err := w.p.Produce(ctx, recs); err != nil {
			w.checkRefused(err, recs)
			return // never queued: nothing to check but that
		}
		for _, sr := range srs {
			sr.answer, sr.waited = sr.rec.Outcome(), true
		}
	})
}

// stream is a caller that starts records one by one, as a Confluent v3
// stream does, then waits for each in order.
func (w *simWorld) stream(seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 2))
	stream := w.newStream()
	n := 1 + rng.IntN(10)
	gap := time.Duration(rng.IntN(20)) * time.Millisecond
	srs := make([]*simRecord, n)
	for i := range srs {
		srs[i] = w.newRecord(rng, stream, time.Now())
	}
	w.callers.Go(func() {
		ctx := context.Background()
		var started []*simRecord
		for _, sr := range srs {
			now := time.Now()
			recs := []*Record{sr.rec}
			if err := w.p.Start(ctx, recs); err != nil {
				w.checkRefused(err, recs)
				continue
			}
			started = append(started, sr)
			if wait := gap - time.Since(now); wait > 0 {
				time.Sleep(wait) // the client's pace between records
			}
		}
		for _, sr := range started {
			w.p.Wait(ctx, []*Record{sr.rec})
			sr.answer, sr.waited = sr.rec.Outcome(), true
		}
	})
}

// enqueue sends records with OnDone, as asynchronous delivery does.
func (w *simWorld) enqueue(seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 3))
	stream := w.newStream()
	now := time.Now()
	srs := make([]*simRecord, 1+rng.IntN(10))
	recs := make([]*Record, len(srs))
	for i := range srs {
		sr := w.newRecord(rng, stream, now)
		sr.enqueued = true
		sr.rec.OnDone = func(_ *Record, err *Error) {
			sr.onDoneErr.Store(err)
			sr.onDone.Add(1)
		}
		srs[i], recs[i] = sr, sr.rec
	}
	if _, err := w.p.Enqueue(context.Background(), recs); err == errShuttingDown {
		w.t.Errorf("Enqueue before Close: %v", err)
	} else if err != nil {
		w.checkRefused(err, recs)
	}
}

// checkRefused checks a call that queued nothing: the topic could not be
// had, and its error is every record's outcome.
func (w *simWorld) checkRefused(err error, recs []*Record) {
	var perr *Error
	if !errors.As(err, &perr) {
		w.t.Errorf("a call refused with %v, want an Error", err)
		return
	}
	for i, rec := range recs {
		if partition, _ := rec.Progress(); partition >= 0 {
			w.t.Errorf("record %d of a refused call was queued on %d", i, partition)
		}
		if got := rec.Outcome(); got != perr {
			w.t.Errorf("record %d of a call refused with %v has the outcome %v", i, perr, got)
		}
	}
}

// produceErrors are the broker's answers to a produce request that faults
// inject: retriable, permanent, answered after the append (timeouts), and
// the idempotent producer's sequence errors.
var produceErrors = []*kerr.Error{
	kerr.NotLeaderForPartition, kerr.LeaderNotAvailable, kerr.NotEnoughReplicas, kerr.UnknownTopicOrPartition,
	kerr.RequestTimedOut, kerr.NotEnoughReplicasAfterAppend, kerr.KafkaStorageError, kerr.NetworkException,
	kerr.OutOfOrderSequenceNumber, kerr.UnknownProducerID, kerr.InvalidProducerEpoch,
	kerr.InvalidRecord, kerr.CorruptMessage, kerr.MessageTooLarge, kerr.InvalidTimestamp,
	kerr.TopicAuthorizationFailed, kerr.UnknownServerError, kerr.ThrottlingQuotaExceeded,
}

// fault installs one fault on the broker.
func (w *simWorld) fault(rng *rand.Rand) {
	c := w.c
	var parts []int32
	if rng.IntN(2) == 0 {
		parts = []int32{int32(rng.IntN(w.partitions))}
	}
	switch n := rng.IntN(10); {
	case n < 5: // an error answer, for a few requests
		f := kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: simTopic, Partitions: parts,
			Err: produceErrors[rng.IntN(len(produceErrors))], Count: 1 + rng.IntN(4)}
		w.t.Logf("op %d: %s to produce requests for partitions %v, %d times", w.ops, f.Err.Message, parts, f.Count)
		w.faults = append(w.faults, c.Fault(f))
	case n < 6: // the producer's identity refused for a while
		w.t.Logf("op %d: InitProducerID refused", w.ops)
		w.faults = append(w.faults, c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.InitProducerID},
			Err:   []*kerr.Error{kerr.CoordinatorNotAvailable, kerr.NotCoordinator, kerr.CoordinatorLoadInProgress}[rng.IntN(3)],
			Count: 1 + rng.IntN(3), TopLevel: true}))
	case n < 7: // connections dropped, unanswered
		left := int32(1 + rng.IntN(3))
		w.t.Logf("op %d: %d produce requests dropped unanswered", w.ops, left)
		w.control(func(kmsg.Request) (kmsg.Response, error, bool) {
			if atomic.AddInt32(&left, -1) < 0 {
				c.DropControl()
				return nil, nil, false
			}
			return nil, errors.New("connection dropped"), true
		})
	case n < 9: // the network: latency, a black hole, a reset, an answer lost or late
		f := netFault{
			kind:  netFaultKind(rng.IntN(5)),
			delay: []time.Duration{5 * time.Millisecond, 50 * time.Millisecond, 400 * time.Millisecond}[rng.IntN(3)],
			left:  1 + rng.IntN(4),
		}
		w.t.Logf("op %d: the network: %+v", w.ops, f)
		w.net.add(f)
	default: // a leader moves
		if w.brokers > 1 {
			p := int32(rng.IntN(w.partitions))
			to := (c.LeaderFor(simTopic, p) + 1 + int32(rng.IntN(w.brokers-1))) % int32(w.brokers)
			w.t.Logf("op %d: partition %d's leader moves to %d", w.ops, p, to)
			if err := c.MoveTopicPartition(simTopic, p, to); err != nil {
				w.t.Fatal(err)
			}
		}
	}
}

// control adds a control of produce requests that stays until it drops
// itself or the world heals.
func (w *simWorld) control(fn func(kmsg.Request) (kmsg.Response, error, bool)) {
	w.faults = append(w.faults, nil)
	w.c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		if w.healed.Load() {
			w.c.DropControl()
			return nil, nil, false
		}
		w.c.KeepControl()
		return fn(req)
	})
}

// pause lets the callers and the producer run.
func (w *simWorld) pause(rng *rand.Rand) {
	time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond) // the workload's pace, not a synchronisation
}

// heal removes every fault.
func (w *simWorld) heal() {
	w.healed.Store(true)
	w.net.heal()
	for _, f := range w.faults {
		if f != nil {
			f.Remove()
		}
	}
}

// simNet is the network between the producer and the brokers, with the
// faults the simulation puts on it. (kfake's SleepControl would hold
// requests too, but races with itself across connections.)
type simNet struct {
	mu     sync.Mutex
	faults []netFault
	healed bool
	holes  []*simConn // black-holed connections
}

type netFaultKind int

const (
	netLatency    netFaultKind = iota // a write waits for delay
	netBlackHole                      // writes vanish; the answer never comes
	netReset                          // the connection is closed
	netAnswerLost                     // the request arrives; its answer never does
	netSlowAnswer                     // the answer comes delay late
)

// netFault applies to the next left writes, on any connection.
type netFault struct {
	kind  netFaultKind
	delay time.Duration
	left  int
}

func (n *simNet) add(f netFault) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults = append(n.faults, f)
}

// heal ends the faults. A black-holed connection is reset, as when the
// peer that lost its state answers the retransmits: the bytes it swallowed
// are lost, and the stream cannot go on.
func (n *simNet) heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.healed, n.faults = true, nil
	for _, c := range n.holes {
		c.Conn.Close()
	}
}

// next is the fault for a write, if any.
func (n *simNet) next() (netFault, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.healed || len(n.faults) == 0 {
		return netFault{}, false
	}
	f := n.faults[0]
	if n.faults[0].left--; n.faults[0].left == 0 {
		n.faults = n.faults[1:]
	}
	return f, true
}

func (n *simNet) dial(ctx context.Context, network, address string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return &simConn{Conn: conn, net: n}, nil
}

// simConn is a connection on simNet.
type simConn struct {
	net.Conn
	net     *simNet
	mu      sync.Mutex
	swallow bool // black-holed: writes vanish from then on
	deaf    bool // answers vanish from then on
	// slow: the next answer waits this long (a broker waiting for
	// its replicas).
	slow time.Duration
}

func (c *simConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	deaf := c.deaf
	c.mu.Unlock()
	if deaf {
		for {
			if _, err := c.Conn.Read(b); err != nil {
				return 0, err
			}
		}
	}
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	slow := c.slow
	c.slow = 0
	c.mu.Unlock()
	if slow > 0 {
		time.Sleep(slow) // the answer is late; bounded
	}
	return n, err
}

func (c *simConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	swallow := c.swallow
	c.mu.Unlock()
	if swallow {
		return len(b), nil
	}
	if f, ok := c.net.next(); ok {
		switch f.kind {
		case netLatency:
			time.Sleep(f.delay) // the network is slow; bounded
		case netBlackHole:
			c.mu.Lock()
			c.swallow = true
			c.mu.Unlock()
			c.net.mu.Lock()
			c.net.holes = append(c.net.holes, c)
			c.net.mu.Unlock()
			return len(b), nil // reads wait for the deadline
		case netReset:
			c.Conn.Close()
			return 0, syscall.ECONNRESET
		case netSlowAnswer:
			c.mu.Lock()
			c.slow = f.delay
			c.mu.Unlock()
		case netAnswerLost:
			c.mu.Lock()
			c.deaf = true
			c.mu.Unlock()
			c.net.mu.Lock()
			c.net.holes = append(c.net.holes, c)
			c.net.mu.Unlock()
		}
	}
	return c.Conn.Write(b)
}

// probe checks that every partition serves again: a record sent to each
// after the faults ended is acknowledged within timeout, its client
// retrying as a client does after a 503 (a record that was not queued, or
// not sent): the producer may answer so while it learns that the network
// healed (a pooled connection that a reset broke fails the next request
// on it).
func (w *simWorld) probe(timeout time.Duration) {
	var wg sync.WaitGroup
	deadline := time.Now().Add(timeout)
	for part := range w.partitions {
		wg.Go(func() {
			var perr *Error
			for try := 0; time.Now().Before(deadline); try++ {
				sr := w.newRecord(rand.New(rand.NewPCG(w.seed, uint64(part))), w.newStream(), time.Now())
				sr.value = fmt.Sprintf("%d:%d:probe:%d", w.seed, part, try)
				sr.rec = NewRecord([]byte(sr.value), time.Now(), time.Until(deadline))
				sr.rec.Topic, sr.rec.Partition = simTopic, part
				if err := w.p.Produce(context.Background(), []*Record{sr.rec}); err != nil {
					perr = asError(err)
				} else {
					perr = sr.rec.Outcome()
				}
				sr.answer, sr.waited = perr, true
				if perr == nil || perr.Outcome != OutcomeRetry {
					break
				}
				time.Sleep(50 * time.Millisecond) // the client's back-off
			}
			if perr != nil {
				w.t.Errorf("partition %d does not serve again within %v of the faults ending: %v", part, timeout, perr)
			}
		})
	}
	wg.Wait()
}

// checkPartitions checks each partition's bookkeeping: the records it
// counts as queued are those in its queue, the records it took back are a
// bounded share of the queue, and a batch is never empty.
func (w *simWorld) checkPartitions() {
	v, ok := w.p.topics.Load(simTopic)
	if !ok {
		return
	}
	ts := v.(*topicState)
	ts.mu.Lock()
	parts := slices.Clone(ts.parts)
	ts.mu.Unlock()
	for _, pt := range parts {
		pt.mu.Lock()
		queued, done := 0, 0
		for _, rec := range pt.queue {
			switch rec.state {
			case stateQueued:
				queued++
			case stateCompleted:
				done++
			default:
				w.t.Errorf("partition %d: a record in state %d is in the queue", pt.id, rec.state)
			}
		}
		if done != pt.dead || queued != pt.pending() {
			w.t.Errorf("partition %d: %d queued and %d taken back in the queue, it counts %d and %d", pt.id, queued, done, pt.pending(), pt.dead)
		}
		if pt.dead > 64 && pt.dead*2 > len(pt.queue)+1 {
			w.t.Errorf("partition %d keeps %d records taken back in a queue of %d", pt.id, pt.dead, len(pt.queue))
		}
		if b := pt.batch; b != nil && len(b.recs) == 0 {
			w.t.Errorf("partition %d keeps an empty batch", pt.id)
		}
		pt.mu.Unlock()
	}
}

// check holds the invariants once the producer is closed: every record
// completed once; an acknowledged record is in the log once (with
// idempotence; at least once without) on its partition at its offset; a
// record answered not written is not in the log; a stream's records are
// stored in the order they were queued; nothing is left waiting.
func (w *simWorld) check() {
	t := w.t
	if n := w.p.Waiting(); n != 0 {
		t.Errorf("%d records still waiting after Close", n)
	}
	type copyAt struct {
		partition int
		offset    int64
	}
	stored := map[string][]copyAt{}
	for _, r := range kafkatest.Stored(t, w.c, simTopic) {
		stored[string(r.Value)] = append(stored[string(r.Value)], copyAt{int(r.Partition), r.Offset})
	}
	type placed struct {
		offset int64
		value  string
	}
	order := map[[2]int][]placed{} // stream, partition -> acknowledged records in queue order
	for _, sr := range w.records {
		rec := sr.rec
		copies := stored[sr.value]
		delete(stored, sr.value)
		simTotals.records.Add(1)
		if partition, _ := rec.Progress(); partition < 0 {
			if len(copies) > 0 {
				t.Errorf("record %s was never queued, and is stored %d times", sr.value[:20], len(copies))
			}
			if sr.enqueued && sr.onDone.Load() != 0 {
				t.Errorf("record %s was never queued, and OnDone was called", sr.value[:20])
			}
			continue
		}
		if rec.state != stateCompleted {
			t.Errorf("record %s in state %d after Close", sr.value[:20], rec.state)
			continue
		}
		if sr.enqueued && sr.onDone.Load() != 1 {
			t.Errorf("record %s: OnDone called %d times", sr.value[:20], sr.onDone.Load())
		}
		if !sr.enqueued && sr.waited {
			select {
			case <-rec.Done():
			default:
				t.Errorf("record %s: its caller returned and Done is open", sr.value[:20])
			}
		}
		err := rec.err
		partition, offset := rec.Placed()
		// What the idempotency store reads of a record (queued, and its
		// outcome) must agree with how it completed, and with the log:
		// one queued whose outcome is neither nil nor unknown provably
		// was not written.
		if now := rec.Outcome(); now != err {
			t.Errorf("record %s: Outcome %v, completed with %v", sr.value[:20], now, err)
		}
		if queuedOn, attempts := rec.Progress(); queuedOn != partition || attempts != int(rec.attempts.Load()) {
			t.Errorf("record %s: Progress %d, %d; placed on %d after %d attempts", sr.value[:20], queuedOn, attempts, partition, rec.attempts.Load())
		}
		if proven := err != nil && err.Outcome != OutcomeUnknown; proven && len(copies) > 0 {
			t.Errorf("record %s: provably not written (%v), stored %d times", sr.value[:20], err, len(copies))
		}
		if sr.enqueued && sr.onDoneErr.Load() != err {
			t.Errorf("record %s: OnDone given %v, completed with %v", sr.value[:20], sr.onDoneErr.Load(), err)
		}
		// What the caller was told must be true of what the log holds.
		if sr.waited && sr.answer == nil && err != nil {
			t.Errorf("record %s answered acknowledged, then completed %v", sr.value[:20], err)
		}
		if sr.waited && sr.answer != nil && sr.answer.Outcome != OutcomeUnknown && len(copies) > 0 {
			t.Errorf("record %s answered not written (%v), and stored %d times", sr.value[:20], sr.answer, len(copies))
		}
		switch {
		case err == nil:
			simTotals.acked.Add(1)
			if len(copies) == 0 || w.idempotent && len(copies) > 1 {
				t.Errorf("record %s acknowledged, stored %d times (idempotent %v)", sr.value[:20], len(copies), w.idempotent)
				continue
			}
			at := copies[0].offset
			if offset >= 0 {
				if !slices.Contains(copies, copyAt{partition, offset}) {
					t.Errorf("record %s acknowledged at %d/%d, stored at %v", sr.value[:20], partition, offset, copies)
				}
				at = offset
			} else if copies[0].partition != partition {
				t.Errorf("record %s placed on %d, stored at %v", sr.value[:20], partition, copies)
			}
			key := [2]int{sr.stream, partition}
			order[key] = append(order[key], placed{at, sr.value})
		case err.Outcome == OutcomeUnknown:
			simTotals.unknown.Add(1)
			if w.idempotent && len(copies) > 1 {
				t.Errorf("record %s of unknown outcome stored %d times with idempotence", sr.value[:20], len(copies))
			}
		default:
			simTotals.notWritten.Add(1)
			if len(copies) > 0 {
				t.Errorf("record %s answered %v, and stored %d times", sr.value[:20], err, len(copies))
			}
		}
	}
	for key, recs := range order {
		for i := 1; i < len(recs); i++ {
			if recs[i].offset <= recs[i-1].offset {
				t.Errorf("stream %d, partition %d: %s queued after %s, stored before it (%d, %d)",
					key[0], key[1], recs[i].value[:20], recs[i-1].value[:20], recs[i].offset, recs[i-1].offset)
			}
		}
	}
	for value := range stored {
		t.Errorf("the log holds %q, which no caller sent", value[:min(len(value), 20)])
	}
}
