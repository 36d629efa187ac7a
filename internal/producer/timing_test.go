package producer

// A record's timestamp is a client's data; the producer times its attempts
// from the record's arrival. These examples replay what a timestamp far in
// the future or the past once did: every attempt's time was over before it
// began, the partition was held until the delivery timeout, and an empty
// batch it then kept crashed the process.

import (
	"context"
	"errors"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap"
)

func TestClientTimestampIsNotAClock(t *testing.T) {
	for _, ts := range []time.Time{
		time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Unix(0, 0),
		{},
	} {
		t.Run(ts.Format(time.RFC3339), func(t *testing.T) {
			kafkatest.NoLeaks(t)
			c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
			// Without the delivery timeout's two minutes to hide
			// behind: a held partition shows as a failed second record.
			p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll, DeliveryTimeout: 30 * time.Second}, zap.NewNop())
			t.Cleanup(func() { <-p.Close() })
			var mu sync.Mutex
			var brokerTimeouts []int32
			c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Observe: true, Count: -1, When: func(req kmsg.Request) bool {
				mu.Lock()
				defer mu.Unlock()
				brokerTimeouts = append(brokerTimeouts, req.(*kmsg.ProduceRequest).TimeoutMillis)
				return true
			}})

			odd := NewRecord([]byte(`"odd time"`), time.Now(), 2*time.Second)
			odd.Time = ts
			odd.Partition = 0
			if perr := p.send(context.Background(), "events", odd); perr != nil {
				t.Fatalf("a record stamped %v: %v, want acknowledged", ts, perr)
			}
			// Another client's record to the same partition.
			next, perr := sendOne(p, "events", []byte(`"next"`), 2*time.Second)
			if _, attempts := next.Progress(); perr != nil || attempts != 1 {
				t.Fatalf("the next record: %v after %d attempts, want acknowledged at once", perr, attempts)
			}
			stored := kafkatest.Stored(t, c, "events")
			// franz-go decodes a timestamp through nanoseconds, which
			// hold the years 1678 to 2262 only: compare within those.
			inRange := ts.Year() > 1678 && ts.Year() < 2262
			if len(stored) != 2 || inRange && !stored[0].Timestamp.Equal(time.UnixMilli(ts.UnixMilli())) {
				t.Errorf("stored %d records, the first stamped %v; want 2, the first stamped %v", len(stored), stored[0].Timestamp, ts)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, ms := range brokerTimeouts {
				if ms < 1000 || ms > 2000 {
					t.Errorf("broker-side timeouts %v ms, want each near the records' 2 s", brokerTimeouts)
					break
				}
			}
		})
	}
}

// The broker's time for a produce request fits its int32 field, whatever
// the deadline.
func TestBrokerTimeoutIsBounded(t *testing.T) {
	for _, until := range []time.Time{time.Now().Add(-time.Hour), time.Now().Add(100 * 365 * 24 * time.Hour), time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)} {
		if got := brokerTimeout(until); got < 1 {
			t.Errorf("brokerTimeout(%v) = %d", until, got)
		}
	}
	if got := brokerTimeout(time.Now().Add(100 * 365 * 24 * time.Hour)); got != math.MaxInt32 {
		t.Errorf("brokerTimeout in a century = %d, want the largest int32", got)
	}
	if got := attemptTimeout(-time.Hour, 2*time.Minute); got != minAttemptTimeout {
		t.Errorf("attemptTimeout of a deadline passed = %v, want %v", got, minAttemptTimeout)
	}
	if got := attemptTimeout(1000*time.Hour, 2*time.Minute); got != maxAttemptTimeout {
		t.Errorf("attemptTimeout of 1000 h = %v, want %v", got, maxAttemptTimeout)
	}
	if got := attemptTimeout(time.Minute, 20*time.Second); got != 20*time.Second {
		t.Errorf("attemptTimeout of a minute, with a delivery timeout of 20 s = %v, want 20 s", got)
	}
}

// An attempt that ends before the transport wrote its request (the
// connection to the leader took longer than the attempt's time) wrote
// nothing: its records are answered not written, safe to retry, and not
// "outcome unknown".
func TestAttemptEndedBeforeWritingWroteNothing(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	var dials atomic.Int32
	var dialer net.Dialer
	p := hookedProducer(t, c, func(ctx context.Context, network, address string) (net.Conn, error) {
		if dials.Add(1) == 1 {
			// The first connection to the leader is slow, past the
			// attempt's time, then opens.
			time.Sleep(400 * time.Millisecond)
		}
		return dialer.DialContext(ctx, network, address)
	})
	p.cfg.Idempotence = IdempotenceOff
	p.idempotent.Store(false)
	p.start()

	done := make(chan *Error, 1)
	rec := NewRecord([]byte(`"slow dial"`), time.Now(), 200*time.Millisecond)
	rec.OnDone = func(_ *Record, err *Error) { done <- err }
	if perr := publishNoWait(p, context.Background(), "events", rec); perr != nil {
		t.Fatal(perr)
	}
	if perr := <-done; perr == nil || perr.Outcome != OutcomeRetry {
		t.Fatalf("got %v, want not written (the request was never written)", perr)
	}
	if got := kafkatest.Stored(t, c, "events"); len(got) != 0 {
		t.Errorf("the topic holds %d records, want none", len(got))
	}
}

// A batch is never kept empty, nor indexed when it is.
func TestEmptyBatchIsNeverKept(t *testing.T) {
	p := unstarted(t, Config{})
	pt := newPartition(p, &topicState{p: p, name: "events"}, 0)
	s := &session{id: 1}
	b := &batch{part: pt, session: s, mayBeWritten: true, sending: true}
	pt.batch = b
	pt.failed(b, nil, errNoRecordForTest())
	if pt.batch != nil {
		t.Errorf("a batch left without records by claim is kept")
	}
	pt.batch = &batch{part: pt, session: s, mayBeWritten: true}
	if !pt.givenUp(pt.batch, time.Now()) || pt.batch != nil {
		t.Errorf("an empty batch is not given up at once")
	}
}

func errNoRecordForTest() error {
	return errors.Join(errors.New("writing the request"), protocol.ErrNoRecord)
}

// The idempotent producer's identity is asked for on a goroutine of its
// own: a broker that holds InitProducerId holds no sink, and a try that
// gets no answer is followed by another on a new connection, so that a
// record is acknowledged within its timeout.
func TestHeldInitProducerIDHoldsNoRecord(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	release := make(chan struct{})
	var asked atomic.Int32
	c.ControlKey(int16(kmsg.InitProducerID), func(kmsg.Request) (kmsg.Response, error, bool) {
		if asked.Add(1) == 1 {
			c.KeepControl()
			c.SleepControl(func() { <-release }) // no answer on this connection
		}
		return nil, nil, false
	})
	p := testProducer(t, c)
	t.Cleanup(func() { close(release) })
	start := time.Now()
	if _, perr := sendOne(p, "events", []byte(`"after a held InitProducerId"`), 3*time.Second); perr != nil {
		t.Fatalf("after %v: %v, want acknowledged", time.Since(start), perr)
	}
	if asked.Load() < 2 {
		t.Errorf("InitProducerId asked %d times, want a second try", asked.Load())
	}
}

// A broker that takes connections and never answers: the identity is
// asked for again on a new connection with twice the time, 1 s, 2 s, then
// 4 s, however the try's end is noticed (the connection's deadline fires
// with the context's).
func TestAskSessionDoublesItsTries(t *testing.T) {
	kafkatest.NoLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	var conns sync.WaitGroup
	conns.Go(func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			held = append(held, c) // never answered
		}
	})
	p := unstarted(t, Config{Brokers: []string{ln.Addr().String()}, Acks: AcksAll})
	done := make(chan struct{})
	p.sessionAsking = done
	p.watchers.Add(1)
	start := time.Now()
	p.askSession(done)
	took := time.Since(start)
	p.cancel()
	ln.Close()
	conns.Wait()
	if took < 6500*time.Millisecond || accepted.Load() != 3 {
		t.Errorf("gave up after %v and %d tries, want 3 tries, 1 + 2 + 4 s", took, accepted.Load())
	}
}

// A request the transport encodes after its attempt ended (its
// connection's goroutine was late) may meet the batch being given up:
// the records keep their bytes until the encoding is done. (A data race
// under -race, and a torn read without it.)
func TestBatchGivenUpWhileEncodedKeepsItsBytes(t *testing.T) {
	value := make([]byte, 64<<10)
	for range 50 {
		now := time.Now()
		var recs []*Record
		for range 8 {
			recs = append(recs, NewRecord(value, now, 50*time.Millisecond))
		}
		pt := queuedPartition(t, recs...)
		pt.mu.Lock()
		pt.paused = true // no backoff timer here
		b := pt.newBatch(now, nil)
		pt.mu.Unlock()
		w := &wireBatch{b: b}
		pt.mu.Lock()
		w.opened = true // the first half of open: the transport read the batch
		pt.mu.Unlock()
		if !w.end() {
			t.Fatal("the attempt ended without the batch opened")
		}
		pt.failed(b, nil, context.DeadlineExceeded) // may be written: kept
		var wg sync.WaitGroup
		wg.Go(func() { pt.claim(b, 0) }) // the late second half of open
		wg.Go(func() {
			pt.mu.Lock()
			defer pt.mu.Unlock()
			pt.givenUp(b, now.Add(time.Hour))
		})
		wg.Wait()
		for _, rec := range recs {
			if rec.state != stateCompleted || rec.Value != nil {
				t.Fatalf("a record given up: state %d, %d bytes kept after the encoding", rec.state, len(rec.Value))
			}
		}
	}
}

// A sink whose request never reached its broker (the connection did not
// open in time) is failing, so that records without a key go to other
// partitions meanwhile.
func TestSinkNotReachedIsFailing(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := hookedProducer(t, c, func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done() // the leader's host drops our packets
		return nil, ctx.Err()
	})
	p.cfg.Idempotence = IdempotenceOff
	p.idempotent.Store(false)
	p.start()
	if _, perr := sendOne(p, "events", []byte(`{}`), 300*time.Millisecond); perr == nil || perr.Outcome != OutcomeRetry {
		t.Fatalf("got %v, want not written", perr)
	}
	kafkatest.WaitFor(t, 2*time.Second, func() bool {
		p.sinksMu.RLock()
		defer p.sinksMu.RUnlock()
		for _, s := range p.sinkByID {
			if s.failing.Load() {
				return true
			}
		}
		return false
	})
}

// The records that wait for the idempotent producer's identity go as soon
// as it comes, not after the backoff of failed attempts (which reaches
// 500 ms while a broker is slow to give it).
func TestRecordsGoOnceTheIdentityComes(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	c.ControlKey(int16(kmsg.InitProducerID), func(kmsg.Request) (kmsg.Response, error, bool) {
		// The first try gets no answer within its second.
		c.SleepControl(func() { time.Sleep(1200 * time.Millisecond) })
		return nil, nil, false
	})
	p := testProducer(t, c)
	stop := make(chan struct{})
	var came time.Time
	var watch sync.WaitGroup
	watch.Go(func() {
		for p.currentSession() == nil {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
		came = time.Now()
	})
	_, perr := sendOne(p, "events", []byte(`"waits for the identity"`), 4*time.Second)
	acked := time.Now()
	close(stop)
	watch.Wait()
	if perr != nil {
		t.Fatal(perr)
	}
	if came.IsZero() || acked.Sub(came) > 250*time.Millisecond {
		t.Errorf("acknowledged %v after the identity came, want at once", acked.Sub(came))
	}
}
