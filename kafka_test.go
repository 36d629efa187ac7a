package queuepublish

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Leaders move while records are sent: every acknowledged record is in
// the topic and sending goes on.
func TestLeadersMovingUnderLoad(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(3), kfake.SeedTopics(6, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish {
		brokers %s
		topic events
		secret {env.QP_TEST_SECRET}
		timeout 5s
	}`, strings.Join(c.ListenAddrs(), " ")))

	// Clients publish through Caddy while the partitions' leaders are
	// shuffled between the brokers every few milliseconds, 30 times.
	var shuffles atomic.Int32
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := map[string]bool{}
	statuses := map[int]int{}
	for w := range 8 {
		wg.Go(func() {
			for i := 0; shuffles.Load() < 30; i++ {
				v := fmt.Sprintf(`"w%d-%d"`, w, i)
				got := do(t, "POST", "/", auth(testSecret), strings.NewReader(v))
				mu.Lock()
				statuses[got.status]++
				if got.status == 200 {
					acked[v] = true
				}
				mu.Unlock()
			}
		})
	}
	for shuffles.Load() < 30 {
		c.ShufflePartitionLeaders()
		shuffles.Add(1)
		time.Sleep(10 * time.Millisecond)
	}
	wg.Wait()
	t.Logf("answers %v over %d leader shuffles", statuses, shuffles.Load())

	// Every 2xx is stored; a request that is not answered 2xx may only
	// be a 503 or 504, within its timeout; the service goes on.
	stored := recordsByValue(t, c, "events")
	for v := range acked {
		if stored[v] == nil {
			t.Errorf("%s acknowledged but not stored", v)
		}
	}
	for status, n := range statuses {
		if status != 200 && status != 503 && status != 504 {
			t.Errorf("%d answers %d", n, status)
		}
	}
	if total := len(acked) + statuses[503] + statuses[504]; statuses[200] < total*99/100 {
		t.Errorf("%d of %d requests acknowledged, want at least 99%% (retries within the timeout)", statuses[200], total)
	}
	if got := do(t, "POST", "/", auth(testSecret), strings.NewReader(`"after"`)); got.status != 200 {
		t.Errorf("after the moves: %d %s", got.status, got.body)
	}
	unloadChecksLeaks(t)
}
