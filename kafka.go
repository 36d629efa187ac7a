package queuepublish

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"
	"github.com/segmentio/kafka-go/sasl"
	"go.uber.org/zap"
)

// The producer is built on kafka-go's protocol-level client (kafka.Client
// over a kafka.Transport) rather than on kafka.Writer. The Writer batches on
// a timer, keeps one request in flight per partition and, under many
// concurrent synchronous callers, spends about 24 us of CPU per message; it
// also cannot say whether a failed write ever reached the broker, nor give
// the offset of a record. Here each partition has a queue and at most one
// produce request in flight: a request is sent as soon as the partition is
// idle, and whatever piles up while it is in flight goes out in the next one
// (group commit). A record is claimed at the moment kafka-go encodes it into
// a request; a caller that gives up first takes it back, and the encoder
// skips it. So every failure is answered either "not written, safe to
// retry" or "outcome unknown", never by guessing.

const (
	// dialTimeout bounds establishing a broker connection.
	dialTimeout = 5 * time.Second
	// metadataTTL bounds how long the transport trusts cached cluster
	// metadata before asking the brokers again.
	metadataTTL = 5 * time.Second
	// topicMetadataTTL is how long a topic's partition list is used before
	// it is read again from the transport's cache.
	topicMetadataTTL = time.Second
	// refreshInterval rate-limits forced metadata refreshes (after a
	// leadership change or while no broker is reachable).
	refreshInterval = 200 * time.Millisecond
	// rebuildLogInterval rate-limits the warnings about refreshes.
	rebuildLogInterval = 10 * time.Second
	// retryBackoffMin and retryBackoffMax bound the pause between two
	// attempts of a batch that failed with a retriable error.
	retryBackoffMin = 20 * time.Millisecond
	retryBackoffMax = 500 * time.Millisecond
	// defaultMaxBatchRecords and defaultMaxBatchBytes bound one produce
	// request. The byte bound stays below Kafka's default
	// message.max.bytes (1048588), which applies to a whole batch.
	defaultMaxBatchRecords = 1000
	defaultMaxBatchBytes   = 1000000
	defaultMaxInFlight     = 1
	// recordOverhead approximates the bytes a record adds to a batch besides
	// its value.
	recordOverhead = 24
	// clientID identifies this producer to the brokers.
	clientID = "caddy-queue-publish"
	// devBrokerApp is the module ID of the in-memory development broker.
	devBrokerApp = "queue_publish_dev_broker"
)

// producers holds one producer per distinct connection setting, shared by
// every handler (across config reloads) that uses the same settings.
var producers = caddy.NewUsagePool()

// producerConfig is everything that shapes a connection to a Kafka cluster.
// Handlers whose producerConfig is equal share one producer.
type producerConfig struct {
	Brokers     []string           `json:"brokers"`
	Acks        kafka.RequiredAcks `json:"acks"`
	Compression kafka.Compression  `json:"compression"`
	ClientID    string             `json:"client_id"`
	TLS         *tlsMaterial       `json:"tls,omitempty"`
	SASL        *saslCredentials   `json:"sasl,omitempty"`
	// Linger is how long a sender waits, after its previous request
	// started, before sending the next one, when the previous one held
	// more than one record. Zero sends as soon as a sender is free.
	Linger          time.Duration `json:"linger"`
	MaxBatchRecords int           `json:"max_batch_records"`
	MaxBatchBytes   int           `json:"max_batch_bytes"`
	// MaxInFlight is the number of produce requests a partition may have
	// in flight; above 1, a retried batch may land after a later one.
	MaxInFlight int `json:"max_in_flight"`
}

// withDefaults fills in the batching settings left at zero.
func (c producerConfig) withDefaults() producerConfig {
	c.MaxBatchRecords = cmp.Or(c.MaxBatchRecords, defaultMaxBatchRecords)
	c.MaxBatchBytes = cmp.Or(c.MaxBatchBytes, defaultMaxBatchBytes)
	c.MaxInFlight = cmp.Or(c.MaxInFlight, defaultMaxInFlight)
	c.ClientID = cmp.Or(c.ClientID, clientID)
	return c
}

// key is the canonical identity of the settings in the producer pool. It is
// a digest, so that the credentials in the settings never sit in a key.
func (c producerConfig) key() string {
	c.Brokers = slices.Clone(c.Brokers)
	slices.Sort(c.Brokers)
	c.Brokers = slices.Compact(c.Brokers)
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // plain data; cannot fail
	}
	sum := sha256.Sum256(b)
	return "queue_publish.producer." + hex.EncodeToString(sum[:])
}

// acquireProducer returns the shared producer for cfg, creating it if no
// loaded config uses these settings yet. Every successful call must be
// matched by one releaseProducer(key).
func acquireProducer(cfg producerConfig, logger *zap.Logger) (p *producer, key string, err error) {
	cfg = cfg.withDefaults()
	key = cfg.key()
	val, _, err := producers.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newProducer(cfg, logger)
	})
	if err != nil {
		return nil, "", err
	}
	return val.(*producer), key, nil
}

// releaseProducer gives back one use of a shared producer; the last release
// flushes and closes it.
func releaseProducer(key string) error {
	_, err := producers.Delete(key)
	return err
}

var (
	errShuttingDown = &publishError{outcome: outcomeRetry, reason: "shutting down"}
	errNotSent      = errors.New("no acknowledgement within the timeout; the record was not sent")
)

// Values of record.sent.
const (
	recordUnsent    int32 = iota // never encoded into a request
	recordSent                   // encoded into a request: it may be written
	recordAbandoned              // taken back by its caller: never to be sent
)

// record is one Kafka record on its way to the broker, and the answer for
// the request that is waiting for it.
type record struct {
	key      []byte // nil: no key
	value    []byte
	headers  []kafka.Header
	want     int // the partition asked for, or -1 to let the partitioner choose
	time     time.Time
	deadline time.Time // after it, no new request carries the record
	// ackBy, if later than deadline, is how long a request carrying the
	// record waits for the broker's answer, to learn whether a record
	// answered "outcome unknown" landed after all.
	ackBy time.Time
	done  chan struct{}

	// failure is the waiter's answer once it stopped waiting: nil if
	// the record was acknowledged. Only the waiter touches it.
	failure *publishError

	// onDone, if set, is called (with the queue locked) when the record
	// is acknowledged or fails for good. A record with onDone has no
	// waiter: the producer itself gives up on it at its deadline.
	onDone func(*record)

	// sent is claimed by the encoder (recordUnsent to recordSent) or by
	// the caller giving up (recordUnsent to recordAbandoned), whichever
	// comes first.
	sent atomic.Int32

	// q is the partition the record was queued on; its mu guards the
	// fields below until done is closed.
	q *partitionQueue
	// abandoned: the caller stopped waiting; the record is not retried.
	abandoned bool
	// mayBeWritten: some request that carried it may have written it.
	mayBeWritten bool
	completed    bool
	attempts     int
	lastErr      error

	// Set before done is closed.
	partition int
	offset    int64
	valueLen  int
	err       *publishError
}

func newRecord(value []byte, now time.Time, timeout time.Duration) *record {
	return &record{
		value:    value,
		want:     -1,
		time:     now,
		deadline: now.Add(timeout),
		done:     make(chan struct{}),
	}
}

// progress is the partition of a queued record and the requests tried.
func (r *record) progress() (partition, attempts int) {
	r.q.mu.Lock()
	defer r.q.mu.Unlock()
	return r.partition, r.attempts
}

func (r *record) size() int {
	n := len(r.key) + len(r.value) + recordOverhead
	for _, h := range r.headers {
		n += len(h.Key) + len(h.Value) + 2
	}
	return n
}

// producer publishes records to Kafka; see the comment at the top of this
// file. It is safe for concurrent use.
type producer struct {
	cfg    producerConfig
	logger *zap.Logger
	// dialContext opens network connections; tests replace it.
	dialContext func(ctx context.Context, network, address string) (net.Conn, error)
	transport   *kafka.Transport
	client      *kafka.Client

	topics sync.Map // topic name -> *topicState

	mu       sync.Mutex
	closed   bool           // guarded by mu
	stopped  atomic.Bool    // closed, readable without the lock
	senders  sync.WaitGroup // partition senders
	watchers sync.WaitGroup // running reachability watches

	batches atomic.Int64 // produce requests sent
	records atomic.Int64 // records in them

	saslConns sync.Map // connections being opened, for trackedMechanism
	tls       *tls.Config

	lastRefresh    atomic.Int64 // UnixNano of the last forced metadata refresh
	lastRebuildLog atomic.Int64 // UnixNano of the last warning about it
	watching       atomic.Bool
	ctx            context.Context // cancelled when the producer is closed
	cancel         context.CancelFunc
}

func newProducer(cfg producerConfig, logger *zap.Logger) (*producer, error) {
	p, err := makeProducer(cfg, logger)
	if err != nil {
		return nil, err
	}
	p.start()
	return p, nil
}

// makeProducer builds a producer that start sets going.
func makeProducer(cfg producerConfig, logger *zap.Logger) (*producer, error) {
	var tlsConfig *tls.Config
	var mechanism sasl.Mechanism
	var err error
	if cfg.TLS != nil {
		if tlsConfig, err = cfg.TLS.config(); err != nil {
			return nil, err
		}
	}
	if cfg.SASL != nil {
		if mechanism, err = cfg.SASL.mechanism(); err != nil {
			return nil, err
		}
	}
	p := &producer{
		cfg:    cfg.withDefaults(),
		logger: logger,
		tls:    tlsConfig,
		dialContext: (&net.Dialer{
			Timeout:   dialTimeout,
			KeepAlive: 30 * time.Second,
		}).DialContext,
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.transport = &kafka.Transport{
		Dial:        p.dial,
		DialTimeout: dialTimeout,
		MetadataTTL: metadataTTL,
		ClientID:    p.cfg.ClientID,
		// TLS is done by dial, below the SASL tracking.
		// Ends the transport's background goroutines on Destruct.
		Context: p.ctx,
	}
	if mechanism != nil {
		p.transport.SASL = trackedMechanism{Mechanism: mechanism, conns: &p.saslConns}
	}
	var bootstrap net.Addr = kafka.TCP(cfg.Brokers...)
	if len(cfg.Brokers) > 1 {
		bootstrap = bootstrapAddr{} // the first that answers: bootstrap.go
	}
	p.client = &kafka.Client{
		Addr:      bootstrap,
		Transport: p.transport,
		// The broker-side timeout of a produce request is half of what
		// is left of the request's deadline (or of this, if smaller).
		Timeout: 10 * time.Minute,
	}
	return p, nil
}

// start looks for a reachable broker, and warns if none answers.
func (p *producer) start() {
	p.logger.Info("Kafka producer started",
		zap.Strings("brokers", p.cfg.Brokers),
		zap.String("client_id", p.cfg.ClientID),
		zap.String("acks", p.cfg.Acks.String()),
		zap.Bool("tls", p.cfg.TLS != nil),
		zap.Bool("sasl", p.cfg.SASL != nil))
	p.watch("no Kafka broker reachable at start; requests are answered 503 until one is")
}

// dial opens broker connections for the transport: to the bootstrap
// broker that answers first for bootstrapName (bootstrap.go), else to the
// address; TLS, if set, as kafka-go would do it (server name from the
// address unless given), then the SASL tracking above it, so that it sees
// a broker closing a TLS connection too.
func (p *producer) dial(ctx context.Context, network, address string) (net.Conn, error) {
	if address == bootstrapName {
		return p.dialBootstrap(ctx)
	}
	return p.dialBroker(ctx, network, address)
}

// dialBroker opens a connection to one broker, with TLS if set and the
// SASL tracking.
func (p *producer) dialBroker(ctx context.Context, network, address string) (net.Conn, error) {
	conn, err := p.dialTLS(ctx, network, address)
	if err != nil || p.cfg.SASL == nil {
		return conn, err
	}
	return trackSASL(&p.saslConns, ctx, conn), nil
}

// dialTLS opens a TCP connection to address, with TLS if set (its
// handshake happens on the first write).
func (p *producer) dialTLS(ctx context.Context, network, address string) (net.Conn, error) {
	conn, err := p.dialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	if p.tls != nil {
		cfg := p.tls
		if cfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(address)
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
		conn = tls.Client(conn, cfg)
	}
	return conn, nil
}

// Destruct stops taking records and closes the producer once every queued
// record is acknowledged or has failed (each within its own deadline). It
// implements caddy.Destructor for the producer pool, whose last user (a
// config's Cleanup, or the last request of an unloaded config) calls it:
// it returns at once, so that neither a reload nor that request's client
// waits for records already answered, and the flush goes on in the
// background. When the process exits, it flushes before returning.
func (p *producer) Destruct() error {
	p.stop()
	if caddy.Exiting() {
		p.finish()
		return nil
	}
	go p.finish()
	return nil
}

// close stops the producer and waits until it has flushed and closed.
func (p *producer) close() {
	p.stop()
	p.finish()
}

// stop makes the producer take no more records.
func (p *producer) stop() {
	p.mu.Lock()
	p.closed = true
	p.stopped.Store(true)
	p.mu.Unlock()
	p.topics.Range(func(_, v any) bool {
		ts := v.(*topicState)
		ts.mu.Lock()
		for _, q := range ts.queues {
			q.close()
		}
		ts.mu.Unlock()
		return true
	})
}

// finish waits until the stopped producer's senders have sent what they
// hold, and closes the connections.
func (p *producer) finish() {
	p.senders.Wait()
	p.cancel()
	p.watchers.Wait()
	p.transport.CloseIdleConnections()
	p.logger.Info("Kafka producer closed", zap.Strings("brokers", p.cfg.Brokers), zap.String("client_id", p.cfg.ClientID))
}

// watch makes sure that one goroutine keeps looking for a reachable broker
// until one answers; if none answers at once, it logs warning.
func (p *producer) watch(warning string) {
	if !p.watching.CompareAndSwap(false, true) {
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.watching.Store(false)
		return
	}
	p.watchers.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.watchers.Done()
		defer p.watching.Store(false)
		backoff := refreshInterval
		warned := false
		for {
			ctx, cancel := context.WithTimeout(p.ctx, dialTimeout)
			_, err := p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{}})
			cancel()
			if p.ctx.Err() != nil {
				return // closed
			}
			if err == nil {
				if warned {
					p.logger.Info("Kafka broker reachable", zap.Strings("brokers", p.cfg.Brokers))
				}
				p.expireTopics()
				return
			}
			if !warned {
				if refused := refusedConnection(err); refused != nil {
					p.logger.Error("the Kafka brokers refuse the connection: "+refused.reason+"; check the settings",
						zap.Strings("brokers", p.cfg.Brokers), zap.Error(err))
				} else if errors.Is(err, errSASLDropped) {
					p.logger.Error(msgSASLDropped, zap.Strings("brokers", p.cfg.Brokers), zap.Error(err))
				} else {
					p.logger.Warn(warning, zap.Strings("brokers", p.cfg.Brokers), zap.Error(err))
				}
				warned = true
			}
			t := time.NewTimer(backoff)
			select {
			case <-p.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(backoff*2, 2*time.Second)
			p.refreshMetadata(true, nil)
		}
	}()
}

// msgSASLDropped is logged when a broker closes connections during SASL
// authentication: it restarts, or it refuses the credentials without
// saying so.
const msgSASLDropped = "the Kafka broker closed the connection during SASL authentication; requests are answered 503 until it completes: if this persists, check the credentials"

// refreshMetadata makes the transport forget its cached cluster metadata,
// so that the next request reads it afresh. kafka.Transport refreshes on a
// timer only; dropping its connection pools is its one way to refresh at
// once. Calls are rate-limited unless force is set. A refresh caused by a
// broker's answer (cause) is logged as a warning, at most every
// rebuildLogInterval.
func (p *producer) refreshMetadata(force bool, cause error) {
	now := time.Now().UnixNano()
	last := p.lastRefresh.Load()
	if !force && now-last < int64(refreshInterval) {
		return
	}
	if !p.lastRefresh.CompareAndSwap(last, now) {
		return
	}
	p.transport.CloseIdleConnections()
	p.expireTopics()
	if cause != nil {
		lastLog := p.lastRebuildLog.Load()
		if now-lastLog >= int64(rebuildLogInterval) && p.lastRebuildLog.CompareAndSwap(lastLog, now) {
			p.logger.Warn("Kafka cluster layout changed: reconnecting with fresh metadata",
				zap.Strings("brokers", p.cfg.Brokers), zap.Error(cause))
		}
	}
}

func (p *producer) expireTopics() {
	p.topics.Range(func(_, v any) bool {
		v.(*topicState).expire()
		return true
	})
}

// send publishes rec to topic and waits until it is acknowledged or has
// failed, its deadline passes or ctx is done (the client left).
func (p *producer) send(ctx context.Context, topic string, rec *record) *publishError {
	recs := []*record{rec}
	set, perr := p.partitionsOf(ctx, topic, recs)
	if perr != nil {
		return perr
	}
	p.sendAll(ctx, set, recs)
	return rec.failure
}

// partitionsOf returns the partitions of topic for recs, which share a
// deadline. It fails when they cannot be known: the topic does not exist,
// no broker answers, or the producer is closed. A topic unknown, or a
// partition asked for beyond those known, may be new: the metadata is
// then read afresh (at most every refreshInterval per topic) before the
// answer.
func (p *producer) partitionsOf(ctx context.Context, topic string, recs []*record) (*partitionSet, *publishError) {
	if p == nil || p.stopped.Load() {
		return nil, errShuttingDown
	}
	ts := p.topic(topic)
	deadline := recs[0].deadline
	set, perr := ts.partitions(ctx, p, deadline)
	if set.unknownTopic || perr == nil && maxWant(recs) >= set.count() {
		set, perr = ts.recheck(ctx, p, set, deadline)
	}
	return set, perr
}

// recheck reads the topic's metadata afresh, on new connections, after a
// miss in seen: kafka-go's transport answers metadata requests from a
// cache it refreshes every 6 s, which a topic or partition created since
// is missing from. One caller reads; the others, which saw the same miss
// (a burst of first requests for a new topic), wait for its answer rather
// than answer 500 from the cache it replaces.
func (ts *topicState) recheck(ctx context.Context, p *producer, seen *partitionSet, deadline time.Time) (*partitionSet, *publishError) {
	ts.recheckMu.Lock()
	if cur := ts.current.Load(); cur != seen {
		ts.recheckMu.Unlock()
		return cur, cur.err // read afresh meanwhile
	}
	if flight := ts.rechecking; flight != nil {
		// Another caller reads: wait for it, within this one's own
		// deadline and while its client is there.
		ts.recheckMu.Unlock()
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		select {
		case <-flight:
		case <-ctx.Done():
		case <-timer.C:
		}
		if cur := ts.current.Load(); cur != seen {
			return cur, cur.err
		}
		// Still the miss seen, unconfirmed: nothing was sent.
		return seen, &publishError{outcome: outcomeRetry, reason: reasonNotSent, err: errNotSent}
	}
	if !ts.mayRefresh() {
		ts.recheckMu.Unlock()
		return seen, seen.err
	}
	flight := make(chan struct{})
	ts.rechecking = flight
	ts.recheckMu.Unlock()
	defer func() {
		ts.recheckMu.Lock()
		ts.rechecking = nil
		ts.recheckMu.Unlock()
		close(flight)
	}()
	p.refreshMetadata(true, nil)
	// Read now, past the gate of partitions: a request that took it
	// meanwhile may have read from the transport's old cache.
	return ts.read(ctx, p, deadline, ts.current.Load())
}

// maxWant is the highest partition asked for by recs, -1 if none asks.
func maxWant(recs []*record) int {
	n := -1
	for _, rec := range recs {
		n = max(n, rec.want)
	}
	return n
}

// sendAll queues the records on their partitions of set and waits until
// each is acknowledged or has failed, their deadline passes or ctx is done
// (the client left); then each record's failure says how it ended. The
// records share one deadline, and a record's want must be a partition of
// set.
func (p *producer) sendAll(ctx context.Context, set *partitionSet, recs []*record) {
	for _, rec := range recs {
		rec.failure = set.queueFor(rec).push(rec)
	}
	timer := time.NewTimer(time.Until(recs[0].deadline))
	defer timer.Stop()
	waiting := true
	for _, rec := range recs {
		if rec.failure != nil {
			continue // not queued
		}
		if waiting {
			select {
			case <-rec.done:
			case <-timer.C:
				waiting = false
			case <-ctx.Done():
				waiting = false
			}
		}
		rec.failure = p.abandon(rec)
	}
}

// abandon is called when the caller stops waiting for rec: it completed,
// its deadline passed or its client left. It returns why rec was not
// acknowledged, or nil if it was. A record that no request carried yet is
// taken back, so that none will.
func (p *producer) abandon(rec *record) *publishError {
	q := rec.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if rec.completed {
		return rec.err
	}
	rec.abandoned = true
	if rec.sent.CompareAndSwap(recordUnsent, recordAbandoned) {
		// No request carries it, and none will: settled as not
		// written now, so that an idempotent repeat produces it.
		q.complete(rec, notWritten(rec))
		return rec.err
	}
	// A request carries it: the sender settles it once that request is
	// answered (or given up), and a repeat learns the outcome then.
	return &publishError{outcome: outcomeUnknown, reason: reasonUnknown, err: rec.lastErr}
}

// notWritten is why a record that no request wrote, and none will, failed:
// the last error met while it waited, if that is one that leaves records
// unwritten. An error that left the outcome of the request it waited
// behind unknown (a timeout) says nothing true of this record, which that
// request did not carry.
func notWritten(rec *record) *publishError {
	if rec.lastErr != nil {
		if perr := classify(rec.lastErr); perr.outcome == outcomeRetry {
			return perr
		}
	}
	return &publishError{outcome: outcomeRetry, reason: reasonNotSent, err: cmp.Or(rec.lastErr, errNotSent)}
}

const reasonNotSent = "no acknowledgement from Kafka within the timeout; the record was not sent"

const reasonUnknown = "no acknowledgement from Kafka within the timeout; the record may or may not have been written"

func (p *producer) topic(name string) *topicState {
	if v, ok := p.topics.Load(name); ok {
		return v.(*topicState)
	}
	v, _ := p.topics.LoadOrStore(name, &topicState{name: name})
	return v.(*topicState)
}

// topicState caches what the producer knows of one topic.
type topicState struct {
	name        string
	current     atomic.Pointer[partitionSet]
	refreshing  atomic.Bool
	lastRefresh atomic.Int64  // UnixNano of the last refresh for a miss
	recheckMu   sync.Mutex    // guards rechecking
	rechecking  chan struct{} // closed when the refresh for a miss ends
	mu          sync.Mutex    // guards queues
	queues      []*partitionQueue
}

// mayRefresh reports whether a miss on the topic may make the producer
// read the metadata afresh now; at most every refreshInterval, so that
// requests for a topic that does not exist cost the brokers little.
func (ts *topicState) mayRefresh() bool {
	now := time.Now().UnixNano()
	last := ts.lastRefresh.Load()
	return now-last >= int64(refreshInterval) && ts.lastRefresh.CompareAndSwap(last, now)
}

// partitionSet is a topic's partitions as of one metadata read, or the
// error that read gave.
type partitionSet struct {
	queues    []*partitionQueue // by partition ID
	ids       []int             // 0 .. len(queues)-1, for the key partitioner
	available []*partitionQueue // those with a leader
	err       *publishError
	// unknownTopic: the brokers do not know the topic.
	unknownTopic bool
	expires      atomic.Int64 // UnixNano
	rr           atomic.Uint32
}

// count is the number of partitions.
func (s *partitionSet) count() int { return len(s.queues) }

// queueFor returns the partition rec goes to: the one it asks for; for a
// keyed record the one Kafka's Java client would choose (murmur2 of the
// key over all partitions); otherwise the next in round robin.
func (s *partitionSet) queueFor(rec *record) *partitionQueue {
	switch {
	case rec.want >= 0:
		return s.queues[rec.want]
	case rec.key != nil:
		return s.queues[keyPartitioner.Balance(kafka.Message{Key: rec.key}, s.ids...)]
	}
	return s.pick()
}

// keyPartitioner places keyed records as Kafka's Java client does.
var keyPartitioner = kafka.Murmur2Balancer{Consistent: true}

// pick returns the partition for a record without a key: round robin over
// the partitions that have a leader.
func (s *partitionSet) pick() *partitionQueue {
	list := s.available
	if len(list) == 0 {
		list = s.queues
	}
	return list[(s.rr.Add(1)-1)%uint32(len(list))]
}

func (ts *topicState) expire() {
	if cur := ts.current.Load(); cur != nil {
		cur.expires.Store(0)
	}
}

// partitions returns the topic's partitions, reading metadata when the
// cached list is missing or old. One caller reads; meanwhile the others go
// on with what was known.
func (ts *topicState) partitions(ctx context.Context, p *producer, deadline time.Time) (*partitionSet, *publishError) {
	cur := ts.current.Load()
	if cur != nil && (time.Now().UnixNano() < cur.expires.Load() || !ts.refreshing.CompareAndSwap(false, true)) {
		return cur, cur.err
	}
	if cur != nil {
		defer ts.refreshing.Store(false)
	}
	return ts.read(ctx, p, deadline, cur)
}

// read reads the topic's metadata and makes it the current partition set,
// unless another read replaced cur meanwhile: then that one is returned.
func (ts *topicState) read(ctx context.Context, p *producer, deadline time.Time, cur *partitionSet) (*partitionSet, *publishError) {
	// The caller's deadline, but not its cancellation: a client that left
	// must not make the answer an error for everyone else.
	ctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	meta, err := p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{ts.name}})
	cancel()

	set := &partitionSet{}
	ttl := topicMetadataTTL
	switch {
	case err != nil:
		p.watch("no Kafka broker reachable; requests are answered 503 until one is")
		set.err = connectError(err)
		ttl = refreshInterval
	case len(meta.Topics) != 1:
		set.err = &publishError{outcome: outcomeRetry, reason: "no metadata for the topic", err: fmt.Errorf("metadata answer lists %d topics", len(meta.Topics))}
		ttl = refreshInterval
	case meta.Topics[0].Error == nil && len(meta.Topics[0].Partitions) == 0,
		errors.Is(meta.Topics[0].Error, kafka.UnknownTopicOrPartition):
		// Kafka also answers so for a topic the principal may not
		// Describe (to kafka-go's metadata request): say both.
		set.err = &publishError{outcome: outcomeRejected, reason: "unknown topic", err: fmt.Errorf("topic %q does not exist, or the Kafka principal may not describe it", ts.name)}
		set.unknownTopic = true
	case meta.Topics[0].Error != nil:
		set.err = classify(meta.Topics[0].Error)
		ttl = refreshInterval
	default:
		ts.fill(set, meta.Topics[0].Partitions, p)
	}
	if cur != nil {
		set.rr.Store(cur.rr.Load())
	}
	set.expires.Store(time.Now().Add(ttl).UnixNano())
	if !ts.current.CompareAndSwap(cur, set) {
		// Another caller read the metadata meanwhile: use its list,
		// whose round robin is already under way.
		set = ts.current.Load()
	}
	return set, set.err
}

// fill gives set a queue for every partition, keeping the queues that exist.
func (ts *topicState) fill(set *partitionSet, parts []kafka.Partition, p *producer) {
	n := 0
	for _, part := range parts {
		n = max(n, part.ID+1)
	}
	ts.mu.Lock()
	for len(ts.queues) < n {
		ts.queues = append(ts.queues, p.newQueue(ts.name, len(ts.queues)))
	}
	set.queues = ts.queues[:n:n]
	ts.mu.Unlock()
	set.ids = make([]int, n)
	for i := range set.ids {
		set.ids[i] = i
	}
	for _, part := range parts {
		if part.Error == nil && part.Leader.Host != "" {
			set.available = append(set.available, set.queues[part.ID])
		}
	}
}

// newQueue returns the queue of a partition with its sender running, or
// closed if the producer is.
func (p *producer) newQueue(topic string, id int) *partitionQueue {
	q := &partitionQueue{p: p, topic: topic, id: id, wake: make(chan struct{}, p.cfg.MaxInFlight)}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		q.closed = true
		return q
	}
	for range p.cfg.MaxInFlight {
		p.senders.Add(1)
		go q.run()
	}
	return q
}

// partitionQueue holds the records waiting for one partition. It has one
// sender per request it may have in flight (max_in_flight).
type partitionQueue struct {
	p     *producer
	topic string
	id    int

	wake chan struct{} // senders sleep on it while idle

	mu       sync.Mutex
	queue    []*record
	inFlight int // records taken by senders, not yet done
	idle     int // senders asleep, to be woken
	closed   bool
}

// push queues rec; rec.q is set only once it is queued, so that a record
// refused here is known to have never been queued (an idempotent repeat
// produces it).
func (q *partitionQueue) push(rec *record) *publishError {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return errShuttingDown
	}
	rec.q = q
	rec.partition = q.id
	q.queue = append(q.queue, rec)
	if q.idle > 0 {
		q.idle--
		q.wake <- struct{}{}
	}
	q.mu.Unlock()
	return nil
}

// run is one of the partition's senders: it sends batches while records
// wait, and sleeps while none do. It ends once the queue is closed and
// empty. With linger set, a sender whose previous request carried more
// than one record (so requests arrive concurrently) waits until linger
// after that request started, to send a larger batch; a lone record is
// always sent at once.
func (q *partitionQueue) run() {
	defer q.p.senders.Done()
	linger := q.p.cfg.Linger
	var batch []*record
	var prevStart time.Time
	prevLen := 0
	for {
		if linger > 0 && prevLen > 1 {
			if wait := time.Until(prevStart.Add(linger)); wait > 0 {
				time.Sleep(wait)
			}
		}
		q.mu.Lock()
		batch = q.take(batch[:0])
		if len(batch) == 0 {
			if q.closed {
				q.mu.Unlock()
				return
			}
			q.idle++
			q.mu.Unlock()
			<-q.wake
			prevLen = 0
			continue
		}
		q.inFlight += len(batch)
		q.mu.Unlock()
		prevStart, prevLen = time.Now(), len(batch)
		q.deliver(batch)
		q.mu.Lock()
		q.inFlight -= prevLen
		q.mu.Unlock()
		clear(batch)
	}
}

// close stops the queue from taking records; its sender ends once it has
// sent those it holds.
func (q *partitionQueue) close() {
	q.mu.Lock()
	q.closed = true
	for ; q.idle > 0; q.idle-- {
		q.wake <- struct{}{}
	}
	q.mu.Unlock()
}

// take moves the next batch out of the queue. Records already completed
// (their caller took them back) are dropped: they were never sent and
// never will be.
func (q *partitionQueue) take(batch []*record) []*record {
	maxRecords, maxBytes := q.p.cfg.MaxBatchRecords, q.p.cfg.MaxBatchBytes
	bytes, n := 0, 0
	for ; n < len(q.queue); n++ {
		rec := q.queue[n]
		if rec.completed {
			continue
		}
		if len(batch) == maxRecords || (len(batch) > 0 && bytes+rec.size() > maxBytes) {
			break
		}
		bytes += rec.size()
		batch = append(batch, rec)
	}
	rest := copy(q.queue, q.queue[n:])
	clear(q.queue[rest:])
	q.queue = q.queue[:rest]
	return batch
}

// deliver sends batch until each record is acknowledged, fails for good, or
// is no longer waited for.
func (q *partitionQueue) deliver(batch []*record) {
	p := q.p
	backoff := retryBackoffMin
	for {
		// begin drops, in place, the records no longer waited for:
		// every attempt must go on with what it returned.
		var a *attempt
		batch, a = q.begin(batch)
		if len(batch) == 0 {
			return
		}
		ans, err, detached := q.send(batch, a)
		if detached {
			// The broker holds the request past a timeout: it may be
			// gone. The partition goes on with fresh metadata (and
			// connections) while the request waits for its answer.
			p.refreshMetadata(false, errHeld)
			return
		}
		carried := a.records.carried()
		if err == nil {
			if len(carried) == 0 {
				continue // every record was taken back while encoding: nothing was sent
			}
			p.batches.Add(1)
			p.records.Add(int64(len(carried)))
			metricBatch.Observe(float64(len(carried)))
			q.finish(carried, ans.base, nil)
			return
		}

		if rest, ok := q.refuseNamed(batch, carried, ans, err); ok {
			// The broker named the records at fault and appended
			// nothing: the others go again at once, without them.
			batch = rest
			continue
		}
		perr := classify(err)
		if recordAtFault(err) && len(batch) > 1 {
			// The broker refused the batch for a record it did not
			// name (too large, corrupt, invalid): halve the batch
			// until each part goes through or one record alone is
			// refused, so that only it gets the permanent answer.
			q.failed(batch, carried, err)
			half := len(batch) / 2
			q.deliver(batch[:half])
			q.deliver(batch[half:])
			return
		}
		q.failed(batch, carried, err)
		if perr.outcome == outcomeTooLarge || perr.outcome == outcomeRejected {
			q.finish(batch, 0, perr)
			return
		}
		// Retriable, or the answer was lost: try again while some
		// record's caller still waits, after fresh metadata if the
		// cluster may have changed (a record that may have been
		// written is sent at most once more, to the current leader).
		if needsMetadata(err) {
			p.refreshMetadata(false, err)
		}
		if wait := min(backoff, time.Until(a.until)); wait > 0 {
			time.Sleep(wait)
		}
		backoff = min(backoff*2, retryBackoffMax)
	}
}

// errHeld is the cause logged for a refresh after a produce request the
// broker did not answer within a request timeout.
var errHeld = errors.New("a produce request was not answered within the timeout")

// attempt is one produce request of a batch.
type attempt struct {
	records *attemptRecords
	// until is how long the request may wait for the broker's answer:
	// the latest deadline, or ackBy, of its records.
	until time.Time
	// bound is how long the partition's sender waits for it: one
	// request timeout after the attempt began, or until if sooner. A
	// request the broker holds longer (a broker that died without
	// closing the connection, a black hole) must not hold up the
	// records behind it.
	bound time.Time
}

// send makes the attempt's produce request and returns the broker's
// answer. When the request may wait past its bound (records that wait
// for a late answer, ackBy), it runs in a goroutine: if the bound passes
// first, that goroutine settles the records once the answer comes, and
// send reports detached.
func (q *partitionQueue) send(batch []*record, a *attempt) (ans *produceAnswer, err error, detached bool) {
	if !a.until.After(a.bound) {
		ctx, cancel := context.WithDeadline(context.Background(), a.until)
		defer cancel()
		ans, err = q.produce(ctx, a)
		return ans, err, false
	}
	type result struct {
		ans *produceAnswer
		err error
	}
	done := make(chan result, 1)
	p := q.p
	p.senders.Add(1) // Destruct waits for the request, as for a sender
	go func() {
		defer p.senders.Done()
		ctx, cancel := context.WithDeadline(context.Background(), a.until)
		ans, err := q.produce(ctx, a)
		cancel()
		done <- result{ans, err}
	}()
	timer := time.NewTimer(time.Until(a.bound))
	defer timer.Stop()
	select {
	case r := <-done:
		return r.ans, r.err, false
	case <-timer.C:
	}
	batch = slices.Clone(batch) // the sender reuses its slice
	p.senders.Add(1)
	go func() {
		defer p.senders.Done()
		r := <-done
		q.settleLate(batch, a, r.ans, r.err)
	}()
	return nil, nil, true
}

// settleLate completes the records of a request answered after its
// sender went on: acknowledged, or failed as the answer says. None is
// sent again: their deadlines have passed.
func (q *partitionQueue) settleLate(batch []*record, a *attempt, ans *produceAnswer, err error) {
	carried := a.records.carried()
	if err == nil && len(carried) > 0 {
		q.finish(carried, ans.base, nil)
	} else if err != nil {
		q.failed(batch, carried, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, rec := range batch {
		if !rec.completed {
			q.complete(rec, giveUp(rec))
		}
	}
}

// produceAnswer is the broker's answer for the partition of a request.
type produceAnswer struct {
	base int64 // offset of the first record; -1 if the broker does not say
	// recordErrors are the broker's messages for the records it
	// refused, by their position in the request.
	recordErrors map[int]string
}

// errAnswerWithoutPartition is a produce answer that does not mention the
// partition the request was for: the request reached the broker, which may
// have appended the records.
var errAnswerWithoutPartition = errors.New("the Kafka broker's answer does not mention the partition")

// produce sends the attempt's records in one produce request. It is
// kafka.Client.Produce but for two things: the broker-side timeout is the
// request's whole remaining time (Client.Produce gives half, so that a slow
// acks=all append times out, is retried and may be appended again), and
// an answer without the partition is told apart from a request that was
// never routed (Client.Produce reports both as protocol.ErrNoTopic or
// ErrNoPartition).
func (q *partitionQueue) produce(ctx context.Context, a *attempt) (*produceAnswer, error) {
	p := q.p
	req := &produceAPI.Request{
		Acks:    int16(p.cfg.Acks),
		Timeout: brokerTimeout(a.until),
		Topics: []produceAPI.RequestTopic{{
			Topic: q.topic,
			Partitions: []produceAPI.RequestPartition{{
				Partition: int32(q.id),
				RecordSet: protocol.RecordSet{
					Attributes: protocol.Attributes(p.cfg.Compression) & 0x7,
					Records:    a.records,
				},
			}},
		}},
	}
	msg, err := p.transport.RoundTrip(ctx, p.client.Addr, req)
	switch {
	case errors.Is(err, protocol.ErrNoRecord):
		return &produceAnswer{base: -1}, nil // nothing was encoded, nothing sent
	case err != nil:
		return nil, err
	case p.cfg.Acks == kafka.RequireNone:
		return &produceAnswer{base: -1}, nil
	}
	res, _ := msg.(*produceAPI.Response)
	if res == nil || len(res.Topics) == 0 || len(res.Topics[0].Partitions) == 0 {
		return nil, errAnswerWithoutPartition
	}
	part := &res.Topics[0].Partitions[0]
	ans := &produceAnswer{base: part.BaseOffset}
	if part.ErrorCode == 0 {
		return ans, nil
	}
	for _, re := range part.RecordErrors {
		if ans.recordErrors == nil {
			ans.recordErrors = make(map[int]string, len(part.RecordErrors))
		}
		ans.recordErrors[int(re.BatchIndex)] = re.BatchIndexErrorMessage
	}
	err = kafka.Error(part.ErrorCode)
	if part.ErrorMessage != "" {
		err = fmt.Errorf("%w: %s", err, part.ErrorMessage)
	}
	return ans, err
}

// brokerTimeout is the time a broker may take over a produce request
// (waiting for the in-sync replicas with acks=all), in milliseconds: what
// is left until the request's deadline, less a margin for the answer to
// travel back before the deadline.
func brokerTimeout(until time.Time) int32 {
	left := time.Until(until)
	left -= min(left/10, 100*time.Millisecond)
	return int32(max(left.Milliseconds(), 1))
}

// refuseNamed handles an INVALID_RECORD answer that names the records at
// fault (Kafka 2.4 and later, KIP-467): they fail for good, with the
// broker's message, and the rest of batch, which the broker did not
// append either, is returned to be sent again. ok is false for any other
// answer.
func (q *partitionQueue) refuseNamed(batch, carried []*record, ans *produceAnswer, err error) (rest []*record, ok bool) {
	if ans == nil || len(ans.recordErrors) == 0 || !errors.Is(err, kafka.InvalidRecord) {
		return nil, false
	}
	bad := make(map[*record]string, len(ans.recordErrors))
	for i, msg := range ans.recordErrors {
		if i >= 0 && i < len(carried) {
			bad[carried[i]] = "Kafka broker refused the record: " + cmp.Or(msg, kafka.InvalidRecord.Title())
		}
	}
	if len(bad) == 0 {
		return nil, false
	}
	q.failed(batch, carried, err)
	q.mu.Lock()
	defer q.mu.Unlock()
	rest = batch[:0]
	for _, rec := range batch {
		reason, ok := bad[rec]
		if !ok {
			rest = append(rest, rec)
			continue
		}
		perr := &publishError{outcome: outcomeRejected, reason: reason, err: err}
		if rec.mayBeWritten { // by an earlier attempt
			perr = &publishError{outcome: outcomeUnknown, reason: reason + "; an earlier attempt may have written the record", err: err}
		}
		q.complete(rec, perr)
	}
	return rest, true
}

// attemptRecords feeds one request's records to kafka-go's encoder. It
// claims each record as it encodes it and skips those whose caller gave up
// first, so that a record is either in the request or abandoned, never
// both. Each request has its own readers: an encoder of a request that
// timed out may still be running when the next request starts.
type attemptRecords struct {
	batch  []*record
	snaps  []recordSnap
	values []recordBytes
	cur    kafka.Record
	next   int

	// The encoder of a request whose context expired may still run
	// when its sender looks at what it carried.
	mu   sync.Mutex
	sent []*record // the records encoded, in order: those the request carried
}

// carried returns the records encoded so far.
func (r *attemptRecords) carried() []*record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clip(r.sent)
}

// recordBytes is a record value as kafka-go reads it (kafka.Bytes). It
// keeps bytes.Reader's WriteTo, so that the encoder copies without a
// buffer of its own.
type recordBytes struct{ bytes.Reader }

func (*recordBytes) Close() error { return nil }

// recordSnap is what the encoder reads of a record. It is taken with the
// queue locked before the request starts: the record may be completed
// (which lets go of its bytes) while an encoder still runs, by its caller
// taking it back or after the request timed out.
type recordSnap struct {
	key, value []byte
	headers    []kafka.Header
}

// newAttemptRecords snapshots batch for one request; the queue is locked.
func newAttemptRecords(batch []*record) *attemptRecords {
	snaps := make([]recordSnap, len(batch))
	for i, rec := range batch {
		snaps[i] = recordSnap{rec.key, rec.value, rec.headers}
	}
	return &attemptRecords{
		batch:  slices.Clone(batch),
		snaps:  snaps,
		values: make([]recordBytes, len(batch)),
		sent:   make([]*record, 0, len(batch)),
	}
}

// ReadRecord implements kafka.RecordReader.
func (r *attemptRecords) ReadRecord() (*kafka.Record, error) {
	for r.next < len(r.batch) {
		i := r.next
		r.next++
		rec := r.batch[i]
		if !rec.sent.CompareAndSwap(recordUnsent, recordSent) && rec.sent.Load() != recordSent {
			continue // abandoned
		}
		r.mu.Lock()
		r.sent = append(r.sent, rec)
		r.mu.Unlock()
		snap := &r.snaps[i]
		r.values[i].Reset(snap.value)
		r.cur = kafka.Record{Time: rec.time, Value: &r.values[i], Headers: snap.headers}
		if snap.key != nil {
			r.cur.Key = kafka.NewBytes(snap.key)
		}
		return &r.cur, nil
	}
	return nil, io.EOF
}

// begin keeps the records of batch whose caller still waits and whose
// deadline has not passed, completing the others, and returns them with
// the attempt that sends them.
func (q *partitionQueue) begin(batch []*record) ([]*record, *attempt) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := time.Now()
	a := &attempt{}
	var timeout time.Duration
	live := batch[:0]
	for _, rec := range batch {
		if rec.completed {
			continue
		}
		if rec.abandoned || !now.Before(rec.deadline) {
			// No request carries it again: its outcome is final,
			// and it is completed here, so that an idempotent
			// repeat waiting for it learns so at once. A record a
			// broker answer proved not written (its state is back
			// to unsent) completes as not written: a repeat
			// produces it.
			q.complete(rec, giveUp(rec))
			continue
		}
		rec.attempts++
		a.until = later(a.until, later(rec.deadline, rec.ackBy))
		timeout = max(timeout, rec.deadline.Sub(rec.time))
		live = append(live, rec)
	}
	if len(live) > 0 {
		a.records = newAttemptRecords(live)
		a.bound = a.until
		if b := now.Add(timeout); b.Before(a.bound) {
			a.bound = b
		}
	}
	return live, a
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// failed records a failed request on the records of batch. Those it
// carried stay "may be written" unless the broker's answer proves that it
// appended nothing and no earlier request may have written them; then
// they are unsent again. A record that may have been written already,
// and that this request may have appended again while the same leader
// kept the partition (a timeout, a lost answer), is completed as "outcome
// unknown": each such retry could store one more copy, and the client's
// Idempotency-Key, not more copies, must decide the rest. NOT_LEADER
// (with acks=all) does not end it: the broker appended only if it lost
// the partition meanwhile, so such copies are bounded by the leader
// changes, and a partition whose leader moves is retried to the new one.
func (q *partitionQueue) failed(batch, carried []*record, err error) {
	written := mayBeWritten(err, q.p.cfg.Acks)
	again := written && !errors.Is(err, kafka.NotLeaderForPartition)
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, rec := range batch {
		rec.lastErr = err
	}
	for _, rec := range carried {
		switch {
		case rec.completed:
		case again && rec.mayBeWritten:
			q.complete(rec, &publishError{outcome: outcomeUnknown, reason: reasonUnknownTwice, err: err})
		case written:
			rec.mayBeWritten = true
		case !rec.mayBeWritten:
			rec.sent.Store(recordUnsent)
		}
	}
}

const reasonUnknownTwice = "Kafka failed twice after it may have written the record; the record may or may not have been written"

// finish completes the records: with offsets base, base+1, ... if err is
// nil (-1 when the broker does not say); otherwise with err, which becomes
// "outcome unknown" for a record some request may have written.
func (q *partitionQueue) finish(recs []*record, base int64, err *publishError) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, rec := range recs {
		if rec.completed {
			continue
		}
		rec.offset = -1
		recErr := err
		switch {
		case err == nil && base >= 0:
			rec.offset = base + int64(i)
		case err != nil && rec.mayBeWritten:
			recErr = &publishError{outcome: outcomeUnknown, reason: err.reason + "; an earlier attempt may have written the record", err: err.err}
		}
		q.complete(rec, recErr)
	}
}

// complete ends rec's life with err (nil: acknowledged). q.mu is held. A
// record is completed once: by its caller taking it back before any
// request carried it, or by its sender.
func (q *partitionQueue) complete(rec *record, err *publishError) {
	if rec.completed {
		return
	}
	rec.completed = true
	rec.err = err
	// The bytes are sent or never will be: let them go.
	rec.valueLen = len(rec.value)
	rec.key, rec.value, rec.headers = nil, nil, nil
	close(rec.done)
	if rec.onDone != nil {
		rec.onDone(rec)
	}
}

// giveUp is why a record failed that no request will carry again. A
// record no request carried is claimed first, so that the encoder of a
// request that timed out cannot carry it after all.
func giveUp(rec *record) *publishError {
	if !rec.mayBeWritten && (rec.sent.CompareAndSwap(recordUnsent, recordAbandoned) || rec.sent.Load() == recordAbandoned) {
		return notWritten(rec)
	}
	return &publishError{outcome: outcomeUnknown, reason: reasonUnknown, err: rec.lastErr}
}
