package queuepublish

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// scrape reads Caddy's admin /metrics into series name{labels} -> value;
// a histogram gives its _count and _sum.
func scrape(t *testing.T) map[string]float64 {
	t.Helper()
	res, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]float64{}
	for name, f := range families {
		if !strings.HasPrefix(name, "caddy_queue_publish_") {
			continue
		}
		for _, m := range f.Metric {
			var labels []string
			for _, l := range m.Label {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(labels)
			key := name + "{" + strings.Join(labels, ",") + "}"
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				series[key] = m.Counter.GetValue()
			case dto.MetricType_GAUGE:
				series[key] = m.Gauge.GetValue()
			case dto.MetricType_HISTOGRAM:
				series[strings.Replace(key, "{", "_count{", 1)] = float64(m.Histogram.GetSampleCount())
				series[strings.Replace(key, "{", "_sum{", 1)] = m.Histogram.GetSampleSum()
			}
		}
	}
	return series
}

// TestMetrics sends known traffic and checks what the counters gained.
func TestMetrics(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "clicks", "locked", "slow"))
	if err := c.CreateTopic("tiny", 1, map[string]string{"max.message.bytes": "100"}); err != nil {
		t.Fatal(err)
	}
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "locked", Err: kerr.TopicAuthorizationFailed, Count: -1})
	release := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		if req.(*kmsg.ProduceRequest).Topics[0].Topic == "slow" {
			c.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	schemaFile := filepath.Join(t.TempDir(), "schema.json")
	if err := os.WriteFile(schemaFile, []byte(`{"type":"object","required":["n"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	handle /t/* {
		queue_publish {
			brokers %[1]s
			topic {http.request.uri.path.1}
			allow_topics orders locked
			secret {env.QP_TEST_SECRET}
			max_size 100
			idempotency_window 1m
		}
	}
	handle /batch {
		queue_publish {
			brokers %[1]s
			topic clicks
			secret {env.QP_TEST_SECRET}
			mode records
		}
	}
	handle /checked {
		queue_publish {
			brokers %[1]s
			topic clicks
			secret {env.QP_TEST_SECRET}
			schema %[2]s
		}
	}
	handle /down {
		queue_publish {
			brokers %[3]s
			topic down
			secret {env.QP_TEST_SECRET}
			timeout 300ms
		}
	}
	handle /slow {
		queue_publish {
			brokers %[1]s
			topic slow
			secret {env.QP_TEST_SECRET}
			timeout 2s
		}
	}
	handle /tiny {
		queue_publish {
			brokers %[1]s
			topic tiny
			secret {env.QP_TEST_SECRET}
		}
	}`, c.ListenAddrs()[0], schemaFile, closedPort(t)))
	before := scrape(t)

	ok := auth(testSecret)
	send := func(path string, header map[string]string, body string, want int) {
		t.Helper()
		if got := do(t, "POST", path, header, strings.NewReader(body)); got.status != want {
			t.Fatalf("%s %s: %d %s, want %d", path, body, got.status, got.body, want)
		}
	}
	for i := range 3 {
		send("/t/orders", ok, fmt.Sprintf(`{"n":%d}`, i), 200) // 3 records, 21 bytes
	}
	key := fmt.Sprint("metrics-", time.Now().UnixNano())                            // the store outlives a config
	send("/t/orders", withKey(key), `{"k":1}`, 200)                                 // 1 record, 7 bytes
	send("/t/orders", withKey(key), `{"k":1}`, 200)                                 // a replay
	send("/t/orders", auth("wrong"), `{}`, 403)                                     // auth
	send("/t/orders", ok, `{"broken"`, 400)                                         // invalid JSON
	send("/t/orders", ok, `"`+strings.Repeat("x", 200)+`"`, 413)                    // too large
	send("/t/nope", ok, `{}`, 404)                                                  // unknown topic
	send("/t/locked", ok, `{}`, 500)                                                // permanent
	send("/batch", ok, `{"records":[{"value":1},{"value":22},{"value":333}]}`, 200) // 3 records, 6 bytes
	send("/batch", ok, `{"records":[{"key":"no value"}]}`, 400)                     // invalid records
	if got := do(t, "GET", "/batch", ok, nil); got.status != 405 {                  // method
		t.Fatalf("GET: %d", got.status)
	}
	send("/checked", ok, `{"m":1}`, 400)                     // schema
	send("/down", ok, `{}`, 503)                             // retriable, before any produce request
	send("/tiny", ok, `"`+strings.Repeat("x", 200)+`"`, 413) // too large
	// The broker holds the slow record: it is waiting while the broker
	// holds it, past the request's 504, until the broker settles it.
	slow := make(chan answerT, 1)
	go func() { slow <- do(t, "POST", "/slow", ok, strings.NewReader(`{}`)) }()
	waitFor(t, 2*time.Second, func() bool { return scrape(t)[`caddy_queue_publish_records_waiting{}`] == 1 })
	if got := <-slow; got.status != 504 {
		t.Errorf("/slow: %d %s, want 504", got.status, got.body)
	}
	if got := scrape(t)[`caddy_queue_publish_records_waiting{}`]; got != 1 {
		t.Errorf("records waiting after the 504: %v, want the held one", got)
	}
	close(release)
	waitFor(t, 2*time.Second, func() bool { return scrape(t)[`caddy_queue_publish_records_waiting{}`] == 0 })

	after := scrape(t)
	for series, want := range map[string]float64{
		`caddy_queue_publish_requests_total{code=200,topic=orders}`:        5,
		`caddy_queue_publish_requests_total{code=200,topic=clicks}`:        1,
		`caddy_queue_publish_requests_total{code=403,topic=}`:              1, // before the topic is known
		`caddy_queue_publish_requests_total{code=404,topic=}`:              1,
		`caddy_queue_publish_requests_total{code=400,topic=}`:              1,
		`caddy_queue_publish_requests_total{code=413,topic=}`:              1,
		`caddy_queue_publish_requests_total{code=500,topic=locked}`:        1,
		`caddy_queue_publish_requests_total{code=405,topic=clicks}`:        1,
		`caddy_queue_publish_records_total{topic=orders}`:                  4,
		`caddy_queue_publish_records_total{topic=clicks}`:                  3,
		`caddy_queue_publish_record_bytes_total{topic=orders}`:             28,
		`caddy_queue_publish_record_bytes_total{topic=clicks}`:             6,
		`caddy_queue_publish_produce_duration_seconds_count{topic=orders}`: 4,
		`caddy_queue_publish_produce_duration_seconds_count{topic=clicks}`: 1,
		`caddy_queue_publish_rejections_total{reason=auth}`:                1,
		`caddy_queue_publish_rejections_total{reason=invalid_json}`:        1,
		`caddy_queue_publish_rejections_total{reason=too_large}`:           1,
		`caddy_queue_publish_rejections_total{reason=unknown_topic}`:       1,
		`caddy_queue_publish_rejections_total{reason=invalid_records}`:     1,
		`caddy_queue_publish_rejections_total{reason=method}`:              1,
		`caddy_queue_publish_producer_errors_total{kind=permanent}`:        1,
		`caddy_queue_publish_producer_errors_total{kind=retriable}`:        1,
		`caddy_queue_publish_producer_errors_total{kind=timeout}`:          1,
		`caddy_queue_publish_producer_errors_total{kind=too_large}`:        1,
		`caddy_queue_publish_requests_total{code=503,topic=down}`:          1,
		`caddy_queue_publish_requests_total{code=504,topic=slow}`:          1,
		`caddy_queue_publish_requests_total{code=413,topic=tiny}`:          1,
		`caddy_queue_publish_requests_total{code=400,topic=clicks}`:        2, // invalid records, schema
		`caddy_queue_publish_rejections_total{reason=schema}`:              1,
		// Records of the batches acknowledged: orders 4, clicks 3, and
		// the slow one, once the broker settled its retried batch.
		`caddy_queue_publish_batch_records_sum{}`:        8,
		`caddy_queue_publish_idempotent_replays_total{}`: 1,
	} {
		if got := after[series] - before[series]; got != want {
			t.Errorf("%s went up by %v, want %v", series, got, want)
		}
	}
	if got := after[`caddy_queue_publish_batch_records_count{}`] - before[`caddy_queue_publish_batch_records_count{}`]; got < 3 || got > 6 {
		t.Errorf("batch size histogram counted %v batches, want 3 to 6 for the 8 records of 6 requests", got)
	}
	unloadChecksLeaks(t)
}
