package queuepublish

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func TestIdempotencyStoreWindowAndBound(t *testing.T) {
	s := newIdempotencyStore(idemSettings{time.Minute, 2, 1 << 20, "c", "t"})
	body := func(b string) [sha256.Size]byte { return idemDigest(modeRecords, []byte(b), nil) }
	d := body(`{}`)
	now := time.Now()
	e, st := s.claim("a", d, now, time.Minute)
	if st != idemNew {
		t.Fatalf("first use: %v", st)
	}
	if _, st := s.claim("a", d, now, time.Minute); st != idemInProgress {
		t.Errorf("while in use: %v, want in progress", st)
	}
	s.settle(e, []*record{{}})
	if _, st := s.claim("a", body(`[]`), now, time.Minute); st != idemOtherBody {
		t.Errorf("another body: %v", st)
	}
	e, st = s.claim("a", d, now.Add(59*time.Second), time.Minute)
	if st != idemRepeat {
		t.Fatalf("within the window: %v", st)
	}
	s.settle(e, nil) // keeps what the first request stored
	if e, st = s.claim("a", d, now.Add(61*time.Second), time.Minute); st != idemNew {
		t.Errorf("after the window: %v, want new", st)
	}
	s.settle(e, []*record{{}})

	// The bound: a third key forgets the oldest.
	for _, k := range []string{"b", "c"} {
		e, _ := s.claim(k, d, now.Add(62*time.Second), time.Minute)
		s.settle(e, []*record{{}})
	}
	if len(s.entries) != 2 || !s.evictedOnce() || s.evictedOnce() {
		t.Errorf("entries %d, want 2 and one eviction reported once", len(s.entries))
	}
	if _, st := s.claim("a", d, now.Add(62*time.Second), time.Minute); st != idemNew {
		t.Errorf("the evicted key: %v, want new", st)
	}
	// A request that produced nothing leaves no entry.
	e, _ = s.claim("nothing", d, now.Add(62*time.Second), time.Minute)
	s.settle(e, nil)
	if _, ok := s.entries["nothing"]; ok {
		t.Error("an entry without records was kept")
	}
}

// A key is kept for the longest window of the handlers whose keys may go
// to its cluster and topic, which share it; handlers of other topics or
// clusters keep their own windows. The bounds are the largest of all, and
// count every key.
func TestIdempotencyStoreWindowOfTheScope(t *testing.T) {
	short := idemSettings{time.Minute, 1, 1 << 20, "c", "t"}
	long := idemSettings{time.Hour, 2, 1 << 10, "c", "t\x00u"}
	any := idemSettings{24 * time.Hour, 1, 1, "d", ""}
	s := newIdempotencyStore(short)
	s.use(long, 1)
	s.use(any, 1)
	if s.maxKeys != 2 || s.maxBytes != 1<<20 {
		t.Fatalf("bounds %d keys and %d bytes; want 2 keys, 1 MiB", s.maxKeys, s.maxBytes)
	}
	for _, tt := range []struct {
		cluster, topic string
		want           time.Duration
	}{
		{"c", "t", time.Hour},      // short and long share it
		{"c", "v", time.Minute},    // no other handler's keys go there
		{"d", "t", 24 * time.Hour}, // a handler of any topic of cluster d
		{"e", "t", time.Minute},    // another cluster
	} {
		if got := s.windowFor(tt.cluster, tt.topic, time.Minute); got != tt.want {
			t.Errorf("window of %s/%s = %v, want %v", tt.cluster, tt.topic, got, tt.want)
		}
	}
	d := idemDigest(modeRecords, []byte(`{}`), nil)
	now := time.Now()
	e, _ := s.claim("long", d, now, time.Hour)
	s.settle(e, []*record{{}})
	e, _ = s.claim("short", d, now, time.Minute)
	s.settle(e, []*record{{}})
	if e, st := s.claim("long", d, now.Add(30*time.Minute), time.Minute); st != idemRepeat {
		t.Errorf("within its window: %v, want a repeat", st)
	} else {
		s.settle(e, nil)
	}
	// Behind the entry of the longer window, the shorter one has ended.
	if _, st := s.claim("short", d, now.Add(2*time.Minute), time.Minute); st != idemNew {
		t.Errorf("past its window, behind a longer one: %v, want new", st)
	}
	s.use(long, -1)
	if got := s.windowFor("c", "t", time.Minute); got != time.Minute || s.maxKeys != 1 {
		t.Errorf("without the handler of the longer window: window %v, %d keys; want 1m, 1 key", got, s.maxKeys)
	}
}

// The store is bounded in bytes too: a key whose request holds many
// records counts for them, and the oldest keys are forgotten to make room.
func TestIdempotencyStoreBytesBound(t *testing.T) {
	s := newIdempotencyStore(idemSettings{time.Minute, 1000, 10*idemRecordCost + 4*(idemEntryCost+8), "c", "t"})
	now := time.Now()
	d := idemDigest(modeRecords, []byte(`{}`), nil)
	for i := range 3 {
		e, _ := s.claim(fmt.Sprint("key-", i), d, now, time.Minute)
		s.settle(e, make([]*record, 4)) // 4 records each
	}
	if len(s.entries) != 2 || s.entries["key-0"] != nil || !s.evictedOnce() {
		t.Errorf("keys held %d (key-0 held: %v), want the 2 newest: 3 x 4 records do not fit in 10", len(s.entries), s.entries["key-0"] != nil)
	}
	if s.bytes > s.maxBytes {
		t.Errorf("the store holds %d bytes, over its bound of %d", s.bytes, s.maxBytes)
	}
	checkBytes(t, s)
}

// checkBytes fails the test unless the store counts exactly the cost of
// the entries it holds.
func checkBytes(t *testing.T, s *idempotencyStore) {
	t.Helper()
	held := int64(0)
	for _, e := range s.entries {
		held += e.cost
	}
	if s.bytes != held {
		t.Errorf("the store counts %d bytes, its entries hold %d", s.bytes, held)
	}
}

// A request that ends when no older key is left to forget (here its
// records alone exceed the bound) keeps its own key rather than forget it
// to make room for its records, and the bytes counted stay those held.
func TestIdempotencyStoreKeepsTheEntryItGrows(t *testing.T) {
	s := newIdempotencyStore(idemSettings{time.Minute, 1000, idemEntryCost + 8 + 3*idemRecordCost, "c", "t"}) // less than one entry of 10 records
	now := time.Now()
	d := idemDigest(modeRecords, []byte(`{}`), nil)
	for i := range 5 {
		e, _ := s.claim(fmt.Sprint("key-", i), d, now, time.Minute)
		s.settle(e, make([]*record, 10))
		checkBytes(t, s)
		if s.entries[e.key] != e {
			t.Errorf("request %d: its own key was forgotten", i)
		}
	}
}

// Requests that produce nothing (an outage) leave no entry, and the
// store's order list does not grow with them either.
func TestIdempotencyStoreDuringAnOutage(t *testing.T) {
	s := newIdempotencyStore(idemSettings{time.Minute, 100, 1 << 30, "c", "t"})
	now := time.Now()
	d := idemDigest(modeBody, []byte(`{}`), []*record{{}})
	for i := range 100000 {
		e, _ := s.claim(fmt.Sprint("failed-", i), d, now, time.Minute)
		s.settle(e, nil)
	}
	if len(s.entries) != 0 || len(s.order) > 128 || s.bytes != 0 {
		t.Errorf("after 100000 requests that produced nothing: %d entries, order of %d, %d bytes", len(s.entries), len(s.order), s.bytes)
	}
}

// What shapes the records is part of a request's identity: the mode, the
// body, and in body mode the key and headers taken from the request.
func TestIdempotencyDigest(t *testing.T) {
	rec := func(key string, headers ...string) []*record {
		r := &record{}
		if key != "-" {
			r.Key = []byte(key)
		}
		for i := 0; i+1 < len(headers); i += 2 {
			r.Headers = append(r.Headers, producer.Header{Key: headers[i], Value: []byte(headers[i+1])})
		}
		return []*record{r}
	}
	base := idemDigest(modeBody, []byte(`{}`), rec("k1", "source", "web"))
	for name, d := range map[string][sha256.Size]byte{
		"another body":          idemDigest(modeBody, []byte(`[]`), rec("k1", "source", "web")),
		"another mode":          idemDigest(modeRecords, []byte(`{}`), rec("k1", "source", "web")),
		"another key":           idemDigest(modeBody, []byte(`{}`), rec("k2", "source", "web")),
		"no key":                idemDigest(modeBody, []byte(`{}`), rec("-", "source", "web")),
		"an empty key":          idemDigest(modeBody, []byte(`{}`), rec("", "source", "web")),
		"another header value":  idemDigest(modeBody, []byte(`{}`), rec("k1", "source", "app")),
		"another header name":   idemDigest(modeBody, []byte(`{}`), rec("k1", "origin", "web")),
		"no header":             idemDigest(modeBody, []byte(`{}`), rec("k1")),
		"the key in the header": idemDigest(modeBody, []byte(`{}`), rec("k1source", "", "web")),
	} {
		if d == base {
			t.Errorf("%s: the same digest", name)
		}
	}
	if idemDigest(modeBody, []byte(`{}`), rec("k1", "source", "web")) != base {
		t.Error("the same request: another digest")
	}
}

// idemServer runs queue_publish with an idempotency window on topic
// "events" of c.
func idemServer(t *testing.T, c *kfake.Cluster, extra string) (logFile string) {
	t.Helper()
	t.Setenv("QP_TEST_SECRET", testSecret)
	logFile = filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, fmt.Sprintf(`	handle /one {
		queue_publish {
			brokers %[1]s
			topic events
			secret {env.QP_TEST_SECRET}
			idempotency_window 1m
			timeout 400ms
			%[2]s
		}
	}
	handle /many {
		queue_publish {
			brokers %[1]s
			topic events
			secret {env.QP_TEST_SECRET}
			mode records
			idempotency_window 1m
			timeout 400ms
			%[2]s
		}
	}`, c.ListenAddrs()[0], extra))
	return logFile
}

func withKey(key string) map[string]string {
	return map[string]string{"Authorization": testSecret, "Idempotency-Key": key}
}

func TestIdempotentRepeats(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "events"))
	idemServer(t, c, "")

	first := do(t, "POST", "/one", withKey("k1"), strings.NewReader(`{"order":1}`))
	if first.status != 200 || first.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("first: %d %s", first.status, first.body)
	}
	again := do(t, "POST", "/one", withKey("k1"), strings.NewReader(`{"order":1}`))
	if again.status != 200 || again.body != first.body || again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("repeat: %d %s (replayed %q), want the first answer %s", again.status, again.body, again.header.Get("Idempotent-Replayed"), first.body)
	}
	other := do(t, "POST", "/one", withKey("k1"), strings.NewReader(`{"order":2}`))
	if other.status != 422 || other.body != `{"err":"Idempotency-Key already used with another request"}` {
		t.Errorf("same key, other body: %d %s", other.status, other.body)
	}
	if got := do(t, "POST", "/one", withKey("k2"), strings.NewReader(`{"order":1}`)); got.status != 200 || got.body == first.body {
		t.Errorf("another key produces again: %d %s", got.status, got.body)
	}
	// The same body and key in another mode is another request: in body
	// mode the envelope is one record, in records mode two.
	envelope := `{"records":[{"value":1},{"value":2}]}`
	if got := do(t, "POST", "/one", withKey("k3"), strings.NewReader(envelope)); got.status != 200 {
		t.Fatalf("the envelope as one record: %d %s", got.status, got.body)
	}
	if got := do(t, "POST", "/many", withKey("k3"), strings.NewReader(envelope)); got.status != 422 {
		t.Errorf("the same key and body in records mode: %d %s, want 422", got.status, got.body)
	}
	if got := do(t, "POST", "/many", withKey("k4"), strings.NewReader(envelope)); got.status != 200 {
		t.Fatalf("records mode: %d %s", got.status, got.body)
	}
	if got := do(t, "POST", "/one", withKey("k4"), strings.NewReader(envelope)); got.status != 422 {
		t.Errorf("the same key and body in body mode: %d %s, want 422", got.status, got.body)
	}
	if got := stored(t, c, "events"); len(got) != 5 {
		t.Errorf("the topic holds %d records, want 5 (k1, k2, k3 once, k4's two)", len(got))
	}
	unloadChecksLeaks(t)
}

func TestIdempotencyAfterUnknownOutcome(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	idemServer(t, c, "")
	release := make(chan struct{})
	received := holdProduce(c, release)

	// The broker holds the request past the timeout: 504, producer.Outcome unknown.
	answered := make(chan answerT, 1)
	go func() { answered <- do(t, "POST", "/one", withKey("slow"), strings.NewReader(`{"slow":1}`)) }()
	waitFor(t, 5*time.Second, func() bool { return received.Load() == 1 })
	// A repeat while the first is still waiting is refused, not produced.
	if got := do(t, "POST", "/one", withKey("slow"), strings.NewReader(`{"slow":1}`)); got.status != 409 {
		t.Errorf("repeat in progress: %d %s, want 409", got.status, got.body)
	}
	if got := <-answered; got.status != 504 {
		t.Fatalf("first: %d %s, want 504", got.status, got.body)
	}
	// The record lands after all; the repeat gets its offset.
	close(release)
	waitFor(t, 5*time.Second, func() bool { return c.PartitionInfo("events", 0).HighWatermark == 1 })
	got := do(t, "POST", "/one", withKey("slow"), strings.NewReader(`{"slow":1}`))
	if got.status != 200 || got.body != `{"success":true,"partition":0,"offset":0}` || got.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("repeat after the record landed: %d %s", got.status, got.body)
	}
	if got := stored(t, c, "events"); len(got) != 1 {
		t.Errorf("the topic holds %d records, want 1", len(got))
	}
}

func TestIdempotencyAfterNotWritten(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "events"))
	idemServer(t, c, "")

	fault := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Partitions: []int32{1}, Err: kerr.NotEnoughReplicas, Count: -1})
	body := `{"records":[{"value":"a","partition":0},{"value":"b","partition":1}]}`
	first := do(t, "POST", "/many", withKey("batch"), strings.NewReader(body))
	if first.status != 503 || !strings.Contains(first.body, `"outcome":"not_written"`) {
		t.Fatalf("first: %d %s, want 503 with b not written", first.status, first.body)
	}
	fault.Remove()
	again := do(t, "POST", "/many", withKey("batch"), strings.NewReader(body))
	if again.status != 200 {
		t.Fatalf("repeat: %d %s", again.status, again.body)
	}
	var ans struct {
		Offsets []struct{ Partition, Offset int }
	}
	json.Unmarshal([]byte(again.body), &ans)
	if len(ans.Offsets) != 2 || ans.Offsets[0].Partition != 0 || ans.Offsets[1].Partition != 1 {
		t.Errorf("repeat answer %s", again.body)
	}
	if !strings.Contains(first.body, fmt.Sprintf(`{"partition":0,"offset":%d}`, ans.Offsets[0].Offset)) {
		t.Errorf("record a should keep the offset of the first attempt: first %s, repeat %s", first.body, again.body)
	}
	values := recordsByValue(t, c, "events")
	if len(values) != 2 || len(stored(t, c, "events")) != 2 {
		t.Errorf("the topic holds %d records, want a and b once each", len(stored(t, c, "events")))
	}
}

func TestAsyncDelivery(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events", "forbidden", "batches"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, fmt.Sprintf(`	handle /events {
		queue_publish {
			brokers %[1]s
			topic events
			secret {env.QP_TEST_SECRET}
			delivery async
			queue_size 2
		}
	}
	handle /forbidden {
		queue_publish {
			brokers %[1]s
			topic forbidden
			secret {env.QP_TEST_SECRET}
			delivery async
		}
	}
	handle /batches {
		queue_publish {
			brokers %[1]s
			topic batches
			secret {env.QP_TEST_SECRET}
			mode records
			delivery async
			queue_size 3
		}
	}`, c.ListenAddrs()[0]))
	release := make(chan struct{})
	holdProduce(c, release)

	for i := range 2 {
		got := do(t, "POST", "/events", auth(testSecret), strings.NewReader(fmt.Sprintf(`{"n":%d}`, i)))
		if got.status != 202 || got.body != `{"success":true}` {
			t.Fatalf("record %d: %d %s, want 202 before the broker answered", i, got.status, got.body)
		}
	}
	full := do(t, "POST", "/events", auth(testSecret), strings.NewReader(`{"n":2}`))
	if full.status != 503 || full.body != `{"error":"queue full","outcome":"not_written"}` || full.header.Get("Retry-After") == "" {
		t.Errorf("a full queue: %d %s, want 503 with Retry-After", full.status, full.body)
	}
	// The gauges of the queues: 2 records queued, of 2 + 10000 + 3 (or
	// more while Caddy still unloads an earlier test's config).
	m := scrape(t)
	if q, size := m["caddy_queue_publish_async_queued_records{}"], m["caddy_queue_publish_async_queue_size{}"]; q != 2 || size < 2+defaultQueueSize+3 {
		t.Errorf("async queue gauges: %v queued of %v, want 2 of %d", q, size, 2+defaultQueueSize+3)
	}
	// The fullest queue, /events's, is full.
	if fill := m["caddy_queue_publish_async_queue_fill{}"]; fill != 1 {
		t.Errorf("async queue fill %v, want 1 (the queue of /events)", fill)
	}
	// In records mode, queue_size counts records, not requests.
	batch := `{"records":[{"value":1},{"value":2}]}`
	if got := do(t, "POST", "/batches", auth(testSecret), strings.NewReader(batch)); got.status != 202 || got.body != `{"success":true}` {
		t.Errorf("2 records of 3: %d %s, want 202", got.status, got.body)
	}
	if got := do(t, "POST", "/batches", auth(testSecret), strings.NewReader(batch)); got.status != 503 {
		t.Errorf("4 records of 3: %d %s, want 503", got.status, got.body)
	}
	// Unset, max_records is at most queue_size: a request that could
	// never be queued is refused for good, not 503 forever.
	four := `{"records":[{"value":1},{"value":2},{"value":3},{"value":4}]}`
	if got := do(t, "POST", "/batches", auth(testSecret), strings.NewReader(four)); got.status != 400 || !strings.Contains(got.body, "max_records (3)") {
		t.Errorf("4 records, queue_size 3: %d %s, want 400 naming max_records (3)", got.status, got.body)
	}
	close(release)
	waitFor(t, 5*time.Second, func() bool { return c.PartitionInfo("events", 0).HighWatermark == 2 })
	waitFor(t, 5*time.Second, func() bool { return c.PartitionInfo("batches", 0).HighWatermark == 2 })
	// The queue drained: there is room again.
	waitFor(t, 5*time.Second, func() bool {
		return do(t, "POST", "/events", auth(testSecret), strings.NewReader(`{"n":3}`)).status == 202
	})
	waitFor(t, 5*time.Second, func() bool { return c.PartitionInfo("events", 0).HighWatermark == 3 })

	// A record the broker refuses after the 202 is logged.
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "forbidden", Err: kerr.TopicAuthorizationFailed, Count: -1})
	if got := do(t, "POST", "/forbidden", auth(testSecret), strings.NewReader(`{}`)); got.status != 202 {
		t.Fatalf("%d %s", got.status, got.body)
	}
	waitFor(t, 5*time.Second, func() bool {
		logs, _ := os.ReadFile(logFile)
		return hasLogLine(logs, "error", "asynchronous publish failed", "Topic Authorization Failed")
	})
	unloadChecksLeaks(t)
}

// Clients retry with their Idempotency-Key after 504s (the broker is
// slower than the timeout for a while) and 409s: no key ends up stored
// twice, and every key is eventually acknowledged.
func TestIdempotentRetriesWhileBrokerIsSlow(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	idemServer(t, c, "")
	var slow atomic.Int32
	slow.Store(12) // the first produce requests each take 500 ms
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if slow.Add(-1) >= 0 {
			c.SleepControl(func() { time.Sleep(500 * time.Millisecond) })
		}
		return nil, nil, false
	})

	const keys = 12
	statuses := make(chan []int, keys)
	for k := range keys {
		go func() {
			var seen []int
			for range 40 {
				got := do(t, "POST", "/one", withKey(fmt.Sprint("key-", k)), strings.NewReader(fmt.Sprintf(`{"k":%d}`, k)))
				seen = append(seen, got.status)
				if got.status == 200 {
					break
				}
				time.Sleep(50 * time.Millisecond) // the client's back-off
			}
			statuses <- seen
		}()
	}
	retried, unknown := 0, 0
	for range keys {
		seen := <-statuses
		if seen[len(seen)-1] != 200 {
			t.Errorf("a key never got a 200: %v", seen)
		}
		retried += len(seen) - 1
		if slices.Contains(seen, 504) {
			unknown++ // a key retried after an unknown producer.Outcome
		}
	}
	perKey := map[string]int{}
	for _, r := range stored(t, c, "events") {
		perKey[headerMap(r)["idempotency-key"]]++
	}
	for k := range keys {
		if n := perKey[fmt.Sprint("key-", k)]; n != 1 {
			t.Errorf("key-%d is stored %d times", k, n)
		}
	}
	if retried == 0 || unknown == 0 {
		t.Errorf("%d retries, %d keys answered 504: the test did not retry after an unknown outcome", retried, unknown)
	}
	unloadChecksLeaks(t)
}

// A client whose connection drops while the broker holds its record
// retries with the same Idempotency-Key: the retries wait for the first
// attempt's producer.Outcome instead of producing again, and once the record lands
// they get its answer. The key ends up as one record.
func TestIdempotentRetryAfterDroppedConnection(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	idemServer(t, c, "")
	batches := kafkatest.ProducedBatches(c) // before the hold, which it would wait behind
	release := make(chan struct{})
	received := holdProduce(c, release)

	ctx, drop := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "POST", baseURL+"/one", strings.NewReader(`{"dropped":1}`))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range withKey("dropped") {
		req.Header.Set(k, v)
	}
	dropped := make(chan error, 1)
	go func() {
		res, err := testClient.Do(req)
		if err == nil {
			res.Body.Close()
		}
		dropped <- err
	}()
	waitFor(t, 5*time.Second, func() bool { return received.Load() == 1 })
	drop()
	if err := <-dropped; err == nil {
		t.Fatal("the request was answered before its connection dropped")
	}

	// While the first attempt's record is held, a retry is refused as in
	// progress (409) or waits for it and answers that its producer.Outcome is
	// unknown (504); it never produces again.
	statuses := map[int]int{}
	waitFor(t, 5*time.Second, func() bool {
		got := do(t, "POST", "/one", withKey("dropped"), strings.NewReader(`{"dropped":1}`))
		statuses[got.status]++
		return got.status == 504
	})
	// The idempotent producer retries the held batch itself, byte for
	// byte; no request carries another.
	if got := batches(); len(got) != 1 {
		t.Errorf("produce requests carried the batches %v, want only the first attempt's", got)
	}
	close(release)
	var final answerT
	waitFor(t, 5*time.Second, func() bool {
		final = do(t, "POST", "/one", withKey("dropped"), strings.NewReader(`{"dropped":1}`))
		statuses[final.status]++
		return final.status == 200
	})
	if final.header.Get("Idempotent-Replayed") != "true" || !strings.Contains(final.body, `"offset":0`) {
		t.Errorf("after the record landed: %s (replayed %q), want the first attempt's offset 0", final.body, final.header.Get("Idempotent-Replayed"))
	}
	for status := range statuses {
		if status != 200 && status != 409 && status != 504 {
			t.Errorf("retries answered %v", statuses)
		}
	}
	if got := stored(t, c, "events"); len(got) != 1 {
		t.Errorf("the topic holds %d records, want the key's one", len(got))
	}
	unloadChecksLeaks(t)
}

// A first attempt answered 504 (the broker held its request past the
// timeout) that the broker then proves not written (NOT_ENOUGH_REPLICAS)
// is produced by the next repeat with its key: the repeat neither waits
// in vain nor answers 504 for the whole window.
// A repeat's failure is logged of the records it sent, not of those of
// the first attempt that stand for it.
func TestRepeatLogsTheRecordsItSent(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "events"))
	logFile := idemServer(t, c, "")
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Partitions: []int32{1}, Err: kerr.NotEnoughReplicas, Count: -1})
	body := `{"records":[{"value":"a","partition":0},{"value":"b","partition":1}]}`
	for _, attempt := range []string{"first", "repeat"} {
		if got := do(t, "POST", "/many", withKey("half"), strings.NewReader(body)); got.status != 503 {
			t.Fatalf("%s: %d %s, want 503 with b not written", attempt, got.status, got.body)
		}
	}
	logs, _ := os.ReadFile(logFile)
	var lines []string
	for line := range bytes.Lines(logs) {
		if bytes.Contains(line, []byte(`"msg":"publish failed"`)) {
			lines = append(lines, string(line))
		}
	}
	if len(lines) != 2 || !strings.Contains(lines[0], `"records":2,"failed":1`) || !strings.Contains(lines[1], `"records":1,"failed":1`) {
		t.Errorf("publish failed lines %q, want the first of 2 records and 1 failed, the repeat of the 1 record it sent", lines)
	}
}

func TestRepeatProducesWhatTheBrokerProvedNotWritten(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	// Without idempotence: with it, the producer retries the held batch
	// until the broker settles it (the next test).
	idemServer(t, c, "idempotent off")
	release := make(chan struct{})
	received := holdProduce(c, release)

	answered := make(chan answerT, 1)
	go func() { answered <- do(t, "POST", "/one", withKey("refused"), strings.NewReader(`{"refused":1}`)) }()
	waitFor(t, 5*time.Second, func() bool { return received.Load() == 1 })
	if got := <-answered; got.status != 504 {
		t.Fatalf("first: %d %s, want 504 while the broker holds the request", got.status, got.body)
	}
	fault := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: kerr.NotEnoughReplicas})
	close(release)
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	if err := fault.Wait(ctx, 1); err != nil {
		t.Fatal("the held request was not answered NOT_ENOUGH_REPLICAS")
	}
	got := do(t, "POST", "/one", withKey("refused"), strings.NewReader(`{"refused":1}`))
	if got.status != 200 || got.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("repeat after the broker proved the first not written: %d %s (replayed %q), want 200, produced",
			got.status, got.body, got.header.Get("Idempotent-Replayed"))
	}
	if got := stored(t, c, "events"); len(got) != 1 {
		t.Errorf("the topic holds %d records, want 1", len(got))
	}
	again := do(t, "POST", "/one", withKey("refused"), strings.NewReader(`{"refused":1}`))
	if again.status != 200 || again.body != got.body || again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the next repeat: %d %s, want the stored answer replayed", again.status, again.body)
	}
	unloadChecksLeaks(t)
}

// With the idempotent producer, a batch the broker held past the
// client's 504 is retried, byte for byte, until the broker settles it: a
// repeat of the request then gets the record's real outcome, stored once.
func TestRepeatGetsTheOutcomeTheIdempotentProducerLearned(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	idemServer(t, c, "")
	release := make(chan struct{})
	received := holdProduce(c, release)

	answered := make(chan answerT, 1)
	go func() { answered <- do(t, "POST", "/one", withKey("held"), strings.NewReader(`{"held":1}`)) }()
	waitFor(t, 5*time.Second, func() bool { return received.Load() == 1 })
	if got := <-answered; got.status != 504 {
		t.Fatalf("first: %d %s, want 504 while the broker holds the request", got.status, got.body)
	}
	waitFor(t, 5*time.Second, func() bool { return received.Load() >= 2 }) // the retry, held too
	close(release)
	waitFor(t, 5*time.Second, func() bool { return c.PartitionInfo("events", 0).HighWatermark >= 1 })
	got := do(t, "POST", "/one", withKey("held"), strings.NewReader(`{"held":1}`))
	if got.status != 200 || got.header.Get("Idempotent-Replayed") != "true" || got.body != `{"success":true,"partition":0,"offset":0}` {
		t.Fatalf("repeat after the held batch was settled: %d %s (replayed %q), want the stored answer replayed",
			got.status, got.body, got.header.Get("Idempotent-Replayed"))
	}
	if got := stored(t, c, "events"); len(got) != 1 {
		t.Errorf("the topic holds %d records, want 1: the broker stored a retry twice", len(got))
	}
	unloadChecksLeaks(t)
}

// An Idempotency-Key is scoped to where the records go: the same key sent
// to two clusters, or to two topics, is two independent requests, each
// produced; within one scope it is one request, whichever handler it
// reaches.
func TestIdempotencyKeysAreScopedToClusterAndTopic(t *testing.T) {
	one := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events", "audit"))
	two := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	route := func(path, brokers, topic string) string {
		return fmt.Sprintf(`	handle %s {
		queue_publish {
			brokers %s
			topic %s
			secret {env.QP_TEST_SECRET}
			idempotency_window 1m
		}
	}
`, path, brokers, topic)
	}
	a, b := one.ListenAddrs()[0], two.ListenAddrs()[0]
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"),
		route("/one", a, "events")+route("/one-again", a, "events")+route("/two", b, "events")+route("/audit", a, "audit"))
	body := `{"event":"evt_1"}`
	first := do(t, "POST", "/one", withKey("evt_1"), strings.NewReader(body))
	if first.status != 200 {
		t.Fatalf("first cluster: %d %s", first.status, first.body)
	}
	for _, path := range []string{"/two", "/audit"} {
		got := do(t, "POST", path, withKey("evt_1"), strings.NewReader(body))
		if got.status != 200 || got.header.Get("Idempotent-Replayed") != "" {
			t.Errorf("%s, same key and body: %d %s (replayed %q), want 200, produced", path, got.status, got.body, got.header.Get("Idempotent-Replayed"))
		}
	}
	if got := do(t, "POST", "/one-again", withKey("evt_1"), strings.NewReader(body)); got.status != 200 || got.body != first.body || got.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("another handler of the same cluster and topic: %d %s, want the first answer replayed", got.status, got.body)
	}
	for _, tt := range []struct {
		c     *kfake.Cluster
		topic string
	}{{one, "events"}, {two, "events"}, {one, "audit"}} {
		if got := stored(t, tt.c, tt.topic); len(got) != 1 {
			t.Errorf("%s of %s holds %d records, want 1", tt.topic, tt.c.ListenAddrs()[0], len(got))
		}
	}
	unloadChecksLeaks(t)
}

// idemRoute is a handle block with queue_publish on topic "events" of c,
// with settings.
func idemRoute(c *kfake.Cluster, path, settings string) string {
	return fmt.Sprintf(`	handle %s {
		queue_publish {
			brokers %s
			topic events
			secret {env.QP_TEST_SECRET}
			%s
		}
	}
`, path, c.ListenAddrs()[0], settings)
}

// Handlers with the same brokers and topic share their keys whatever
// their idempotency_window and bounds: the same key and body is produced
// once.
func TestIdempotencyKeysSharedWhateverTheWindowAndBounds(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), idemRoute(c, "/short", "idempotency_window 1m")+
		idemRoute(c, "/long", "idempotency_window 1h")+
		idemRoute(c, "/bounded", "idempotency_window 1m\n\t\t\tidempotency_max_keys 1000\n\t\t\tidempotency_max_bytes 1MB"))
	body := `{"event":"evt_1"}`
	first := do(t, "POST", "/short", withKey("evt_1"), strings.NewReader(body))
	if first.status != 200 {
		t.Fatalf("first: %d %s", first.status, first.body)
	}
	for _, path := range []string{"/long", "/bounded"} {
		if got := do(t, "POST", path, withKey("evt_1"), strings.NewReader(body)); got.status != 200 || got.body != first.body || got.header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("%s, same key and body: %d %s (replayed %q), want the first answer replayed", path, got.status, got.body, got.header.Get("Idempotent-Replayed"))
		}
	}
	if got := stored(t, c, "events"); len(got) != 1 {
		t.Errorf("the topic holds %d records, want 1", len(got))
	}
	unloadChecksLeaks(t)
}

// A handler of another topic keeps its own window: a longer one of
// another topic's handler does not keep its keys.
func TestIdempotencyWindowOfAnotherTopicIsItsOwn(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"), kfake.SeedTopics(1, "other"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), idemRoute(c, "/events", "idempotency_window 1h")+
		strings.Replace(idemRoute(c, "/other", "idempotency_window 300ms"), "topic events", "topic other", 1))
	body := `{"event":"evt_1"}`
	for i := range 2 {
		if got := do(t, "POST", "/other", withKey("evt_1"), strings.NewReader(body)); got.status != 200 || got.header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("request %d: %d %s (replayed %q), want 200, produced", i, got.status, got.body, got.header.Get("Idempotent-Replayed"))
		}
		time.Sleep(400 * time.Millisecond) // past /other's window: time passing, not a synchronisation
	}
	if got := stored(t, c, "other"); len(got) != 2 {
		t.Errorf("the topic holds %d records, want 2: the key was kept past its handler's window", len(got))
	}
	unloadChecksLeaks(t)
}

// The keys outlive a config reload that changes the window and bounds.
func TestIdempotencyKeysOutliveAReloadOfTheWindow(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, idemRoute(c, "/", "idempotency_window 1m"))
	body := `{"event":"evt_1"}`
	first := do(t, "POST", "/", withKey("evt_1"), strings.NewReader(body))
	if first.status != 200 {
		t.Fatalf("first: %d %s", first.status, first.body)
	}
	startCaddy(t, logFile, idemRoute(c, "/", "idempotency_window 2m\n\t\t\tidempotency_max_keys 5000"))
	if got := do(t, "POST", "/", withKey("evt_1"), strings.NewReader(body)); got.status != 200 || got.body != first.body || got.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("after a reload with another window and bounds: %d %s (replayed %q), want the first answer replayed", got.status, got.body, got.header.Get("Idempotent-Replayed"))
	}
	if got := stored(t, c, "events"); len(got) != 1 {
		t.Errorf("the topic holds %d records, want 1", len(got))
	}
	unloadChecksLeaks(t)
}

// A repeat whose key or headers taken from the request differ is another
// request (422), not a replay of the first; a key longer than 255 bytes
// is refused before the body is read.
func TestIdempotencyCoversWhatShapesTheRecords(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish {
		brokers %s
		topic events
		secret {env.QP_TEST_SECRET}
		idempotency_window 1m
		key {http.request.header.X-Message-Key}
		header source {http.request.header.X-Source}
	}`, c.ListenAddrs()[0]))
	send := func(key, messageKey, source string) answerT {
		h := withKey(key)
		h["X-Message-Key"], h["X-Source"] = messageKey, source
		return do(t, "POST", "/", h, strings.NewReader(`{"order":7}`))
	}
	if got := send("k", "customer-1", "web"); got.status != 200 {
		t.Fatalf("first: %d %s", got.status, got.body)
	}
	if got := send("k", "customer-2", "web"); got.status != 422 {
		t.Errorf("another X-Message-Key: %d %s, want 422", got.status, got.body)
	}
	if got := send("k", "customer-1", "app"); got.status != 422 {
		t.Errorf("another header: %d %s, want 422", got.status, got.body)
	}
	if got := send("k", "customer-1", "web"); got.status != 200 || got.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the same request: %d %s, want it replayed", got.status, got.body)
	}
	long := strings.Repeat("k", 256)
	if got := send(long, "customer-1", "web"); got.status != 400 || got.body != `{"err":"Idempotency-Key longer than 255 bytes"}` {
		t.Errorf("a 256-byte key: %d %s, want 400", got.status, got.body)
	}
	if got := send(long[:255], "customer-1", "web"); got.status != 200 {
		t.Errorf("a 255-byte key: %d %s, want 200", got.status, got.body)
	}
	if got := stored(t, c, "events"); len(got) != 2 {
		t.Errorf("the topic holds %d records, want 2", len(got))
	}
}

// The records of a request share one copy of its Idempotency-Key.
func TestKeyHeaderIsSharedByTheRecords(t *testing.T) {
	recs := []*record{{}, {}, {}}
	addKeyHeader(recs, strings.Repeat("k", 255))
	for _, rec := range recs {
		if len(rec.Headers) != 1 || unsafe.SliceData(rec.Headers[0].Value) != unsafe.SliceData(recs[0].Headers[0].Value) {
			t.Fatal("a record holds its own copy of the key")
		}
	}
}
