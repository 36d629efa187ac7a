// Package producer is a Kafka producer built on kafka-go's protocol-level
// client, shaped like Kafka's own clients: records wait in a buffer per
// partition; one sender per broker (a sink) drains every partition that
// broker leads into one produce request as soon as it is free; records
// without a key stick to one partition until its batch is taken; batches
// are encoded once, with the idempotent producer's ID and sequence
// numbers, and resent byte for byte. Every failure is answered either "not
// written, safe to retry" or "outcome unknown", never by guessing.
//
// kafka-go's Writer batches on a timer, keeps one request in flight per
// partition and spends about 24 us of CPU per message under many
// concurrent synchronous callers; it cannot say whether a failed write
// reached the broker, nor give a record's offset, nor produce
// idempotently. Hence this package, on kafka-go's Transport.
package producer

import (
	"cmp"
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"go.uber.org/zap"
)

const (
	// dialTimeout bounds establishing a broker connection.
	dialTimeout = 5 * time.Second
	// retryBackoffMin and retryBackoffMax bound the pause between two
	// attempts of a batch that failed with a retriable error.
	retryBackoffMin = 20 * time.Millisecond
	retryBackoffMax = 500 * time.Millisecond
)

// Producer publishes records to Kafka. It is safe for concurrent use.
type Producer struct {
	cfg       Config
	logger    *zap.Logger
	transport *kafka.Transport
	client    *kafka.Client
	sasl      sasl.Mechanism // built from cfg.SASL; nil: none
	tokens    *tokenSource   // OAUTHBEARER's; nil for other mechanisms

	topics sync.Map // topic name -> *topicState

	mu       sync.Mutex
	closed   bool // guarded by mu
	stopped  atomic.Bool
	sinksMu  sync.RWMutex
	sinkByID map[int32]*sink
	sinks    sync.WaitGroup
	watchers sync.WaitGroup

	// outstanding counts the records queued or batched, not completed;
	// drained is closed when it is 0 after the producer stopped.
	outstanding atomic.Int64
	drained     chan struct{}
	drainOnce   sync.Once
	// closeOnce starts the flush that closes finished.
	closeOnce sync.Once
	finished  chan struct{}

	// The idempotent producer's identity (idempotence.go).
	idempotent   atomic.Bool
	session      atomic.Pointer[session]
	sessionMu    sync.Mutex
	sessionErr   error     // guarded by sessionMu
	sessionRetry time.Time // guarded by sessionMu
	// sessionAsking is closed when the identity asked for now is in;
	// nil while none is asked for. Guarded by sessionMu.
	sessionAsking chan struct{}

	lastRefresh    atomic.Int64 // UnixNano of the last forced metadata refresh
	lastRebuildLog atomic.Int64 // UnixNano of the last warning about it
	watching       atomic.Bool
	ctx            context.Context // cancelled when the producer is closed
	cancel         context.CancelFunc
}

var (
	errShuttingDown = &Error{Outcome: OutcomeRetry, Reason: "shutting down"}
	errNotSent      = errors.New("no acknowledgement within the timeout; the record was not sent")
)

const reasonNotSent = "no acknowledgement from Kafka within the timeout; the record was not sent"

const reasonUnknown = "no acknowledgement from Kafka within the timeout; the record may or may not have been written"

const reasonUnknownTwice = "Kafka failed twice after it may have written the record; the record may or may not have been written"

// New returns a producer that has started looking for a reachable broker.
// It fails only for settings it cannot use (SASL.Check's errors).
func New(cfg Config) (*Producer, error) {
	p, err := newProducer(cfg)
	if err != nil {
		return nil, err
	}
	p.start()
	return p, nil
}

// newProducer builds a producer that start sets going.
func newProducer(cfg Config) (*Producer, error) {
	cfg.MaxBatchRecords = cmp.Or(cfg.MaxBatchRecords, defaultMaxBatchRecords)
	cfg.MaxBatchBytes = cmp.Or(cfg.MaxBatchBytes, defaultMaxBatchBytes)
	cfg.MaxInFlight = cmp.Or(cfg.MaxInFlight, defaultMaxInFlight)
	cfg.DeliveryTimeout = cmp.Or(cfg.DeliveryTimeout, defaultDeliveryTimeout)
	cfg.ClientID = cmp.Or(cfg.ClientID, defaultClientID)
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	}
	p := &Producer{cfg: cfg, logger: cfg.Logger, sinkByID: map[int32]*sink{}, drained: make(chan struct{}), finished: make(chan struct{})}
	// As in Kafka's clients, idempotence needs acks=all: with fewer acks
	// a record the broker lost, or refused unanswered (acks=0), leaves a
	// gap in the partition's sequence that refuses every later batch.
	p.idempotent.Store(cfg.Idempotence != IdempotenceOff && cfg.Acks == AcksAll)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if cfg.SASL != nil {
		if err := cfg.SASL.Check(); err != nil {
			p.cancel()
			return nil, err
		}
		if cfg.SASL.OAuth != nil {
			p.tokens = newTokenSource(p.ctx, cfg.SASL.OAuth, p.logger)
		}
		var err error
		if p.sasl, err = cfg.SASL.mechanism(p.tokens); err != nil {
			p.cancel()
			return nil, err
		}
	}
	p.transport = &kafka.Transport{
		Dial:        p.dial,
		DialTimeout: dialTimeout,
		MetadataTTL: metadataTTL,
		ClientID:    cfg.ClientID,
		// TLS and SASL are done by dial: kafka-go gets connections
		// ready for requests.
		// Ends the transport's background goroutines on close.
		Context: p.ctx,
	}
	var bootstrap net.Addr = kafka.TCP(cfg.Brokers...)
	if len(cfg.Brokers) > 1 {
		bootstrap = bootstrapAddr{} // the first that answers: bootstrap.go
	}
	p.client = &kafka.Client{Addr: bootstrap, Transport: p.transport}
	return p, nil
}

// start looks for a reachable broker, and warns if none answers.
func (p *Producer) start() {
	p.logger.Info("Kafka producer started",
		zap.Strings("brokers", p.cfg.Brokers),
		zap.String("client_id", p.cfg.ClientID),
		zap.String("acks", p.cfg.Acks.String()),
		zap.Bool("idempotent", p.idempotent.Load()),
		zap.Bool("tls", p.cfg.TLS != nil),
		zap.Bool("sasl", p.sasl != nil))
	if p.tokens != nil {
		p.tokens.start()
	}
	p.watch("no Kafka broker reachable at start; requests are answered 503 until one is")
}

// CheckIdempotence asks the cluster for an identity within ctx: it fails
// only if the cluster refuses the idempotent producer, not if no broker
// answers.
func (p *Producer) CheckIdempotence(ctx context.Context) error {
	if !p.idempotent.Load() {
		return nil
	}
	_, err := p.initProducerID(ctx)
	if refused := idempotenceRefused(err); refused != nil {
		return refused
	}
	return nil
}

func (p *Producer) isStopped() bool { return p != nil && p.stopped.Load() }

// sink returns the sink of broker id, started if it is new. It may be
// called with a partition locked.
func (p *Producer) sink(id int32) *sink {
	p.sinksMu.RLock()
	s := p.sinkByID[id]
	p.sinksMu.RUnlock()
	if s != nil {
		return s
	}
	p.sinksMu.Lock()
	defer p.sinksMu.Unlock()
	if s = p.sinkByID[id]; s == nil {
		s = &sink{p: p, id: id, wake: make(chan struct{}, 1)}
		p.sinkByID[id] = s
		p.sinks.Add(1)
		go s.run()
	}
	return s
}

// sinkFailing reports whether the last request to pt's leader failed to
// reach it.
func (p *Producer) sinkFailing(pt *partition) bool {
	s := pt.sink.Load()
	return s != nil && s.id == pt.leader.Load() && s.failing.Load()
}

// recordDone counts a completed queued record.
func (p *Producer) recordDone() {
	if p.outstanding.Add(-1) == 0 && p.stopped.Load() {
		p.drainOnce.Do(func() { close(p.drained) })
	}
}

// Waiting is the number of records queued or in flight.
func (p *Producer) Waiting() int { return int(p.outstanding.Load()) }

// The verbs. Each call takes records of one topic (their Topic), looks the
// topic up (metadata.go) and queues each record on its partition; Produce
// then waits for them, Start returns and Wait waits later, and Enqueue
// leaves them to their OnDone. The lookup waits for the topic's metadata
// until the records' deadline or ctx's, whichever is earlier; ctx's
// cancellation ends the caller's wait, not the read others share. A call
// that returns an error queued nothing:
//
//   - *PartitionError: a record asks for a partition the topic does not
//     have; no record's Outcome changes.
//   - *Error: the topic cannot be had (no broker answers, it does not
//     exist, the producer is closed); it is every record's Outcome.
//   - any other error: the call itself is wrong (records of two topics,
//     or of none).
//
// Otherwise each record's Outcome tells how it went: a record that a
// partition refused (the producer closed meanwhile) has that refusal.

// Produce queues the records and waits until each is acknowledged or has
// failed, their deadline passes or ctx is done (the client left); then
// each record's Outcome says how it ended, or "outcome unknown" for one a
// request still carries (read it once: it may be acknowledged later). The
// records share one deadline.
func (p *Producer) Produce(ctx context.Context, recs []*Record) error {
	if err := p.Start(ctx, recs); err != nil {
		return err
	}
	p.Wait(ctx, recs)
	return nil
}

// Start is the first half of Produce: it queues the records and returns
// without waiting, so that a caller can queue more (a stream of records)
// before it waits for these with Wait. ctx bounds only the topic's lookup.
func (p *Producer) Start(ctx context.Context, recs []*Record) error {
	t, err := p.lookup(ctx, recs)
	if t == nil {
		return err
	}
	return start(t, recs)
}

// start queues the records on their partitions of t: Start once the
// topic is found. A record a partition refuses has the refusal as its
// outcome; it is returned if no record was queued.
func start(t *topicLayout, recs []*Record) error {
	waitWith(recs)
	now := time.Now()
	queued := 0
	var refused *Error
	for _, rec := range recs {
		if perr := t.partitionFor(rec).push(rec, now); perr != nil {
			rec.err, refused = perr, perr
			rec.release() // not queued
			continue
		}
		queued++
	}
	if queued == 0 && refused != nil {
		return refused
	}
	return nil
}

// Wait is the second half of Produce: it waits for the records of one
// Start call, and takes back those no request carries yet, so that none
// will: their Outcome is then final.
func (p *Producer) Wait(ctx context.Context, recs []*Record) {
	if len(recs) == 0 || recs[0].done == nil {
		return // not started
	}
	select {
	case <-recs[0].done:
		return // every record completed, or was refused
	default:
	}
	timer := startTimer(time.Until(recs[0].Deadline))
	select {
	case <-recs[0].done:
		stopTimer(timer)
		return
	case <-timer.C:
	case <-ctx.Done():
	}
	stopTimer(timer)
	for _, rec := range recs {
		if rec.part != nil {
			rec.part.abandon(rec)
		}
	}
}

// timers are the stopped timers of Wait calls that returned: a request
// waits on one, and a pooled timer costs no allocation. (Since Go 1.23 a
// stopped or reset timer never delivers a stale tick.)
var timers sync.Pool

func startTimer(d time.Duration) *time.Timer {
	if t, ok := timers.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

func stopTimer(t *time.Timer) {
	t.Stop()
	timers.Put(t)
}

// Enqueue queues the records without waiting; each record's OnDone must
// be set, and the producer takes a record back at its deadline. It
// returns how many were queued before one was refused (the producer is
// closing), and why; the records not queued have that refusal as their
// Outcome, and their OnDone is not called. ctx bounds only the topic's
// lookup, with the first record's deadline.
func (p *Producer) Enqueue(ctx context.Context, recs []*Record) (queued int, err error) {
	t, err := p.lookup(ctx, recs)
	if t == nil {
		return 0, err
	}
	return enqueue(t, recs)
}

// enqueue queues the records on their partitions of t, until one is
// refused: Enqueue once the topic is found.
func enqueue(t *topicLayout, recs []*Record) (int, error) {
	waitWith(recs)
	now := time.Now()
	for i, rec := range recs {
		if perr := t.partitionFor(rec).push(rec, now); perr != nil {
			for _, rest := range recs[i:] {
				rest.err = perr
				rest.release() // not queued
			}
			return i, perr
		}
	}
	return len(recs), nil
}

// Close makes the producer take no more records, at once, and returns a
// channel that is closed once the producer has settled every record it
// holds (each within its deadline: their callers may still be waiting)
// and closed its connections. The flush goes on in the background, so
// that a caller that must not wait for records already answered (a config
// reload) does not; one that must (the process exits) receives from the
// channel. Every call returns the same channel.
func (p *Producer) Close() <-chan struct{} {
	p.closeOnce.Do(func() {
		p.stop()
		go func() {
			p.finish()
			close(p.finished)
		}()
	})
	return p.finished
}

// stop makes the producer take no more records.
func (p *Producer) stop() {
	p.mu.Lock()
	p.closed = true
	p.stopped.Store(true)
	p.mu.Unlock()
	p.topics.Range(func(_, v any) bool {
		ts := v.(*topicState)
		ts.mu.Lock()
		for _, pt := range ts.parts {
			pt.close()
		}
		ts.mu.Unlock()
		return true
	})
	if p.outstanding.Load() == 0 {
		p.drainOnce.Do(func() { close(p.drained) })
	}
}

// finish waits until the stopped producer has settled every record it
// holds, and closes the connections.
func (p *Producer) finish() {
	<-p.drained
	p.sinksMu.Lock()
	for _, s := range p.sinkByID {
		s.close()
	}
	p.sinksMu.Unlock()
	p.sinks.Wait()
	p.cancel()
	p.watchers.Wait()
	if p.tokens != nil {
		p.tokens.close()
	}
	p.transport.CloseIdleConnections()
	p.logger.Info("Kafka producer closed", zap.Strings("brokers", p.cfg.Brokers), zap.String("client_id", p.cfg.ClientID))
}
