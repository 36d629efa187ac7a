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
	"crypto/tls"
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
	// Defaults of Config.
	defaultMaxBatchRecords = 1000
	// The byte bound stays below Kafka's default message.max.bytes
	// (1048588), which applies to a whole batch.
	defaultMaxBatchBytes   = 1000000
	defaultMaxInFlight     = 1
	defaultDeliveryTimeout = 2 * time.Minute
	defaultClientID        = "caddy-queue-publish"
)

// Config is how a producer connects and batches.
type Config struct {
	Brokers     []string
	Acks        kafka.RequiredAcks
	Compression kafka.Compression
	ClientID    string
	TLS         *tls.Config    // nil: plain TCP
	SASL        sasl.Mechanism // nil: none
	Idempotence Idempotence
	// Linger is how long a sink waits, after its previous request
	// started, before sending the next one, when the previous one held
	// more than one record. Zero sends as soon as a sink is free.
	Linger time.Duration
	// MaxBatchRecords and MaxBatchBytes bound one partition's batch.
	MaxBatchRecords int
	MaxBatchBytes   int
	// MaxInFlight is the number of produce requests a broker may have
	// in flight; each partition has one batch in flight at a time.
	MaxInFlight int
	// DeliveryTimeout is how long, with idempotence, a batch whose
	// callers have all stopped waiting is still retried until the broker
	// settles it (as the Java client's delivery.timeout.ms).
	DeliveryTimeout time.Duration
	// Dial opens network connections; nil: a net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Hooks, if set, learns of the producer's work.
	Hooks  Hooks
	Logger *zap.Logger
}

// Hooks are told of the producer's work, for metrics. They are called
// from the producer's goroutines and must not block.
type Hooks interface {
	// Batch is called for each batch the broker acknowledged.
	Batch(topic string, records int)
}

// Producer publishes records to Kafka. It is safe for concurrent use.
type Producer struct {
	cfg       Config
	logger    *zap.Logger
	transport *kafka.Transport
	client    *kafka.Client

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

	// The idempotent producer's identity (idempotence.go).
	idempotent   atomic.Bool
	session      atomic.Pointer[session]
	sessionMu    sync.Mutex
	sessionErr   error     // guarded by sessionMu
	sessionRetry time.Time // guarded by sessionMu
	// sessionAsking is closed when the identity asked for now is in;
	// nil while none is asked for. Guarded by sessionMu.
	sessionAsking chan struct{}

	saslConns sync.Map // connections being opened, for trackedMechanism

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
func New(cfg Config) *Producer {
	p := newProducer(cfg)
	p.start()
	return p
}

// newProducer builds a producer that start sets going.
func newProducer(cfg Config) *Producer {
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
	p := &Producer{cfg: cfg, logger: cfg.Logger, sinkByID: map[int32]*sink{}, drained: make(chan struct{})}
	// As in Kafka's clients, idempotence needs acks=all: with fewer acks
	// a record the broker lost, or refused unanswered (acks=0), leaves a
	// gap in the partition's sequence that refuses every later batch.
	p.idempotent.Store(cfg.Idempotence != IdempotenceOff && cfg.Acks == kafka.RequireAll)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.transport = &kafka.Transport{
		Dial:        p.dial,
		DialTimeout: dialTimeout,
		MetadataTTL: metadataTTL,
		ClientID:    cfg.ClientID,
		// TLS is done by dial, below the SASL tracking.
		// Ends the transport's background goroutines on close.
		Context: p.ctx,
	}
	if cfg.SASL != nil {
		p.transport.SASL = trackedMechanism{Mechanism: cfg.SASL, conns: &p.saslConns}
	}
	var bootstrap net.Addr = kafka.TCP(cfg.Brokers...)
	if len(cfg.Brokers) > 1 {
		bootstrap = bootstrapAddr{} // the first that answers: bootstrap.go
	}
	p.client = &kafka.Client{Addr: bootstrap, Transport: p.transport}
	return p
}

// start looks for a reachable broker, and warns if none answers.
func (p *Producer) start() {
	p.logger.Info("Kafka producer started",
		zap.Strings("brokers", p.cfg.Brokers),
		zap.String("client_id", p.cfg.ClientID),
		zap.String("acks", p.cfg.Acks.String()),
		zap.Bool("idempotent", p.idempotent.Load()),
		zap.Bool("tls", p.cfg.TLS != nil),
		zap.Bool("sasl", p.cfg.SASL != nil))
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

// Send queues the records on their partitions of t and waits until each
// is acknowledged or has failed, their deadline passes or ctx is done (the
// client left); then each record's Answer says how it ended. The records
// share one deadline, and a record's Partition must be one of t's.
func (p *Producer) Send(ctx context.Context, t *Topic, recs []*Record) {
	p.Start(t, recs)
	p.Wait(ctx, recs)
}

// Start is the first half of Send: it queues the records and returns
// without waiting, so that a caller can queue more (a stream of records)
// before it waits for these with Wait. A record that could not be queued
// has its Answer set.
func (p *Producer) Start(t *Topic, recs []*Record) {
	waitWith(recs)
	now := time.Now()
	for _, rec := range recs {
		if rec.Answer = t.partitionFor(rec).push(rec, now); rec.Answer != nil {
			rec.release() // not queued
		}
	}
}

// Wait is the second half of Send: it waits for the records of one Start
// call, and sets each one's Answer.
func (p *Producer) Wait(ctx context.Context, recs []*Record) {
	timer := startTimer(time.Until(recs[0].Deadline))
	select {
	case <-recs[0].done:
	case <-timer.C:
	case <-ctx.Done():
	}
	stopTimer(timer)
	for _, rec := range recs {
		if rec.Answer == nil {
			rec.Answer = rec.part.abandon(rec)
		}
	}
}

// timers are the stopped timers of Send calls that returned: a request
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

// Enqueue queues the records on their partitions of t without waiting;
// each record's OnDone must be set. It returns how many were queued before
// one was refused (the producer is closing), and why.
func (p *Producer) Enqueue(t *Topic, recs []*Record) (int, *Error) {
	waitWith(recs)
	now := time.Now()
	for i, rec := range recs {
		if perr := t.partitionFor(rec).push(rec, now); perr != nil {
			for _, rest := range recs[i:] {
				rest.release() // not queued
			}
			return i, perr
		}
	}
	return len(recs), nil
}

// Close stops the producer and waits until it has flushed and closed.
func (p *Producer) Close() {
	p.Stop()
	p.Finish()
}

// Stop makes the producer take no more records.
func (p *Producer) Stop() {
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

// Finish waits until the stopped producer has settled every record it
// holds (each within its deadline), and closes the connections.
func (p *Producer) Finish() {
	<-p.drained
	p.sinksMu.Lock()
	for _, s := range p.sinkByID {
		s.close()
	}
	p.sinksMu.Unlock()
	p.sinks.Wait()
	p.cancel()
	p.watchers.Wait()
	p.transport.CloseIdleConnections()
	p.logger.Info("Kafka producer closed", zap.Strings("brokers", p.cfg.Brokers), zap.String("client_id", p.cfg.ClientID))
}
