package queuepublish

import (
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"testing"

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
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "clicks", "locked"))
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "locked", Err: kerr.TopicAuthorizationFailed, Count: -1})
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
	}`, c.ListenAddrs()[0]))
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
	send("/t/orders", withKey("k"), `{"k":1}`, 200)                                 // 1 record, 7 bytes
	send("/t/orders", withKey("k"), `{"k":1}`, 200)                                 // a replay
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
		`caddy_queue_publish_idempotent_replays_total{}`:                   1,
	} {
		if got := after[series] - before[series]; got != want {
			t.Errorf("%s went up by %v, want %v", series, got, want)
		}
	}
	if got := after[`caddy_queue_publish_batch_records_count{}`] - before[`caddy_queue_publish_batch_records_count{}`]; got < 3 {
		t.Errorf("batch size histogram counted %v produce requests, want at least 3", got)
	}
	if got, ok := after[`caddy_queue_publish_records_waiting{}`]; !ok || got != 0 {
		t.Errorf("records waiting after the traffic: %v (present %v), want 0", got, ok)
	}
}
