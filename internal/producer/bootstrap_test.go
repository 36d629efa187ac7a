package producer

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"
)

// frozenBroker is an address that accepts TCP connections and never
// answers on them, as a broker process stopped with SIGSTOP does (the
// kernel completes the handshakes).
func frozenBroker(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// A frozen broker among the bootstrap brokers holds up nothing: each new
// producer (a new connection pool, as after every metadata refresh) finds
// the broker that answers, well within a request's timeout, whichever it
// tries first. Before, a pool whose control connection went to the frozen
// broker failed every request for the 5 s dial timeout.
func TestFrozenBootstrapBrokerIsPassedOver(t *testing.T) {
	kafkatest.NoLeaks(t)
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	frozen := frozenBroker(t)
	for i := range 8 { // the order is random: 8 producers try both first
		brokers := []string{frozen, c.ListenAddrs()[0]}
		if i%2 == 1 {
			brokers[0], brokers[1] = brokers[1], brokers[0]
		}
		p := mustProducer(t, Config{Brokers: brokers, Acks: AcksAll}, zap.NewNop())
		start := time.Now()
		_, perr := sendOne(p, "events", []byte(`{}`), 2*time.Second)
		took := time.Since(start)
		p.Close()
		if perr != nil {
			t.Fatalf("producer %d: %v after %v", i, perr, took)
		}
	}
	if got := len(kafkatest.Stored(t, c, "events")); got != 8 {
		t.Errorf("the topic holds %d records, want 8", got)
	}
}

// With every bootstrap broker frozen or down, the answer is 503, within
// the request's timeout.
func TestNoBootstrapBrokerAnswers(t *testing.T) {
	kafkatest.NoLeaks(t)
	p := mustProducer(t, Config{Brokers: []string{frozenBroker(t), kafkatest.ClosedPort(t)}, Acks: AcksAll}, zap.NewNop())
	defer func() { <-p.Close() }()
	start := time.Now()
	_, perr := sendOne(p, "events", []byte(`{}`), time.Second)
	if took := time.Since(start); perr == nil || perr.Outcome != OutcomeRetry || took > 2*time.Second {
		t.Errorf("%v after %v, want a 503 within the 1 s timeout", perr, took)
	}
}
