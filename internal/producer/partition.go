package producer

import (
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go/protocol"
)

// partition holds the records waiting for one partition of a topic, and
// the one batch of it that is sent and not yet settled: a partition never
// has two batches in flight, so that its records are stored in the order
// they were queued and its sequence numbers stay in order on the wire,
// however the transport spreads requests over connections.
type partition struct {
	p     *Producer
	topic *topicState
	id    int32

	mu    sync.Mutex
	queue []*Record // queued records, oldest first; completed ones are skipped
	dead  int       // completed records still in queue
	batch *batch    // sent and not settled; nil if none
	// leader is the broker ID of the leader, -1 if unknown; written
	// with mu held.
	leader atomic.Int32
	// sink is the sink the partition was last handed to.
	sink atomic.Pointer[sink]
	// ready: the partition is on its leader's sink's list.
	ready bool
	// paused: a failed batch waits for its backoff before it goes again.
	paused  bool
	retries int // consecutive failed attempts, for the backoff
	// limit bounds the records of the next batch after the broker refused
	// a batch for a record it did not name; 0: the configured bound.
	limit   int
	session *session // whose sequence numbers nextSeq counts
	nextSeq int32
	closed  bool
}

// batch is records of one partition sent in one piece, encoded once:
// every attempt sends the same bytes, so that the broker recognises a
// retry by its sequence numbers.
type batch struct {
	part    *partition
	recs    []*Record
	session *session // nil without idempotence
	seq     int32
	// claimed: the transport took the batch for a request (claim); its
	// records are fixed from then on, and bytes is encoded once.
	claimed bool
	// encoding: claim is encoding the records outside the lock: a
	// record completed meanwhile keeps its bytes until it is done.
	encoding bool
	// sequenced: claim gave the batch its sequence numbers (seq on): a
	// batch no attempt appended gives them back.
	sequenced bool
	bytes     []byte
	created   time.Time
	// timeout is how long one attempt may wait for the broker: the
	// longest time its records' callers wait, from their arrival
	// (attemptTimeout).
	timeout time.Duration
	// ackBy, without idempotence, is how long an attempt waits for the
	// broker's answer past timeout: the latest AckBy of its records,
	// which wait to learn the outcome (there is no retry to learn it).
	ackBy time.Time
	// mayBeWritten: an attempt may have appended the batch.
	mayBeWritten bool
	// sending: an attempt is under way.
	sending bool
}

func newPartition(p *Producer, ts *topicState, id int32) *partition {
	pt := &partition{p: p, topic: ts, id: id, closed: p.isStopped()}
	pt.leader.Store(-1)
	return pt
}

// push queues rec, arrived at now; rec.part is set only once it is queued,
// so that a record refused here is known never to have been queued.
func (pt *partition) push(rec *Record, now time.Time) *Error {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if pt.closed {
		return errShuttingDown
	}
	rec.part = pt
	rec.placed = int(pt.id)
	rec.state = stateQueued
	rec.arrived = now
	pt.p.outstanding.Add(1)
	pt.queue = append(pt.queue, rec)
	if pt.pending() >= pt.p.cfg.MaxBatchRecords {
		pt.topic.batchTaken(pt) // full: the next records go elsewhere
	}
	pt.signal()
	return nil
}

// pending is the number of queued records not yet taken back.
func (pt *partition) pending() int { return len(pt.queue) - pt.dead }

// signal puts the partition on its leader's sink's list if it has
// something to send and may send it. pt.mu is held.
func (pt *partition) signal() {
	if pt.ready || pt.paused || (pt.batch != nil && pt.batch.sending) {
		return
	}
	if pt.batch == nil && pt.pending() == 0 {
		return
	}
	leader := pt.leader.Load()
	if leader < 0 {
		// No leader known: look again after a pause, while records wait.
		pt.pauseFor(refreshInterval, nil)
		return
	}
	pt.ready = true
	sk := pt.p.sink(leader)
	pt.sink.Store(sk)
	sk.add(pt)
}

// pauseFor keeps the partition off its sink for d, then signals it again.
// pt.mu is held.
func (pt *partition) pauseFor(d time.Duration, cause error) {
	if pt.paused {
		return
	}
	pt.paused = true
	p := pt.p
	time.AfterFunc(d, func() {
		if p.ctx.Err() != nil {
			return // the producer is closed: nothing is left to send
		}
		if pt.leader.Load() < 0 || cause != nil && needsMetadata(cause) {
			// Learn the leader before the next attempt.
			pt.topic.expire()
			pt.topic.partitions(p.ctx, time.Now().Add(dialTimeout))
		}
		pt.mu.Lock()
		defer pt.mu.Unlock()
		pt.paused = false
		now := time.Now()
		if b := pt.batch; b != nil && !b.sending {
			// Its time may be over while the partition cannot send
			// (no leader): settled here, not only by a sink.
			pt.givenUp(b, now)
		}
		pt.expireQueued(now)
		pt.signal()
	})
}

// refuse handles the queued records while the idempotent producer has no
// identity (err): with idempotent on and a cluster that refuses it, they
// fail at once; otherwise (no broker answers yet, or the identity is being
// renewed) they wait, and their callers take them back. pt.mu is held.
func (pt *partition) refuse(err error) {
	var perr *Error
	if errors.As(err, &perr) && perr.Outcome == OutcomeRejected {
		for _, rec := range pt.queue {
			if rec.state == stateQueued {
				rec.complete(perr, -1)
			}
		}
		clear(pt.queue)
		pt.queue, pt.dead = pt.queue[:0], 0
		return
	}
	for _, rec := range pt.queue {
		rec.lastErr = err
	}
	if errors.Is(err, errNoIdentity) {
		// Being asked for: look again soon, without the backoff of
		// the failures, which would outlast the answer.
		pt.pauseFor(sessionWait, nil)
		return
	}
	pt.retry(err)
}

// backoff is the pause before the next attempt after n failed ones.
func backoff(n int) time.Duration {
	d := retryBackoffMin << min(n, 8)
	return min(d, retryBackoffMax)
}

// setLeader records the partition's leader from fresh metadata.
func (pt *partition) setLeader(id int32) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if pt.leader.Load() == id {
		return
	}
	pt.leader.Store(id)
	pt.signal()
}

// close stops the partition from taking records; it still sends those it
// holds.
func (pt *partition) close() {
	pt.mu.Lock()
	pt.closed = true
	pt.mu.Unlock()
}

// abandon is called when the caller stops waiting for rec: it completed,
// its deadline passed or its client left. A record no batch holds is
// taken back, so that none will: its outcome is then final; one a batch
// holds stays "outcome unknown" until the batch settles it.
func (pt *partition) abandon(rec *Record) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	switch rec.state {
	case stateCompleted:
		return
	case stateQueued:
		pt.takeBack(rec)
		pt.compact()
		return
	}
	rec.abandoned = true
	if b := pt.batch; b != nil && !b.claimed {
		// Drained, but no request took it yet: claim leaves it out.
		rec.complete(notWritten(rec), -1)
	}
	// Otherwise a batch holds it: the batch settles it, and an
	// idempotent repeat learns the outcome then.
}

// takeBack completes a queued record as not written; it stays in the
// queue, skipped, until compact or newBatch drops it. pt.mu is held.
func (pt *partition) takeBack(rec *Record) {
	rec.complete(notWritten(rec), -1)
	pt.dead++
}

// compact drops the completed records from the queue once they are most
// of it: many records left a partition that cannot send (its batch is
// held), and memory must follow the records still waiting. Never called
// while the queue is being walked. pt.mu is held.
func (pt *partition) compact() {
	if pt.dead > 64 && pt.dead > len(pt.queue)/2 {
		pt.queue = slices.DeleteFunc(pt.queue, func(r *Record) bool { return r.state == stateCompleted })
		pt.dead = 0
	}
}

// expireQueued takes back the queued records without a waiter whose
// deadline passed (a waiter takes its own back): no request will carry
// them. pt.mu is held.
func (pt *partition) expireQueued(now time.Time) {
	for _, rec := range pt.queue {
		if rec.state == stateQueued && rec.OnDone != nil && !now.Before(rec.Deadline) {
			pt.takeBack(rec)
		}
	}
	pt.compact()
}

// drain returns what the sink of broker should send for the partition: the
// batch to retry, or a new batch of the queued records; nil if nothing.
// The batch is marked sending until its result is in. noIdentity, if not
// nil, is why the idempotent producer has no identity for a new batch: a
// batch sent before keeps its own.
func (pt *partition) drain(broker int32, now time.Time, noIdentity error) *batch {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pt.ready = false
	if pt.leader.Load() != broker {
		pt.signal() // the leader moved: to its sink
		return nil
	}
	if b := pt.batch; b != nil {
		if !pt.givenUp(b, now) {
			b.sending = true
			for _, rec := range b.recs {
				rec.attempts.Add(1)
			}
			return b
		}
	}
	if pt.pending() == 0 {
		clear(pt.queue)
		pt.queue, pt.dead = pt.queue[:0], 0
		return nil
	}
	var s *session
	if pt.p.idempotent.Load() {
		if s = pt.p.currentSession(); s == nil {
			// Given up or renewed meanwhile (another partition's
			// batch): the sink takes a new identity first.
			pt.refuse(cmpErr(noIdentity, errNoIdentity))
			return nil
		}
	}
	return pt.newBatch(now, s)
}

// errNoIdentity is why records wait while the idempotent producer takes a
// new identity.
var errNoIdentity = errors.New("the idempotent producer is taking a new producer ID")

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// givenUp settles a batch that is not to be sent again, and reports so:
// without idempotence once every record's caller has stopped waiting for
// its outcome; with it, once the delivery timeout has passed too (or the
// producer is closing), after which the producer takes a new identity: the
// broker's sequence for the partition is then unknown. pt.mu is held.
func (pt *partition) givenUp(b *batch, now time.Time) bool {
	if len(b.recs) == 0 {
		pt.dissolve(b) // nothing left to settle (never kept: see failed)
		return true
	}
	for _, rec := range b.recs {
		if now.Before(rec.Deadline) || b.session != nil && now.Before(rec.AckBy) {
			return false
		}
	}
	if b.session != nil && now.Before(b.created.Add(pt.p.cfg.DeliveryTimeout)) && !pt.p.isStopped() {
		return false
	}
	perr := &Error{Outcome: OutcomeUnknown, Reason: reasonUnknown, Err: b.recs[0].lastErr}
	if !b.mayBeWritten {
		perr = nil // per record, below
	}
	for _, rec := range b.recs {
		if perr == nil {
			rec.complete(notWritten(rec), -1)
		} else {
			rec.complete(perr, -1)
		}
	}
	pt.batch = nil
	if b.session != nil && b.mayBeWritten {
		pt.p.renewSession(b.session, errGivenUp)
	}
	return true
}

var errGivenUp = errors.New("a batch was given up after the delivery timeout")

// newBatch moves the next queued records into a batch, taking back those
// whose callers left or whose deadline passed. pt.mu is held.
func (pt *partition) newBatch(now time.Time, s *session) *batch {
	cfg := &pt.p.cfg
	maxRecords := cfg.MaxBatchRecords
	if pt.limit > 0 {
		maxRecords = min(maxRecords, pt.limit)
	}
	var recs []*Record
	size, n := 0, 0
	var timeout time.Duration
	var ackBy time.Time
	for ; n < len(pt.queue); n++ {
		rec := pt.queue[n]
		if rec.state == stateCompleted {
			continue
		}
		if rec.abandoned || !now.Before(rec.Deadline) {
			pt.takeBack(rec)
			continue
		}
		if len(recs) == maxRecords || (len(recs) > 0 && size+rec.size() > cfg.MaxBatchBytes) {
			break
		}
		size += rec.size()
		recs = append(recs, rec)
		timeout = max(timeout, rec.Deadline.Sub(rec.arrived))
		ackBy = later(ackBy, rec.AckBy)
	}
	rest := copy(pt.queue, pt.queue[n:])
	clear(pt.queue[rest:])
	pt.queue = pt.queue[:rest]
	pt.dead = 0
	for _, rec := range pt.queue {
		if rec.state == stateCompleted {
			pt.dead++
		}
	}
	pt.compact() // the batch took live records: the rest may be mostly dead
	if len(recs) == 0 {
		return nil
	}
	b := &batch{part: pt, recs: recs, created: now, timeout: attemptTimeout(timeout, cfg.DeliveryTimeout), sending: true}
	if s == nil {
		b.ackBy = ackBy
	} else {
		if pt.session != s {
			pt.session, pt.nextSeq = s, 0
		}
		b.session = s // the sequence is taken by claim
	}
	for _, rec := range recs {
		rec.state = stateBatched
		rec.attempts.Add(1)
	}
	pt.batch = b
	pt.topic.batchTaken(pt)
	return b
}

// attemptTimeout bounds the time an attempt waits for the broker: at least
// minAttemptTimeout, so that a record whose caller has little time left
// still gets an attempt that can succeed (an attempt whose time is up
// before it is written could never settle its batch, which would hold
// the partition until the delivery timeout), and at most
// maxAttemptTimeout and the delivery timeout: a record that may wait
// minutes (asynchronous delivery) must not leave its partition behind a
// connection that stopped answering for as long.
func attemptTimeout(d, deliveryTimeout time.Duration) time.Duration {
	return max(min(d, maxAttemptTimeout, deliveryTimeout), minAttemptTimeout)
}

// minAttemptTimeout and maxAttemptTimeout bound the time an attempt waits
// for the broker; the longest is the Java client's request.timeout.ms.
const (
	minAttemptTimeout = 100 * time.Millisecond
	maxAttemptTimeout = 30 * time.Second
)

// claim is called when the transport writes the batch into a request: the
// records whose callers gave up before are left out (they were never
// sent, and are answered so), and the others get their sequence numbers
// and are encoded, once for every attempt. It returns nil if no record is
// left: the request is then not sent.
func (pt *partition) claim(b *batch, codec Compression) []byte {
	pt.mu.Lock()
	if pt.batch != b {
		// Settled or dissolved by an attempt that ended before the
		// transport got to this request: a later one sends it.
		pt.mu.Unlock()
		return nil
	}
	if b.claimed {
		enc := b.bytes
		pt.mu.Unlock()
		return enc
	}
	b.claimed = true
	now := time.Now()
	live := b.recs[:0]
	for _, rec := range b.recs {
		if rec.state == stateCompleted {
			continue // taken back by its caller
		}
		if rec.OnDone != nil && !now.Before(rec.Deadline) {
			rec.complete(notWritten(rec), -1)
			continue
		}
		live = append(live, rec)
	}
	clear(b.recs[len(live):])
	b.recs = live
	if len(live) == 0 {
		// Nothing to send: the batch is dropped now, not kept empty
		// until the request's failure comes back (failed ignores it
		// then), and what is queued behind it may go.
		pt.dissolve(b)
		pt.signal()
		pt.mu.Unlock()
		return nil
	}
	if b.session != nil {
		b.seq, b.sequenced = pt.nextSeq, true
		pt.nextSeq = nextSequence(pt.nextSeq, len(live))
	}
	b.encoding = true
	pt.mu.Unlock()
	// The records are fixed now: encoded outside the lock.
	enc := b.encode(codec)
	pt.mu.Lock()
	b.bytes, b.encoding = enc, false
	for _, rec := range b.recs {
		if rec.state == stateCompleted {
			rec.letGo() // settled while it was encoded (an attempt ended)
		}
	}
	pt.mu.Unlock()
	return enc
}

// nextSequence is the sequence number after n records from seq: Kafka's
// sequences wrap from the largest int32 to 0.
func nextSequence(seq int32, n int) int32 {
	return int32((int64(seq) + int64(n)) % (1 << 31))
}

// identity is what the batch carries of the producer.
func (b *batch) identity() producerIdentity {
	if b.session == nil {
		return noProducer
	}
	return producerIdentity{id: b.session.id, epoch: b.session.epoch, sequence: b.seq}
}

// acknowledged settles the batch as written at base (-1 if the broker does
// not say).
func (pt *partition) acknowledged(b *batch, base int64) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if hooks := pt.p.cfg.Hooks; hooks != nil {
		hooks.Batch(pt.topic.name, len(b.recs))
	}
	for i, rec := range b.recs {
		off := int64(-1)
		if base >= 0 {
			off = base + int64(i)
		}
		rec.complete(nil, off)
	}
	pt.batch, pt.limit, pt.retries = nil, 0, 0
	pt.signal()
}

// failed handles a failed attempt of the batch: err is the broker's answer
// for the partition or the request's failure, ans what else the answer
// said (nil if none came).
func (pt *partition) failed(b *batch, ans *produceAnswer, err error) {
	p := pt.p
	pt.mu.Lock()
	defer pt.mu.Unlock()
	b.sending = false
	if pt.batch != b {
		return // dropped by claim, which had no record left to send
	}
	if errors.Is(err, protocol.ErrNoRecord) {
		// The request was never written: a batch of it had no record
		// left (claim). The others go again at once: as they are if an
		// earlier attempt may have appended them, else queued again;
		// a batch without records is dropped, never kept.
		if !b.mayBeWritten || len(b.recs) == 0 {
			pt.dissolve(b)
		}
		pt.signal()
		return
	}
	for _, rec := range b.recs {
		rec.lastErr = err
	}
	written := mayBeWritten(err, p.cfg.Acks)
	perr := classify(err)
	switch {
	case pt.refuseNamed(b, ans, err):
		// The broker named the records at fault and appended nothing:
		// the others go again at once, without them.
		pt.signal()
	case b.session != nil && isSequenceError(err):
		// The broker lost track of the producer or of the
		// partition's sequence: this attempt appended nothing, and
		// the records go again under a new identity, unless an
		// earlier attempt may have appended them (sending them again
		// could store them twice).
		p.renewSession(b.session, err)
		if b.mayBeWritten {
			pt.settle(b, &Error{Outcome: OutcomeUnknown, Reason: reasonUnknown, Err: err})
			pt.signal()
			break
		}
		pt.dissolve(b)
		pt.retry(err)
	case !b.mayBeWritten && recordAtFault(err) && len(b.recs) > 1:
		// The broker refused the batch for a record it did not name
		// (too large, corrupt, invalid): halve the batches until each
		// goes through or one record alone is refused, so that only
		// it gets the permanent answer.
		pt.limit = len(b.recs) / 2
		pt.dissolve(b)
		pt.signal()
	case perr.Outcome == OutcomeTooLarge || perr.Outcome == OutcomeRejected:
		// Final; "outcome unknown" if this attempt or an earlier one
		// may have appended the batch (UNKNOWN_SERVER_ERROR, say).
		b.mayBeWritten = b.mayBeWritten || written
		pt.settle(b, perr)
		pt.signal()
	case !written && !b.mayBeWritten:
		// Proven not appended, by any attempt: the records are queued
		// again, and their callers may take them back meanwhile.
		pt.dissolve(b)
		pt.retry(err)
	case b.session == nil && b.mayBeWritten && written && !errors.Is(err, errNotLeader):
		// Without idempotence, each retry of a batch that may have
		// been written may store one more copy: the client's
		// Idempotency-Key, not more copies, must decide the rest.
		// NOT_LEADER does not end it: the broker appended only if it
		// lost the partition meanwhile, so such copies are bounded by
		// the leader changes.
		pt.settle(b, &Error{Outcome: OutcomeUnknown, Reason: reasonUnknownTwice, Err: err})
		pt.signal()
	default:
		b.mayBeWritten = b.mayBeWritten || written
		pt.retry(err)
	}
	if needsMetadata(err) {
		p.refreshMetadata(false, err)
	}
}

// retry pauses the partition before its next attempt. pt.mu is held.
func (pt *partition) retry(err error) {
	pt.retries++
	pt.pauseFor(backoff(pt.retries-1), err)
}

// dissolve puts the records of a batch that no attempt appended back at
// the head of the queue, and its sequence numbers back. pt.mu is held.
func (pt *partition) dissolve(b *batch) {
	live := make([]*Record, 0, len(b.recs)+len(pt.queue))
	for _, rec := range b.recs {
		if rec.state == stateBatched {
			rec.state = stateQueued
			live = append(live, rec)
		}
	}
	pt.queue = append(live, pt.queue...)
	pt.giveSequenceBack(b)
	pt.batch = nil
	pt.expireQueued(time.Now())
}

// giveSequenceBack returns the sequence numbers of a batch that no attempt
// appended, so that the partition's next batch follows the last one the
// broker has. pt.mu is held.
func (pt *partition) giveSequenceBack(b *batch) {
	if b.sequenced && !b.mayBeWritten && b.session == pt.session {
		pt.nextSeq = b.seq
	}
}

// settle completes every record of the batch with perr, as "outcome
// unknown" if an attempt may have appended it. pt.mu is held.
func (pt *partition) settle(b *batch, perr *Error) {
	pt.giveSequenceBack(b)
	if b.mayBeWritten && perr.Outcome != OutcomeUnknown {
		perr = &Error{Outcome: OutcomeUnknown, Reason: perr.Reason + "; an attempt may have written the record", Err: perr.Err}
	}
	for _, rec := range b.recs {
		rec.complete(perr, -1)
	}
	pt.batch = nil
}

// refuseNamed handles an INVALID_RECORD answer that names the records at
// fault (Kafka 2.4 and later, KIP-467): they fail for good with the
// broker's message, and the others, which the broker did not append
// either, are queued again. It reports false for any other answer. pt.mu
// is held.
func (pt *partition) refuseNamed(b *batch, ans *produceAnswer, err error) bool {
	if ans == nil || len(ans.recordErrors) == 0 || !errors.Is(err, errInvalidRecord) {
		return false
	}
	named := false
	for i, msg := range ans.recordErrors {
		if i < 0 || i >= len(b.recs) {
			continue
		}
		named = true
		perr := &Error{Outcome: OutcomeRejected, Reason: "Kafka broker refused the record: " + cmpOr(msg, errInvalidRecord.Title()), Err: err}
		if b.mayBeWritten {
			perr = &Error{Outcome: OutcomeUnknown, Reason: perr.Reason + "; an earlier attempt may have written the record", Err: err}
		}
		b.recs[i].complete(perr, -1)
	}
	if !named {
		return false
	}
	if b.mayBeWritten {
		pt.settle(b, &Error{Outcome: OutcomeUnknown, Reason: reasonUnknown, Err: err})
		return true
	}
	pt.dissolve(b)
	return true
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
