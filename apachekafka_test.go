//go:build kafka

package queuepublish

// The tests named TestApacheKafka... run against real Apache Kafka: a
// cluster of three combined broker+controller nodes (test/apachekafka)
// that the first of them starts and TestMain stops, shared by all of them.
// They need Java 17 and Maven, and are selected with the build tag:
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

	"github.com/queuepublish/caddy-queue-publish/test/apachekafka"
	"github.com/twmb/franz-go/pkg/kgo"
)

var (
	kafkaOnce    sync.Once
	kafkaCluster *apachekafka.Cluster
	kafkaErr     error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if kafkaCluster != nil {
		if code != 0 {
			fmt.Fprintf(os.Stderr, "the Kafka nodes' data and logs are kept in %s\n", kafkaCluster.Dir)
		}
		kafkaCluster.Close(code != 0)
	}
	os.Exit(code)
}

// realKafka is the shared three-node cluster, started by its first user. A
// cluster that cannot start fails the test: nothing here is skipped. A
// failing test logs the end of each node's log.
func realKafka(t *testing.T) *apachekafka.Cluster {
	t.Helper()
	kafkaOnce.Do(func() {
		kafkaCluster, kafkaErr = apachekafka.Start(apachekafka.Options{Nodes: 3})
	})
	if kafkaErr != nil {
		t.Fatalf("starting Apache Kafka %s: %v", apachekafka.Version, kafkaErr)
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
	startCaddy(t, logFile, fmt.Sprintf(`queue_publish {
		brokers %s
		topic %s
		secret %s
		%s
	}`, brokersOf(c, l), topic, testSecret, strings.Join(extra, "\n\t\t")))
	return logFile
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
