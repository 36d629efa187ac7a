//go:build kafka

package queuepublish

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/confluent"
	"github.com/queuepublish/caddy-queue-publish/test/apachekafka"
)

// mode confluent on a real cluster: what v3 (one record, and a stream)
// and v2 answer is where a consumer finds each record, with the key,
// value, headers and timestamp the REST Proxy's request gave it.
func TestApacheKafkaConfluent(t *testing.T) {
	c := realKafka(t)
	topic := realTopic(t, c, 3, nil)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	t.Cleanup(func() { printCaddyErrors(t, logFile) })
	startCaddy(t, logFile, fmt.Sprintf(`header X-Test-Config %s
	queue_publish {
		mode confluent
		brokers %s
		allow_topics %s
		secret %s
	}`, topic, brokersOf(c, apachekafka.Plaintext), topic, testSecret))
	waitOldServerGone(t, topic)

	type want struct {
		key, value string
		headers    map[string]string
		timestamp  string
	}
	placed := map[where]want{}
	v3 := "/v3/clusters/any/topics/" + topic + "/records"
	var report struct {
		Code int `json:"error_code"`
		where
		PartitionID int32 `json:"partition_id"`
	}
	a := do(t, "POST", v3, jsonHeader(confluent.MediaV3), strings.NewReader(`{"partition_id":2,"headers":[{"name":"Header-1","value":"SGVhZGVyLTE="}],`+
		`"key":{"type":"BINARY","data":"Zm9vYmFy"},"value":{"type":"JSON","data":{"foo":"bar"}},"timestamp":"2021-02-05T19:14:42Z"}`))
	if err := json.Unmarshal([]byte(a.body), &report); a.status != 200 || err != nil || report.Code != 200 || report.PartitionID != 2 {
		t.Fatalf("v3: %d %s", a.status, a.body)
	}
	placed[where{2, report.Offset}] = want{"foobar", `{"foo":"bar"}`, map[string]string{"Header-1": "Header-1"}, "2021-02-05T19:14:42Z"}

	send, reports, done := openStream(t, v3)
	for i := range 3 {
		send(fmt.Sprintf(`{"key":{"type":"STRING","data":"k%d"},"value":{"type":"STRING","data":"stream %d"}}`, i, i))
		line, rerr := reports.ReadString('\n')
		if err := json.Unmarshal([]byte(line), &report); rerr != nil || err != nil || report.Code != 200 {
			t.Fatalf("stream record %d: %q %v %v", i, line, rerr, err)
		}
		if want := javaPartitionOf(t, fmt.Sprintf("k%d", i), 3); report.PartitionID != want {
			t.Errorf("key k%d went to partition %d; Kafka's Java client puts it in %d", i, report.PartitionID, want)
		}
		placed[where{report.PartitionID, report.Offset}] = want{fmt.Sprintf("k%d", i), fmt.Sprintf("stream %d", i), map[string]string{}, ""}
	}
	if status := done(); status != 200 {
		t.Errorf("stream: %d", status)
	}

	a = do(t, "POST", "/topics/"+topic+"/partitions/1", jsonHeader(confluent.MediaV2Binary), strings.NewReader(`{"records":[{"key":"a2V5","value":"Y29uZmx1ZW50"},{"value":"a2Fma2E="}]}`))
	var v2 struct {
		Offsets []struct {
			where
			Code *int `json:"error_code"`
		} `json:"offsets"`
	}
	if err := json.Unmarshal([]byte(a.body), &v2); a.status != 200 || err != nil || len(v2.Offsets) != 2 {
		t.Fatalf("v2: %d %s", a.status, a.body)
	}
	for i, w := range []want{{"key", "confluent", map[string]string{}, ""}, {"", "kafka", map[string]string{}, ""}} {
		if o := v2.Offsets[i]; o.Code != nil || o.Partition != 1 {
			t.Errorf("v2 offset %d: %+v", i, o)
		}
		placed[v2.Offsets[i].where] = w
	}

	recs := byPlace(realRecords(t, c, topic))
	if len(recs) != len(placed) {
		t.Errorf("the topic holds %d records, %d were answered 200", len(recs), len(placed))
	}
	for at, w := range placed {
		r := recs[at]
		if r == nil {
			t.Errorf("%+v was answered at %+v, where no record is", w, at)
			continue
		}
		if string(r.Key) != w.key || string(r.Value) != w.value || !equalMaps(headerMap(r), w.headers) ||
			w.timestamp != "" && r.Timestamp.UTC().Format(time.RFC3339) != w.timestamp {
			t.Errorf("at %+v: key %q value %q headers %v time %v; want %+v", at, r.Key, r.Value, headerMap(r), r.Timestamp, w)
		}
	}
}
