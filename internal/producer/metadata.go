package producer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// What the producer knows of the cluster comes from kafka-go's transport,
// which answers metadata requests from a cache it refreshes on a timer
// (metadataTTL) and routes each produce request to the leader that cache
// names. A topic's partitions and their leaders are read from it at most
// every topicMetadataTTL, and afresh (the cache dropped) when an answer
// says the layout changed or a topic or partition is missing.

const (
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
)

// topicState is what the producer knows of one topic.
type topicState struct {
	p           *Producer
	name        string
	current     atomic.Pointer[topicLayout]
	refreshing  atomic.Bool
	lastRefresh atomic.Int64  // UnixNano of the last refresh for a miss
	recheckMu   sync.Mutex    // guards rechecking
	rechecking  chan struct{} // closed when the refresh for a miss ends
	mu          sync.Mutex    // guards parts
	parts       []*partition
	// sticky is the partition that records without a key or partition go
	// to until its batch is taken (KIP-480); -1 if none yet.
	sticky atomic.Int32
}

// topicLayout is a topic's partitions as of one metadata read, or the
// error that read gave.
type topicLayout struct {
	ts    *topicState
	parts []*partition // by partition ID
	ids   []int        // 0 .. len(parts)-1, for the key partitioner
	// led are the partitions with a leader.
	led []*partition
	err *Error
	// unknownTopic: the brokers do not know the topic.
	unknownTopic bool
	expires      atomic.Int64 // UnixNano
}

func (p *Producer) topic(name string) *topicState {
	if v, ok := p.topics.Load(name); ok {
		return v.(*topicState)
	}
	ts := &topicState{p: p, name: name}
	ts.sticky.Store(-1)
	v, _ := p.topics.LoadOrStore(name, ts)
	return v.(*topicState)
}

// lookup is the verbs' first step: the partitions of the records' topic,
// which they share, as topicFor finds them. If the topic cannot be had,
// its error becomes every record's outcome; a record that asks for a
// partition the topic does not have fails the call with a PartitionError.
// Either way nothing is queued, and the layout is nil (also for a call of
// no records, with no error).
func (p *Producer) lookup(ctx context.Context, recs []*Record) (*topicLayout, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	name := recs[0].Topic
	if name == "" {
		return nil, errNoTopic
	}
	for i, rec := range recs {
		if rec.Topic != name {
			return nil, fmt.Errorf("record %d is for topic %q, record 0 for %q: one call takes records of one topic", i, rec.Topic, name)
		}
	}
	t, perr := p.topicFor(ctx, name, recs)
	if perr != nil {
		for _, rec := range recs {
			rec.err = perr
		}
		return nil, perr
	}
	for i, rec := range recs {
		if rec.Partition >= len(t.parts) {
			return nil, &PartitionError{Index: i, Partition: rec.Partition, Partitions: len(t.parts)}
		}
	}
	return t, nil
}

var errNoTopic = errors.New("a record has no topic")

// topicFor returns the partitions of topic for recs, which share a
// deadline: the earlier of theirs and ctx's bounds the wait. It fails when
// they cannot be known: the topic does not exist, no broker answers, or
// the producer is closed. A topic unknown, or a partition asked for beyond
// those known, may be new: the metadata is then read afresh (at most every
// refreshInterval per topic) before the answer.
func (p *Producer) topicFor(ctx context.Context, topic string, recs []*Record) (*topicLayout, *Error) {
	if p == nil || p.isStopped() {
		return nil, errShuttingDown
	}
	ts := p.topic(topic)
	deadline := recs[0].Deadline
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	set, perr := ts.partitions(ctx, deadline)
	if set.unknownTopic || perr == nil && maxWant(recs) >= len(set.parts) {
		set, perr = ts.recheck(ctx, set, deadline)
	}
	return set, perr
}

// maxWant is the highest partition asked for by recs, -1 if none asks.
func maxWant(recs []*Record) int {
	n := -1
	for _, rec := range recs {
		n = max(n, rec.Partition)
	}
	return n
}

// recheck reads the topic's metadata afresh, on new connections, after a
// miss in seen: a topic or partition created since the transport's cache
// was filled is missing from it. One caller reads; the others, which saw
// the same miss (a burst of first requests for a new topic), wait for its
// answer rather than answer 500 from the cache it replaces.
func (ts *topicState) recheck(ctx context.Context, seen *topicLayout, deadline time.Time) (*topicLayout, *Error) {
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
		return seen, &Error{Outcome: OutcomeRetry, Reason: reasonNotSent, Err: errNotSent}
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
	ts.p.refreshMetadata(true, nil)
	// Read now, past the gate of partitions: a request that took it
	// meanwhile may have read from the transport's old cache.
	return ts.read(ctx, deadline, ts.current.Load())
}

// mayRefresh reports whether a miss on the topic may make the producer
// read the metadata afresh now; at most every refreshInterval, so that
// requests for a topic that does not exist cost the brokers little.
func (ts *topicState) mayRefresh() bool {
	now := time.Now().UnixNano()
	last := ts.lastRefresh.Load()
	return now-last >= int64(refreshInterval) && ts.lastRefresh.CompareAndSwap(last, now)
}

func (ts *topicState) expire() {
	if cur := ts.current.Load(); cur != nil {
		cur.expires.Store(0)
	}
}

// partitions returns the topic's partitions, reading metadata when the
// cached list is missing or old. One caller reads; meanwhile the others go
// on with what was known.
func (ts *topicState) partitions(ctx context.Context, deadline time.Time) (*topicLayout, *Error) {
	cur := ts.current.Load()
	if cur != nil && (time.Now().UnixNano() < cur.expires.Load() || !ts.refreshing.CompareAndSwap(false, true)) {
		return cur, cur.err
	}
	if cur != nil {
		defer ts.refreshing.Store(false)
	}
	return ts.read(ctx, deadline, cur)
}

// read reads the topic's metadata and makes it the current partition set,
// unless another read replaced cur meanwhile: then that one is returned.
func (ts *topicState) read(ctx context.Context, deadline time.Time, cur *topicLayout) (*topicLayout, *Error) {
	p := ts.p
	// The caller's deadline, but not its cancellation: a client that left
	// must not make the answer an error for everyone else.
	ctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	meta, err := p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{ts.name}})
	cancel()

	set := &topicLayout{ts: ts}
	ttl := topicMetadataTTL
	switch {
	case err != nil:
		p.watch("no Kafka broker reachable; requests are answered 503 until one is")
		set.err = connectError(err)
		ttl = refreshInterval
	case len(meta.Topics) != 1:
		set.err = &Error{Outcome: OutcomeRetry, Reason: "no metadata for the topic", Err: fmt.Errorf("metadata answer lists %d topics", len(meta.Topics))}
		ttl = refreshInterval
	case meta.Topics[0].Error == nil && len(meta.Topics[0].Partitions) == 0,
		errors.Is(meta.Topics[0].Error, kafka.UnknownTopicOrPartition):
		// Kafka also answers so for a topic the principal may not
		// Describe: say both.
		set.err = &Error{Outcome: OutcomeRejected, Reason: "unknown topic", Err: fmt.Errorf("topic %q does not exist, or the Kafka principal may not describe it", ts.name)}
		set.unknownTopic = true
	case meta.Topics[0].Error != nil:
		set.err = classify(meta.Topics[0].Error)
		ttl = refreshInterval
	default:
		ts.fill(set, meta.Topics[0].Partitions)
	}
	set.expires.Store(time.Now().Add(ttl).UnixNano())
	if !ts.current.CompareAndSwap(cur, set) {
		// Another caller read the metadata meanwhile: use its list.
		set = ts.current.Load()
	}
	return set, set.err
}

// fill gives set a partition for every partition of the topic, keeping
// those that exist, and tells each its leader.
func (ts *topicState) fill(set *topicLayout, parts []kafka.Partition) {
	n := 0
	for _, part := range parts {
		n = max(n, part.ID+1)
	}
	ts.mu.Lock()
	for len(ts.parts) < n {
		ts.parts = append(ts.parts, newPartition(ts.p, ts, int32(len(ts.parts))))
	}
	set.parts = ts.parts[:n:n]
	ts.mu.Unlock()
	set.ids = make([]int, n)
	for i := range set.ids {
		set.ids[i] = i
	}
	for _, part := range parts {
		leader := int32(-1)
		if part.Error == nil && part.Leader.Host != "" {
			leader = int32(part.Leader.ID)
			set.led = append(set.led, set.parts[part.ID])
		}
		set.parts[part.ID].setLeader(leader)
	}
}

// watch makes sure that one goroutine keeps looking for a reachable broker
// until one answers; if none answers at once, it logs warning.
func (p *Producer) watch(warning string) {
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
					p.logger.Error("the Kafka brokers refuse the connection: "+refused.Reason+"; check the settings",
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
func (p *Producer) refreshMetadata(force bool, cause error) {
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

func (p *Producer) expireTopics() {
	p.topics.Range(func(_, v any) bool {
		v.(*topicState).expire()
		return true
	})
}
