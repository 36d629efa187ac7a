package producer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"
	"github.com/segmentio/kafka-go/protocol/rawproduce"
)

// sink sends the records of every partition one broker leads: as soon as
// fewer than max_in_flight of its requests are in flight, one produce
// request carries a batch of each partition that has records waiting
// (group commit; Kafka's clients have the same shape). Records that pile
// up meanwhile go in the next request, so the batches grow with the load,
// and an idle sink costs nothing: no timer, a goroutine asleep.
type sink struct {
	p  *Producer
	id int32

	wake chan struct{} // one token: something became ready

	mu       sync.Mutex
	ready    []*partition
	spare    []*partition
	inFlight int
	closed   bool

	// failing: the last request failed to reach the broker; the sticky
	// partitioner avoids its partitions meanwhile.
	failing atomic.Bool
}

// add puts pt on the list of partitions to drain; pt.mu is held.
func (s *sink) add(pt *partition) {
	s.mu.Lock()
	s.ready = append(s.ready, pt)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// close ends the sink once nothing is ready and nothing in flight.
func (s *sink) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run is the sink's goroutine.
func (s *sink) run() {
	p := s.p
	defer p.sinks.Done()
	linger := p.cfg.Linger
	var prevStart time.Time
	prevRecords := 0
	for {
		s.mu.Lock()
		for len(s.ready) == 0 || s.inFlight >= p.cfg.MaxInFlight {
			if s.closed && len(s.ready) == 0 && s.inFlight == 0 {
				s.mu.Unlock()
				return
			}
			s.mu.Unlock()
			<-s.wake
			s.mu.Lock()
		}
		if linger > 0 && prevRecords > 1 {
			// Requests arrive concurrently: wait for a larger batch.
			if wait := time.Until(prevStart.Add(linger)); wait > 0 {
				s.mu.Unlock()
				time.Sleep(wait)
				s.mu.Lock()
			}
		}
		parts := s.ready
		s.ready, s.spare = s.spare[:0], nil
		s.mu.Unlock()

		// New batches of the idempotent producer need its identity;
		// batches sent before keep theirs, and go on meanwhile.
		noIdentity := p.ensureSession()
		now := time.Now()
		var batches []*batch
		for _, pt := range parts {
			if b := pt.drain(s.id, now, noIdentity); b != nil {
				batches = append(batches, b)
			}
		}
		s.recycle(parts)
		if len(batches) == 0 {
			prevRecords = 0
			continue
		}
		prevStart, prevRecords = now, 0
		for _, b := range batches {
			prevRecords += len(b.recs)
		}
		s.mu.Lock()
		s.inFlight++
		s.mu.Unlock()
		if p.cfg.MaxInFlight == 1 {
			s.send(batches)
		} else {
			go s.send(batches)
		}
	}
}

// recycle keeps the list's memory for the next round.
func (s *sink) recycle(parts []*partition) {
	clear(parts)
	s.mu.Lock()
	if s.spare == nil {
		s.spare = parts[:0]
	}
	s.mu.Unlock()
}

// send makes one produce request of the batches and hands each its
// result.
func (s *sink) send(batches []*batch) {
	p := s.p
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}()
	var timeout time.Duration
	var ackBy time.Time
	for _, b := range batches {
		timeout = max(timeout, b.timeout)
		ackBy = later(ackBy, b.ackBy)
	}
	until := later(time.Now().Add(timeout), ackBy)
	req := &rawproduce.Request{Acks: int16(p.cfg.Acks), Timeout: brokerTimeout(until)}
	wires := make([]wireBatch, len(batches))
	for i, b := range batches {
		topic := b.part.topic.name
		t := len(req.Topics) - 1
		if t < 0 || req.Topics[t].Topic != topic {
			req.Topics = append(req.Topics, rawproduce.RequestTopic{Topic: topic})
			t++
		}
		wires[i] = wireBatch{b: b, codec: p.cfg.Compression}
		req.Topics[t].Partitions = append(req.Topics[t].Partitions, rawproduce.RequestPartition{
			Partition: b.part.id,
			RecordSet: protocol.RawRecordSet{Reader: &wires[i]},
		})
	}
	ctx, cancel := context.WithDeadline(p.ctx, until)
	msg, err := p.transport.RoundTrip(ctx, p.client.Addr, req)
	cancel()
	if err != nil {
		reached := false
		for i, b := range batches {
			if !wires[i].end() {
				// The transport never read the batch into the
				// request (no connection in time, say): whatever
				// the error, this attempt wrote nothing of it.
				b.part.failed(b, nil, unsent(err))
				continue
			}
			reached = reached || mayBeWritten(err, p.cfg.Acks)
			b.part.failed(b, nil, err)
		}
		if !errors.Is(err, protocol.ErrNoRecord) {
			// A request that claim emptied says nothing of the
			// broker; any other failure before it was written
			// does.
			s.failing.Store(!reached)
		}
		return
	}
	s.failing.Store(false)
	res, _ := msg.(*produceAPI.Response)
	for _, b := range batches {
		ans, err := answerFor(res, b, p.cfg.Acks)
		if err != nil {
			b.part.failed(b, ans, err)
			continue
		}
		b.part.acknowledged(b, ans.base)
	}
}

// wireBatch is a batch as one request carries it: kafka-go's encoder reads
// it when it writes the request, which is when the batch is claimed. The
// transport may write a request after its caller stopped waiting for it
// (a connection's goroutine takes it from a queue): once the attempt has
// ended, the batch is no longer given to it.
type wireBatch struct {
	b     *batch
	codec Compression
	r     *bytes.Reader // the transport's goroutine's only
	// opened: the transport read the batch into the request; ended:
	// the attempt's outcome is being settled. Guarded by the
	// partition's lock.
	opened, ended bool
}

func (w *wireBatch) open() error {
	if w.r == nil {
		pt := w.b.part
		pt.mu.Lock()
		if w.ended {
			pt.mu.Unlock()
			return protocol.ErrNoRecord
		}
		w.opened = true
		pt.mu.Unlock()
		enc := pt.claim(w.b, w.codec)
		if enc == nil {
			return protocol.ErrNoRecord
		}
		w.r = bytes.NewReader(enc)
	}
	return nil
}

// end marks the attempt as over, and reports whether the transport read
// the batch into its request: only then may the attempt have written it.
func (w *wireBatch) end() (opened bool) {
	pt := w.b.part
	pt.mu.Lock()
	defer pt.mu.Unlock()
	w.ended = true
	return w.opened
}

func (w *wireBatch) Read(p []byte) (int, error) {
	if err := w.open(); err != nil {
		return 0, err
	}
	return w.r.Read(p)
}

func (w *wireBatch) WriteTo(dst io.Writer) (int64, error) {
	if err := w.open(); err != nil {
		return 0, err
	}
	return w.r.WriteTo(dst)
}

// encode is the batch as a request carries it: its length, then the
// batch.
func (b *batch) encode(codec Compression) []byte {
	size := batchHeaderSize + 4
	for _, rec := range b.recs {
		size += rec.size()
	}
	enc, err := encodeBatch(make([]byte, 4, size), b.recs, codec, b.identity())
	if err != nil {
		panic(fmt.Sprintf("encoding a record batch: %v", err)) // in-memory writers do not fail
	}
	binary.BigEndian.PutUint32(enc, uint32(len(enc)-4))
	return enc
}

// produceAnswer is the broker's answer for one partition of a request.
type produceAnswer struct {
	base int64 // offset of the first record; -1 if the broker does not say
	// recordErrors are the broker's messages for the records it
	// refused, by their position in the batch.
	recordErrors map[int]string
}

// errAnswerWithoutPartition is a produce answer that does not mention the
// partition of a batch: the request reached the broker, which may have
// appended the records.
var errAnswerWithoutPartition = errors.New("the Kafka broker's answer does not mention the partition")

// answerFor finds the batch's partition in the answer: nil error if the
// records were written (or were already: a duplicate the broker
// recognised by its sequence numbers).
func answerFor(res *produceAPI.Response, b *batch, acks Acks) (*produceAnswer, error) {
	if acks == AcksNone {
		return &produceAnswer{base: -1}, nil
	}
	if res == nil {
		return nil, errAnswerWithoutPartition
	}
	for i := range res.Topics {
		t := &res.Topics[i]
		if t.Topic != b.part.topic.name {
			continue
		}
		for j := range t.Partitions {
			part := &t.Partitions[j]
			if part.Partition != b.part.id {
				continue
			}
			ans := &produceAnswer{base: part.BaseOffset}
			switch kafka.Error(part.ErrorCode) {
			case 0:
				return ans, nil
			case kafka.DuplicateSequenceNumber:
				ans.base = -1 // the broker no longer says where
				return ans, nil
			}
			for _, re := range part.RecordErrors {
				if ans.recordErrors == nil {
					ans.recordErrors = make(map[int]string, len(part.RecordErrors))
				}
				ans.recordErrors[int(re.BatchIndex)] = re.BatchIndexErrorMessage
			}
			var err error = kafka.Error(part.ErrorCode)
			if part.ErrorMessage != "" {
				err = fmt.Errorf("%w: %s", err, part.ErrorMessage)
			}
			return ans, err
		}
	}
	return nil, errAnswerWithoutPartition
}

// brokerTimeout is the time a broker may take over a produce request
// (waiting for the in-sync replicas with acks=all), in milliseconds: what
// is left until the request's deadline, less a margin for the answer to
// travel back before the deadline.
func brokerTimeout(until time.Time) int32 {
	left := time.Until(until)
	left -= min(left/10, 100*time.Millisecond)
	return int32(min(max(left.Milliseconds(), 1), math.MaxInt32))
}
