package producer

import (
	"sync/atomic"
	"time"
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

// Record is one Kafka record on its way to the broker: the data the
// caller fills before a verb takes it (the exported fields), then its
// results (Placed, Progress) and its one outcome (Outcome). What the
// caller tells its own client about it is the caller's to keep.
type Record struct {
	// Topic is the topic the record goes to; the records of one call
	// share it.
	Topic   string
	Key     []byte // nil: no key
	Value   []byte
	Headers []Header
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
	// OnDone, if set, is called with the record's outcome (nil:
	// acknowledged) when it is completed, as kgo's promises are. It runs
	// with the partition locked: it must not block, nor call Outcome. A
	// record with OnDone has no waiter: the producer takes it back at
	// its deadline.
	OnDone func(*Record, *Error)

	// done is closed when every record of the call that took this one
	// is completed or was refused; left counts those still to complete
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
	// attempts counts the requests that carried the record; atomic, so
	// that Progress reads it without the partition's lock, from OnDone
	// too (which holds it).
	attempts atomic.Int32
	lastErr  error
	// err is the outcome once completed, or the refusal of a record
	// never queued.
	err      *Error
	valueLen int
}

// Header is a record header. Its layout is the one the encoder writes,
// so that headers go to the wire as the caller gave them.
type Header struct {
	Key   string
	Value []byte
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

// Replayed is a record settled earlier, perhaps by another process: what
// a shared idempotency store knows of it, to answer a repeat of its
// request: acknowledged (err nil) at partition and offset at time t, or
// err. Only its Placed, Time and Outcome mean anything; it must not be
// sent.
func Replayed(partition int, offset int64, t time.Time, err *Error) *Record {
	done := make(chan struct{})
	close(done)
	return &Record{Partition: partition, placed: partition, offset: offset, Time: t, state: stateCompleted, done: done, err: err}
}

// Outcome is the record's outcome as known now: nil once it is
// acknowledged; the error it completed with; while a request may still
// write it (its caller stopped waiting), "outcome unknown"; for a record
// that was never queued, why (the topic could not be had, the producer
// closed). Read after the call that took the record returned (OnDone is
// given it); nil before any call took it. It is final once Done is
// closed.
func (r *Record) Outcome() *Error {
	select {
	case <-r.done:
		// Every record of the call is completed or was refused, and
		// no one writes err again: closing done published it.
		return r.err
	default:
	}
	pt := r.part
	if pt == nil {
		return r.err // refused, or not taken by a call yet
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if r.state == stateCompleted {
		return r.err
	}
	return &Error{Outcome: OutcomeUnknown, Reason: reasonUnknown, Err: r.lastErr}
}

// Done is closed when the record and the others of the call that took it
// are completed (or were refused); nil before such a call.
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

// ValueLen is the length of the value, once the record is completed (its
// bytes are let go of then): what OnDone counts.
func (r *Record) ValueLen() int { return r.valueLen }

// Progress is the partition the record was queued on (-1 if it never
// was: a record refused, or replayed from a store) and the requests that
// carried it so far. Read any time after the call that took it returned,
// or in OnDone. A record queued whose Outcome is not "outcome unknown"
// provably was written (nil) or was not and never will be; one never
// queued was not written.
func (r *Record) Progress() (partition, attempts int) {
	if r.part == nil {
		return -1, 0
	}
	return r.placed, int(r.attempts.Load())
}

// Placed is where the record went, read once Done is closed: the
// partition it was queued on (-1 if none) and, if it was acknowledged,
// its offset (-1 if not, or if the broker did not say).
func (r *Record) Placed() (partition int, offset int64) { return r.placed, r.offset }

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
		r.OnDone(r, err)
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
