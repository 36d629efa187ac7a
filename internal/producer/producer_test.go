package producer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestProducerStoresExactBytesOnPartitionsLedByDifferentBrokers(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.NumBrokers(3), kfake.SeedTopics(6, "events"))
	leaders := map[int32]bool{}
	for _, pi := range c.PartitionInfos("events") {
		leaders[pi.Leader] = true
	}
	if len(leaders) < 2 {
		t.Fatalf("want partition leaders on several brokers, got %v", leaders)
	}
	p := testProducer(t, c)

	const n = 120
	recs := make([]*Record, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Bytes a re-encoding would change: spacing, key order,
			// escapes, a number with many digits.
			value := fmt.Appendf(nil, `{ "id" : %d,"z":1, "a" : "\u00e9\n", "n": 1.50000000000000000001 }`, i)
			rec := NewRecord(value, time.Now(), 5*time.Second)
			rec.Partition = i % 6
			if perr := p.send(context.Background(), "events", rec); perr != nil {
				t.Errorf("record %d: %v", i, perr)
			}
			rec.Value = value // the producer let go of it
			recs[i] = rec
		}()
	}
	wg.Wait()

	got := kafkatest.Stored(t, c, "events")
	if len(got) != n {
		t.Fatalf("topic holds %d records, want %d", len(got), n)
	}
	at := map[string][]byte{}
	partitions := map[int32]bool{}
	for _, r := range got {
		at[fmt.Sprint(r.Partition, "/", r.Offset)] = r.Value
		partitions[r.Partition] = true
		if r.Key != nil {
			t.Errorf("record at %d/%d has key %q, want none", r.Partition, r.Offset, r.Key)
		}
	}
	for i, rec := range recs {
		partition, offset := rec.Placed()
		v, ok := at[fmt.Sprint(partition, "/", offset)]
		if !ok || !bytes.Equal(v, rec.Value) {
			t.Errorf("record %d: at %d/%d the topic holds %q, want %q", i, partition, offset, v, rec.Value)
		}
	}
	if len(partitions) != 6 {
		t.Errorf("records landed on %d partitions, want all 6", len(partitions))
	}
}

// Records without a key stick to one partition until its batch is taken,
// then move to another (KIP-480): the records that pile up while a
// request is in flight make one batch.
func TestRecordsWithoutAKeyStickToAPartitionUntilItsBatchIsTaken(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(6, "events"))
	p := testProducer(t, c)
	if _, perr := sendOne(p, "events", []byte(`"warm"`), 5*time.Second); perr != nil {
		t.Fatal(perr)
	}
	release := make(chan struct{})
	received := kafkatest.HoldProduce(c, release)
	first := NewRecord([]byte(`"first"`), time.Now(), 5*time.Second)
	if perr := publishNoWait(p, context.Background(), "events", first); perr != nil {
		t.Fatal(perr)
	}
	kafkatest.WaitFor(t, 5*time.Second, func() bool { return received.Load() == 1 })
	var piled []*Record
	for i := range 10 {
		rec := NewRecord(fmt.Appendf(nil, `%d`, i), time.Now(), 5*time.Second)
		if perr := publishNoWait(p, context.Background(), "events", rec); perr != nil {
			t.Fatal(perr)
		}
		piled = append(piled, rec)
	}
	close(release)
	for _, rec := range append(piled, first) {
		<-rec.done
		if rec.err != nil {
			t.Fatal(rec.err)
		}
	}
	for _, rec := range piled {
		if placedOn(rec) != placedOn(piled[0]) {
			t.Fatalf("the piled-up records went to partitions %d and %d, want one", placedOn(piled[0]), placedOn(rec))
		}
	}
	if placedOn(piled[0]) == placedOn(first) {
		t.Errorf("the records after a taken batch stayed on its partition %d", placedOn(first))
	}
	if got := received.Load(); got != 2 {
		t.Errorf("the broker received %d produce requests, want 2: the held one and one batch of the 10", got)
	}
}

func TestProducerRetriesRetriableErrors(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := testProducer(t, c)
	faults := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.NotEnoughReplicas, Count: 3})

	rec, perr := sendOne(p, "events", []byte(`{"retry":1}`), 5*time.Second)
	if perr != nil {
		t.Fatalf("want success after retries, got %v", perr)
	}
	if rec.attempts.Load() != 4 {
		t.Errorf("attempts = %d, want 4 (3 refused, 1 taken)", rec.attempts.Load())
	}
	if hits := faults.Hits(); hits != 3 {
		t.Errorf("broker refused %d times, want 3", hits)
	}
	if got := kafkatest.Stored(t, c, "events"); len(got) != 1 || string(got[0].Value) != `{"retry":1}` {
		t.Errorf("topic holds %v, want the one record", got)
	}
}

func TestProducerRetriableErrorUntilTimeoutIsNotWritten(t *testing.T) {
	for _, tt := range []struct {
		err     *kerr.Error
		acks    Acks
		outcome Outcome
		reason  string
	}{
		{kerr.NotEnoughReplicas, AcksAll, OutcomeRetry, "Kafka broker not ready: Not Enough Replicas"},
		{kerr.NotLeaderForPartition, AcksLeader, OutcomeRetry, "Kafka broker not ready: Not Leader For Partition"},
		// With acks=all a broker may say NOT_LEADER after appending,
		// when leadership moved while it waited for the replicas.
		{kerr.NotLeaderForPartition, AcksAll, OutcomeUnknown, reasonUnknown},
		// Answered before anything is appended: the topic is being
		// created, or the metadata is stale.
		{kerr.UnknownTopicOrPartition, AcksAll, OutcomeRetry, "Kafka broker not ready: Unknown Topic Or Partition"},
	} {
		t.Run(fmt.Sprint(tt.err.Message, " acks ", tt.acks), func(t *testing.T) {
			kafkatest.NoLeaks(t)
			c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
			p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: tt.acks}, zap.NewNop())
			t.Cleanup(func() { <-p.Close() })
			c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: tt.err, Count: -1})

			start := time.Now()
			rec, perr := sendOne(p, "events", []byte(`{}`), 300*time.Millisecond)
			took := time.Since(start)
			if perr == nil || perr.Outcome != tt.outcome || perr.Reason != tt.reason {
				t.Fatalf("got %v, want %v %q", perr, tt.outcome, tt.reason)
			}
			if took > 300*time.Millisecond+200*time.Millisecond {
				t.Errorf("answered after %v, want within the 300ms timeout", took)
			}
			if rec.attempts.Load() < 2 {
				t.Errorf("attempts = %d, want retries", rec.attempts.Load())
			}
			if got := kafkatest.Stored(t, c, "events"); len(got) != 0 {
				t.Errorf("topic holds %d records, want none", len(got))
			}
		})
	}
}

func TestProducerNoAcknowledgementIsUnknownOutcome(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := testProducer(t, c)
	release := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.SleepControl(func() { <-release })
		return nil, nil, false // then handle the request normally
	})

	start := time.Now()
	_, perr := sendOne(p, "events", []byte(`{"slow":1}`), 300*time.Millisecond)
	took := time.Since(start)
	if perr == nil || perr.Outcome != OutcomeUnknown {
		t.Fatalf("want outcome unknown, got %v", perr)
	}
	if took > 300*time.Millisecond+200*time.Millisecond {
		t.Errorf("answered after %v, want within the 300ms timeout", took)
	}
	// The answer was honest: the record was sent and does land.
	close(release)
	kafkatest.WaitFor(t, 5*time.Second, func() bool { return c.PartitionInfo("events", 0).HighWatermark == 1 })
	if got := kafkatest.Stored(t, c, "events"); len(got) != 1 {
		t.Errorf("topic holds %d records, want the one whose outcome was unknown", len(got))
	}
}

func TestProducerSplitsBatchesTheBrokerFindsTooLarge(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": "1000"}))
	p := testProducer(t, c)

	// Hold the first produce request so that the next records pile up
	// into one batch, larger than the broker accepts.
	release := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	value := func(i int) []byte { return fmt.Appendf(nil, `{"i":%d,"pad":"%0200d"}`, i, 0) }
	first := NewRecord(value(0), time.Now(), 5*time.Second)
	if perr := publishNoWait(p, context.Background(), "events", first); perr != nil {
		t.Fatal(perr)
	}
	recs := []*Record{first}
	for i := 1; i < 20; i++ {
		rec := NewRecord(value(i), time.Now(), 5*time.Second)
		if perr := publishNoWait(p, context.Background(), "events", rec); perr != nil {
			t.Fatal(perr)
		}
		recs = append(recs, rec)
	}
	close(release)
	for i, rec := range recs {
		<-rec.done
		if rec.err != nil {
			t.Errorf("record %d: %v", i, rec.err)
		}
	}
	if got := kafkatest.Stored(t, c, "events"); len(got) != 20 {
		t.Errorf("topic holds %d records, want 20", len(got))
	}

	// One record alone over the limit is refused for good, at once.
	rec, perr := sendOne(p, "events", fmt.Appendf(nil, `"%01000d"`, 0), 5*time.Second)
	if perr == nil || perr.Outcome != OutcomeTooLarge || rec.attempts.Load() != 1 {
		t.Errorf("want too large after one attempt, got %v after %d", perr, rec.attempts.Load())
	}
}

func TestProducerPermanentErrors(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := testProducer(t, c)

	_, perr := sendOne(p, "nope", []byte(`{}`), 2*time.Second)
	if perr == nil || perr.Outcome != OutcomeRejected || perr.Reason != "unknown topic" {
		t.Errorf("unknown topic: got %v", perr)
	}

	// Answers given before anything is appended: not written, and
	// retrying does not help.
	for _, tt := range []struct {
		err    *kerr.Error
		reason string
	}{
		{kerr.TopicAuthorizationFailed, "not authorized to write to the topic"},
		{kerr.InvalidTopicException, "Kafka broker refused the record: Invalid Topic"},
		{kerr.UnsupportedCompressionType, "Kafka broker refused the record: Unsupported Compression Type"},
	} {
		c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: tt.err})
		rec, perr := sendOne(p, "events", []byte(`{}`), 2*time.Second)
		if perr == nil || perr.Outcome != OutcomeRejected || perr.Reason != tt.reason {
			t.Errorf("%s: got %v, want permanent (500) %q", tt.err.Message, perr, tt.reason)
		}
		if rec.attempts.Load() != 1 {
			t.Errorf("%s: a permanent error was tried %d times, want once", tt.err.Message, rec.attempts.Load())
		}
	}
	if got := kafkatest.Stored(t, c, "events"); len(got) != 0 {
		t.Errorf("the topic holds %d records, want none", len(got))
	}
}

func TestProducerWithoutBrokerAnswers503AndRecoversWhenOneComesUp(t *testing.T) {
	kafkatest.NoLeaks(t)
	addr := kafkatest.ClosedPort(t)
	logger, logs := kafkatest.ObservedLogger()
	p := mustProducer(t, Config{Brokers: []string{addr}, Acks: AcksAll}, logger)
	t.Cleanup(func() { <-p.Close() })

	start := time.Now()
	_, perr := sendOne(p, "events", []byte(`{}`), 2*time.Second)
	if perr == nil || perr.Outcome != OutcomeRetry || perr.Reason != "no Kafka broker reachable" {
		t.Fatalf("want 'no Kafka broker reachable', got %v", perr)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("answered after %v; an unreachable cluster should fail fast", took)
	}
	kafkatest.WaitFor(t, 5*time.Second, func() bool {
		return logs.FilterMessageSnippet("no Kafka broker reachable at start").Len() == 1
	})

	_, port, _ := net.SplitHostPort(addr)
	portNum, _ := strconv.Atoi(port)
	c := kafkatest.NewCluster(t, kfake.Ports(portNum), kfake.SeedTopics(1, "events"))
	kafkatest.WaitFor(t, 10*time.Second, func() bool {
		_, perr := sendOne(p, "events", []byte(`{"up":1}`), time.Second)
		return perr == nil
	})
	if got := kafkatest.Stored(t, c, "events"); len(got) != 1 {
		t.Errorf("topic holds %d records, want 1", len(got))
	}
	if logs.FilterMessage("Kafka broker reachable").Len() != 1 {
		t.Errorf("want one info line when the broker became reachable")
	}
}

// hookedProducer returns a producer for c whose connections to partition
// leaders go through leaderDial; it is not started. The producer
// bootstraps from "localhost:<port>" while the brokers advertise
// "127.0.0.1:<port>", which tells the metadata connections apart.
func hookedProducer(t *testing.T, c *kfake.Cluster, leaderDial func(ctx context.Context, network, address string) (net.Conn, error)) *Producer {
	t.Helper()
	var brokers []string
	for _, a := range c.ListenAddrs() {
		_, port, _ := net.SplitHostPort(a)
		brokers = append(brokers, "localhost:"+port)
	}
	var dialer net.Dialer
	p := mustProducer(t, Config{Brokers: brokers, Acks: AcksAll, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		if strings.HasPrefix(address, "127.0.0.1:") {
			return leaderDial(ctx, network, address)
		}
		return dialer.DialContext(ctx, network, address)
	}}, zap.NewNop())
	t.Cleanup(func() { <-p.Close() })
	return p
}

func TestAbandonWhileConnectingIsNotWritten(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	var dials atomic.Int32
	p := hookedProducer(t, c, func(ctx context.Context, _, _ string) (net.Conn, error) {
		// A leader whose host drops our packets: the dial hangs.
		dials.Add(1)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	p.start()

	rec, perr := sendOne(p, "events", []byte(`{}`), 300*time.Millisecond)
	if perr == nil || perr.Outcome != OutcomeRetry {
		t.Fatalf("want not written (safe to retry), got %v", perr)
	}
	if rec.attempts.Load() != 1 || dials.Load() != 1 {
		t.Errorf("attempts = %d, dials = %d, want 1 and 1", rec.attempts.Load(), dials.Load())
	}
	if got := kafkatest.Stored(t, c, "events"); len(got) != 0 {
		t.Errorf("topic holds %d records, want none", len(got))
	}
}

// brokenConn fails every write once broken is set.
type brokenConn struct {
	net.Conn
	broken *atomic.Bool
}

func (c *brokenConn) Write(b []byte) (int, error) {
	if c.broken.Load() {
		c.Conn.Close()
		return 0, errors.New("connection reset (test)")
	}
	return c.Conn.Write(b)
}

// A request the broker may have written (REQUEST_TIMED_OUT after the
// append) is never followed by a "not written" answer, whatever the later
// attempts do: here the connection dies, then connecting hangs.
func TestPossiblyWrittenIsNeverAnsweredNotWritten(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	var broken atomic.Bool
	var dials atomic.Int32
	p := hookedProducer(t, c, func(ctx context.Context, network, address string) (net.Conn, error) {
		if dials.Add(1) == 1 {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, address)
			if err != nil {
				return nil, err
			}
			return &brokenConn{Conn: conn, broken: &broken}, nil
		}
		<-ctx.Done() // then the leader's host is gone
		return nil, ctx.Err()
	})
	p.start()
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.RequestTimedOut,
		When: func(kmsg.Request) bool { broken.Store(true); return true }})

	rec, perr := sendOne(p, "events", []byte(`{"x":1}`), 600*time.Millisecond)
	if perr == nil || perr.Outcome != OutcomeUnknown {
		t.Fatalf("want outcome unknown, got %v", perr)
	}
	if rec.attempts.Load() < 2 {
		t.Errorf("attempts = %d, want retries", rec.attempts.Load())
	}
	if got := kafkatest.Stored(t, c, "events"); len(got) != 1 {
		t.Errorf("topic holds %d records; the first attempt wrote one", len(got))
	}
}

func TestPermanentErrorAfterPossibleWriteIsUnknown(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := testProducer(t, c)
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.RequestTimedOut})
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.UnknownServerError})
	_, perr := sendOne(p, "events", []byte(`{"x":1}`), 2*time.Second)
	if perr == nil || perr.Outcome != OutcomeUnknown {
		t.Fatalf("want outcome unknown, got %v", perr)
	}
	if got := kafkatest.Stored(t, c, "events"); len(got) != 1 {
		t.Errorf("topic holds %d records; the first attempt wrote one", len(got))
	}
}

// A caller giving up takes back only its own record: when connecting to
// the leader is slow, the records whose callers gave up meanwhile are not
// sent (and answered so), and the others are delivered once it connects.
func TestSlowConnectionStillDelivers(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	connect := make(chan struct{})
	p := hookedProducer(t, c, func(ctx context.Context, network, address string) (net.Conn, error) {
		select {
		case <-connect:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return (&net.Dialer{}).DialContext(ctx, network, address)
	})
	p.start()

	// Deadlines 50ms apart; the leader connection opens once the first
	// five callers gave up.
	const n = 20
	recs := make([]*Record, n)
	results := make([]*Error, n)
	now := time.Now()
	for i := range n {
		recs[i] = NewRecord(fmt.Appendf(nil, `%d`, i), now, time.Duration(i+1)*50*time.Millisecond)
		if perr := publishNoWait(p, context.Background(), "events", recs[i]); perr != nil {
			t.Fatal(perr)
		}
	}
	var wg sync.WaitGroup
	for i, rec := range recs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			timer := time.NewTimer(time.Until(rec.Deadline))
			defer timer.Stop()
			select {
			case <-rec.done:
				results[i] = rec.err
			case <-timer.C:
				rec.part.abandon(rec)
				results[i] = rec.Outcome()
			}
		}()
	}
	kafkatest.WaitFor(t, 5*time.Second, func() bool {
		recs[4].part.mu.Lock()
		defer recs[4].part.mu.Unlock()
		return recs[4].abandoned
	})
	close(connect)
	wg.Wait()

	values := map[string]bool{}
	for _, r := range kafkatest.Stored(t, c, "events") {
		values[string(r.Value)] = true
	}
	for i, perr := range results {
		switch {
		case i < 5 && (perr == nil || perr.Outcome != OutcomeRetry):
			t.Errorf("record %d gave up before the connection opened: got %v, want not written", i, perr)
		case i >= 8 && perr != nil:
			t.Errorf("record %d (deadline %v) failed: %v", i, time.Duration(i+1)*50*time.Millisecond, perr)
		case perr == nil && !values[fmt.Sprint(i)]:
			t.Errorf("record %d acknowledged but not stored", i)
		case perr != nil && perr.Outcome == OutcomeRetry && values[fmt.Sprint(i)]:
			t.Errorf("record %d answered not written but stored", i)
		}
	}
}

// A client that left while its request read metadata does not turn the
// metadata into an error for the other clients.
func TestCancelledCallerDoesNotPoisonMetadata(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := testProducer(t, c)
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	for range 20 {
		p.topic("events").expire()
		rec := NewRecord([]byte(`{}`), time.Now(), 2*time.Second)
		if perr := publishNoWait(p, gone, "events", rec); perr != nil {
			t.Fatalf("a publish whose client left got %v", perr)
		}
		<-rec.done
		if _, perr := sendOne(p, "events", []byte(`{}`), 2*time.Second); perr != nil {
			t.Fatalf("a healthy request got %v", perr)
		}
	}
}

// After Destruct, a late request gets "shutting down" and leaves no
// goroutine of the transport behind.
func TestNothingRunsAfterClose(t *testing.T) {
	discoverers := func() int {
		buf := make([]byte, 1<<20)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "kafka-go.(*connPool).discover")
	}
	before := discoverers()
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll}, zap.NewNop())
	if _, perr := sendOne(p, "events", []byte(`{}`), 2*time.Second); perr != nil {
		t.Fatal(perr)
	}
	<-p.Close()
	for _, topic := range []string{"events", "other"} {
		if _, perr := sendOne(p, topic, []byte(`{}`), time.Second); perr != errShuttingDown {
			t.Errorf("%s after close: %v, want %v", topic, perr, errShuttingDown)
		}
	}
	// Goroutines of earlier tests may still be ending: none may be added.
	kafkatest.WaitFor(t, 5*time.Second, func() bool { return discoverers() <= before })
}

func TestCloseFlushesQueuedRecords(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll}, zap.NewNop())

	release := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	var recs []*Record
	for i := range 10 {
		rec := NewRecord(fmt.Appendf(nil, `{"i":%d}`, i), time.Now(), 5*time.Second)
		if perr := publishNoWait(p, context.Background(), "events", rec); perr != nil {
			t.Fatal(perr)
		}
		recs = append(recs, rec)
	}
	// Close returns at once (the broker holds the records: a Close that
	// waited would never return), and the flush goes on behind it.
	destructed := p.Close()
	select {
	case <-destructed:
		t.Fatal("Destruct returned while records were queued")
	case <-recs[0].done:
		t.Fatal("a record completed while the broker held the request")
	default:
	}
	close(release)
	<-destructed
	for i, rec := range recs {
		select {
		case <-rec.done:
			if rec.err != nil {
				t.Errorf("record %d: %v", i, rec.err)
			}
		default:
			t.Errorf("record %d not completed when Destruct returned", i)
		}
	}
	if got := kafkatest.Stored(t, c, "events"); len(got) != 10 {
		t.Errorf("topic holds %d records, want 10", len(got))
	}
	if _, perr := sendOne(p, "events", []byte(`{}`), time.Second); perr != errShuttingDown {
		t.Errorf("after Destruct: got %v, want %v", perr, errShuttingDown)
	}
}

// max_in_flight bounds the requests in flight to one broker: with 2, a
// record of another partition goes out while the first request is held.
func TestMaxInFlightSendsConcurrentRequests(t *testing.T) {
	for _, inFlight := range []int{1, 2} {
		t.Run(fmt.Sprint("max_in_flight=", inFlight), func(t *testing.T) {
			c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "events"))
			p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll, MaxInFlight: inFlight}, zap.NewNop())
			t.Cleanup(func() { <-p.Close() })
			release := make(chan struct{})
			received := kafkatest.HoldProduce(c, release)

			first := NewRecord([]byte(`1`), time.Now(), 5*time.Second)
			first.Partition = 0
			if perr := publishNoWait(p, context.Background(), "events", first); perr != nil {
				t.Fatal(perr)
			}
			kafkatest.WaitFor(t, 5*time.Second, func() bool { return received.Load() == 1 })
			second := NewRecord([]byte(`2`), time.Now(), 5*time.Second)
			second.Partition = 1
			if perr := publishNoWait(p, context.Background(), "events", second); perr != nil {
				t.Fatal(perr)
			}
			if inFlight == 2 {
				// A second request carries it while the first is held.
				kafkatest.WaitFor(t, 5*time.Second, func() bool { return received.Load() == 2 })
			}
			close(release)
			<-first.done
			<-second.done
			if first.err != nil || second.err != nil {
				t.Fatal(first.err, second.err)
			}
			if got := received.Load(); got != 2 {
				t.Errorf("broker received %d produce requests, want 2", got)
			}
		})
	}
}

func TestLingerOnlyUnderConcurrentLoad(t *testing.T) {
	const linger = 300 * time.Millisecond
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll, Linger: linger}, zap.NewNop())
	t.Cleanup(func() { <-p.Close() })

	// An idle partition sends a lone record at once, again and again.
	for range 3 {
		start := time.Now()
		if _, perr := sendOne(p, "events", []byte(`{}`), 5*time.Second); perr != nil {
			t.Fatal(perr)
		}
		if took := time.Since(start); took >= linger {
			t.Fatalf("a lone record took %v: it waited for linger", took)
		}
	}

	// Under load (the previous request carried several records) the
	// sender waits for linger after that request started.
	release := make(chan struct{})
	received := kafkatest.HoldProduce(c, release)
	var recs []*Record
	for i := range 3 {
		if i == 1 {
			// The first request is held: the next two pile up.
			kafkatest.WaitFor(t, 5*time.Second, func() bool { return received.Load() == 1 })
		}
		rec := NewRecord(fmt.Appendf(nil, `%d`, i), time.Now(), 5*time.Second)
		if perr := publishNoWait(p, context.Background(), "events", rec); perr != nil {
			t.Fatal(perr)
		}
		recs = append(recs, rec)
	}
	close(release)
	for _, rec := range recs {
		<-rec.done
	}
	// recs[0] went alone; recs[1:] together in a second request.
	if received.Load() != 2 {
		t.Fatalf("%d produce requests, want 2", received.Load())
	}
	secondBatch := time.Now()
	late := NewRecord([]byte(`"late"`), time.Now(), 5*time.Second)
	if perr := publishNoWait(p, context.Background(), "events", late); perr != nil {
		t.Fatal(perr)
	}
	<-late.done
	if late.err != nil {
		t.Fatal(late.err)
	}
	// The second request started before secondBatch; the late record
	// waited until linger after that start, so at least linger minus
	// the second request's round trip.
	if waited := time.Since(secondBatch); waited < linger/2 {
		t.Errorf("the record after a batch of 2 waited %v, want about linger (%v)", waited, linger)
	}
}

func TestLeaderMoveIsFollowed(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.NumBrokers(3), kfake.SeedTopics(1, "events"))
	p := testProducer(t, c)
	if _, perr := sendOne(p, "events", []byte(`"before"`), 5*time.Second); perr != nil {
		t.Fatal(perr)
	}
	from := c.LeaderFor("events", 0)
	to := (from + 1) % 3
	if err := c.MoveTopicPartition("events", 0, to); err != nil {
		t.Fatal(err)
	}
	rec, perr := sendOne(p, "events", []byte(`"after"`), 5*time.Second)
	if perr != nil {
		t.Fatalf("after the leader moved from %d to %d: %v", from, to, perr)
	}
	if rec.attempts.Load() < 2 {
		t.Errorf("attempts = %d; the old leader should have refused the first", rec.attempts.Load())
	}
	var values []string
	for _, r := range kafkatest.Stored(t, c, "events") {
		values = append(values, string(r.Value))
	}
	if strings.Join(values, ",") != `"before","after"` {
		t.Errorf("topic holds %v", values)
	}
}

var compressionByName = map[string]Compression{"gzip": CompressionGzip, "snappy": CompressionSnappy, "lz4": CompressionLZ4, "zstd": CompressionZstd}

func TestCompressedRecordsReadBack(t *testing.T) {
	for _, codec := range []string{"gzip", "snappy", "lz4", "zstd"} {
		t.Run(codec, func(t *testing.T) {
			c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
			p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll, Compression: compressionByName[codec]}, zap.NewNop())
			t.Cleanup(func() { <-p.Close() })
			value := []byte(`{"text":"` + strings.Repeat("compressible ", 100) + `"}`)
			if _, perr := sendOne(p, "events", value, 5*time.Second); perr != nil {
				t.Fatal(perr)
			}
			got := kafkatest.Stored(t, c, "events")
			if len(got) != 1 || !bytes.Equal(got[0].Value, value) {
				t.Fatalf("read back %d records", len(got))
			}
			if info := c.PartitionInfo("events", 0); info.NumBytes >= int64(len(value)) {
				t.Errorf("the broker stores %d bytes for a %d-byte value: not compressed", info.NumBytes, len(value))
			}
		})
	}
}

// A broker slower than the timeout: every waiting request is answered on
// time, 504 if its record was sent and 503 if it never was (it queued
// behind the slow request), none 2xx; and nothing is left running.
func TestSlowBrokerAnswersEveryWaiterOnTime(t *testing.T) {
	kafkatest.NoLeaks(t)
	c, p := warmProducer(t)
	baseline := ownGoroutines()
	release := make(chan struct{})
	var received, woken atomic.Int32
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		received.Add(1)
		c.SleepControl(func() { <-release })
		woken.Add(1)
		return nil, nil, false // then the broker appends the records
	})
	const timeout = 300 * time.Millisecond
	const n = 30
	type result struct {
		value string
		perr  *Error
		took  time.Duration
	}
	results := make(chan result, n)
	for i := range n {
		go func() {
			start := time.Now()
			_, perr := sendOne(p, "events", fmt.Appendf(nil, `%d`, i), timeout)
			results <- result{fmt.Sprint(i), perr, time.Since(start)}
		}()
	}
	counts := map[Outcome]int{}
	answered := map[string]Outcome{}
	for range n {
		r := <-results
		if r.perr == nil {
			t.Fatal("a 2xx while the broker held every request")
		}
		if r.took > timeout+150*time.Millisecond {
			t.Errorf("answered after %v, want within the %v timeout", r.took, timeout)
		}
		counts[r.perr.Outcome]++
		answered[r.value] = r.perr.Outcome
	}
	if counts[OutcomeUnknown] == 0 || counts[OutcomeUnknown]+counts[OutcomeRetry] != n {
		t.Errorf("outcomes %v: want 504s for the records sent, 503s for the others", counts)
	}
	// Every waiter is answered while the broker still holds the
	// requests: nothing of the producer waits on them any more.
	kafkatest.WaitFor(t, 5*time.Second, func() bool { return ownGoroutines() <= baseline })

	// The held requests land once the broker wakes; a record sent after
	// them is appended after them. Then only records answered "unknown"
	// may be in the topic, never one answered "not written".
	close(release)
	kafkatest.WaitFor(t, 5*time.Second, func() bool { return woken.Load() == received.Load() })
	if _, perr := sendOne(p, "events", []byte(`"after"`), time.Second); perr != nil {
		t.Fatal(perr)
	}
	for v := range kafkatest.RecordsByValue(t, c, "events") {
		if o, ok := answered[v]; ok && o != OutcomeUnknown {
			t.Errorf("record %s was answered %v and is in the topic", v, o)
		}
	}
}

// ownGoroutines counts the goroutines running this module's code or
// kafka-go's, outside the tests themselves.
func ownGoroutines() int {
	return len(kafkatest.GoroutinesOf("caddy-queue-publish/internal/producer.", "segmentio/kafka-go"))
}

// A connection dropped mid-request is retried; the record is stored once.
func TestDroppedConnectionIsRetried(t *testing.T) {
	kafkatest.NoLeaks(t)
	c, p := warmProducer(t)
	dropped := 0
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		dropped++
		return nil, errors.New("drop the connection"), true // closes it, unanswered
	})
	rec, perr := sendOne(p, "events", []byte(`"dropped once"`), 3*time.Second)
	if perr != nil {
		t.Fatalf("after a dropped connection: %v", perr)
	}
	if rec.attempts.Load() != 2 || dropped != 1 {
		t.Errorf("attempts %d, drops %d; want a retry after the one drop", rec.attempts.Load(), dropped)
	}
	if got := kafkatest.RecordsByValue(t, c, "events"); len(got) != 2 || got[`"dropped once"`] == nil {
		t.Errorf("the topic holds %d records, want the warm-up and the retried one", len(got))
	}
}

func TestMayBeWritten(t *testing.T) {
	for _, tt := range []struct {
		err  error
		acks Acks
		want bool
	}{
		{kafka.NotEnoughReplicas, AcksAll, false},
		{kafka.NotEnoughReplicasAfterAppend, AcksAll, true},
		{kafka.RequestTimedOut, AcksAll, true},
		{kafka.NotLeaderForPartition, AcksAll, true}, // may follow an append
		{kafka.NotLeaderForPartition, AcksLeader, false},
		{kafka.MessageSizeTooLarge, AcksAll, false},
		{kafka.TopicAuthorizationFailed, AcksAll, false},
		{kafka.UnknownTopicOrPartition, AcksAll, false},
		{kafka.InvalidTopic, AcksAll, false},
		{kafka.UnsupportedCompressionType, AcksAll, false},
		{kafka.InvalidRecord, AcksAll, false},
		{kafka.InvalidMessage, AcksAll, false},
		{kafka.KafkaStorageError, AcksAll, true},
		{kafka.Error(-1), AcksAll, true}, // UNKNOWN_SERVER_ERROR
		{errAnswerWithoutPartition, AcksAll, true},
		{io.ErrUnexpectedEOF, AcksAll, true},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, AcksAll, false},
		{fmt.Errorf("wrapped: %w", syscall.ECONNREFUSED), AcksAll, false},
		{context.DeadlineExceeded, AcksAll, true},
	} {
		if got := mayBeWritten(tt.err, tt.acks); got != tt.want {
			t.Errorf("mayBeWritten(%v, acks %v) = %v, want %v", tt.err, tt.acks, got, tt.want)
		}
	}
}

// A leader move is logged once as a warning; successful requests log
// nothing at info level or above but the producer's start.
func TestLogsOfALeaderMove(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.NumBrokers(2), kfake.SeedTopics(1, "events"))
	logger, logs := kafkatest.ObservedLogger()
	p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll}, logger)
	t.Cleanup(func() { <-p.Close() })
	for range 5 {
		if _, perr := sendOne(p, "events", []byte(`{}`), 5*time.Second); perr != nil {
			t.Fatal(perr)
		}
	}
	c.MoveTopicPartition("events", 0, (c.LeaderFor("events", 0)+1)%2)
	for range 5 {
		if _, perr := sendOne(p, "events", []byte(`{}`), 5*time.Second); perr != nil {
			t.Fatal(perr)
		}
	}
	var msgs []string
	for _, e := range logs.All() {
		if e.Level >= zapcore.InfoLevel {
			msgs = append(msgs, e.Level.String()+" "+e.Message)
		}
	}
	want := []string{"info Kafka producer started", "warn Kafka cluster layout changed: reconnecting with fresh metadata"}
	if strings.Join(msgs, "\n") != strings.Join(want, "\n") {
		t.Errorf("logged:\n%s\nwant:\n%s", strings.Join(msgs, "\n"), strings.Join(want, "\n"))
	}
}

// A batch that is retried after one of its records expired goes on with
// the others, each once: the expired record is dropped from the batch,
// not the batch's last record repeated in its place.
func TestRetriedBatchWithAnExpiredRecord(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := testProducer(t, c)
	fault := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.NotEnoughReplicas, Count: -1})

	// Records without a waiter (as with delivery async): the producer
	// itself gives up on them at their deadline. The first is retried
	// alone until it expires; the others pile up behind it and make the
	// next batch, retried until its first record expires too.
	now := time.Now()
	var recs []*Record
	for _, tt := range []struct {
		value   string
		timeout time.Duration
	}{{`"first"`, 100 * time.Millisecond}, {`"expires"`, 300 * time.Millisecond}, {`"b"`, 5 * time.Second}, {`"c"`, 5 * time.Second}} {
		rec := NewRecord([]byte(tt.value), now, tt.timeout)
		rec.OnDone = func(*Record, *Error) {}
		if perr := publishNoWait(p, context.Background(), "events", rec); perr != nil {
			t.Fatal(perr)
		}
		recs = append(recs, rec)
	}
	<-recs[0].done
	<-recs[1].done
	fault.Remove()
	for _, rec := range recs[2:] {
		<-rec.done
		if rec.err != nil {
			t.Errorf("a record of the retried batch failed: %v", rec.err)
		}
	}
	for _, rec := range recs[:2] {
		if rec.err == nil || rec.err.Outcome != OutcomeRetry {
			t.Errorf("an expired record: %v, want not written", rec.err)
		}
	}
	got := kafkatest.RecordsByValue(t, c, "events")
	if len(got) != 2 || got[`"b"`] == nil || got[`"c"`] == nil || c.PartitionInfo("events", 0).HighWatermark != 2 {
		t.Errorf("the topic holds %v (high watermark %d), want b and c once each", slices.Collect(maps.Keys(got)), c.PartitionInfo("events", 0).HighWatermark)
	}
}

// A record whose requests may have written it, retried until its caller
// gave up, is completed as "unknown" once no request carries it again: an
// idempotent repeat waiting for its outcome must not wait in vain.
// With idempotence, the batch is retried past its caller's deadline, until
// the delivery timeout; then the producer takes a new identity, since the
// partition's sequence at the broker is no longer known.
func TestGivenUpRecordIsCompleted(t *testing.T) {
	for _, idem := range []Idempotence{IdempotenceOff, IdempotenceOn} {
		t.Run(fmt.Sprint("idempotence=", idem), func(t *testing.T) {
			kafkatest.NoLeaks(t)
			c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
			p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll, Idempotence: idem, DeliveryTimeout: time.Second}, zap.NewNop())
			t.Cleanup(func() { <-p.Close() })
			if _, perr := sendOne(p, "events", []byte(`"warm"`), time.Second); perr != nil {
				t.Fatal(perr)
			}
			before := p.currentSession()
			var healed atomic.Bool
			c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
				c.KeepControl()
				if healed.Load() {
					return nil, nil, false
				}
				return nil, errors.New("drop the connection"), true // may have been written
			})
			rec, perr := sendOne(p, "events", []byte(`"dropped"`), 300*time.Millisecond)
			if perr == nil || perr.Outcome != OutcomeUnknown {
				t.Fatalf("got %v, want an unknown outcome", perr)
			}
			select {
			case <-rec.done:
			case <-time.After(5 * time.Second):
				t.Fatal("the record was never completed")
			}
			if got := rec.Outcome(); got == nil || got.Outcome != OutcomeUnknown {
				t.Errorf("completed as %v, want unknown", got)
			}
			if idem == IdempotenceOn {
				if took := time.Since(rec.Time); took < time.Second {
					t.Errorf("given up after %v, before the delivery timeout", took)
				}
				healed.Store(true)
				if _, perr := sendOne(p, "events", []byte(`"after"`), time.Second); perr != nil {
					t.Fatal(perr)
				}
				if s := p.currentSession(); s == nil || s == before || s.id == before.id {
					t.Errorf("the producer kept its identity %v after giving a batch up, now %v", before, s)
				}
			}
		})
	}
}

// One bad record in a group-commit batch fails alone, for good; the
// records that shared its batch are sent again without it and stored once.
func TestBadRecordFailsAlone(t *testing.T) {
	for _, named := range []bool{true, false} {
		t.Run(fmt.Sprint("named=", named), func(t *testing.T) {
			kafkatest.NoLeaks(t)
			c, p := warmProducer(t)
			// Hold one request so that the records pile up into the
			// next batch.
			release := make(chan struct{})
			received := kafkatest.HoldProduce(c, release)
			held := NewRecord([]byte(`"held"`), time.Now(), 5*time.Second)
			if perr := publishNoWait(p, context.Background(), "events", held); perr != nil {
				t.Fatal(perr)
			}
			kafkatest.WaitFor(t, 5*time.Second, func() bool { return received.Load() == 1 })
			var recs []*Record
			for _, v := range []string{`"a"`, `"bad"`, `"b"`, `"c"`, `"d"`} {
				rec := NewRecord([]byte(v), time.Now(), 5*time.Second)
				if perr := publishNoWait(p, context.Background(), "events", rec); perr != nil {
					t.Fatal(perr)
				}
				recs = append(recs, rec)
			}
			refused := kafkatest.RefuseBadRecords(t, c, named, 0)
			close(release)
			for _, rec := range append(recs, held) {
				<-rec.done
			}
			if n := <-refused; n != 5 {
				t.Fatalf("the first refused request held %d records, want the 5 that piled up", n)
			}
			for i, rec := range recs {
				switch {
				case i == 1 && (rec.err == nil || rec.err.Outcome != OutcomeRejected):
					t.Errorf("the bad record: %v, want a permanent failure", rec.err)
				case i != 1 && rec.err != nil:
					t.Errorf("record %d, beside the bad one: %v", i, rec.err)
				}
			}
			if named && !strings.Contains(recs[1].err.Reason, "Compacted topic cannot accept message without key") {
				t.Errorf("the bad record's reason %q does not give the broker's message", recs[1].err.Reason)
			}
			got := kafkatest.RecordsByValue(t, c, "events")
			for _, v := range []string{`"warm"`, `"held"`, `"a"`, `"b"`, `"c"`, `"d"`} {
				if got[v] == nil {
					t.Errorf("%s is not stored", v)
				}
			}
			if hw := c.PartitionInfo("events", 0).HighWatermark; hw != 6 || got[`"bad"`] != nil {
				t.Errorf("the topic holds %d records, want the 6 good ones once each", hw)
			}
		})
	}
}

// REQUEST_TIMED_OUT may follow an append: the record is retried once, to
// the leader fresh metadata names, and then answered 504, so that one
// 504 stands for at most two copies. Each attempt gives the broker the
// request's whole remaining time.
func TestRequestTimedOutIsRetriedOnce(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll, Idempotence: IdempotenceOff}, zap.NewNop())
	t.Cleanup(func() { <-p.Close() })
	var mu sync.Mutex
	var brokerTimeouts []int32
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Observe: true, Count: -1, When: func(req kmsg.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		brokerTimeouts = append(brokerTimeouts, req.(*kmsg.ProduceRequest).TimeoutMillis)
		return true
	}})
	// kfake appends, then answers REQUEST_TIMED_OUT, as a leader does
	// whose followers are too slow for acks=all.
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.RequestTimedOut, Count: -1})

	rec, perr := sendOne(p, "events", []byte(`"slow replicas"`), 2*time.Second)
	if perr == nil || perr.Outcome != OutcomeUnknown {
		t.Fatalf("got %v, want 504 (outcome unknown)", perr)
	}
	if rec.attempts.Load() != 2 {
		t.Errorf("attempts = %d, want 2: the first and one retry", rec.attempts.Load())
	}
	if hw := c.PartitionInfo("events", 0).HighWatermark; hw != 2 {
		t.Errorf("the topic holds %d copies, want 2", hw)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(brokerTimeouts) == 0 || brokerTimeouts[0] < 1500 {
		t.Errorf("broker-side timeouts %v ms, want the first near the whole 2 s", brokerTimeouts)
	}
}

// With idempotence, REQUEST_TIMED_OUT after an append is retried until
// the broker answers otherwise: the retries carry the same sequence
// numbers, and the broker stores the record once.
func TestRequestTimedOutRetriedIdempotentlyIsStoredOnce(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := testProducer(t, c)
	// kfake appends, then answers REQUEST_TIMED_OUT 3 times.
	fault := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.RequestTimedOut, Count: 3})
	rec, perr := sendOne(p, "events", []byte(`"slow replicas"`), 5*time.Second)
	if perr != nil {
		t.Fatalf("got %v, want the record acknowledged", perr)
	}
	if rec.attempts.Load() != 4 || fault.Hits() != 3 {
		t.Errorf("attempts = %d, faults %d, want 4 and 3", rec.attempts.Load(), fault.Hits())
	}
	if hw := c.PartitionInfo("events", 0).HighWatermark; hw != 1 {
		t.Errorf("the topic holds %d copies, want 1", hw)
	}
}

// A produce answer that does not mention the partition came from a broker
// that had the request: the record may be written (504), unlike a request
// that was never routed.
func TestAnswerWithoutThePartitionIsUnknown(t *testing.T) {
	kafkatest.NoLeaks(t)
	c, p := warmProducer(t)
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		return req.ResponseKind(), nil, true // no topic, no partition
	})
	if _, perr := sendOne(p, "events", []byte(`"lost"`), 500*time.Millisecond); perr == nil || perr.Outcome != OutcomeUnknown {
		t.Errorf("got %v, want 504 (outcome unknown)", perr)
	}
}

// completedWithin fails the test unless rec is completed within limit.
func completedWithin(t *testing.T, rec *Record, limit time.Duration) {
	t.Helper()
	select {
	case <-rec.done:
	case <-time.After(limit):
		t.Fatal("the record was never completed")
	}
}

// Without idempotence, a record the broker proves it did not write
// (NOT_ENOUGH_REPLICAS), after its caller gave up on it, completes as not
// written, so that a repeat produces it; its bytes are let go at once.
// (With idempotence the batch is retried until settled instead.)
func TestNotWrittenAfterCallerLeftCompletes(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll, Idempotence: IdempotenceOff}, zap.NewNop())
	t.Cleanup(func() { <-p.Close() })
	if _, perr := sendOne(p, "events", []byte(`"warm"`), time.Second); perr != nil {
		t.Fatal(perr)
	}
	release := make(chan struct{})
	received := kafkatest.HoldProduce(c, release)
	rec := NewRecord([]byte(`"held"`), time.Now(), 300*time.Millisecond)
	rec.AckBy = rec.Deadline.Add(lateWait)
	if perr := p.send(context.Background(), "events", rec); perr == nil || perr.Outcome != OutcomeUnknown {
		t.Fatalf("got %v, want 504 while the broker holds the request", perr)
	}
	if received.Load() != 1 {
		t.Fatalf("the broker received %d requests, want 1", received.Load())
	}
	fault := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.NotEnoughReplicas})
	close(release)
	completedWithin(t, rec, 10*time.Second)
	if fault.Hits() != 1 {
		t.Errorf("the fault answered %d requests, want the held one", fault.Hits())
	}
	// Queued, and completed neither acknowledged nor "outcome unknown":
	// provably not written, what a repeat of its request reads.
	if perr, partition := rec.Outcome(), placedOn(rec); perr == nil || perr.Outcome == OutcomeUnknown || partition < 0 {
		t.Errorf("completed as %v on partition %d, want not written", perr, partition)
	}
	if hw := c.PartitionInfo("events", 0).HighWatermark; hw != 1 {
		t.Errorf("the topic holds %d records, want the warm-up only", hw)
	}
}

// A produce request the broker holds without answering (a black hole)
// stalls its partition for at most one timeout: the records behind it go
// out on another connection, those whose callers gave up meanwhile let go
// of their bytes, and the held request's answer, when it comes, still
// settles its record for an idempotent repeat.
func TestHeldRequestDoesNotStallThePartition(t *testing.T) {
	kafkatest.NoLeaks(t)
	c, p := warmProducer(t)
	release := make(chan struct{})
	received := kafkatest.HoldFirstProduce(c, release)
	held := NewRecord([]byte(`"held"`), time.Now(), 500*time.Millisecond)
	held.AckBy = held.Deadline.Add(lateWait) // waits 30 s more for a late answer
	if perr := publishNoWait(p, context.Background(), "events", held); perr != nil {
		t.Fatal(perr)
	}
	kafkatest.WaitFor(t, 5*time.Second, func() bool { return received.Load() == 1 })
	behind, perr := sendOne(p, "events", []byte(`"gives up"`), 100*time.Millisecond)
	if perr == nil || perr.Outcome != OutcomeRetry {
		t.Fatalf("a record behind the held request: %v, want 503 after its 100ms", perr)
	}
	if behind.part.mu.Lock(); behind.state != stateCompleted || behind.Value != nil {
		t.Error("a record whose caller gave up before it was sent still holds its bytes")
	}
	behind.part.mu.Unlock()

	if _, perr := sendOne(p, "events", []byte(`"next"`), 5*time.Second); perr != nil {
		t.Errorf("a record sent after the held one's timeout: %v, want it stored within its 5s", perr)
	}
	close(release)
	completedWithin(t, held, 10*time.Second)
	if got := held.Outcome(); got != nil {
		t.Errorf("the held request landed, but its record completed as %v", got)
	}
	if got := kafkatest.RecordsByValue(t, c, "events"); len(got) != 3 || got[`"next"`] == nil || got[`"held"`] == nil {
		t.Errorf("the topic holds %v, want warm, held and next", slices.Collect(maps.Keys(got)))
	}
}

// A record that an earlier attempt may have written, then refused by name
// (INVALID_RECORD), is answered "outcome unknown", not "not written": a
// repeat must not produce it again.
func TestRefusalAfterAPossibleWriteIsUnknown(t *testing.T) {
	kafkatest.NoLeaks(t)
	c, p := warmProducer(t)
	kafkatest.RefuseBadRecords(t, c, true, 1) // the first attempt passes
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.RequestTimedOut})
	rec, perr := sendOne(p, "events", []byte(`"bad after a timeout"`), 2*time.Second)
	if perr == nil || perr.Outcome != OutcomeUnknown || rec.attempts.Load() != 2 {
		t.Errorf("got %v after %d attempts, want 504 after 2", perr, rec.attempts.Load())
	}
	if hw := c.PartitionInfo("events", 0).HighWatermark; hw != 2 {
		t.Errorf("the topic holds %d records, want the warm-up and the timed-out append", hw)
	}
}

// A record refused by a closed queue was never queued: it says so, so
// that an idempotent repeat produces it rather than wait for it.
func TestRecordRefusedByAClosedQueueIsNotQueued(t *testing.T) {
	q := &partition{p: unstarted(t, Config{}), closed: true}
	rec := NewRecord([]byte(`{}`), time.Now(), time.Second)
	if perr := q.push(rec, time.Now()); perr != errShuttingDown || rec.part != nil {
		t.Errorf("push to a closed queue: %v, rec.part %p; want shutting down and no queue", perr, rec.part)
	}
}

// A record that no request carried fails as not written, with a reason
// that says so, whatever the request it waited behind met: a timeout
// leaves that request's records unknown, not this one.
func TestNotWrittenReasonIsTrueOfTheRecord(t *testing.T) {
	for _, last := range []error{nil, context.DeadlineExceeded, kafka.RequestTimedOut, kafka.NotEnoughReplicas} {
		rec := NewRecord([]byte(`{}`), time.Now(), time.Second)
		rec.lastErr = last
		perr := notWritten(rec)
		if perr.Outcome != OutcomeRetry || strings.Contains(perr.Reason, "may or may not") {
			t.Errorf("after %v: %v (outcome %v), want a retriable reason that the record was not written", last, perr, perr.Outcome)
		}
	}
	rec := NewRecord([]byte(`{}`), time.Now(), time.Second)
	rec.lastErr = kafka.NotEnoughReplicas
	if got := notWritten(rec).Reason; got != "Kafka broker not ready: Not Enough Replicas" {
		t.Errorf("after NOT_ENOUGH_REPLICAS: %q, want the broker's reason", got)
	}
}

// lateWait is how long past its deadline a test's record waits for a late
// answer (AckBy), as the handler's Idempotency-Key store asks.
const lateWait = 30 * time.Second

// The records of one call share one done channel: it closes when the last
// of them is completed or was refused, not before.
func TestDoneClosesWithTheLastRecordOfItsCall(t *testing.T) {
	recs := []*Record{
		NewRecord([]byte(`1`), time.Now(), time.Second),
		NewRecord([]byte(`2`), time.Now(), time.Second),
		NewRecord([]byte(`3`), time.Now(), time.Second),
	}
	waitWith(recs)
	isClosed := func() bool {
		select {
		case <-recs[0].Done():
			return true
		default:
			return false
		}
	}
	recs[0].complete(nil, 1)
	recs[2].complete(errShuttingDown, -1)
	recs[2].complete(errShuttingDown, -1) // completed once: counted once
	if isClosed() {
		t.Fatal("done closed with a record of the call still under way")
	}
	recs[1].release() // refused: never queued
	if !isClosed() {
		t.Fatal("done still open once every record of the call is completed or refused")
	}
}

// Records that a stopped producer refuses are counted out of their call's
// wait, so that one waiting on them is not kept waiting.
func TestRefusedEnqueueClosesDone(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll}, zap.NewNop())
	rec := NewRecord([]byte(`{}`), time.Now(), time.Second)
	rec.OnDone = func(*Record, *Error) {}
	rec.Topic = "events"
	topic, err := p.lookup(context.Background(), []*Record{rec})
	if err != nil {
		t.Fatal(err)
	}
	<-p.Close()
	if n, err := enqueue(topic, []*Record{rec}); n != 0 || err != errShuttingDown {
		t.Fatalf("Enqueue on a closed producer: %d queued, %v; want 0, %v", n, err, errShuttingDown)
	}
	if got := rec.Outcome(); got != errShuttingDown {
		t.Errorf("a record the producer refused has the outcome %v, want %v", got, errShuttingDown)
	}
	select {
	case <-rec.Done():
	default:
		t.Fatal("done still open for a record the producer refused")
	}
}

// notQueued fails the test unless none of recs was queued.
func notQueued(t *testing.T, p *Producer, recs []*Record) {
	t.Helper()
	for i, rec := range recs {
		if partition, _ := rec.Progress(); partition >= 0 {
			t.Errorf("record %d was queued on partition %d", i, partition)
		}
	}
	if n := p.Waiting(); n != 0 {
		t.Errorf("%d records waiting, want none", n)
	}
}

// A record asking for a partition the topic does not have fails the call
// before anything is queued, with an error the caller tells apart (and
// answers 404): not a failure of Kafka, so no record's outcome.
func TestPartitionBeyondTheTopicQueuesNothing(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "events"))
	p := testProducer(t, c)
	verbs := map[string]func([]*Record) error{
		"Produce": func(recs []*Record) error { return p.Produce(context.Background(), recs) },
		"Start":   func(recs []*Record) error { return p.Start(context.Background(), recs) },
		"Enqueue": func(recs []*Record) error {
			n, err := p.Enqueue(context.Background(), recs)
			if n != 0 {
				t.Errorf("Enqueue queued %d records", n)
			}
			return err
		},
	}
	for name, verb := range verbs {
		var recs []*Record
		for _, partition := range []int{0, -1, 5} {
			rec := NewRecord([]byte(`{}`), time.Now(), time.Second)
			rec.Topic, rec.Partition = "events", partition
			rec.OnDone = func(*Record, *Error) { t.Errorf("%s: OnDone called for a record never queued", name) }
			recs = append(recs, rec)
		}
		err := verb(recs)
		var perr *PartitionError
		if !errors.As(err, &perr) || *perr != (PartitionError{Index: 2, Partition: 5, Partitions: 2}) {
			t.Fatalf("%s: %v, want the partition error of record 2", name, err)
		}
		if got, want := err.Error(), "record 2: partition 5 does not exist (the topic has 2)"; got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
		if errors.As(err, new(*Error)) {
			t.Errorf("%s: the client's mistake reads as a failure of Kafka", name)
		}
		notQueued(t, p, recs)
		for i, rec := range recs {
			if got := rec.Outcome(); got != nil || rec.Done() != nil {
				t.Errorf("%s: record %d has the outcome %v, done %v; want none", name, i, got, rec.Done())
			}
		}
	}
	if got := kafkatest.Stored(t, c, "events"); len(got) != 0 {
		t.Errorf("the topic holds %d records, want none", len(got))
	}
}

// When the topic cannot be had, its error is every record's outcome, and
// the call returns it with nothing queued: a topic that does not exist,
// and a producer that is closed.
func TestTopicLookupFailureIsEveryRecordsOutcome(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll}, zap.NewNop())
	closed := false
	t.Cleanup(func() {
		if !closed {
			<-p.Close()
		}
	})
	records := func(topic string) []*Record {
		var recs []*Record
		for range 3 {
			rec := NewRecord([]byte(`{}`), time.Now(), 2*time.Second)
			rec.Topic = topic
			rec.OnDone = func(*Record, *Error) { t.Error("OnDone called for a record never queued") }
			recs = append(recs, rec)
		}
		return recs
	}
	check := func(what string, err error, recs []*Record, want func(*Error) bool) {
		t.Helper()
		var perr *Error
		if !errors.As(err, &perr) || !want(perr) {
			t.Fatalf("%s: %v", what, err)
		}
		for i, rec := range recs {
			if got := rec.Outcome(); got != perr {
				t.Errorf("%s: record %d has the outcome %v, want %v", what, i, got, perr)
			}
		}
		notQueued(t, p, recs)
	}
	unknown := func(perr *Error) bool { return perr.Outcome == OutcomeRejected && perr.Reason == "unknown topic" }
	recs := records("nope")
	check("Produce, unknown topic", p.Produce(context.Background(), recs), recs, unknown)
	recs = records("nope")
	_, err := p.Enqueue(context.Background(), recs)
	check("Enqueue, unknown topic", err, recs, unknown)

	<-p.Close()
	closed = true
	shutting := func(perr *Error) bool { return perr == errShuttingDown }
	recs = records("events")
	check("Start, closed", p.Start(context.Background(), recs), recs, shutting)
	p.Wait(context.Background(), recs) // nothing to wait for
	recs = records("events")
	n, err := p.Enqueue(context.Background(), recs)
	check("Enqueue, closed", err, recs, shutting)
	if n != 0 {
		t.Errorf("Enqueue on a closed producer queued %d", n)
	}
}

// A call takes records of one topic: one that mixes topics, or names
// none, is refused before any lookup, and nothing is queued.
func TestMixedTopicsRefused(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events", "other"))
	p := testProducer(t, c)
	for _, topics := range [][]string{{"events", "other"}, {"events", "events", ""}, {""}} {
		var recs []*Record
		for _, topic := range topics {
			rec := NewRecord([]byte(`{}`), time.Now(), time.Second)
			rec.Topic = topic
			recs = append(recs, rec)
		}
		err := p.Produce(context.Background(), recs)
		if err == nil || errors.As(err, new(*Error)) || errors.As(err, new(*PartitionError)) {
			t.Fatalf("records for %q: %v, want the call refused", topics, err)
		}
		if want := fmt.Sprintf("for topic %q", topics[len(topics)-1]); len(topics) > 1 && !strings.Contains(err.Error(), want) {
			t.Errorf("records for %q: %q does not say %s", topics, err, want)
		}
		notQueued(t, p, recs)
		for i, rec := range recs {
			if got := rec.Outcome(); got != nil {
				t.Errorf("records for %q: record %d has the outcome %v", topics, i, got)
			}
		}
	}
	if err := p.Produce(context.Background(), nil); err != nil {
		t.Errorf("a call of no records: %v", err)
	}
}

// A record's one outcome through its life: none before a call takes it;
// "outcome unknown" while a request carries it and its caller stopped
// waiting (or before it waits); acknowledged (nil) once the broker
// answers, for good once Done is closed; and the refusal of a record no
// partition took.
func TestOutcomeAcrossALife(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll, Idempotence: IdempotenceOff}, zap.NewNop())
	t.Cleanup(func() { <-p.Close() })
	if _, perr := sendOne(p, "events", []byte(`"warm"`), time.Second); perr != nil {
		t.Fatal(perr)
	}
	release := make(chan struct{})
	received := kafkatest.HoldProduce(c, release)

	rec := NewRecord([]byte(`"held"`), time.Now(), 300*time.Millisecond)
	rec.Topic = "events"
	rec.AckBy = rec.Deadline.Add(lateWait) // one attempt, waiting for its answer
	if got := rec.Outcome(); got != nil {
		t.Errorf("before any call: %v, want none", got)
	}
	if err := p.Start(context.Background(), []*Record{rec}); err != nil {
		t.Fatal(err)
	}
	kafkatest.WaitFor(t, 5*time.Second, func() bool { return received.Load() == 1 })
	if got := rec.Outcome(); got == nil || got.Outcome != OutcomeUnknown || got.Reason != reasonUnknown {
		t.Errorf("in flight, before Wait: %v, want outcome unknown", got)
	}
	p.Wait(context.Background(), []*Record{rec}) // its deadline passes
	if got := rec.Outcome(); got == nil || got.Outcome != OutcomeUnknown {
		t.Errorf("in flight, its caller gone: %v, want outcome unknown", got)
	}
	select {
	case <-rec.Done():
		t.Fatal("done closed while the broker holds the record")
	default:
	}
	close(release)
	completedWithin(t, rec, 10*time.Second)
	if got := rec.Outcome(); got != nil {
		t.Errorf("acknowledged late: %v, want nil", got)
	}
	if partition, attempts := rec.Progress(); partition != 0 || attempts != 1 {
		t.Errorf("progress %d, %d; want partition 0 after 1 attempt", partition, attempts)
	}

	// Refused by its partition (the producer closed after the lookup):
	// the refusal is the outcome, and Start returns it.
	refused := NewRecord([]byte(`"refused"`), time.Now(), time.Second)
	refused.Topic = "events"
	topic, err := p.lookup(context.Background(), []*Record{refused})
	if err != nil {
		t.Fatal(err)
	}
	<-p.Close()
	if err := start(topic, []*Record{refused}); err != errShuttingDown {
		t.Errorf("start on a closed partition: %v, want %v", err, errShuttingDown)
	}
	if got := refused.Outcome(); got != errShuttingDown {
		t.Errorf("refused: %v, want %v", got, errShuttingDown)
	}
	select {
	case <-refused.Done():
	default:
		t.Error("done still open for a refused record")
	}
	notQueued(t, p, []*Record{refused})
}
