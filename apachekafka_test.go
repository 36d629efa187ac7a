//go:build kafka

package queuepublish

// The tests named TestApacheKafka... run against real Apache Kafka: a
// cluster of three combined broker+controller nodes (test/apachekafka)
// that the first of them starts and TestMain stops, shared by all of them,
// with a Hydra (internal/hydratest) started before it, whose tokens its
// OAuth listener validates. They need Java 17 and Maven (and Hydra, built
// once into Go's cache), and are selected with the build tag:
//
//	go test -tags kafka -run ApacheKafka -v .

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/hydratest"
	"github.com/queuepublish/caddy-queue-publish/test/apachekafka"
	"github.com/twmb/franz-go/pkg/kgo"
)

var (
	kafkaOnce    sync.Once
	kafkaCluster *apachekafka.Cluster
	kafkaHydra   *hydratest.Server // the issuer of the OAuth listener
	kafkaErr     error

	topicRunsMu sync.Mutex
	topicRuns   = map[string]int{} // how many times each test's topic was made
)

func TestMain(m *testing.M) {
	code := m.Run()
	if kafkaCluster != nil {
		if code != 0 {
			fmt.Fprintf(os.Stderr, "the Kafka nodes' data and logs are kept in %s\n", kafkaCluster.Dir)
		}
		kafkaCluster.Close(code != 0)
	}
	if kafkaHydra != nil {
		kafkaHydra.Stop()
	}
	os.Exit(code)
}

// realKafka is the shared three-node cluster, started by its first user. A
// cluster that cannot start fails the test: nothing here is skipped. A
// failing test logs the end of each node's log.
func realKafka(t *testing.T) *apachekafka.Cluster {
	t.Helper()
	kafkaOnce.Do(func() {
		// The issuer first: the nodes' configuration names its keys.
		if kafkaHydra, kafkaErr = hydratest.Launch(); kafkaErr != nil {
			kafkaErr = fmt.Errorf("starting Hydra %s, the OAuth listener's issuer: %w", hydratest.Version, kafkaErr)
			return
		}
		kafkaCluster, kafkaErr = apachekafka.Start(apachekafka.Options{Nodes: 3, OAuth: &apachekafka.OAuthIssuer{
			JWKSURL:  kafkaHydra.JWKSURL,
			Issuer:   kafkaHydra.Issuer,
			Audience: kafkaAudience,
			ReauthMs: kafkaReauthMs,
		}})
		if kafkaErr != nil {
			kafkaErr = fmt.Errorf("starting Apache Kafka %s: %w", apachekafka.Version, kafkaErr)
		}
	})
	if kafkaErr != nil {
		t.Fatal(kafkaErr)
	}
	c := kafkaCluster
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.LogTails(40))
		}
	})
	return c
}

// realTopic creates a topic named after the test, replicated on the three
// nodes with min.insync.replicas 2, and waits until every node knows it.
func realTopic(t *testing.T, c *apachekafka.Cluster, partitions int, configs map[string]*string) string {
	t.Helper()
	name := strings.NewReplacer("/", ".", "#", ".", "=", "-").Replace(t.Name()) // Kafka allows [a-zA-Z0-9._-]
	// A test run again (-count) gets a topic of its own.
	topicRunsMu.Lock()
	topicRuns[name]++
	if n := topicRuns[name]; n > 1 {
		name = fmt.Sprintf("%s.run%d", name, n)
	}
	topicRunsMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.CreateTopic(ctx, name, partitions, configs); err != nil {
		t.Fatal(err)
	}
	return name
}

// realRecords reads topic back with franz-go.
func realRecords(t *testing.T, c *apachekafka.Cluster, topic string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	recs, err := c.Records(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// brokersOf is the cluster's addresses on listener l, as the brokers
// option takes them.
func brokersOf(c *apachekafka.Cluster, l apachekafka.Listener) string {
	return strings.Join(c.Brokers(l), " ")
}

// publishTo starts Caddy with one queue_publish producing to topic on the
// cluster's PLAINTEXT listener, with the extra options, and returns the
// file Caddy logs to.
func publishTo(t *testing.T, c *apachekafka.Cluster, topic string, extra ...string) string {
	t.Helper()
	return publishVia(t, c, apachekafka.Plaintext, topic, extra...)
}

// publishVia is publishTo on another of the cluster's listeners.
func publishVia(t *testing.T, c *apachekafka.Cluster, l apachekafka.Listener, topic string, extra ...string) string {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	t.Cleanup(func() { printCaddyErrors(t, logFile) }) // before the folder goes
	startCaddy(t, logFile, fmt.Sprintf(`header X-Test-Config %s
	queue_publish {
		brokers %s
		topic %s
		secret %s
		%s
	}`, topic, brokersOf(c, l), topic, testSecret, strings.Join(extra, "\n\t\t")))
	waitOldServerGone(t, topic)
	return logFile
}

// waitOldServerGone waits until new connections reach only the config
// just loaded, whose answers name its topic. Caddy stops the servers of
// the config before in the background, and until then they accept some
// connections on the shared listener and close them unanswered: a load
// started at once would meet that reload's drops.
func waitOldServerGone(t *testing.T, topic string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for inARow := 0; inARow < 20; {
		if time.Now().After(deadline) {
			t.Fatalf("connections still reach the config before the one for %s", topic)
		}
		res, err := testClient.Get(baseURL + "/") // a new connection each; 405, nothing produced
		if err == nil {
			res.Body.Close()
		}
		if err == nil && res.Header.Get("X-Test-Config") == topic {
			inARow++
		} else {
			inARow = 0
		}
	}
}

// printCaddyErrors prints, for a failed test, the last error lines of
// Caddy's log (a panic serving a request among them).
func printCaddyErrors(t *testing.T, logFile string) {
	if !t.Failed() {
		return
	}
	b, _ := os.ReadFile(logFile)
	var errs []string
	for line := range strings.Lines(string(b)) {
		if strings.Contains(line, `"level":"error"`) || strings.Contains(line, "panic") {
			errs = append(errs, line)
		}
	}
	t.Logf("Caddy's last error lines (of %d):\n%s", len(errs), strings.Join(errs[max(0, len(errs)-20):], ""))
}

// where is a record's place in the topic.
type where struct {
	Partition int32 `json:"partition"`
	Offset    int64 `json:"offset"`
}

// byPlace indexes records by partition and offset.
func byPlace(recs []*kgo.Record) map[where]*kgo.Record {
	m := make(map[where]*kgo.Record, len(recs))
	for _, r := range recs {
		m[where{r.Partition, r.Offset}] = r
	}
	return m
}
