package queuepublish

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"
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

// TestProducerSharedAcrossReload checks that handlers with the same
// connection settings share one producer across config reloads, and that a
// producer no config uses any more is closed.
func TestProducerSharedAcrossReload(t *testing.T) {
	c1 := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "a", "b"))
	c2 := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "a"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	site := func(brokers, topic string) string {
		return fmt.Sprintf(`	queue_publish {
		brokers %s
		topic %s
		secret {env.QP_TEST_SECRET}
	}`, brokers, topic)
	}

	startCaddy(t, logFile, site(c1.ListenAddrs()[0], "a"))
	first := pooledProducers(t)
	if len(first) != 1 {
		t.Fatalf("%d producers after the first load, want 1", len(first))
	}
	if got := do(t, "POST", "/", auth(testSecret), strings.NewReader(`{"n":1}`)); got.status != 200 {
		t.Fatalf("first config: %d %s", got.status, got.body)
	}

	// Same brokers, another topic: the producer is reused.
	startCaddy(t, logFile, site(c1.ListenAddrs()[0], "b"))
	second := pooledProducers(t)
	if len(second) != 1 || second[0] != first[0] {
		t.Fatalf("after a reload with the same brokers: %v, want the same producer %p", second, first[0])
	}
	if isClosed(first[0]) {
		t.Fatal("the shared producer was closed by the reload")
	}
	if got := do(t, "POST", "/", auth(testSecret), strings.NewReader(`{"n":2}`)); got.status != 200 {
		t.Fatalf("second config: %d %s", got.status, got.body)
	}

	// Other brokers: a new producer; the old one is flushed and closed.
	startCaddy(t, logFile, site(c2.ListenAddrs()[0], "a"))
	third := pooledProducers(t)
	if len(third) != 1 || third[0] == first[0] {
		t.Fatalf("after a reload with other brokers: %v, want one new producer", third)
	}
	if !isClosed(first[0]) {
		t.Fatal("the producer no config uses is still open")
	}
	if got := do(t, "POST", "/", auth(testSecret), strings.NewReader(`{"n":3}`)); got.status != 200 {
		t.Fatalf("third config: %d %s", got.status, got.body)
	}
	if len(stored(t, c1, "a")) != 1 || len(stored(t, c1, "b")) != 1 || len(stored(t, c2, "a")) != 1 {
		t.Error("each config's record should be in its own cluster and topic")
	}

	// No config uses queue_publish any more: the last producer is closed
	// and nothing of it, or of kafka-go, keeps running.
	unloadChecksLeaks(t)
	if !isClosed(third[0]) || len(pooledProducers(t)) != 0 {
		t.Fatal("a producer is still open after the last config using it was unloaded")
	}
}

// TestRequestAcrossReload sends requests whose body is still arriving
// while the config is reloaded, with the same producer settings and with
// others: the unloaded handler still answers them with its producer, and
// a producer no config uses is closed once its last request is answered.
func TestRequestAcrossReload(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "a", "b"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	site := func(topic, clientID string) string {
		return fmt.Sprintf(`	queue_publish {
		brokers %s
		topic %s
		secret {env.QP_TEST_SECRET}
		client_id %s
	}`, c.ListenAddrs()[0], topic, clientID)
	}
	for _, tt := range []struct {
		name     string
		reloadTo string
		closes   bool
	}{
		{"same producer settings", site("b", "one"), false},
		{"other producer settings", site("b", "two"), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			startCaddy(t, logFile, site("a", "one"))
			before := pooledProducers(t)

			body, bodyWriter := io.Pipe()
			req, err := http.NewRequest("POST", baseURL+"/", body)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", testSecret)
			// The client sends no body before the server's 100
			// Continue, which net/http sends when the handler first
			// reads the body.
			req.Header.Set("Expect", "100-continue")
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, ExpectContinueTimeout: time.Minute}}
			answered := make(chan answerT, 1)
			go func() {
				res, err := client.Do(req)
				if err != nil {
					answered <- answerT{body: err.Error()}
					return
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				answered <- answerT{status: res.StatusCode, body: string(b)}
			}()
			// The write returns once the client took the bytes, so
			// after the first config's handler started reading.
			bodyWriter.Write([]byte(`{"across":`))
			startCaddy(t, logFile, tt.reloadTo)
			bodyWriter.Write([]byte(strconv.Quote(tt.name) + `}`))
			bodyWriter.Close()
			got := <-answered
			if got.status != 200 || !strings.HasPrefix(got.body, `{"success":true,`) {
				t.Fatalf("request across the reload: %d %s", got.status, got.body)
			}
			if recordsByValue(t, c, "a")[`{"across":`+strconv.Quote(tt.name)+`}`] == nil {
				t.Error("the request was not answered by the handler it reached, of the first config")
			}
			if tt.closes {
				waitFor(t, 5*time.Second, func() bool { return isClosed(before[0]) })
			} else if isClosed(before[0]) {
				t.Error("the shared producer was closed")
			}
		})
	}
	logs, _ := os.ReadFile(logFile)
	if bytes.Contains(logs, []byte("panic")) {
		t.Errorf("Caddy logged a panic:\n%s", logs)
	}
}

// A reload that leaves a producer unused does not wait for it to flush:
// the producer closes in the background, still flushing, while the new
// config already serves. (The last request of an unloaded config gives
// the producer back the same way.)
func TestReloadDoesNotWaitForTheOldProducer(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "a"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	site := func(clientID string) string {
		return fmt.Sprintf(`	queue_publish {
		brokers %s
		topic a
		secret {env.QP_TEST_SECRET}
		delivery async
		timeout 5s
		client_id %s
	}`, c.ListenAddrs()[0], clientID)
	}
	startCaddy(t, logFile, site("old"))
	release := make(chan struct{})
	received := holdProduce(c, release)
	if got := do(t, "POST", "/", auth(testSecret), strings.NewReader(`"queued"`)); got.status != 202 {
		t.Fatalf("async: %d %s", got.status, got.body)
	}
	waitFor(t, 5*time.Second, func() bool { return received.Load() == 1 })

	closed := func() bool {
		logs, _ := os.ReadFile(logFile)
		return hasLogLine(logs, "info", "Kafka producer closed", `"client_id":"old"`)
	}
	startCaddy(t, logFile, site("new")) // other settings: the old producer is unused
	if closed() {
		t.Fatal("the reload waited for the old producer to flush its held record")
	}
	close(release)
	waitFor(t, 10*time.Second, closed)
	if got := stored(t, c, "a"); len(got) != 1 || string(got[0].Value) != `"queued"` {
		t.Errorf("the topic holds %v, want the queued record, flushed after the reload", got)
	}
	unloadChecksLeaks(t)
}

func pooledProducers(t *testing.T) []*producer.Producer {
	t.Helper()
	var list []*producer.Producer
	eachShared(func(p pooledProducer) { list = append(list, p.Producer) })
	return list
}

// isClosed reports whether p stopped taking records: it refuses one
// before looking for its topic.
func isClosed(p *producer.Producer) bool {
	rec := newRecord(nil, time.Now(), time.Second)
	rec.Topic = "any"
	p.Start(context.Background(), []*record{rec})
	perr := rec.Outcome()
	return perr != nil && perr.Reason == "shutting down"
}

// A request may reach a handler after its config's Cleanup (Caddy stops
// old servers in the background): the handler then takes its producer
// from the pool again, and gives it back when the request ends.
func TestRequestAfterCleanupStillPublishes(t *testing.T) {
	noLeaks(t)
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	cfg := connection{Kafka: Kafka{Brokers: c.ListenAddrs(), Acks: "all"}}
	p, key, err := acquireProducer(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	u := &producerUse{conn: cfg, logger: zap.NewNop(), original: p, current: p, key: key}

	// A request running at Cleanup keeps the producer until it ends.
	if got := u.enter(); got != p {
		t.Fatal("a request of a loaded config publishes with another producer")
	}
	if err := u.unload(); err != nil {
		t.Fatal(err)
	}
	if isClosed(p) {
		t.Fatal("the producer was closed under a running request")
	}
	u.leave()
	if !isClosed(p) {
		t.Fatal("the producer no config uses is still open after its last request")
	}

	// A request after that gets a producer again, which publishes, and
	// which is closed when the request ends.
	again := u.enter()
	if again == nil || isClosed(again) {
		t.Fatal("no open producer for a request after Cleanup")
	}
	if _, perr := sendOne(again, "events", []byte(`"late"`), time.Second); perr != nil {
		t.Fatal(perr)
	}
	u.leave()
	if !isClosed(again) || len(pooledProducers(t)) != 0 {
		t.Error("the producer taken for a late request is still open after it")
	}
	if got := stored(t, c, "events"); len(got) != 1 {
		t.Errorf("the topic holds %d records, want the late one", len(got))
	}
}
