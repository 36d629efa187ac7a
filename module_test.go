package queuepublish

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap"

	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// The seed's example request.
const seedBody = `{"messages": [{"msg":"hello world"}]}`

// testSecret is what `openssl rand -hex 32` gives: 64 hex digits.
const testSecret = "4f1c0d5e9a7b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d"

const (
	adminAddr = "localhost:2999" // caddytest's admin endpoint
	baseURL   = "http://127.0.0.1:9080"
)

// startCaddy loads a config into the in-process Caddy of caddytest: the
// global options every test needs, Caddy's own log written to logFile, and
// site as the body of the :9080 site.
func startCaddy(t *testing.T, logFile, site string) {
	t.Helper()
	caddytest.NewTester(t).InitServer(caddyConfig(logFile, site), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
}

func caddyConfig(logFile, site string) string {
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

:9080 {
%s
}
`, adminAddr, logFile, site)
}

type answerT struct {
	status int
	header http.Header
	body   string
}

// do sends one request to the test server.
func do(t *testing.T, method, path string, header map[string]string, body io.Reader) answerT {
	t.Helper()
	// Errors are reported with t.Error, not t.Fatal, so that tests may
	// call do from goroutines; the caller sees status 0.
	req, err := http.NewRequest(method, baseURL+path, body)
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

// testClient opens a connection per request: a config reload closes the
// server's idle connections, which a kept-alive connection would meet as
// an EOF.
var testClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

func auth(v string) map[string]string { return map[string]string{"Authorization": v} }

// onlyBody hides the length of a body from the client, which then sends
// it chunked, without Content-Length.
type onlyBody struct{ io.Reader }

// TestHTTPContract goes through every row of the status table, through a
// real Caddy server and a real (in-process) Kafka-protocol broker.
func TestHTTPContract(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "my-queue", "slow", "flaky", "forbidden"))
	if err := c.CreateTopic("tiny", 1, map[string]string{"max.message.bytes": "100"}); err != nil {
		t.Fatal(err)
	}
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "flaky", Err: kerr.NotEnoughReplicas, Count: -1})
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "forbidden", Err: kerr.TopicAuthorizationFailed, Count: -1})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		if req.(*kmsg.ProduceRequest).Topics[0].Topic == "slow" {
			c.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})

	t.Setenv("QP_TEST_SECRET", testSecret)
	broker := c.ListenAddrs()[0]
	route := func(path, topic, brokers, extra string) string {
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
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile,
		route("/q", "my-queue", broker, "max_size 64")+
			route("/slow", "slow", broker, "timeout 300ms")+
			route("/flaky", "flaky", broker, "timeout 300ms")+
			route("/down", "my-queue", closedPort(t), "timeout 300ms")+
			route("/tiny", "tiny", broker, "")+
			route("/forbidden", "forbidden", broker, "")+
			route("/unknown", "no-such-topic", broker, ""))

	ok := auth(testSecret)
	tests := []struct {
		name       string
		method     string
		path       string
		header     map[string]string
		body       io.Reader
		wantStatus int
		wantBody   string // exact, or a prefix when it ends with "..."
		wantHeader map[string]string
		within     time.Duration
	}{
		{"seed request", "POST", "/q", ok, strings.NewReader(seedBody), 200, `{"success":true,"partition":0,"offset":0}`, nil, 0},
		{"bearer token", "POST", "/q", auth("Bearer " + testSecret), strings.NewReader(`[1,2,3]`), 200, `{"success":true,"partition":0,"offset":1}`, nil, 0},
		{"bearer scheme in lower case", "POST", "/q", auth("bearer " + testSecret), strings.NewReader(`"text"`), 200, `{"success":true,"partition":0,"offset":2}`, nil, 0},
		{"chunked body", "POST", "/q", ok, onlyBody{strings.NewReader(`{"chunked":true}`)}, 200, `{"success":true,"partition":0,"offset":3}`, nil, 0},
		{"no authorization", "POST", "/q", nil, strings.NewReader(`{}`), 403, `{"err":"invalid auth token provided"}`, nil, 0},
		{"wrong secret", "POST", "/q", auth(strings.Repeat("0", 64)), strings.NewReader(`{}`), 403, `{"err":"invalid auth token provided"}`, nil, 0},
		{"prefix of the secret", "POST", "/q", auth(testSecret[:63]), strings.NewReader(`{}`), 403, `{"err":"invalid auth token provided"}`, nil, 0},
		{"secret plus more", "POST", "/q", auth(testSecret + "0"), strings.NewReader(`{}`), 403, `{"err":"invalid auth token provided"}`, nil, 0},
		{"bearer prefix of the secret", "POST", "/q", auth("Bearer " + testSecret[:10]), strings.NewReader(`{}`), 403, `{"err":"invalid auth token provided"}`, nil, 0},
		{"empty bearer", "POST", "/q", auth("Bearer "), strings.NewReader(`{}`), 403, `{"err":"invalid auth token provided"}`, nil, 0},
		{"empty body", "POST", "/q", ok, strings.NewReader(``), 400, `{"err":"payload not valid JSON"}`, nil, 0},
		{"not JSON", "POST", "/q", ok, strings.NewReader(`hello`), 400, `{"err":"payload not valid JSON"}`, nil, 0},
		{"truncated JSON", "POST", "/q", ok, strings.NewReader(`{"a":`), 400, `{"err":"payload not valid JSON"}`, nil, 0},
		{"two JSON values", "POST", "/q", ok, strings.NewReader(`{}{}`), 400, `{"err":"payload not valid JSON"}`, nil, 0},
		{"invalid UTF-8 in a string", "POST", "/q", ok, strings.NewReader("\"\xff\""), 400, `{"err":"payload not valid JSON"}`, nil, 0},
		{"over max_size", "POST", "/q", ok, strings.NewReader(`"` + strings.Repeat("a", 63) + `"`), 413, `{"err":"payload too large"}`, nil, 0},
		{"chunked over max_size", "POST", "/q", ok, onlyBody{strings.NewReader(`"` + strings.Repeat("a", 100) + `"`)}, 413, `{"err":"payload too large"}`, nil, 0},
		{"GET", "GET", "/q", ok, nil, 405, `{"err":"method not allowed"}`, map[string]string{"Allow": "POST"}, 0},
		{"PUT", "PUT", "/q", ok, strings.NewReader(`{}`), 405, `{"err":"method not allowed"}`, map[string]string{"Allow": "POST"}, 0},
		{"broker unreachable", "POST", "/down", ok, strings.NewReader(`{}`), 503, `{"error":"no Kafka broker reachable","outcome":"not_written"}`, map[string]string{"Retry-After": "1"}, 300 * time.Millisecond},
		{"retriable broker error", "POST", "/flaky", ok, strings.NewReader(`{}`), 503, `{"error":"Kafka broker not ready: Not Enough Replicas","outcome":"not_written"}`, map[string]string{"Retry-After": "1"}, 300 * time.Millisecond},
		{"no acknowledgement", "POST", "/slow", ok, strings.NewReader(`{}`), 504, `{"error":"no acknowledgement from Kafka within the timeout; the record may or may not have been written","outcome":"unknown"}`, nil, 300 * time.Millisecond},
		{"record too large for the broker", "POST", "/tiny", ok, strings.NewReader(`"` + strings.Repeat("a", 200) + `"`), 413, `{"error":"record too large for the Kafka broker","outcome":"not_written"}`, nil, 0},
		{"not authorized", "POST", "/forbidden", ok, strings.NewReader(`{}`), 500, `{"error":"not authorized to write to the topic","outcome":"not_written"}`, nil, 0},
		{"unknown topic", "POST", "/unknown", ok, strings.NewReader(`{}`), 500, `{"error":"unknown topic","outcome":"not_written"}`, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			got := do(t, tt.method, tt.path, tt.header, tt.body)
			took := time.Since(start)
			if got.status != tt.wantStatus || got.body != tt.wantBody {
				t.Errorf("got %d %s, want %d %s", got.status, got.body, tt.wantStatus, tt.wantBody)
			}
			if ct := got.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
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

	// Exactly the acknowledged bodies are in the topic, byte for byte.
	var values []string
	for _, r := range stored(t, c, "my-queue") {
		values = append(values, string(r.Value))
		if r.Key != nil || len(r.Headers) != 0 {
			t.Errorf("record %q has a key or headers", r.Value)
		}
	}
	want := []string{seedBody, `[1,2,3]`, `"text"`, `{"chunked":true}`}
	if strings.Join(values, "\n") != strings.Join(want, "\n") {
		t.Errorf("my-queue holds %q, want %q", values, want)
	}

	// Each failed publish is one error line with its details: topic,
	// error kind, the partition if the record was queued on one, the
	// produce requests that carried it, how long it took, the cause.
	logged, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	type failure struct {
		Topic     string
		Kind      string
		Partition *int
		Attempts  *int
		Duration  *float64
		Error     string
	}
	lines := map[string][]failure{}
	for line := range bytes.Lines(logged) {
		var e struct {
			Level, Msg string
			failure
		}
		if json.Unmarshal(line, &e) == nil && e.Msg == "publish failed" {
			if e.Level != "error" {
				t.Errorf("logged at %s: %s", e.Level, line)
			}
			lines[e.Topic] = append(lines[e.Topic], e.failure)
		}
	}
	zero := 0
	for topic, want := range map[string]struct {
		kind      string
		partition *int
		attempts  func(int) bool
		err       string
	}{
		"my-queue":      {"retriable", nil, func(n int) bool { return n == 0 }, "connection refused"}, // /down
		"flaky":         {"retriable", &zero, func(n int) bool { return n >= 2 }, "Not Enough Replicas"},
		"slow":          {"timeout", &zero, func(n int) bool { return n == 1 }, "no acknowledgement"},
		"tiny":          {"too_large", &zero, func(n int) bool { return n == 1 }, "Message Size Too Large"},
		"forbidden":     {"permanent", &zero, func(n int) bool { return n == 1 }, "Topic Authorization Failed"},
		"no-such-topic": {"permanent", nil, func(n int) bool { return n == 0 }, `topic "no-such-topic" does not exist`},
	} {
		got := lines[topic]
		if len(got) != 1 {
			t.Errorf("%s: %d error lines, want 1", topic, len(got))
			continue
		}
		f := got[0]
		switch {
		case f.Kind != want.kind, !strings.Contains(f.Error, want.err),
			f.Attempts == nil || !want.attempts(*f.Attempts), f.Duration == nil,
			(f.Partition == nil) != (want.partition == nil),
			f.Partition != nil && *f.Partition != *want.partition:
			t.Errorf("%s: logged %+v (attempts %v, partition %v), want kind %s, error with %q", topic, f,
				deref(f.Attempts), deref(f.Partition), want.kind, want.err)
		}
	}
	if len(lines) != 6 {
		t.Errorf("error lines for topics %v, want only the 6 failed requests", slices.Collect(maps.Keys(lines)))
	}
	unloadChecksLeaks(t)
}

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
	producers.Range(func(_, v any) bool {
		list = append(list, v.(pooledProducer).Producer)
		return true
	})
	return list
}

// isClosed reports whether p stopped taking records: it refuses one
// before looking for its topic.
func isClosed(p *producer.Producer) bool {
	_, perr := p.Topic(context.Background(), "any", []*record{newRecord(nil, time.Now(), time.Second)})
	return perr != nil && perr.Reason == "shutting down"
}

// TestSecretMustResolve checks that a secret which resolves empty or
// cannot be resolved stops the config from loading, naming the field.
func TestSecretMustResolve(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "my-queue"))
	os.Unsetenv("QP_UNSET_SECRET")
	before := len(pooledProducers(t))
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, secret := range map[string]string{
		"unset environment variable": "{env.QP_UNSET_SECRET}",
		"missing file":               "{file./nonexistent/secret}",
		"empty file":                 "{file." + empty + "}",
		"unknown placeholder":        "{http.request.header.X}",
	} {
		t.Run(name, func(t *testing.T) {
			cfg := caddyConfig(filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish {
		brokers %s
		topic my-queue
		secret %s
	}`, c.ListenAddrs()[0], secret))
			caddytest.AssertLoadError(t, cfg, "caddyfile", "secret: ")
		})
	}
	if n := len(pooledProducers(t)); n != before {
		t.Errorf("%d producers after refused configs, want %d as before", n, before)
	}
}

// idempotent on makes a cluster that refuses the idempotent producer (here
// without IDEMPOTENT_WRITE) a load error, naming it, and keeps no
// producer; unset, the same cluster is produced to, without idempotence.
func TestIdempotentOnRefusedByTheClusterFailsTheLoad(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.InitProducerID}, Err: kerr.ClusterAuthorizationFailed, Count: -1})
	before := len(pooledProducers(t))
	t.Setenv("QP_TEST_SECRET", testSecret)
	site := func(extra string) string {
		return fmt.Sprintf(`	queue_publish {
		brokers %s
		topic events
		secret {env.QP_TEST_SECRET}
		%s
	}`, c.ListenAddrs()[0], extra)
	}
	caddytest.AssertLoadError(t, caddyConfig(filepath.Join(t.TempDir(), "caddy.log"), site("idempotent on")), "caddyfile",
		"idempotent on: the Kafka cluster refuses the idempotent producer")
	if n := len(pooledProducers(t)); n != before {
		t.Errorf("%d producers after the refused config, want %d as before", n, before)
	}
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), site(""))
	if got := do(t, "POST", "/", auth(testSecret), strings.NewReader(`{"a":1}`)); got.status != 200 {
		t.Errorf("without idempotent on: %d %s, want 200", got.status, got.body)
	}
	unloadChecksLeaks(t)
}

// TestSecretNeverLogged runs accepted and refused requests with the secret
// and with near misses, through a config with debug logging and access
// logs, then looks for the secret in every log line, answer and in the
// running config.
func TestSecretNeverLogged(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "my-queue"))
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "my-queue", Err: kerr.TopicAuthorizationFailed, Count: 1})
	t.Setenv("QP_TEST_SECRET", testSecret)
	dir := t.TempDir()
	// A second secret, from a file, and a third for signed webhooks.
	fileSecret := strings.Repeat("f1e2d3c4", 8)
	hookSecret := strings.Repeat("9a8b7c6d", 8)
	t.Setenv("QP_HOOK_SECRET", hookSecret)
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(fileSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "caddy.log")
	accessLog := filepath.Join(dir, "access.log")
	startCaddy(t, logFile, fmt.Sprintf(`	log {
		output file %[1]s
	}
	handle /hook {
		queue_publish {
			brokers %[2]s %[3]s
			topic my-queue
			secret {env.QP_HOOK_SECRET}
			signature_header X-Hub-Signature-256
			max_size 100
		}
	}
	handle {
		queue_publish {
			brokers %[2]s %[3]s
			topic my-queue
			secret {env.QP_TEST_SECRET}
			secret {file.%[4]s}
			max_size 100
		}
	}`, accessLog, c.ListenAddrs()[0], closedPort(t), secretFile))

	var answers strings.Builder
	statuses := map[int]int{}
	for _, secret := range []string{testSecret, fileSecret} {
		for _, h := range []string{secret, "Bearer " + secret, secret[:32], secret + "x", "Bearer " + secret[1:]} {
			for _, body := range []string{`{}`, `nope`, strings.Repeat("x", 200)} {
				got := do(t, "POST", "/", auth(h), strings.NewReader(body))
				fmt.Fprintln(&answers, got.status, got.header, got.body)
				statuses[got.status]++
			}
		}
	}
	for _, sig := range []string{signature(hookSecret, `{}`), signature(hookSecret[:32], `{}`), signature(hookSecret, `{"other":1}`), "sha256=" + strings.Repeat("0", 64)} {
		got := do(t, "POST", "/hook", map[string]string{"X-Hub-Signature-256": sig}, strings.NewReader(`{}`))
		fmt.Fprintln(&answers, got.status, got.header, got.body)
		statuses[got.status]++
	}
	// 200s for both secrets and the signature (one 500 from the fault),
	// 400s, 403s and 413s.
	if statuses[200]+statuses[500] != 5 || statuses[400] != 4 || statuses[403] != 21 || statuses[413] != 4 {
		t.Errorf("statuses %v", statuses)
	}
	running := []byte(adminConfig(t))

	logs, _ := os.ReadFile(logFile)
	access, _ := os.ReadFile(accessLog)
	for _, placeholder := range []string{"{env.QP_TEST_SECRET}", "{file." + secretFile + "}", "{env.QP_HOOK_SECRET}"} {
		if !bytes.Contains(running, []byte(placeholder)) {
			t.Errorf("the running config should hold the placeholder %s: %s", placeholder, running)
		}
	}
	if !hasLogLine(logs, "error", "publish failed", "Topic Authorization Failed") || len(access) == 0 {
		t.Fatal("the test should produce error logs and access logs")
	}
	for name, text := range map[string][]byte{
		"Caddy's log": logs, "the access log": access,
		"the answers": []byte(answers.String()), "the running config": running,
	} {
		for _, secret := range []string{testSecret, fileSecret, hookSecret} {
			for _, part := range []string{secret, secret[:32], secret[1:]} {
				if bytes.Contains(text, []byte(part)) {
					t.Errorf("%s contains (part of) a secret", name)
				}
			}
		}
	}
	unloadChecksLeaks(t)
}

// TestStartsWhileBrokersAreDown checks that Caddy starts while no broker is
// reachable, answers 503 and warns, then serves once a broker comes up.
func TestStartsWhileBrokersAreDown(t *testing.T) {
	addr := closedPort(t)
	t.Setenv("QP_TEST_SECRET", testSecret)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, fmt.Sprintf(`	queue_publish {
		brokers %s
		topic my-queue
		secret {env.QP_TEST_SECRET}
	}`, addr))

	got := do(t, "POST", "/", auth(testSecret), strings.NewReader(seedBody))
	if got.status != 503 || got.header.Get("Retry-After") == "" {
		t.Fatalf("with no broker: %d %s, want 503 with Retry-After", got.status, got.body)
	}
	waitFor(t, 5*time.Second, func() bool {
		logs, _ := os.ReadFile(logFile)
		return hasLogLine(logs, "warn", "no Kafka broker reachable at start; requests are answered 503 until one is", addr)
	})

	var port int
	fmt.Sscanf(addr[strings.LastIndexByte(addr, ':')+1:], "%d", &port)
	c := newCluster(t, kfake.Ports(port), kfake.SeedTopics(1, "my-queue"))
	waitFor(t, 10*time.Second, func() bool {
		return do(t, "POST", "/", auth(testSecret), strings.NewReader(seedBody)).status == 200
	})
	if got := stored(t, c, "my-queue"); len(got) != 1 || string(got[0].Value) != seedBody {
		t.Errorf("topic holds %v, want the one acknowledged record", got)
	}
	unloadChecksLeaks(t)
}

// handlerForUnitTest is a Handler as Provision leaves it, without a
// producer: enough for the answers that never reach Kafka.
func handlerForUnitTest(maxSize int64) *Handler {
	return &Handler{
		MaxSize:       maxSize,
		Timeout:       caddy.Duration(time.Second),
		secretDigests: [][sha256.Size]byte{sha256.Sum256([]byte(testSecret))},
		secrets:       [][]byte{[]byte(testSecret)},
	}
}

func TestAuthorized(t *testing.T) {
	h := handlerForUnitTest(10)
	for header, want := range map[string]bool{
		testSecret:                   true,
		"Bearer " + testSecret:       true,
		"BEARER " + testSecret:       true,
		"":                           false,
		"Bearer":                     false,
		"Bearer ":                    false,
		"Bearer  " + testSecret:      false,
		testSecret[:63]:              false,
		testSecret + "0":             false,
		" " + testSecret:             false,
		"Basic " + testSecret:        false,
		strings.ToUpper(testSecret):  false,
		"Bearer " + testSecret + " ": false,
	} {
		if got := h.authorized(header); got != want {
			t.Errorf("authorized(%q) = %v, want %v", header, got, want)
		}
	}
	// A secret that itself starts with "Bearer " is accepted whole.
	h.secretDigests = [][sha256.Size]byte{sha256.Sum256([]byte("Bearer xyz"))}
	if !h.authorized("Bearer xyz") || !h.authorized("Bearer Bearer xyz") || h.authorized("xyz") {
		t.Error("a secret starting with \"Bearer \" should match as sent, with or without a Bearer prefix")
	}
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestOversizedBodyIsNotRead(t *testing.T) {
	const maxSize = 1000
	h := handlerForUnitTest(maxSize)
	for _, length := range []int64{-1, maxSize + 1, 50 * maxSize} {
		body := &countingReader{r: bytes.NewReader(bytes.Repeat([]byte("1"), 50*maxSize))}
		req := httptest.NewRequest("POST", "/", body)
		req.ContentLength = length
		req.Header.Set("Authorization", testSecret)
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, req, nil); err != nil {
			t.Fatal(err)
		}
		if w.Code != 413 || w.Body.String() != `{"err":"payload too large"}` {
			t.Errorf("Content-Length %d: got %d %s, want 413", length, w.Code, w.Body)
		}
		if body.n > maxSize+1 {
			t.Errorf("Content-Length %d: read %d bytes, want at most max_size+1 = %d", length, body.n, maxSize+1)
		}
	}
}

func TestUnauthorizedBodyIsNotRead(t *testing.T) {
	h := handlerForUnitTest(1000)
	body := &countingReader{r: strings.NewReader(`{}`)}
	req := httptest.NewRequest("POST", "/", body)
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, req, nil); err != nil {
		t.Fatal(err)
	}
	if w.Code != 403 || body.n != 0 {
		t.Errorf("got %d after reading %d bytes, want 403 without reading", w.Code, body.n)
	}
}

func TestValidJSON(t *testing.T) {
	for body, want := range map[string]bool{
		`{}`: true, ` [1, 2] `: true, `"é"`: true, `0`: true, `null`: true, "{\n}\n": true,
		``: false, ` `: false, `{`: false, `{}}`: false, `{} {}`: false, `01`: false,
		`{"a":1,}`: false, "\"\xc3\x28\"": false, `'a'`: false, `NaN`: false,
		strings.Repeat("[", 100000) + strings.Repeat("]", 100000): false,
	} {
		if got := validJSON([]byte(body)); got != want {
			t.Errorf("validJSON(%.40q) = %v, want %v", body, got, want)
		}
	}
}

func TestProvisionErrors(t *testing.T) {
	t.Setenv("QP_TEST_SECRET", testSecret)
	before := len(pooledProducers(t))
	valid := func() *Handler {
		return &Handler{Brokers: []string{"127.0.0.1:1"}, Topic: "t", Secrets: []string{"{env.QP_TEST_SECRET}"}}
	}
	tests := []struct {
		name    string
		change  func(h *Handler)
		wantErr string
	}{
		{"no brokers", func(h *Handler) { h.Brokers = nil }, "brokers: at least one broker address is required"},
		{"brokers resolve to nothing", func(h *Handler) { h.Brokers = []string{" , "} }, "brokers: resolves to no address"},
		{"no topic", func(h *Handler) { h.Topic = "" }, "topic: required"},
		{"bad topic", func(h *Handler) { h.Topic = "a/b" }, `topic: "a/b" holds '/'`},
		{"no secret", func(h *Handler) { h.Secrets = nil }, "secret: required"},
		{"unset secret", func(h *Handler) { h.Secrets = []string{"{env.QP_UNSET_SECRET}"} }, "secret: evaluated placeholder {env.QP_UNSET_SECRET} is empty"},
		{"bad acks", func(h *Handler) { h.Acks = "most" }, `acks: "most" is not all, leader or none`},
		{"negative timeout", func(h *Handler) { h.Timeout = -1 }, "timeout: must be positive"},
		{"topic placeholder without allow_topics", func(h *Handler) { h.Topic = "{http.request.uri.path.1}" }, "allow_topics: required when topic holds placeholders"},
		{"bad allowed topic", func(h *Handler) { h.Topic = "{x}"; h.AllowTopics = []string{"ok", "not ok"} }, `allow_topics: "not ok" holds ' '`},
		{"bad mode", func(h *Handler) { h.Mode = "lines" }, `mode: "lines" is not body or records`},
		{"key in records mode", func(h *Handler) { h.Mode = "records"; h.Key = "{http.request.header.K}" }, "key, header: apply to mode body only"},
		{"second secret unset", func(h *Handler) { h.Secrets = append(h.Secrets, "{env.QP_UNSET_SECRET}") }, "secret 2: evaluated placeholder {env.QP_UNSET_SECRET} is empty"},
		{"bad compression", func(h *Handler) { h.Compression = "brotli" }, `compression: "brotli" is not none, gzip, snappy, lz4 or zstd`},
		{"bad idempotent", func(h *Handler) { h.Idempotent = "yes" }, `idempotent: "yes" is not on or off`},
		{"idempotent on without acks all", func(h *Handler) { h.Idempotent, h.Acks = "on", "leader" }, "idempotent on: needs acks all, not leader"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := valid()
			tt.change(h)
			ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
			defer cancel()
			err := h.Provision(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Provision error = %v, want %q", err, tt.wantErr)
			}
			// As Caddy does after a failed Provision.
			if err := h.Cleanup(); err != nil {
				t.Errorf("Cleanup after a failed Provision: %v", err)
			}
		})
	}
	if n := len(pooledProducers(t)); n != before {
		t.Errorf("%d producers after failed Provisions, want %d as before", n, before)
	}
}

func TestProvisionDefaultsAndBrokerPlaceholders(t *testing.T) {
	t.Setenv("QP_TEST_SECRET", testSecret)
	t.Setenv("QP_TEST_BROKERS", "127.0.0.1:1, 127.0.0.1:2")
	h := &Handler{Brokers: []string{"{env.QP_TEST_BROKERS}", "127.0.0.1:3"}, Topic: "t", Secrets: []string{"{env.QP_TEST_SECRET}"}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer h.Cleanup()
	if h.MaxSize != 1000000 || time.Duration(h.Timeout) != 5*time.Second || h.Acks != "all" {
		t.Errorf("defaults: max_size %d, timeout %v, acks %q", h.MaxSize, time.Duration(h.Timeout), h.Acks)
	}
	if got := strings.Join(h.brokers, " "); got != "127.0.0.1:1 127.0.0.1:2 127.0.0.1:3" {
		t.Errorf("brokers = %q", got)
	}
	if len(h.secretDigests) != 1 || h.secretDigests[0] != sha256.Sum256([]byte(testSecret)) {
		t.Error("the secret was not resolved from the environment")
	}
}

// A request may reach a handler after its config's Cleanup (Caddy stops
// old servers in the background): the handler then takes its producer
// from the pool again, and gives it back when the request ends.
func TestRequestAfterCleanupStillPublishes(t *testing.T) {
	noLeaks(t)
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	cfg := producerConfig{Brokers: c.ListenAddrs(), Acks: kafka.RequireAll}
	p, key, err := acquireProducer(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	u := &producerUse{cfg: cfg, logger: zap.NewNop(), original: p, current: p, key: key}

	// A request running at Cleanup keeps the producer until it ends.
	if got := u.begin(); got != p {
		t.Fatal("a request of a loaded config publishes with another producer")
	}
	if err := u.unload(); err != nil {
		t.Fatal(err)
	}
	if isClosed(p) {
		t.Fatal("the producer was closed under a running request")
	}
	u.end()
	if !isClosed(p) {
		t.Fatal("the producer no config uses is still open after its last request")
	}

	// A request after that gets a producer again, which publishes, and
	// which is closed when the request ends.
	again := u.begin()
	if again == nil || isClosed(again) {
		t.Fatal("no open producer for a request after Cleanup")
	}
	if _, perr := sendOne(again, "events", []byte(`"late"`), time.Second); perr != nil {
		t.Fatal(perr)
	}
	u.end()
	if !isClosed(again) || len(pooledProducers(t)) != 0 {
		t.Error("the producer taken for a late request is still open after it")
	}
	if got := stored(t, c, "events"); len(got) != 1 {
		t.Errorf("the topic holds %d records, want the late one", len(got))
	}
}

// offeredReader records how many bytes each Read may fill: what the
// reader of the body has allocated ahead of the bytes received.
type offeredReader struct {
	r       io.Reader
	offered []int
}

func (o *offeredReader) Read(p []byte) (int, error) {
	o.offered = append(o.offered, len(p))
	if len(p) > 1 {
		p = p[:1] // a client sending a byte now and then
	}
	return o.r.Read(p)
}

// A body is read into a buffer that grows as its bytes arrive, never
// more than readStep ahead of them, whatever Content-Length claims; and a
// signed request without a well-formed signature is refused before any
// of its body is read.
func TestBodyMemoryFollowsTheBytesReceived(t *testing.T) {
	h := handlerForUnitTest(1000000)
	const sent = 100
	body := &offeredReader{r: strings.NewReader(strings.Repeat("1", sent))}
	req := httptest.NewRequest("POST", "/", body)
	req.ContentLength = 1000000
	if _, status := h.readBody(req); status != 400 {
		t.Errorf("a body shorter than its Content-Length: %d, want 400", status)
	}
	allocated := 0
	for _, n := range body.offered {
		allocated = max(allocated, n)
	}
	if allocated > readStep {
		t.Errorf("with %d bytes received, a read was offered a buffer of %d, want at most %d", sent, allocated, readStep)
	}

	// Of unknown length, the body starts in a small buffer too.
	body = &offeredReader{r: strings.NewReader(strings.Repeat("1", sent))}
	req = httptest.NewRequest("POST", "/", body)
	req.ContentLength = -1
	if got, status := h.readBody(req); status != 200 || len(got) != sent {
		t.Errorf("a chunked body: %d, %d bytes, want 200 and %d", status, len(got), sent)
	}
	if body.offered[0] > minReadChunk {
		t.Errorf("a chunked body: the first read was offered %d bytes, want at most %d", body.offered[0], minReadChunk)
	}

	h.SignatureHeader = "X-Hub-Signature-256"
	for _, header := range []string{"", "sha256=", "sha1=" + strings.Repeat("0", 40), "sha256=" + strings.Repeat("z", 64)} {
		body := &countingReader{r: strings.NewReader(`{}`)}
		req := httptest.NewRequest("POST", "/", body)
		req.ContentLength = 1000000
		if header != "" {
			req.Header.Set(h.SignatureHeader, header)
		}
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, req, nil); err != nil {
			t.Fatal(err)
		}
		if w.Code != 403 || body.n != 0 || w.Header().Get("Connection") != "close" {
			t.Errorf("signature %q: %d after reading %d bytes (Connection %q), want 403 without reading, closing", header, w.Code, body.n, w.Header().Get("Connection"))
		}
	}
}

// Caddy's deferred header replacements write into the header values of an
// answer: each answer has its own, so the replacement applies once to
// each, even to concurrent answers.
func TestHeaderReplacementsApplyOncePerAnswer(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	header >Content-Type application/json "application/json; charset=utf-8"
	header >Retry-After 1 2
	handle /down {
		queue_publish {
			brokers %s
			topic events
			secret {env.QP_TEST_SECRET}
		}
	}
	queue_publish {
		brokers %s
		topic events
		secret {env.QP_TEST_SECRET}
	}`, closedPort(t), c.ListenAddrs()[0]))
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path, status := "/", 200
			if i%2 == 1 {
				path, status = "/down", 503
			}
			got := do(t, "POST", path, auth(testSecret), strings.NewReader(`{}`))
			if got.status != status || got.header.Get("Content-Type") != "application/json; charset=utf-8" {
				t.Errorf("%s: %d with Content-Type %q, want %d with application/json; charset=utf-8", path, got.status, got.header.Get("Content-Type"), status)
			}
			if status == 503 && got.header.Get("Retry-After") != "2" {
				t.Errorf("%s: Retry-After %q, want 2", path, got.header.Get("Retry-After"))
			}
		}()
	}
	wg.Wait()
	unloadChecksLeaks(t)
}
