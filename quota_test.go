package queuepublish

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"
)

// quotaServer runs a records-mode handler with named secrets and quotas
// (extra) on topic orders of c. The rates are slow enough (a record a
// hundred seconds) that nothing refills while a test runs.
func quotaServer(t *testing.T, c *kfake.Cluster, extra string) {
	t.Helper()
	t.Setenv("QP_SECRET_A", "secret-of-client-a")
	t.Setenv("QP_SECRET_B", "secret-of-client-b")
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish {
		brokers %s
		topic orders
		mode records
		secret client-a {env.QP_SECRET_A}
		secret client-b {env.QP_SECRET_B}
		%s
	}`, c.ListenAddrs()[0], extra))
}

// quotaBody is a records-mode body of n records.
func quotaBody(n int) string {
	recs := make([]string, n)
	for i := range recs {
		recs[i] = fmt.Sprintf(`{"value":%d}`, i)
	}
	return `{"records":[` + strings.Join(recs, ",") + `]}`
}

func TestQuotaRecords(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
	quotaServer(t, c, `quota client-a {
			records 0.01 5
		}`)
	a := auth("secret-of-client-a")

	got := do(t, "POST", "/", a, strings.NewReader(quotaBody(3)))
	if got.status != 200 {
		t.Fatalf("3 of 5: %d %s", got.status, got.body)
	}
	if p := got.header.Get("RateLimit-Policy"); p != `"records";q=5;w=500;qu="records"` {
		t.Errorf("RateLimit-Policy: %q", p)
	}
	if r := got.header.Get("RateLimit"); r != `"records";r=2;t=300` {
		t.Errorf("RateLimit: %q", r)
	}

	// 3 more do not fit in the 2 left: 429, nothing produced, and the
	// time until they would.
	got = do(t, "POST", "/", a, strings.NewReader(quotaBody(3)))
	if got.status != 429 || got.body != `{"err":"quota exceeded"}` {
		t.Fatalf("3 more: %d %s, want 429", got.status, got.body)
	}
	if ra := got.header.Get("Retry-After"); ra != "100" {
		t.Errorf("Retry-After: %q, want 100 (one record at 0.01 a second)", ra)
	}
	// Refused requests cost nothing: bad JSON, a 429.
	if got := do(t, "POST", "/", a, strings.NewReader(`{"records":[{"value":1},`)); got.status != 400 {
		t.Fatalf("bad JSON: %d %s", got.status, got.body)
	}
	if got := do(t, "POST", "/", a, strings.NewReader(quotaBody(2))); got.status != 200 {
		t.Fatalf("the 2 left: %d %s", got.status, got.body)
	}
	// More than the burst could never pass: 413, not a 429 to retry.
	if got := do(t, "POST", "/", a, strings.NewReader(quotaBody(6))); got.status != 413 {
		t.Fatalf("6 records, burst 5: %d %s, want 413", got.status, got.body)
	}
	// client-b has no quota.
	for range 3 {
		if got := do(t, "POST", "/", auth("secret-of-client-b"), strings.NewReader(quotaBody(5))); got.status != 200 || got.header.Get("RateLimit") != "" {
			t.Fatalf("client-b: %d %v %s", got.status, got.header, got.body)
		}
	}
	if n := len(stored(t, c, "orders")); n != 3+2+15 {
		t.Fatalf("orders holds %d records, want 20", n)
	}
}

func TestQuotaBytesPerIdentity(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
	quotaServer(t, c, `quota {
			bytes 1 100
		}`)
	body := quotaBody(5) // 79 bytes
	for _, secret := range []string{"secret-of-client-a", "secret-of-client-b"} {
		got := do(t, "POST", "/", auth(secret), strings.NewReader(body))
		if got.status != 200 {
			t.Fatalf("%s: %d %s", secret, got.status, got.body)
		}
		if p := got.header.Get("RateLimit-Policy"); p != `"bytes";q=100;w=100;qu="content-bytes"` {
			t.Errorf("RateLimit-Policy: %q", p)
		}
	}
	// Each identity its own bucket: both spent theirs.
	for _, secret := range []string{"secret-of-client-a", "secret-of-client-b"} {
		if got := do(t, "POST", "/", auth(secret), strings.NewReader(body)); got.status != 429 {
			t.Fatalf("%s again: %d %s, want 429", secret, got.status, got.body)
		}
	}
}

// The buckets refill at their rate, up to their burst, on the limiter's
// clock; many takes at once never take more than there is.
func TestMemoryLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := &memoryLimiter{now: func() time.Time { return now }}
	q := &quota{records: bucketRate{rate: 10, burst: 20}, bytes: bucketRate{rate: 1000, burst: 1000}}
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	taken := 0
	for range 50 {
		wg.Go(func() {
			b, err := l.take(ctx, q, "a", 1, 10)
			if err != nil {
				t.Error(err)
			}
			if b.taken {
				mu.Lock()
				taken++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if taken != 20 {
		t.Fatalf("took %d records at once, want the burst, 20", taken)
	}
	b, _ := l.take(ctx, q, "a", 1, 0)
	if b.taken || b.wait != 100*time.Millisecond {
		t.Fatalf("empty bucket: %+v, want a wait of 100ms", b)
	}
	now = now.Add(500 * time.Millisecond)
	b, _ = l.take(ctx, q, "a", 5, 0)
	if !b.taken || b.records != 0 {
		t.Fatalf("after 500ms at 10/s: %+v, want 5 taken and none left", b)
	}
	now = now.Add(time.Hour)
	b, _ = l.take(ctx, q, "a", 0, 0)
	if b.records != 20 || b.bytes != 1000 {
		t.Fatalf("after an hour: %+v, want full buckets", b)
	}
	// Full buckets are forgotten by a sweep, and a new one is full.
	l.sweep(now)
	n := 0
	l.pairs.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d pairs left after the sweep", n)
	}
}

// In mode confluent, a stream's records are charged one by one: one
// the quota cannot pay is answered 429 in its report and the stream goes
// on; a v2 request is answered 429 in the REST Proxy's shape.
func TestQuotaConfluent(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), confluentSite(c.ListenAddrs()[0], `quota {
			records 0.01 2
		}`))
	send, reports, done := openStream(t, v3Path)
	var got []string
	for i := range 3 {
		send(fmt.Sprintf(`{"partition_id":0,"value":{"type":"JSON","data":%d}}`, i))
		line, err := reports.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, line)
	}
	done()
	for i, want := range []string{`{"error_code":200,`, `{"error_code":200,`, `{"error_code":429,"message":"Too many requests."}`} {
		if !strings.HasPrefix(got[i], want) {
			t.Errorf("report %d: %q, want %s...", i, got[i], want)
		}
	}
	v2 := do(t, "POST", "/topics/topic_1", jsonHeader("application/vnd.kafka.json.v2+json"), strings.NewReader(`{"records":[{"value":1}]}`))
	if v2.status != 429 || v2.body != `{"error_code":429,"message":"Too many requests."}` || v2.header.Get("Retry-After") != "100" {
		t.Errorf("v2: %d %v %s", v2.status, v2.header, v2.body)
	}
	if n := len(stored(t, c, "topic_1")); n != 2 {
		t.Errorf("%d records stored, want 2", n)
	}
}

// A quota without an identity is every identity's, whatever its name
// holds: a SPIFFE ID or a URL-shaped subject has slashes, which a
// pattern's "*" does not cross.
func TestQuotaWithoutIdentityIsEveryones(t *testing.T) {
	q := &Quotas{Quotas: []Quota{{RecordsPerSecond: 1}, {Identity: "never", RecordsPerSecond: 2}}}
	if err := q.check(); err != nil {
		t.Fatal(err)
	}
	if err := q.provision(&provisioning{h: &Handler{}}); err != nil {
		t.Fatal(err)
	}
	defer q.cleanup()
	for _, name := range []string{"spiffe://example.org/ns/shop/sa/publisher", "https://issuer.example/users/42", "client-a", ""} {
		if got := q.quotaOf(name); got == nil || got.records.rate != 1 {
			t.Errorf("%q: quota %+v, want the first", name, got)
		}
	}
}

// A store that cannot be made leaves nothing for Cleanup to release:
// Caddy calls Cleanup after a failed Provision.
func TestQuotaFailedProvisionCleansUp(t *testing.T) {
	q := &Quotas{Quotas: []Quota{{RecordsPerSecond: 1}}, QuotaRedis: "http://not-redis.example"}
	if err := q.check(); err != nil {
		t.Fatal(err)
	}
	err := q.provision(&provisioning{h: &Handler{}, repl: caddy.NewReplacer(), logger: zap.NewNop()})
	if err == nil || !strings.Contains(err.Error(), "redis://") {
		t.Fatalf("provision: %v, want the URL refused", err)
	}
	if q.limiter != nil {
		t.Fatalf("limiter %#v after a failed provision", q.limiter)
	}
	if err := q.cleanup(); err != nil {
		t.Fatal(err)
	}
}

// A repeat answered from its first attempt, and a request the
// Idempotency-Key refuses, cost nothing.
func TestQuotaSparesRepeatsAndRefusals(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
	quotaServer(t, c, `idempotency_window 1m
		quota client-a {
			records 0.01 2
		}`)
	send := func(key, body string) answerT {
		h := auth("secret-of-client-a")
		if key != "" {
			h["Idempotency-Key"] = key
		}
		return do(t, "POST", "/", h, strings.NewReader(body))
	}
	one := `{"records":[{"value":1}]}`
	if got := send("k1", one); got.status != 200 || got.header.Get("RateLimit") != `"records";r=1;t=100` {
		t.Fatalf("first: %d %v %s", got.status, got.header, got.body)
	}
	if got := send("k1", one); got.status != 200 || got.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("repeat: %d %v %s", got.status, got.header, got.body)
	}
	if got := send("k1", `{"records":[{"value":2}]}`); got.status != 422 {
		t.Fatalf("the key with another body: %d %s", got.status, got.body)
	}
	if got := send("k2", one); got.status != 200 || got.header.Get("RateLimit") != `"records";r=0;t=200` {
		t.Fatalf("second: %d %v %s, want the last record taken", got.status, got.header, got.body)
	}
	if got := send("k3", one); got.status != 429 {
		t.Fatalf("third: %d %s, want 429", got.status, got.body)
	}
	// The key of the request refused 429 is free: it produced nothing.
	if got := send("k3", one); got.status != 429 {
		t.Fatalf("third again: %d %s, want 429 again, not 409", got.status, got.body)
	}
}

// A stream whose first record comes with its headers: the record is
// charged on the reading goroutine while the status is written, and must
// not touch the answer's headers (a concurrent map write kills the
// process; -race, as CI runs the tests, reports it at once).
func TestQuotaStreamLeavesHeadersAlone(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), confluentSite(c.ListenAddrs()[0], `quota {
			records 1000 1000
		}`))
	rec := `{"partition_id":0,"value":{"type":"JSON","data":1}}`
	for range 50 {
		conn, err := net.Dial("tcp", "127.0.0.1:9080")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: %s\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n",
			v3Path, testSecret, len(rec), rec)
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(conn)
		conn.Close()
		if !strings.Contains(string(b), `"error_code":200`) {
			t.Fatalf("answer: %s", b)
		}
	}
}
