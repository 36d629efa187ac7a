//go:build redis

package queuepublish

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"github.com/queuepublish/caddy-queue-publish/internal/redistest"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"
)

// Two instances of a fleet: two sites on their own ports, each with a
// producer of its own (another client_id), sharing one Redis and one
// broker. Extra options go to both.
const (
	instanceA = "http://127.0.0.1:9080"
	instanceB = "http://127.0.0.1:9081"
)

func startFleet(t *testing.T, c *kfake.Cluster, redisURL, extra string) string {
	t.Helper()
	t.Setenv("QP_TEST_SECRET", testSecret)
	t.Setenv("QP_TEST_REDIS", redisURL)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	site := func(port int, id string) string {
		return fmt.Sprintf(`:%d {
	queue_publish {
		brokers %s
		topic events
		secret {env.QP_TEST_SECRET}
		client_id %s
		idempotency_window 1m
		idempotency_store redis {env.QP_TEST_REDIS}
		%s
	}
}
`, port, c.ListenAddrs()[0], id, extra)
	}
	loadCaddy(t, caddyGlobals(logFile)+site(9080, "instance-a")+site(9081, "instance-b"))
	return logFile
}

// post sends a request to one instance.
func post(t *testing.T, base, key, body string) answerT {
	t.Helper()
	header := auth(testSecret)
	if key != "" {
		header["Idempotency-Key"] = key
	}
	return doAt(t, base, "POST", "/", header, strings.NewReader(body))
}

// The same Idempotency-Key at two instances is one request: the second is
// answered from the first, byte for byte; another body is 422.
func TestRedisStoreAcrossInstances(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	r := redistest.Start(t)
	startFleet(t, c, r.URL(), "")

	first := post(t, instanceA, "order-1", `{"order":1}`)
	again := post(t, instanceB, "order-1", `{"order":1}`)
	if first.status != 200 || again.status != 200 || again.body != first.body || again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("first at A %d %s; repeat at B %d %s (replayed %q): want the first answer, replayed",
			first.status, first.body, again.status, again.body, again.header.Get("Idempotent-Replayed"))
	}
	if other := post(t, instanceB, "order-1", `{"order":2}`); other.status != 422 {
		t.Errorf("another body with the key at B: %d %s, want 422", other.status, other.body)
	}
	if got := len(stored(t, c, "events")); got != 1 {
		t.Errorf("stored %d records, want 1", got)
	}
	// Keys live in Redis under the prefix, with the window as their TTL.
	keys, err := r.Client.Keys(t.Context(), "queue_publish:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("Redis holds %v (%v), want one key under queue_publish:", keys, err)
	}
	if ttl := r.Client.PTTL(t.Context(), keys[0]).Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("the key's TTL is %v, want within the 1m window", ttl)
	}
}

// While one instance waits for the broker, the same key at the other is
// answered 409; once the first is answered, the repeat gets its answer.
// A first attempt answered 504 is settled in the store when the producer
// learns the outcome, and a repeat then gets the real answer.
func TestRedisStoreInProgressAndLateOutcome(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	r := redistest.Start(t)
	startFleet(t, c, r.URL(), "timeout 500ms")
	release := make(chan struct{})
	received := holdProduce(c, release)

	var wg sync.WaitGroup
	var first answerT
	wg.Go(func() { first = post(t, instanceA, "slow", `{"n":1}`) })
	waitFor(t, 5*time.Second, func() bool { return received.Load() > 0 })
	if got := post(t, instanceB, "slow", `{"n":1}`); got.status != 409 {
		t.Errorf("the key at B while A waits: %d %s, want 409", got.status, got.body)
	}
	wg.Wait()
	if first.status != 504 {
		t.Fatalf("A under a held broker: %d %s, want 504", first.status, first.body)
	}
	// A still waits for the late acknowledgement: B is told to wait.
	if got := post(t, instanceB, "slow", `{"n":1}`); got.status != 409 {
		t.Errorf("the key at B while A learns the outcome: %d %s, want 409", got.status, got.body)
	}
	close(release)
	var settled answerT
	waitFor(t, 10*time.Second, func() bool {
		settled = post(t, instanceB, "slow", `{"n":1}`)
		return settled.status != 409
	})
	if settled.status != 200 || settled.body != `{"success":true,"partition":0,"offset":0}` || settled.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the key at B once A learned: %d %s, want the late acknowledgement, replayed", settled.status, settled.body)
	}
	if got := len(stored(t, c, "events")); got != 1 {
		t.Errorf("stored %d records, want 1", got)
	}
}

// Redis down: a request with an Idempotency-Key is answered 503 (nothing
// produced, a retry is safe), one without is not affected, and with Redis
// back the keys work again. With on_store_error produce, keyed requests
// are produced without the store.
func TestRedisStoreUnreachable(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	r := redistest.Start(t)
	logFile := startFleet(t, c, r.URL(), "timeout 1s")
	if got := post(t, instanceA, "before", `{"n":0}`); got.status != 200 {
		t.Fatalf("with Redis up: %d %s", got.status, got.body)
	}
	r.Stop()
	got := post(t, instanceA, "during", `{"n":1}`)
	if got.status != 503 || got.body != `{"error":"idempotency store unavailable","outcome":"not_written"}` || got.header.Get("Retry-After") == "" {
		t.Errorf("a key with Redis down: %d %s, want 503 with Retry-After", got.status, got.body)
	}
	if got := post(t, instanceB, "", `{"n":2}`); got.status != 200 {
		t.Errorf("no key with Redis down: %d %s, want 200", got.status, got.body)
	}
	waitFor(t, 5*time.Second, func() bool {
		logs, _ := os.ReadFile(logFile)
		return hasLogLine(logs, "warn", "the idempotency store cannot be reached: requests with an Idempotency-Key are answered 503 (on_store_error reject)", "")
	})
	r.Restart()
	waitFor(t, 10*time.Second, func() bool { return post(t, instanceA, "during", `{"n":1}`).status == 200 })
	if got := post(t, instanceB, "during", `{"n":1}`); got.status != 200 || got.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the key at B after Redis came back: %d %s, want a replay", got.status, got.body)
	}
	if got := len(stored(t, c, "events")); got != 3 {
		t.Errorf("stored %d records, want 3: before, the one without a key, during once", got)
	}
	m := scrape(t)
	if n := m["caddy_queue_publish_idempotency_store_errors_total{op=claim}"]; n < 1 {
		t.Errorf("store errors counted %v, want at least 1", n)
	}
	if n := m["caddy_queue_publish_rejections_total{reason=idempotency_store}"]; n < 1 {
		t.Errorf("rejections for the store counted %v, want at least 1", n)
	}
}

func TestRedisStoreUnreachableProduce(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	r := redistest.Start(t)
	startFleet(t, c, r.URL(), "timeout 1s\n\t\ton_store_error produce")
	r.Stop()
	if got := post(t, instanceA, "k", `{"n":1}`); got.status != 200 {
		t.Errorf("a key with Redis down, on_store_error produce: %d %s, want 200", got.status, got.body)
	}
	if got := len(stored(t, c, "events")); got != 1 {
		t.Errorf("stored %d records, want 1", got)
	}
}

// A Redis that stops answering (paused, its port still open) costs a keyed
// request at most half its timeout: with on_store_error reject it is
// answered 503, with produce it is produced, both within the timeout.
func TestRedisStorePaused(t *testing.T) {
	for _, tc := range []struct {
		onStoreError string
		status       int
		stored       int
	}{
		{"reject", 503, 1},
		{"produce", 200, 3},
	} {
		t.Run(tc.onStoreError, func(t *testing.T) {
			c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
			r := redistest.Start(t)
			startFleet(t, c, r.URL(), "timeout 1s\n\t\ton_store_error "+tc.onStoreError)
			if got := post(t, instanceA, "before", `{"n":0}`); got.status != 200 {
				t.Fatalf("with Redis answering: %d %s", got.status, got.body)
			}
			r.Pause()
			// The first on the connection the store kept, the second
			// on a new one, whose handshake goes unanswered.
			for i := range 2 {
				start := time.Now()
				got := post(t, instanceA, fmt.Sprintf("during-%d", i), `{"n":1}`)
				took := time.Since(start)
				t.Logf("keyed request %d with Redis paused, timeout 1s, on_store_error %s: %d after %v", i, tc.onStoreError, got.status, took.Round(time.Millisecond))
				if got.status != tc.status {
					t.Errorf("with Redis paused: %d %s, want %d", got.status, got.body, tc.status)
				}
				if took >= time.Second {
					t.Errorf("with Redis paused, answered after %v, want within the timeout, 1s", took)
				}
			}
			if n := len(stored(t, c, "events")); n != tc.stored {
				t.Errorf("stored %d records, want %d", n, tc.stored)
			}
		})
	}
}

// A Redis that stops answering between a request's claim and its
// settlement: the answer waits for the settlement at most half the
// timeout, and a 504 not at all; the settlement that follows the late
// acknowledgement of a 504 fails within the timeout too, rather than
// waiting on Redis. Either way the key is never produced twice.
func TestRedisStorePausedSettlement(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		// settles: the settlements that fail on the paused Redis; the
		// last ends at most limit after the answer.
		settles float64
		limit   time.Duration
	}{
		{"acknowledged", 200, 1, 0},
		{"unknown until the late acknowledgement", 504, 2, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
			r := redistest.Start(t)
			startFleet(t, c, r.URL(), "timeout 1s")
			release := make(chan struct{})
			received := holdProduce(c, release)
			errorsBefore := scrape(t)["caddy_queue_publish_idempotency_store_errors_total{op=settle}"]

			var first answerT
			var answered time.Time
			done := make(chan struct{})
			sent := time.Now()
			go func() {
				first = post(t, instanceA, "k", `{"n":1}`)
				answered = time.Now()
				close(done)
			}()
			waitFor(t, 5*time.Second, func() bool { return received.Load() > 0 })
			r.Pause() // the claim is made: the settlement meets the paused Redis
			var released time.Time
			if tc.status == 200 {
				released = time.Now()
				close(release)
			}
			<-done
			if first.status != tc.status {
				t.Fatalf("with Redis paused after the claim: %d %s, want %d", first.status, first.body, tc.status)
			}
			if tc.status == 200 {
				took := answered.Sub(released)
				t.Logf("answered %v after the acknowledgement, with Redis paused", took.Round(time.Millisecond))
				if took >= 750*time.Millisecond {
					t.Errorf("answered %v after the acknowledgement, with Redis paused; want within half the timeout, 0.5s", took)
				}
			} else {
				took := answered.Sub(sent)
				t.Logf("answered 504 %v after the request was sent, with Redis paused", took.Round(time.Millisecond))
				if took >= 1500*time.Millisecond {
					t.Errorf("answered 504 %v after the request was sent, with Redis paused; want at the timeout, 1s", took)
				}
				close(release)
			}
			var settled time.Time
			waitFor(t, 15*time.Second, func() bool {
				settled = time.Now()
				return scrape(t)["caddy_queue_publish_idempotency_store_errors_total{op=settle}"]-errorsBefore >= tc.settles
			})
			t.Logf("the settlements failed %v after the answer", settled.Sub(answered).Round(time.Millisecond))
			if took := settled.Sub(answered); took > tc.limit+500*time.Millisecond {
				t.Errorf("the settlements failed %v after the answer, want within %v", took, tc.limit)
			}
			r.Resume()
			again := post(t, instanceB, "k", `{"n":1}`)
			if again.status != 409 && again.header.Get("Idempotent-Replayed") != "true" {
				t.Errorf("the key once Redis answers again: %d %s, want 409 or the first answer replayed", again.status, again.body)
			}
			if n := len(stored(t, c, "events")); n != 1 {
				t.Errorf("stored %d records, want 1", n)
			}
		})
	}
}

// A key is forgotten when the window ends: the same request is produced
// again.
func TestRedisStoreWindowEnds(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	r := redistest.Start(t)
	startFleet(t, c, r.URL(), "")
	if got := post(t, instanceA, "k", `{"n":1}`); got.status != 200 {
		t.Fatalf("%d %s", got.status, got.body)
	}
	keys := r.Client.Keys(t.Context(), "queue_publish:*").Val()
	if len(keys) != 1 {
		t.Fatalf("Redis holds %v", keys)
	}
	// The window, 1m, ends now: Redis expires the key as its TTL would.
	r.Client.PExpire(context.Background(), keys[0], time.Millisecond)
	waitFor(t, 5*time.Second, func() bool { return r.Client.Exists(t.Context(), keys[0]).Val() == 0 })
	if got := post(t, instanceB, "k", `{"n":1}`); got.status != 200 || got.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("after the window: %d %s (replayed %q), want produced again", got.status, got.body, got.header.Get("Idempotent-Replayed"))
	}
	if got := len(stored(t, c, "events")); got != 2 {
		t.Errorf("stored %d records, want 2", got)
	}
}

// BenchmarkIdempotencyStore is BenchmarkHandler's body mode with a new
// Idempotency-Key on every request, its keys in memory and on a real
// Redis on loopback: what the shared store costs a request.
//
//	go test -tags redis -run '^$' -bench IdempotencyStore -benchmem
func BenchmarkIdempotencyStore(b *testing.B) {
	r := redistest.Start(b)
	for _, store := range []string{"memory", "redis"} {
		for _, callers := range []int{1, 64} {
			b.Run(fmt.Sprintf("store=%s/callers=%d", store, callers), func(b *testing.B) {
				c := newCluster(b, kfake.NumBrokers(1), kfake.SeedTopics(1, "bench"))
				h := handlerForUnitTest(1000000)
				h.Topic, h.Mode, h.IdempotencyWindow = "bench", modeBody, caddy.Duration(time.Minute)
				h.mode = bodyMode{}
				h.logger = zap.NewNop()
				if store == "redis" {
					h.IdempotencyRedis, h.IdempotencyKeyPrefix = r.URL(), fmt.Sprintf("bench%d:", callers)
				}
				if err := h.Idempotency.check(); err != nil {
					b.Fatal(err)
				}
				if err := h.Idempotency.provision(&provisioning{repl: caddy.NewReplacer(), logger: zap.NewNop(), h: h}); err != nil {
					b.Fatal(err)
				}
				defer h.Idempotency.cleanup()
				h.producer = mustProducer(b, connection{Kafka: Kafka{Brokers: c.ListenAddrs(), Acks: "all"}}, zap.NewNop())
				defer closeProducer(h.producer)
				body := []byte(seedBody)
				var n atomic.Int64
				serve := func() {
					req := httptest.NewRequest("POST", "/", bodyReader(body))
					req.Header.Set("Authorization", testSecret)
					req.Header.Set("Idempotency-Key", strconv.FormatInt(n.Add(1), 10))
					w := httptest.NewRecorder()
					if err := h.ServeHTTP(w, req, nil); err != nil || w.Code != 200 {
						b.Errorf("%d %s %v", w.Code, w.Body, err)
					}
				}
				serve()
				b.ReportAllocs()
				b.SetParallelism(max(callers/2, 1))
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						serve()
					}
				})
			})
		}
	}
}

// The Redis password, in the URL of a placeholder, works, and neither it
// nor a wrong one appears in Caddy's log, the config or an answer.
func TestRedisStorePasswordStaysOut(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	const password, wrong = "redis-pass-7f3a9c", "wrong-pass-2b8d1e"
	r := redistest.StartWith(t, password)
	t.Setenv("QP_TEST_SECRET", testSecret)
	t.Setenv("QP_TEST_REDIS_A", "redis://default:"+password+"@"+r.Addr)
	t.Setenv("QP_TEST_REDIS_B", "redis://default:"+wrong+"@"+r.Addr)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	site := func(port int, env string) string {
		return fmt.Sprintf(`:%d {
	queue_publish {
		brokers %s
		topic events
		secret {env.QP_TEST_SECRET}
		timeout 1s
		idempotency_window 1m
		idempotency_store redis {env.%s}
	}
}
`, port, c.ListenAddrs()[0], env)
	}
	loadCaddy(t, caddyGlobals(logFile)+site(9080, "QP_TEST_REDIS_A")+site(9081, "QP_TEST_REDIS_B"))

	if got := post(t, instanceA, "k", `{"n":1}`); got.status != 200 {
		t.Errorf("with the password: %d %s", got.status, got.body)
	}
	wrongAnswer := post(t, instanceB, "k2", `{"n":2}`)
	if wrongAnswer.status != 503 {
		t.Errorf("with a wrong password: %d %s, want 503", wrongAnswer.status, wrongAnswer.body)
	}
	waitFor(t, 5*time.Second, func() bool {
		logs, _ := os.ReadFile(logFile)
		return hasLogLine(logs, "warn", "the idempotency store cannot be reached: requests with an Idempotency-Key are answered 503 (on_store_error reject)", "")
	})
	res, err := http.Get("http://" + adminAddr + "/config/")
	if err != nil {
		t.Fatal(err)
	}
	running, _ := io.ReadAll(res.Body)
	res.Body.Close()
	logs, _ := os.ReadFile(logFile)
	for name, text := range map[string]string{"Caddy's log": string(logs), "the running config": string(running), "the answer": wrongAnswer.body} {
		if strings.Contains(text, password) || strings.Contains(text, wrong) {
			t.Errorf("%s contains a Redis password", name)
		}
	}
}

// The claim script run twice for one claim (go-redis resends a command
// whose answer was lost) answers the same both times, not "in progress";
// and a claim whose call failed is undone.
func TestRedisClaimResentAnswersAlike(t *testing.T) {
	r := redistest.Start(t)
	s, err := newRedisStore(r.URL(), nil, "t:", time.Minute, time.Second, "", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.client.Close()
	keys, digest, token := s.keys("k"), strings.Repeat("d", 64), strings.Repeat("1", 32)
	for i := range 2 {
		res, err := claimScript.Run(t.Context(), s.client, keys, digest, 60000, 60000, token).Slice()
		if err != nil || res[0].(int64) != 0 {
			t.Fatalf("run %d of one claim: %v %v, want 0 (new)", i, res, err)
		}
	}
	if res, _ := claimScript.Run(t.Context(), s.client, keys, digest, 60000, 60000, strings.Repeat("2", 32)).Slice(); res[0].(int64) != 3 {
		t.Errorf("another claim: %v, want 3 (in progress)", res)
	}
	if n, err := abandonScript.Run(t.Context(), s.client, keys, token, digest).Int(); n != 1 || err != nil {
		t.Fatalf("abandon: %d %v", n, err)
	}
	if n := r.Client.Exists(t.Context(), keys...).Val(); n != 0 {
		t.Errorf("after the claim that made the entry was undone, %d of its keys are left", n)
	}
}

// A settlement after the window ended does not bring the entry back, nor
// leave it without an expiry.
func TestRedisSettleAfterWindowLeavesNoKey(t *testing.T) {
	r := redistest.Start(t)
	s, err := newRedisStore(r.URL(), nil, "t:", 50*time.Millisecond, time.Second, "", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.client.Close()
	var digest [32]byte
	now := time.Now()
	claim, st, err := s.claim(t.Context(), "", "k", digest, now, now.Add(time.Second))
	if err != nil || st != idemNew {
		t.Fatalf("claim: %v %v", st, err)
	}
	keys := s.keys("k")
	waitFor(t, 5*time.Second, func() bool { return r.Client.Exists(t.Context(), keys[0]).Val() == 0 })
	rec := producer.Replayed(0, 7, now, nil) // an acknowledged record
	claim.settle([]*record{rec})
	if n := r.Client.Exists(t.Context(), keys...).Val(); n != 0 {
		t.Errorf("after a settlement past the window, %d keys (TTL %v)", n, r.Client.PTTL(t.Context(), keys[0]).Val())
	}
}

// A Sentinel failover: the store follows the replica the Sentinel
// promotes, and keys written before the failover (and replicated) still
// stand for their requests. A keyed request waits for the new master for
// up to half its timeout and is refused 503 after that, never produced
// without its key. With the default timeout (5 s) a failover of a second
// or two (this Sentinel gives the master up after 0.5 s) is not seen by
// clients; with timeout 1s it is.
func TestRedisStoreSentinelFailover(t *testing.T) {
	for _, timeout := range []string{"", "timeout 1s"} {
		t.Run(strings.ReplaceAll(cmp.Or(timeout, "timeout default"), " ", "="), func(t *testing.T) {
			master := redistest.Start(t)
			replica := redistest.StartReplica(t, master)
			sentinel := redistest.StartSentinel(t, master, replica)
			c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
			startFleet(t, c, "redis://"+sentinel.Addr+"?master_name=mymaster", timeout)
			first := post(t, instanceA, "before", `{"n":0}`)
			if again := post(t, instanceB, "before", `{"n":0}`); first.status != 200 || again.body != first.body || again.header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("before the failover: %d %s, then %d %s", first.status, first.body, again.status, again.body)
			}
			// Redis replicates asynchronously: the key must have
			// reached the replica for the failover to keep it. WAIT
			// waits for the writes of its own connection, so this one
			// writes a fence after the store's writes, which the
			// replica receives in order.
			if err := master.Client.Set(t.Context(), "fence", 1, 0).Err(); err != nil {
				t.Fatal(err)
			}
			if n, err := master.Client.Do(t.Context(), "WAIT", 1, 5000).Int(); err != nil || n != 1 {
				t.Fatalf("WAIT for the replica: %d %v", n, err)
			}

			master.Stop()
			killedAt := time.Now()
			refused := 0
			var taken time.Duration
			for n := 0; ; n++ {
				got := post(t, instanceA, fmt.Sprintf("during-%d", n), `{"n":1}`)
				if got.status == 200 {
					taken = time.Since(killedAt)
					break
				}
				if got.status != 503 || got.body != `{"error":"idempotency store unavailable","outcome":"not_written"}` {
					t.Fatalf("while the master is down: %d %s, want 503 until the replica is promoted", got.status, got.body)
				}
				refused++
				if time.Since(killedAt) > 30*time.Second {
					t.Fatalf("no keyed request taken within 30 s of the master's death (%d refused)", refused)
				}
				time.Sleep(50 * time.Millisecond)
			}
			t.Logf("the first keyed request taken was answered %v after the master's death, after %d refused", taken.Round(time.Millisecond), refused)
			if timeout != "" && refused == 0 {
				t.Errorf("with %s, no request was refused during a failover of %v", timeout, taken)
			}
			if now, err := sentinel.Master(); err != nil || now != replica.Addr {
				t.Errorf("a keyed request was taken while the Sentinel names %q (%v), not the replica %s", now, err, replica.Addr)
			}
			if got := post(t, instanceB, "before", `{"n":0}`); got.body != first.body || got.header.Get("Idempotent-Replayed") != "true" {
				t.Errorf("the key of before the failover, after it: %d %s, want the first answer replayed", got.status, got.body)
			}
			want := 2 // before, and the first key taken after the death
			if refused > 0 {
				want++
				if got := post(t, instanceB, "during-0", `{"n":1}`); got.status != 200 || got.header.Get("Idempotent-Replayed") == "true" {
					t.Errorf("a key refused during the failover, sent again: %d %s, want it produced now", got.status, got.body)
				}
			}
			if got := len(stored(t, c, "events")); got != want {
				t.Errorf("stored %d records, want %d", got, want)
			}
		})
	}
}

// The shared store on each kind of Redis deployment the client library
// speaks to: TLS (rediss://), a Sentinel in front of the server
// (?master_name=), a Redis Cluster of three masters (?addr=): the same key
// at two instances is one request.
func TestRedisStoreDeployments(t *testing.T) {
	pki := newTestPKI(t)
	// Each returns the URL, and the options that go with it.
	deployments := map[string]func(t *testing.T) (string, string){
		"tls": func(t *testing.T) (string, string) {
			s := redistest.StartTLS(t, filepath.Join(pki.dir, "broker.pem"), filepath.Join(pki.dir, "broker-key.pem"), pki.caFile)
			return "rediss://" + s.Addr, redisTLS(map[string]string{"ca": pki.caFile})
		},
		"sentinel": func(t *testing.T) (string, string) {
			sentinel := redistest.StartSentinel(t, redistest.Start(t))
			return "redis://" + sentinel.Addr + "?master_name=mymaster", ""
		},
		"cluster": func(t *testing.T) (string, string) {
			nodes := redistest.StartCluster(t, 3)
			return "redis://" + nodes[0].Addr + "?addr=" + nodes[1].Addr + "&addr=" + nodes[2].Addr, ""
		},
	}
	for _, name := range []string{"tls", "sentinel", "cluster"} {
		t.Run(name, func(t *testing.T) {
			c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
			url, extra := deployments[name](t)
			startFleet(t, c, url, extra)
			first := post(t, instanceA, "k", `{"n":1}`)
			again := post(t, instanceB, "k", `{"n":1}`)
			if first.status != 200 || again.status != 200 || again.body != first.body || again.header.Get("Idempotent-Replayed") != "true" {
				t.Errorf("first at A %d %s; repeat at B %d %s: want the first answer, replayed", first.status, first.body, again.status, again.body)
			}
			if other := post(t, instanceB, "k", `{"n":2}`); other.status != 422 {
				t.Errorf("another body: %d %s, want 422", other.status, other.body)
			}
			if got := len(stored(t, c, "events")); got != 1 {
				t.Errorf("stored %d records, want 1", got)
			}
		})
	}
}

// redisTLS is idempotency_store redis with a block of TLS settings, to
// follow startFleet's own idempotency_store line, which it replaces.
func redisTLS(settings map[string]string) string {
	var b strings.Builder
	b.WriteString("idempotency_store redis {env.QP_TEST_REDIS} {\n")
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		fmt.Fprintf(&b, "\t\t\t%s %s\n", k, settings[k])
	}
	b.WriteString("\t\t}")
	return b.String()
}

// A rediss:// server is verified against the CA of the tls settings, by
// the name they give, and is shown the client certificate they name; a
// server the settings do not verify is not used (503, the reason in the
// log), never produced to without its key.
func TestRedisStoreTLSVerifies(t *testing.T) {
	pki := newTestPKI(t)
	r := redistest.StartMutualTLS(t, filepath.Join(pki.dir, "broker.pem"), filepath.Join(pki.dir, "broker-key.pem"), pki.caFile, pki.client)
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	client := map[string]string{"ca": pki.caFile, "cert": pki.clientCert, "key": pki.clientKey}
	for _, tc := range []struct {
		name     string
		settings map[string]string
		verified bool
		log      string // the reason, in the warning of a rejection
	}{
		{"the CA and a client certificate", client, true, ""},
		{"the system's roots", nil, false, "certificate signed by unknown authority"},
		{"no client certificate", map[string]string{"ca": pki.caFile}, false, "tls: certificate required"},
		{"another server name", map[string]string{"ca": pki.caFile, "cert": pki.clientCert, "key": pki.clientKey, "server_name": "redis.example"}, false, "wanted to match redis.example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extra := ""
			if tc.settings != nil {
				extra = redisTLS(tc.settings)
			}
			logFile := startFleet(t, c, "rediss://"+r.Addr, extra)
			key := strings.ReplaceAll(tc.name, " ", "-")
			got := post(t, instanceA, key, `{"n":1}`)
			if tc.verified {
				if again := post(t, instanceB, key, `{"n":1}`); got.status != 200 || again.header.Get("Idempotent-Replayed") != "true" {
					t.Errorf("verified: %d %s, then %d %s; want 200, replayed at B", got.status, got.body, again.status, again.body)
				}
				return
			}
			if got.status != 503 || got.body != `{"error":"idempotency store unavailable","outcome":"not_written"}` {
				t.Errorf("not verified: %d %s, want 503", got.status, got.body)
			}
			waitFor(t, 5*time.Second, func() bool {
				logs, _ := os.ReadFile(logFile)
				return bytes.Contains(logs, []byte(tc.log))
			})
		})
	}
	if got := len(stored(t, c, "events")); got != 1 {
		t.Errorf("stored %d records, want the verified one", got)
	}
}

// The TLS settings reach go-redis's options for each kind of URL: one
// server, Sentinels, a Cluster; the URL's host stays the server name
// unless server_name replaces it.
func TestRedisStoreTLSSettingsApplyToEveryKind(t *testing.T) {
	pool := x509.NewCertPool()
	pair := tls.Certificate{Certificate: [][]byte{{1}}}
	for _, tc := range []struct {
		url, serverName, want string
	}{
		{"rediss://redis.internal:6380", "", "redis.internal"},
		{"rediss://sentinel.internal:26379?master_name=mymaster", "", "sentinel.internal"},
		{"rediss://node-1.internal:6380?addr=node-2.internal:6380", "", "node-1.internal"},
		{"rediss://10.0.0.1:6380?addr=10.0.0.2:6380", "redis.internal", "redis.internal"},
	} {
		own := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, ServerName: tc.serverName}
		s, err := newRedisStore(tc.url, own, "t:", time.Minute, time.Second, "", zap.NewNop())
		if err != nil {
			t.Fatalf("%s: %v", tc.url, err)
		}
		var got *tls.Config
		switch c := s.client.(type) {
		case *redis.Client:
			got = c.Options().TLSConfig
		case *redis.ClusterClient:
			got = c.Options().TLSConfig
		}
		s.client.Close()
		if got == nil {
			t.Errorf("%s: no TLS", tc.url)
		} else if got.RootCAs != pool || len(got.Certificates) != 1 || got.ServerName != tc.want {
			t.Errorf("%s with server_name %q: the client has the settings' roots %v, %d certificates, server name %q; want their roots and certificate, server name %q",
				tc.url, tc.serverName, got.RootCAs == pool, len(got.Certificates), got.ServerName, tc.want)
		}
	}
}
