//go:build redis

package queuepublish

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/queuepublish/caddy-queue-publish/internal/redistest"
)

// startQuotaFleet runs two instances (instanceA, instanceB) whose quotas
// are kept on one Redis: client-a may publish 10 records, refilled at a
// record a hundred seconds, so nothing refills while a test runs. Each
// instance has a Redis client of its own (the URLs differ in an option
// that changes nothing here), as two processes would: only Redis is
// shared.
func startQuotaFleet(t *testing.T, c *kfake.Cluster, redisURL string) {
	t.Helper()
	t.Setenv("QP_SECRET_A", "secret-of-client-a")
	t.Setenv("QP_TEST_REDIS", redisURL)
	site := func(port int, id string) string {
		return fmt.Sprintf(`:%d {
	queue_publish {
		brokers %s
		topic events
		client_id %s
		secret client-a {env.QP_SECRET_A}
		quota client-a {
			records 0.01 10
		}
		quota_store redis {env.QP_TEST_REDIS}?pool_size=%d
	}
}
`, port, c.ListenAddrs()[0], id, port-9000)
	}
	loadCaddy(t, caddyGlobals(filepath.Join(t.TempDir(), "caddy.log"))+site(9080, "instance-a")+site(9081, "instance-b"))
}

// A quota on Redis holds exactly across the fleet: of 30 requests at
// once to two instances, 10 pass.
func TestRedisQuotaAcrossInstances(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	r := redistest.Start(t)
	startQuotaFleet(t, c, r.URL())
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for i := range 30 {
		base := instanceA
		if i%2 == 1 {
			base = instanceB
		}
		wg.Go(func() {
			got := doAt(t, base, "POST", "/", auth("secret-of-client-a"), strings.NewReader(fmt.Sprintf(`{"n":%d}`, i)))
			mu.Lock()
			codes[got.status]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if codes[200] != 10 || codes[429] != 20 {
		t.Fatalf("answers %v, want 10 200 and 20 429", codes)
	}
	if n := len(stored(t, c, "events")); n != 10 {
		t.Fatalf("%d records stored, want 10", n)
	}
}

// A quota that cannot be checked is 503, retry safe: nothing produced.
func TestRedisQuotaStoreDown(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	r := redistest.Start(t)
	startQuotaFleet(t, c, r.URL())
	if got := doAt(t, instanceA, "POST", "/", auth("secret-of-client-a"), strings.NewReader(`{}`)); got.status != 200 {
		t.Fatalf("%d %s", got.status, got.body)
	}
	r.Stop()
	got := doAt(t, instanceA, "POST", "/", auth("secret-of-client-a"), strings.NewReader(`{}`))
	if got.status != 503 || got.body != `{"err":"quota store unavailable"}` || got.header.Get("Retry-After") == "" {
		t.Fatalf("%d %v %s, want 503 quota store unavailable", got.status, got.header, got.body)
	}
	if n := len(stored(t, c, "events")); n != 1 {
		t.Fatalf("%d records stored, want 1", n)
	}
}

// Handlers with different quotas keep different buckets on one Redis:
// spending one quota leaves the other whole.
func TestRedisQuotaKeptPerQuota(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	r := redistest.Start(t)
	t.Setenv("QP_SECRET_A", "secret-of-client-a")
	t.Setenv("QP_TEST_REDIS", r.URL())
	handler := func(path string, burst int) string {
		return fmt.Sprintf(`	handle %s {
		queue_publish {
			brokers %s
			topic events
			secret client-a {env.QP_SECRET_A}
			quota client-a {
				records 0.01 %d
			}
			quota_store redis {env.QP_TEST_REDIS}
		}
	}
`, path, c.ListenAddrs()[0], burst)
	}
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), handler("/small", 1)+handler("/large", 3))
	post := func(path string) int {
		return do(t, "POST", path, auth("secret-of-client-a"), strings.NewReader(`{}`)).status
	}
	if got := []int{post("/small"), post("/small")}; got[0] != 200 || got[1] != 429 {
		t.Fatalf("/small: %v, want 200 then 429", got)
	}
	for i := range 3 {
		if got := post("/large"); got != 200 {
			t.Fatalf("/large %d: %d, want 200: its quota is its own", i, got)
		}
	}
	if got := post("/large"); got != 429 {
		t.Fatalf("/large 4: %d, want 429", got)
	}
}
