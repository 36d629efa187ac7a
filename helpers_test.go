package queuepublish

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// sendOne publishes one record and waits for its outcome.
func sendOne(p *producer.Producer, topic string, value []byte, timeout time.Duration) (*record, *publishError) {
	rec := newRecord(value, time.Now(), timeout)
	recs := []*record{rec}
	set, perr := p.Topic(context.Background(), topic, recs)
	if perr != nil {
		return rec, perr
	}
	p.Send(context.Background(), set, recs)
	return rec, rec.Answer
}

// mustProducer is a started producer for cfg; dial, if given, opens its
// connections. The caller closes it.
func mustProducer(t testing.TB, cfg producerConfig, logger *zap.Logger, dial ...func(ctx context.Context, network, address string) (net.Conn, error)) *producer.Producer {
	t.Helper()
	c, err := cfg.config(logger)
	if err != nil {
		t.Fatal(err)
	}
	if len(dial) > 0 {
		c.Dial = dial[0]
	}
	return producer.New(c)
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// adminConfig is the config Caddy runs, from its admin API.
func adminConfig(t *testing.T) string {
	t.Helper()
	res, err := http.Get("http://" + adminAddr + "/config/")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// noGoroutinesLeftBy fails the test if, once Caddy runs a config without
// queue_publish, a goroutine of this module or of kafka-go is still
// running. goleak's VerifyNone cannot be used around a Caddy server the
// tests share (Caddy's own goroutines come and go with each config), so
// this is goleak's check narrowed to the code a config unload must stop;
// like goleak, it polls until the deadline rather than failing at once.
func noGoroutinesLeftBy(t *testing.T, owners ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := goroutinesOf(owners...)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left running:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Shared with the producer's tests.
var (
	newCluster     = kafkatest.NewCluster
	stored         = kafkatest.Stored
	observedLogger = kafkatest.ObservedLogger
	recordsByValue = kafkatest.RecordsByValue
	closedPort     = kafkatest.ClosedPort
	waitFor        = kafkatest.WaitFor
	holdProduce    = kafkatest.HoldProduce
	noLeaks        = kafkatest.NoLeaks
	goroutinesOf   = kafkatest.GoroutinesOf
)

// unloadChecksLeaks loads a config without queue_publish and checks that
// nothing of the module or of kafka-go keeps running: the end of an
// integration test.
func unloadChecksLeaks(t *testing.T) {
	t.Helper()
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), `	respond "{\"success\":true}"`)
	noGoroutinesLeftBy(t, "caddy-queue-publish.", "segmentio/kafka-go")
}
