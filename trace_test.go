package queuepublish

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

const (
	testTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	testTracestate  = "vendor=opaque"
)

// A request's W3C trace context goes with its records, in body and records
// mode; a malformed one, trace_headers off, or a record's own traceparent
// keeps it out.
func TestTraceContextGoesWithTheRecords(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	route := func(path, extra string) string { return queueRoute(path, c.ListenAddrs()[0], "events", extra) }
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"),
		route("/on", "idempotency_window 1m")+route("/off", "trace_headers off")+route("/records", "mode records"))

	traced := map[string]string{"Authorization": testSecret, "Traceparent": testTraceparent, "Tracestate": testTracestate}
	send := func(path string, header map[string]string, body string) {
		t.Helper()
		if got := do(t, "POST", path, header, strings.NewReader(body)); got.status != 200 {
			t.Fatalf("%s %s: %d %s", path, body, got.status, got.body)
		}
	}
	send("/on", traced, `"traced"`)
	send("/on", map[string]string{"Authorization": testSecret, "Traceparent": "00-not-a-trace-01", "Tracestate": testTracestate}, `"malformed"`)
	send("/on", map[string]string{"Authorization": testSecret}, `"untraced"`)
	send("/off", traced, `"off"`)
	send("/records", traced, `{"records":[{"value":"first"},{"value":"own","headers":{"traceparent":"mine"}},`+
		`{"value":"own state","headers":{"Tracestate":"mine=1"}}]}`)
	send("/on", map[string]string{"Authorization": testSecret, "Traceparent": testTraceparent,
		"Tracestate": "v=" + strings.Repeat("a", 600)}, `"long state"`)

	// A repeat of an Idempotency-Key under another trace is the same
	// request: answered from the first, which keeps its trace.
	first := do(t, "POST", "/on", map[string]string{"Authorization": testSecret, "Traceparent": testTraceparent, "Idempotency-Key": "k"}, strings.NewReader(`"once"`))
	repeat := do(t, "POST", "/on", map[string]string{"Authorization": testSecret, "Idempotency-Key": "k",
		"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, strings.NewReader(`"once"`))
	if first.status != 200 || repeat.status != 200 || repeat.body != first.body || repeat.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("a repeat under another trace: %d %s then %d %s (replayed %q), want the first answer replayed",
			first.status, first.body, repeat.status, repeat.body, repeat.header.Get("Idempotent-Replayed"))
	}

	stored := recordsByValue(t, c, "events")
	for value, want := range map[string]map[string]string{
		`"traced"`:    {"traceparent": testTraceparent, "tracestate": testTracestate},
		`"malformed"`: {},
		`"untraced"`:  {},
		`"off"`:       {},
		`"first"`:     {"traceparent": testTraceparent, "tracestate": testTracestate},
		`"own"`:       {"traceparent": "mine"},
		`"own state"`: {"Tracestate": "mine=1"},
		// Copied into every record of a request, a tracestate past
		// W3C's 512 characters is left out.
		`"long state"`: {"traceparent": testTraceparent},
		`"once"`:       {"traceparent": testTraceparent, "idempotency-key": "k"},
	} {
		got := headerMap(stored[value])
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("record %s: headers %v, want %v", value, got, want)
		}
	}
}

// Behind Caddy's tracing directive, the records name the span Caddy made
// for the request: the client's trace, with Caddy's span as the parent.
func TestTraceContextOfCaddysSpan(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	t.Setenv("OTEL_TRACES_EXPORTER", "none") // spans are made, not exported
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	route {
		tracing {
			span queue_publish
		}
		queue_publish {
			brokers %s
			topic events
			secret {env.QP_TEST_SECRET}
		}
	}`, c.ListenAddrs()[0]))

	if got := do(t, "POST", "/", map[string]string{"Authorization": testSecret, "Traceparent": testTraceparent}, strings.NewReader(`{}`)); got.status != 200 {
		t.Fatalf("%d %s", got.status, got.body)
	}
	h := headerMap(recordsByValue(t, c, "events")[`{}`])
	parts := strings.Split(h["traceparent"], "-")
	client := strings.Split(testTraceparent, "-")
	if len(parts) != 4 || parts[1] != client[1] || parts[2] == client[2] || parts[2] == strings.Repeat("0", 16) {
		t.Errorf("traceparent %q, want the client's trace %s with Caddy's span as the parent", h["traceparent"], client[1])
	}
}
