package producer

// Helpers shared by the package's tests.

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"
)

// testProducer returns a started producer for c's brokers, destructed when
// the test ends.
func testProducer(t testing.TB, c *kfake.Cluster) *Producer {
	t.Helper()
	p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll}, zap.NewNop())
	t.Cleanup(func() { <-p.Close() })
	return p
}

// warmProducer returns a cluster with one topic, "events", and a started
// producer that has stored the record "warm" in it: it knows the
// partition's leader and holds a connection to it.
func warmProducer(t testing.TB) (*kfake.Cluster, *Producer) {
	t.Helper()
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	p := testProducer(t, c)
	if _, perr := sendOne(p, "events", []byte(`"warm"`), time.Second); perr != nil {
		t.Fatal(perr)
	}
	return c, p
}

// sendOne publishes value and waits for its outcome.
func sendOne(p *Producer, topic string, value []byte, timeout time.Duration) (*Record, *Error) {
	rec := NewRecord(value, time.Now(), timeout)
	return rec, p.send(context.Background(), topic, rec)
}

// send publishes rec to topic and waits for its outcome.
func (p *Producer) send(ctx context.Context, topic string, rec *Record) *Error {
	rec.Topic = topic
	if err := p.Produce(ctx, []*Record{rec}); err != nil {
		return asError(err)
	}
	return rec.Outcome()
}

// publishNoWait queues rec on topic without waiting for its outcome; the
// test waits on rec.done.
func publishNoWait(p *Producer, ctx context.Context, topic string, rec *Record) *Error {
	rec.Topic = topic
	_, err := p.Enqueue(ctx, []*Record{rec})
	return asError(err)
}

// asError is a verb's error as an Error, so that a test that expects
// none fails with it: an Error as it is, any other as rejected.
func asError(err error) *Error {
	if err == nil {
		return nil
	}
	var perr *Error
	if errors.As(err, &perr) {
		return perr
	}
	return &Error{Outcome: OutcomeRejected, Reason: err.Error(), Err: err}
}

// mustProducer is a started producer for cfg; the caller closes it.
func mustProducer(t testing.TB, cfg Config, logger *zap.Logger) *Producer {
	t.Helper()
	cfg.Logger = logger
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// placedOn is the partition a record was queued on.
func placedOn(rec *Record) int {
	partition, _ := rec.Placed()
	return partition
}

// unstarted is a producer that New has not started.
func unstarted(t testing.TB, cfg Config) *Producer {
	t.Helper()
	p, err := newProducer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
