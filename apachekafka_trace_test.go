//go:build kafka

package queuepublish

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/queuepublish/caddy-queue-publish/test/apachekafka"
)

// Trace context on a real cluster: a request's traceparent and tracestate
// are headers of its records where a consumer reads them, in body mode, in
// records mode (where a record's own trace context is kept) and on a
// Confluent REST Proxy stream; with trace_headers off, there are none.
func TestApacheKafkaTraceHeaders(t *testing.T) {
	c := realKafka(t)
	topic := realTopic(t, c, 1, nil)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	t.Cleanup(func() { printCaddyErrors(t, logFile) })
	brokers := brokersOf(c, apachekafka.Plaintext)
	startCaddy(t, logFile, fmt.Sprintf(`header X-Test-Config %[1]s
	handle /records {
		queue_publish {
			brokers %[2]s
			topic %[1]s
			secret %[3]s
			mode records
		}
	}
	handle /off {
		queue_publish {
			brokers %[2]s
			topic %[1]s
			secret %[3]s
			trace_headers off
		}
	}
	handle /v3/* {
		queue_publish {
			mode confluent
			brokers %[2]s
			allow_topics %[1]s
			secret %[3]s
		}
	}
	handle {
		queue_publish {
			brokers %[2]s
			topic %[1]s
			secret %[3]s
		}
	}`, topic, brokers, testSecret))
	waitOldServerGone(t, topic)

	const (
		parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		state  = "congo=t61rcWkgMzE"
		own    = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	)
	traced := map[string]string{"Authorization": testSecret, "Traceparent": parent, "Tracestate": state}
	for _, req := range []struct{ path, body string }{
		{"/", `{"n":"body"}`},
		{"/records", `{"records":[{"value":{"n":"records"}},{"value":{"n":"own"},"headers":{"traceparent":"` + own + `"}}]}`},
		{"/off", `{"n":"off"}`},
	} {
		if a := do(t, "POST", req.path, traced, strings.NewReader(req.body)); a.status != 200 {
			t.Fatalf("%s: %d %s", req.path, a.status, a.body)
		}
	}
	send, reports, done := openStreamWith(t, "/v3/clusters/any/topics/"+topic+"/records", map[string]string{"Traceparent": parent, "Tracestate": state})
	send(`{"value":{"type":"JSON","data":{"n":"stream"}}}`)
	if line, err := reports.ReadString('\n'); err != nil || !strings.HasPrefix(line, `{"error_code":200,`) {
		t.Fatalf("stream: %q %v", line, err)
	}
	done()

	want := map[string]map[string]string{
		`{"n":"body"}`:    {"traceparent": parent, "tracestate": state},
		`{"n":"records"}`: {"traceparent": parent, "tracestate": state},
		`{"n":"own"}`:     {"traceparent": own},
		`{"n":"off"}`:     {},
		`{"n":"stream"}`:  {"traceparent": parent, "tracestate": state},
	}
	recs := realRecords(t, c, topic)
	if len(recs) != len(want) {
		t.Errorf("the topic holds %d records, want %d", len(recs), len(want))
	}
	for _, r := range recs {
		if w, ok := want[string(r.Value)]; !ok || !equalMaps(headerMap(r), w) {
			t.Errorf("record %s has headers %v, want %v", r.Value, headerMap(r), w)
		}
	}
}
