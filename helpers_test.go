package queuepublish

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// newCluster starts an in-process Kafka-protocol broker (kfake) that is
// closed when the test ends.
func newCluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("starting kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// stored reads every record of topic, up to what the brokers report as
// written, with franz-go's client: a Kafka client independent of ours.
func stored(t testing.TB, c *kfake.Cluster, topic string) []*kgo.Record {
	t.Helper()
	want := int64(0)
	for _, p := range c.PartitionInfos(topic) {
		want += p.HighWatermark - p.LogStartOffset
	}
	if want == 0 {
		return nil
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(c.ListenAddrs()...),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for int64(len(recs)) < want {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records of %s: %v", len(recs), want, topic, ctx.Err())
		}
		fetches.EachError(func(_ string, _ int32, err error) { t.Fatalf("consuming: %v", err) })
		recs = append(recs, fetches.Records()...)
	}
	return recs
}

// observedLogger returns a logger whose entries, at debug level and above,
// the test can inspect.
func observedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// publishNoWait queues rec without waiting for its outcome; the test
// waits on rec.done.
func publishNoWait(p *producer, ctx context.Context, topic string, rec *record) *publishError {
	set, perr := p.partitionsOf(ctx, topic, []*record{rec})
	if perr != nil {
		return perr
	}
	return set.queueFor(rec).push(rec)
}

// mustProducer is a started producer for cfg; the caller destructs it.
func mustProducer(t testing.TB, cfg producerConfig, logger *zap.Logger) *producer {
	t.Helper()
	p, err := newProducer(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// mustMake is a producer for cfg, not started.
func mustMake(t testing.TB, cfg producerConfig, logger *zap.Logger) *producer {
	t.Helper()
	p, err := makeProducer(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	return p
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

// noLeaks fails the test if goroutines it started are still running once
// all its other cleanups (producers, brokers) have run.
func noLeaks(t *testing.T) {
	t.Helper()
	current := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, current) })
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

// goroutinesOf returns the stacks of the goroutines that run code of one
// of owners, other than those running the tests' own code.
func goroutinesOf(owners ...string) []string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var found []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "_test.go:") {
			continue
		}
		for _, o := range owners {
			if strings.Contains(g, o) {
				found = append(found, g)
				break
			}
		}
	}
	return found
}

// unloadChecksLeaks loads a config without queue_publish and checks that
// nothing of the module or of kafka-go keeps running: the end of an
// integration test.
func unloadChecksLeaks(t *testing.T) {
	t.Helper()
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), `	respond "{\"success\":true}"`)
	noGoroutinesLeftBy(t, "caddy-queue-publish.", "segmentio/kafka-go")
}
