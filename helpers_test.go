package queuepublish

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// sendOne publishes one record and waits for its outcome.
func sendOne(p *producer.Producer, topic string, value []byte, timeout time.Duration) (*record, *publishError) {
	rec := newRecord(value, time.Now(), timeout)
	rec.Topic = topic
	p.Produce(context.Background(), []*record{rec})
	return rec, rec.Outcome()
}

// closeProducer closes p and waits until it has flushed.
func closeProducer(p *producer.Producer) { <-p.Close() }

// mustProducer is a started producer for cfg; dial, if given, opens its
// connections. The caller closes it.
func mustProducer(t testing.TB, cfg connection, logger *zap.Logger, dial ...func(ctx context.Context, network, address string) (net.Conn, error)) *producer.Producer {
	t.Helper()
	c, err := cfg.config(logger)
	if err != nil {
		t.Fatal(err)
	}
	if len(dial) > 0 {
		c.Dial = dial[0]
	}
	p, err := producer.New(c)
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

// startCaddy loads a config into the in-process Caddy of caddytest: the
// global options every test needs, Caddy's own log written to logFile, and
// site as the body of the :9080 site.
func startCaddy(t *testing.T, logFile, site string) {
	t.Helper()
	loadCaddy(t, caddyConfig(logFile, site))
}

// loadCaddy loads a Caddyfile into caddytest's Caddy and returns once
// only the new config's servers listen. Caddy binds each address with
// SO_REUSEPORT, and a reload returns before the old servers have closed
// their sockets: a connection the kernel queued on an old socket is reset
// when it closes, so a test's first request could meet a reset that no
// handler caused.
func loadCaddy(t *testing.T, config string) {
	t.Helper()
	caddytest.NewTester(t).InitServer(config, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, port := range []int{9080, 9081, 9443} {
		for {
			n, err := listeningSockets(port)
			if err != nil || n <= 1 {
				break // only Linux says; elsewhere the race stays
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d sockets still listen on port %d after the reload", n, port)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// listeningSockets counts the TCP sockets listening on port, as Linux's
// /proc/net/tcp and tcp6 list them.
func listeningSockets(port int) (int, error) {
	suffix := fmt.Sprintf(":%04X", port)
	n := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) > 3 && strings.HasSuffix(f[1], suffix) && f[3] == "0A" { // 0A: LISTEN
				n++
			}
		}
	}
	return n, nil
}

func caddyConfig(logFile, site string) string {
	return caddyGlobals(logFile) + fmt.Sprintf(`
:9080 {
%s
}
`, site)
}

// caddyGlobals is the global options block every test's config starts
// with: caddytest's admin endpoint and ports, Caddy's log to logFile.
func caddyGlobals(logFile string) string {
	return fmt.Sprintf(`{
	admin %s
	http_port 9080
	https_port 9443
	grace_period 1ns
	skip_install_trust
	log {
		output file %s
		level DEBUG
	}
}
`, adminAddr, logFile)
}

// do sends one request to the test server.
func do(t *testing.T, method, path string, header map[string]string, body io.Reader) answerT {
	t.Helper()
	return doAt(t, baseURL, method, path, header, body)
}

// doAt sends one request to the server at base.
func doAt(t *testing.T, base, method, path string, header map[string]string, body io.Reader) answerT {
	t.Helper()
	// Errors are reported with t.Error, not t.Fatal, so that tests may
	// call do from goroutines; the caller sees status 0.
	req, err := http.NewRequest(method, base+path, body)
	if err != nil {
		t.Error(err)
		return answerT{body: err.Error()}
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := testClient.Do(req)
	if err != nil {
		t.Error(err)
		return answerT{body: err.Error()}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Error(err)
	}
	return answerT{res.StatusCode, res.Header, string(b)}
}

func auth(v string) map[string]string { return map[string]string{"Authorization": v} }

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// hasLogLine reports whether the JSON log holds a line at level with msg
// whose text contains detail.
func hasLogLine(log []byte, level, msg, detail string) bool {
	for line := range bytes.Lines(log) {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(line, &entry) == nil && entry.Level == level && entry.Msg == msg &&
			strings.Contains(string(line), detail) {
			return true
		}
	}
	return false
}

// handlerForUnitTest is a Handler as Provision leaves it, without a
// producer: enough for the answers that never reach Kafka.
func handlerForUnitTest(maxSize int64) *Handler {
	h := handlerWithSecrets(testSecret)
	h.MaxSize, h.Timeout = maxSize, caddy.Duration(time.Second)
	h.mode = bodyMode{}
	return h
}

func headerMap(r *kgo.Record) map[string]string {
	m := map[string]string{}
	for _, h := range r.Headers {
		m[h.Key] = string(h.Value)
	}
	return m
}

// adminRequest sends req to c with franz-go's client and fails the test on
// an error code in the answer.
func adminRequest(t *testing.T, c *kfake.Cluster, req kmsg.Request) kmsg.Response {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	resp, err := cl.Request(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

func bodyReader(b []byte) nopCloser { return nopCloser{bytes.NewReader(b)} }

// The seed's example request.
const seedBody = `{"messages": [{"msg":"hello world"}]}`

// testSecret is what `openssl rand -hex 32` gives: 64 hex digits.
const testSecret = "4f1c0d5e9a7b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d"

const (
	adminAddr = "localhost:2999" // caddytest's admin endpoint
	baseURL   = "http://127.0.0.1:9080"
)

type answerT struct {
	status int
	header http.Header
	body   string
}

// testClient opens a connection per request: a config reload closes the
// server's idle connections, which a kept-alive connection would meet as
// an EOF.
var testClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// onlyBody hides the length of a body from the client, which then sends
// it chunked, without Content-Length.
type onlyBody struct{ io.Reader }

// answerCase is a request and the answer it must get.
type answerCase struct {
	name       string
	method     string
	path       string
	header     map[string]string
	body       io.Reader
	wantStatus int
	wantBody   string
	wantHeader map[string]string
	within     time.Duration // if set, the timeout it must be answered in
}

// expectAnswers sends each request to the Caddy of the test and checks its
// answer: status, JSON body, headers, and how soon.
func expectAnswers(t *testing.T, cases []answerCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			got := do(t, tt.method, tt.path, tt.header, tt.body)
			took := time.Since(start)
			if got.status != tt.wantStatus || got.body != tt.wantBody {
				t.Errorf("got %d %s, want %d %s", got.status, got.body, tt.wantStatus, tt.wantBody)
			}
			wantCT := "application/json"
			if ct, ok := tt.wantHeader["Content-Type"]; ok {
				wantCT = ct
			}
			if ct := got.header.Get("Content-Type"); ct != wantCT {
				t.Errorf("Content-Type = %q, want %s", ct, wantCT)
			}
			for k, v := range tt.wantHeader {
				if got.header.Get(k) != v {
					t.Errorf("%s = %q, want %q", k, got.header.Get(k), v)
				}
			}
			if tt.within > 0 && took > tt.within+300*time.Millisecond {
				t.Errorf("answered after %v, want within the %v timeout", took, tt.within)
			}
		})
	}
}

// queueRoute is a handle block of the test Caddyfile: queue_publish on
// path with the brokers and topic, the test's secret, and the extra lines.
func queueRoute(path, brokers, topic, extra string) string {
	return fmt.Sprintf(`	handle %s {
		queue_publish {
			brokers %s
			topic %s
			secret {env.QP_TEST_SECRET}
			%s
		}
	}
`, path, brokers, topic, extra)
}

// readOf is what h reads of r, as ServeHTTP reads it.
func readOf(h *Handler, r *http.Request) *request {
	var req request
	h.readRequest(r, &req)
	return &req
}
