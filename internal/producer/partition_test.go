package producer

import (
	"errors"
	"testing"
	"time"

	"github.com/segmentio/kafka-go/protocol"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// queuedPartition is a partition of a producer that is not started, with
// records queued on it directly.
func queuedPartition(t *testing.T, recs ...*Record) *partition {
	t.Helper()
	p := unstarted(t, Config{})
	t.Cleanup(p.cancel)
	pt := newPartition(p, p.topic("events"), 0)
	for _, rec := range recs {
		rec.part, rec.state = pt, stateQueued
		pt.queue = append(pt.queue, rec)
		p.outstanding.Add(1)
	}
	return pt
}

// Taking back many records while the queue is walked (expiring async
// records, or making a batch behind records whose callers left) keeps
// every record: none is lost from the queue, none read twice.
func TestTakingBackManyRecordsKeepsTheQueue(t *testing.T) {
	now := time.Now()
	var expired, live []*Record
	for range 100 {
		rec := NewRecord([]byte(`"expired"`), now.Add(-time.Minute), time.Second)
		rec.OnDone = func(*Record, *Error) {}
		expired = append(expired, rec)
	}
	for range 30 {
		live = append(live, NewRecord([]byte(`"live"`), now, time.Minute))
	}
	pt := queuedPartition(t, append(expired, live...)...)
	pt.mu.Lock()
	pt.expireQueued(now) // panicked on a nil record when it compacted mid-walk
	pt.mu.Unlock()
	for _, rec := range expired {
		if rec.state != stateCompleted {
			t.Fatal("an expired record was not taken back")
		}
	}

	var left []*Record
	for range 100 {
		rec := NewRecord([]byte(`"left"`), now, time.Minute)
		rec.abandoned = true
		left = append(left, rec)
	}
	pt = queuedPartition(t, append(left, live...)...)
	pt.mu.Lock()
	b := pt.newBatch(now, nil)
	pt.mu.Unlock()
	if b == nil || len(b.recs) != len(live) || pt.pending() != 0 || pt.p.outstanding.Load() != int64(len(live)) {
		t.Fatalf("batch of %v records, %d pending, %d outstanding: want the %d live records batched", b, pt.pending(), pt.p.outstanding.Load(), len(live))
	}
}

// The records taken back stay a bounded share of the queue after a batch
// takes live records from its head: newBatch compacts too.
func TestNewBatchKeepsTheQueueCompact(t *testing.T) {
	now := time.Now()
	var head, dead, tail []*Record
	for range 10 {
		head = append(head, NewRecord([]byte(`"head"`), now, time.Minute))
	}
	for range 70 {
		dead = append(dead, NewRecord([]byte(`"taken back"`), now, time.Minute))
	}
	for range 62 {
		tail = append(tail, NewRecord([]byte(`"tail"`), now, time.Minute))
	}
	// head, one record of the tail, then the records to take back, then
	// the rest of the tail: the batch stops before the taken back.
	queue := append(append(append(head, tail[0]), dead...), tail[1:]...)
	pt := queuedPartition(t, queue...)
	pt.mu.Lock()
	defer pt.mu.Unlock()
	for _, rec := range dead {
		pt.takeBack(rec) // 70 of 142: not yet most of the queue
	}
	pt.limit = len(head)
	if b := pt.newBatch(now, nil); b == nil || len(b.recs) != len(head) {
		t.Fatalf("batch %v, want the %d records at the head", b, len(head))
	}
	if pt.dead > 64 && pt.dead > len(pt.queue)/2 {
		t.Errorf("%d records taken back kept in a queue of %d", pt.dead, len(pt.queue))
	}
}

// A batch whose records were all taken back before a request took it has
// no sequence numbers: the partition's next batch keeps the sequence.
// A request never written (ErrNoRecord) leaves a batch an earlier attempt
// may have appended as it is, to be sent again byte for byte.
func TestRequestNeverWrittenKeepsTheSequence(t *testing.T) {
	s := &session{id: 1}
	rec := NewRecord([]byte(`"x"`), time.Now(), time.Minute)
	pt := queuedPartition(t, rec)
	pt.mu.Lock()
	pt.session, pt.nextSeq = s, 7
	b := pt.newBatch(time.Now(), s)
	pt.mu.Unlock()
	pt.abandon(rec)
	if perr := rec.Outcome(); perr == nil || perr.Outcome != OutcomeRetry {
		t.Fatalf("taken back before any request: %v, want not written", perr)
	}
	if enc := pt.claim(b, CompressionNone); enc != nil {
		t.Fatal("a batch without records was encoded")
	}
	pt.failed(b, nil, protocol.ErrNoRecord)
	if pt.nextSeq != 7 || pt.batch != nil {
		t.Errorf("next sequence %d (want 7), batch %v (want none)", pt.nextSeq, pt.batch)
	}

	kept := NewRecord([]byte(`"y"`), time.Now(), time.Minute)
	pt = queuedPartition(t, kept)
	pt.mu.Lock()
	b = pt.newBatch(time.Now(), s)
	pt.mu.Unlock()
	pt.claim(b, CompressionNone)
	b.mayBeWritten = true // an earlier attempt's answer was lost
	b.sending = true
	pt.failed(b, nil, protocol.ErrNoRecord)
	if pt.batch != b || kept.state != stateBatched || !b.mayBeWritten {
		t.Errorf("the batch an earlier attempt may have appended was not kept: batch %p (want %p), record state %d", pt.batch, b, kept.state)
	}
}

// A snapshot of a topic older than the one that chose the sticky partition
// may have fewer partitions: it picks among its own.
func TestStickyPartitionOfAnOlderSnapshot(t *testing.T) {
	p := unstarted(t, Config{})
	defer p.cancel()
	ts := p.topic("events")
	var parts []*partition
	for i := range 6 {
		pt := newPartition(p, ts, int32(i))
		pt.leader.Store(1)
		parts = append(parts, pt)
	}
	ts.sticky.Store(5) // chosen from the newer snapshot
	old := &topicLayout{ts: ts, parts: parts[:3], led: parts[:3]}
	if pt := old.sticky(); pt.id >= 3 {
		t.Fatalf("sticky partition %d of a snapshot of 3", pt.id)
	}
	// A sticky partition that lost its leader is left.
	now := &topicLayout{ts: ts, parts: parts, led: parts[1:]}
	ts.sticky.Store(0)
	parts[0].leader.Store(-1)
	if pt := now.sticky(); pt.id == 0 {
		t.Error("the sticky partition without a leader is still chosen")
	}
}

// An answer that may follow an append and that retrying does not fix
// (UNKNOWN_SERVER_ERROR) is "outcome unknown", not a refusal; a refusal
// given before appending gives the batch's sequence numbers back, so that
// the next batch needs no new producer ID.
func TestFinalAnswersAndTheSequence(t *testing.T) {
	c, p := warmProducer(t)
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.UnknownServerError})
	if _, perr := sendOne(p, "events", []byte(`"maybe"`), 5*time.Second); perr == nil || perr.Outcome != OutcomeUnknown {
		t.Errorf("UNKNOWN_SERVER_ERROR: %v, want outcome unknown", perr)
	}

	c, p = warmProducer(t)
	before := p.currentSession()
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.TopicAuthorizationFailed})
	if _, perr := sendOne(p, "events", []byte(`"refused"`), 5*time.Second); perr == nil || perr.Outcome != OutcomeRejected {
		t.Fatalf("TOPIC_AUTHORIZATION_FAILED: %v, want refused", perr)
	}
	rec, perr := sendOne(p, "events", []byte(`"next"`), 5*time.Second)
	if perr != nil || rec.attempts.Load() != 1 {
		t.Fatalf("the next record: %v after %d attempts, want acknowledged at once", perr, rec.attempts.Load())
	}
	if s := p.currentSession(); s.id != before.id {
		t.Errorf("producer ID %d, then %d: a refused batch broke the sequence", before.id, s.id)
	}
}

// A sequence error after an attempt whose answer was lost (it may have
// appended the batch) answers "outcome unknown": sending the records again
// under a new producer ID could store them twice.
func TestSequenceErrorAfterALostAnswerIsUnknown(t *testing.T) {
	c, p := warmProducer(t)
	var n int
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if n++; n == 1 {
			return nil, errors.New("drop the connection"), true
		}
		return nil, nil, false
	})
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.OutOfOrderSequenceNumber})
	_, perr := sendOne(p, "events", []byte(`"lost"`), 5*time.Second)
	if perr == nil || perr.Outcome != OutcomeUnknown {
		t.Fatalf("got %v, want outcome unknown", perr)
	}
	if hw := c.PartitionInfo("events", 0).HighWatermark; hw != 1 {
		t.Errorf("the topic holds %d records, want the warm-up only: the record was sent again", hw)
	}
}
