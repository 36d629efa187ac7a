package producer

import (
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// A record's life, guarded by its partition's lock:
//
//	queued ──drain──▶ batched ──settle──▶ completed
//	   │                 │
//	   │                 └─dissolve (the broker proved it appended nothing)─▶ queued
//	   └─taken back (caller left, deadline passed)─▶ completed
//
// A queued record is in its partition's buffer and no request carries it;
// a batched record is in a batch that is being or has been sent, and is
// completed only when that batch is settled: acknowledged, refused, or given
// up. So a record is completed once, by the one who holds it.
type recordState uint8

const (
	stateNew recordState = iota
	stateQueued
	stateBatched
	stateCompleted
)

// Record is one Kafka record on its way to the broker. The caller fills the
// exported fields before it sends the record, and reads its outcome
// through the methods once Done is closed (or Send returned).
type Record struct {
	Key     []byte // nil: no key
	Value   []byte
	Headers []kafka.Header
	// Partition is the partition asked for, or -1 to let the
	// partitioner choose; Placed says where the record went.
	Partition int
	// Time is the record's timestamp: data, perhaps a client's, never a
	// clock. The producer times a record from its arrival instead.
	Time time.Time
	// Deadline is when the caller stops waiting: a record no request
	// carried by then is not sent.
	Deadline time.Time
	// AckBy, if later than Deadline, keeps a request carrying the record
	// retried (without idempotence) or waited for until then, so that
	// the outcome of a record answered "outcome unknown" is learned.
	AckBy time.Time
	// OnDone, if set, is called (with the partition locked) when the
	// record is completed. A record with OnDone has no waiter: the
	// producer takes it back at its deadline.
	OnDone func(*Record)
	// Answer is what the caller that waited tells its client: set by Send
	// when it stops waiting, nil if the record was acknowledged. It
	// belongs to that caller, which may also set it.
	Answer *Error

	// done is closed when every record of the Send or Enqueue call that
	// took this one is completed; left counts those still to complete
	// (nil for a call of one record). One channel a call, not a record:
	// a request of many records waits once.
	done chan struct{}
	left *atomic.Int32
	part *partition // set once queued
	// arrived is when the record was queued: its attempts are timed
	// from it, never from Time.
	arrived time.Time
	// placed is the partition the record was queued on, -1 before;
	// offset its offset once acknowledged, -1 if the broker did not say.
	placed int
	offset int64
	state  recordState
	// abandoned: the caller stopped waiting.
	abandoned bool
	attempts  int
	lastErr   error
	err       *Error // the outcome, once completed
	valueLen  int
}

// NewRecord returns a record of value that its caller waits for until
// timeout after now.
func NewRecord(value []byte, now time.Time, timeout time.Duration) *Record {
	rec := MakeRecord(value, now, timeout)
	return &rec
}

// MakeRecord is NewRecord for a caller that keeps its records in a slice
// of its own, one allocation for many records. The record must not be
// copied once it is sent.
func MakeRecord(value []byte, now time.Time, timeout time.Duration) Record {
	return Record{
		Value:     value,
		Partition: -1,
		placed:    -1,
		offset:    -1,
		Time:      now,
		Deadline:  now.Add(timeout),
	}
}

// Replayed is a record acknowledged earlier, perhaps by another process,
// at partition and offset at time t: what a shared idempotency store knows
// of it, to answer a repeat of its request. Only its Placed, Time and
// Answer mean anything; it must not be sent.
func Replayed(partition int, offset int64, t time.Time) *Record {
	done := make(chan struct{})
	close(done)
	return &Record{Partition: partition, placed: partition, offset: offset, Time: t, state: stateCompleted, done: done}
}

// Done is closed when the record and the others of the Send or Enqueue
// call that took it are completed (or were refused); nil before such a
// call.
func (r *Record) Done() <-chan struct{} { return r.done }

// waitWith makes the records share one done channel, closed when the
// last of them is completed or released.
func waitWith(recs []*Record) {
	done := make(chan struct{})
	var left *atomic.Int32
	if len(recs) > 1 {
		left = new(atomic.Int32)
		left.Store(int32(len(recs)))
	}
	for _, rec := range recs {
		rec.done, rec.left = done, left
	}
}

// release counts the record out of its call's wait: it is completed,
// or it was never queued.
func (r *Record) release() {
	if r.done != nil && (r.left == nil || r.left.Add(-1) == 0) {
		close(r.done)
	}
}

// Queued reports whether the record was queued on a partition (so that it
// may have been written, or its outcome is known).
func (r *Record) Queued() bool { return r.part != nil }

// Err is the record's outcome once Done is closed: nil if acknowledged.
func (r *Record) Err() *Error { return r.err }

// ValueLen is the length of the value, once the record is completed (its
// bytes are let go of then).
func (r *Record) ValueLen() int { return r.valueLen }

// Topic is the topic of a queued record.
func (r *Record) Topic() string { return r.part.topic.name }

// Progress is the partition of a queued record and the requests that
// carried it so far.
func (r *Record) Progress() (partition, attempts int) {
	r.part.mu.Lock()
	defer r.part.mu.Unlock()
	return r.placed, r.attempts
}

// Placed is where the record went, read once Done is closed: the
// partition it was queued on (-1 if none) and, if it was acknowledged,
// its offset (-1 if not, or if the broker did not say).
func (r *Record) Placed() (partition int, offset int64) { return r.placed, r.offset }

// Attempts is the number of requests that carried the record, read in
// OnDone or once Done is closed.
func (r *Record) Attempts() int { return r.attempts }

// ProvenNotWritten reports whether the queued record provably was not
// written and never will be: it completed without an acknowledgement, and
// not as "outcome unknown".
func (r *Record) ProvenNotWritten() bool {
	r.part.mu.Lock()
	defer r.part.mu.Unlock()
	return r.state == stateCompleted && r.err != nil && r.err.Outcome != OutcomeUnknown
}

// OutcomeNow is the queued record's outcome as known now: nil if
// acknowledged, "outcome unknown" while it may be written and is not
// acknowledged yet.
func (r *Record) OutcomeNow() *Error {
	r.part.mu.Lock()
	defer r.part.mu.Unlock()
	if r.state == stateCompleted {
		return r.err
	}
	return &Error{Outcome: OutcomeUnknown, Reason: reasonUnknown, Err: r.lastErr}
}

// size approximates the bytes the record takes in a batch.
func (r *Record) size() int {
	n := len(r.Key) + len(r.Value) + recordOverhead
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value) + 2
	}
	return n
}

// recordOverhead approximates the bytes a record adds to a batch besides
// its key, value and headers.
const recordOverhead = 24

// complete ends the record's life with err (nil: acknowledged at offset).
// The partition is locked.
func (r *Record) complete(err *Error, offset int64) {
	if r.state == stateCompleted {
		return
	}
	// A batch that claim is encoding reads the bytes outside the lock:
	// claim lets them go when it is done.
	encoding := r.state == stateBatched && r.part.batch != nil && r.part.batch.encoding
	r.state = stateCompleted
	r.err = err
	r.offset = offset
	r.valueLen = len(r.Value)
	if !encoding {
		r.letGo()
	}
	r.release()
	if r.OnDone != nil {
		r.OnDone(r)
	}
	if r.part != nil {
		r.part.p.recordDone()
	}
}

// letGo drops the record's bytes, once it is completed: they are sent or
// never will be.
func (r *Record) letGo() {
	r.Key, r.Value, r.Headers = nil, nil, nil
}

// notWritten is why a record that no request wrote, and none will, failed:
// the last error met while it waited, if that is one that leaves records
// unwritten. An error that left the outcome of another request unknown (a
// timeout) says nothing true of this record, which that request did not
// carry.
func notWritten(r *Record) *Error {
	if r.lastErr != nil {
		if perr := classify(r.lastErr); perr.Outcome == OutcomeRetry {
			return perr
		}
	}
	if r.lastErr != nil {
		return &Error{Outcome: OutcomeRetry, Reason: reasonNotSent, Err: r.lastErr}
	}
	return &Error{Outcome: OutcomeRetry, Reason: reasonNotSent, Err: errNotSent}
}
