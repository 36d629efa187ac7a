//go:build kafka

package queuepublish

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/queuepublish/caddy-queue-publish/test/apachekafka"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The HTTP contract on a real cluster: each answer's partition and offset
// are where a consumer finds the record, with its key and headers, and a
// keyed record is where Kafka's Java client would put it.
func TestApacheKafkaBodyMode(t *testing.T) {
	c := realKafka(t)
	topic := realTopic(t, c, 3, nil)
	publishTo(t, c, topic, "key {http.request.header.X-Message-Key}", "header source {http.request.header.X-Source}")

	type sent struct{ body, key string }
	answers := map[where]sent{}
	send := func(body, key string) {
		h := map[string]string{"Authorization": testSecret, "X-Source": "test"}
		if key != "" {
			h["X-Message-Key"] = key
		}
		a := do(t, "POST", "/", h, strings.NewReader(body))
		var got struct {
			Success bool `json:"success"`
			where
		}
		if err := json.Unmarshal([]byte(a.body), &got); a.status != 200 || err != nil || !got.Success {
			t.Fatalf("%s: %d %s", body, a.status, a.body)
		}
		if key != "" && got.Partition != kafkatest.JavaPartition(key, 3) {
			t.Errorf("key %q went to partition %d; Kafka's Java client puts it in %d", key, got.Partition, kafkatest.JavaPartition(key, 3))
		}
		answers[got.where] = sent{body, key}
	}
	send(`{"messages": [{"msg":"hello world"}]}`, "") // the Worker's example
	i := 0
	for key := range kafkatest.JavaMurmur2 {
		send(fmt.Sprintf(`{"n":%d}`, i), key)
		i++
	}

	recs := byPlace(realRecords(t, c, topic))
	if len(recs) != len(answers) {
		t.Errorf("the topic holds %d records, %d were answered 200", len(recs), len(answers))
	}
	for at, s := range answers {
		r := recs[at]
		if r == nil {
			t.Errorf("%s was answered %+v, where no record is", s.body, at)
			continue
		}
		if string(r.Value) != s.body || string(r.Key) != s.key || headerMap(r)["source"] != "test" {
			t.Errorf("at %+v: value %s, key %q, headers %v; sent %s with key %q", at, r.Value, r.Key, headerMap(r), s.body, s.key)
		}
	}
}

func TestApacheKafkaRecordsMode(t *testing.T) {
	c := realKafka(t)
	topic := realTopic(t, c, 6, nil)
	publishTo(t, c, topic, "mode records")

	body := `{"records":[
		{"value": {"order": 1}, "key": "customer-7"},
		{"value": "plain text", "headers": {"source": "batch", "trace": "t-1"}},
		{"value": [1, 2, 3], "partition": 4},
		{"value": {"order": 2}, "key": "foobar", "headers": {"source": "batch"}},
		{"value": null, "partition": 5, "key": "21"}]}`
	a := do(t, "POST", "/", auth(testSecret), strings.NewReader(body))
	var got struct {
		Success bool    `json:"success"`
		Offsets []where `json:"offsets"`
	}
	if err := json.Unmarshal([]byte(a.body), &got); a.status != 200 || err != nil || !got.Success || len(got.Offsets) != 5 {
		t.Fatalf("%d %s", a.status, a.body)
	}
	want := []struct {
		value, key string
		headers    map[string]string
		partition  int32 // -1: any
	}{
		{`{"order": 1}`, "customer-7", map[string]string{}, javaPartitionOf(t, "customer-7", 6)},
		{`"plain text"`, "", map[string]string{"source": "batch", "trace": "t-1"}, -1},
		{`[1, 2, 3]`, "", map[string]string{}, 4},
		{`{"order": 2}`, "foobar", map[string]string{"source": "batch"}, kafkatest.JavaPartition("foobar", 6)},
		{`null`, "21", map[string]string{}, 5}, // an explicit partition wins over the key
	}
	recs := byPlace(realRecords(t, c, topic))
	if len(recs) != len(want) {
		t.Errorf("the topic holds %d records, want %d", len(recs), len(want))
	}
	for i, w := range want {
		at := got.Offsets[i]
		r := recs[at]
		switch {
		case r == nil:
			t.Errorf("record %d was answered %+v, where no record is", i, at)
		case w.partition >= 0 && at.Partition != w.partition:
			t.Errorf("record %d went to partition %d, want %d", i, at.Partition, w.partition)
		case string(r.Value) != w.value || string(r.Key) != w.key || !equalMaps(headerMap(r), w.headers):
			t.Errorf("record %d at %+v: value %s, key %q, headers %v; want %s, %q, %v", i, at, r.Value, r.Key, headerMap(r), w.value, w.key, w.headers)
		}
	}
}

// javaPartitionOf is where the Java client puts key, computed by franz-go's
// partitioner that mirrors it, for keys kafkatest.JavaMurmur2 does not list.
func javaPartitionOf(t *testing.T, key string, partitions int) int32 {
	t.Helper()
	p := kgo.StickyKeyPartitioner(nil).ForTopic("")
	return int32(p.Partition(&kgo.Record{Key: []byte(key)}, partitions))
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// A topic taken from the request goes where it says, among allow_topics.
func TestApacheKafkaTopicsFromRequest(t *testing.T) {
	c := realKafka(t)
	orders := realTopic(t, c, 1, nil)
	clicks := orders + "-clicks"
	if err := c.CreateTopic(t.Context(), clicks, 1, nil); err != nil {
		t.Fatal(err)
	}
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`queue_publish /topics/* {
		brokers %s
		topic {http.request.uri.path.1}
		allow_topics %s %s
		secret %s
	}`, brokersOf(c, apachekafka.Plaintext), orders, clicks, testSecret))
	for _, topic := range []string{orders, clicks, clicks} {
		if a := do(t, "POST", "/topics/"+topic, auth(testSecret), strings.NewReader(`{"to":"`+topic+`"}`)); a.status != 200 {
			t.Fatalf("to %s: %d %s", topic, a.status, a.body)
		}
	}
	if a := do(t, "POST", "/topics/elsewhere", auth(testSecret), strings.NewReader(`{}`)); a.status != 404 {
		t.Errorf("a topic not allowed: %d %s, want 404", a.status, a.body)
	}
	for topic, n := range map[string]int{orders: 1, clicks: 2} {
		recs := realRecords(t, c, topic)
		if len(recs) != n || string(recs[0].Value) != `{"to":"`+topic+`"}` {
			t.Errorf("%s holds %d records (%v), want %d sent to it", topic, len(recs), recs, n)
		}
	}
}

// Every codec is one the broker takes and stores as sent, and a consumer
// decompresses.
func TestApacheKafkaCompression(t *testing.T) {
	c := realKafka(t)
	topic := realTopic(t, c, 1, nil)
	codecs := []string{"none", "gzip", "snappy", "lz4", "zstd"}
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), routeEach(c, topic, "compression", codecs))
	long := strings.Repeat("compressible ", 100)
	for _, codec := range codecs {
		if a := do(t, "POST", "/"+codec, auth(testSecret), strings.NewReader(`{"codec":"`+codec+`","text":"`+long+`"}`)); a.status != 200 {
			t.Fatalf("%s: %d %s", codec, a.status, a.body)
		}
	}
	recs := realRecords(t, c, topic)
	if len(recs) != len(codecs) {
		t.Fatalf("the topic holds %d records, want %d", len(recs), len(codecs))
	}
	for i, r := range recs {
		var v struct{ Codec, Text string }
		if err := json.Unmarshal(r.Value, &v); err != nil || v.Text != long {
			t.Errorf("record %d: %.60s (%v)", i, r.Value, err)
			continue
		}
		// The batch's attributes say how the broker stored it.
		if got := r.Attrs.CompressionType(); int(got) != slices.Index(codecs, v.Codec) {
			t.Errorf("the record sent with %s is stored with codec %d, want %d", v.Codec, got, slices.Index(codecs, v.Codec))
		}
	}
}

// routeEach is a route /<value> for each of values, producing to topic
// with the option set to the value.
func routeEach(c *apachekafka.Cluster, topic, option string, values []string) string {
	var site strings.Builder
	for _, v := range values {
		fmt.Fprintf(&site, `handle /%[1]s {
		queue_publish {
			brokers %[2]s
			topic %[3]s
			secret %[4]s
			%[5]s %[1]s
		}
	}
	`, v, brokersOf(c, apachekafka.Plaintext), topic, testSecret, option)
	}
	return site.String()
}

// Each acks level is answered once the broker has what it asks for; none
// answers the partition but no offset, as no broker answers one.
func TestApacheKafkaAcks(t *testing.T) {
	c := realKafka(t)
	topic := realTopic(t, c, 1, nil)
	levels := []string{"all", "leader", "none"}
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), routeEach(c, topic, "acks", levels))
	for i, acks := range levels {
		a := do(t, "POST", "/"+acks, auth(testSecret), strings.NewReader(`{"acks":"`+acks+`"}`))
		want := fmt.Sprintf(`{"success":true,"partition":0,"offset":%d}`, i)
		if acks == "none" {
			want = `{"success":true,"partition":0}`
		}
		if a.status != 200 || a.body != want {
			t.Errorf("acks %s: %d %s, want 200 %s", acks, a.status, a.body, want)
		}
	}
	recs := realRecords(t, c, topic)
	if len(recs) != len(levels) {
		t.Fatalf("the topic holds %d records, want %d", len(recs), len(levels))
	}
	for i, r := range recs {
		if want := `{"acks":"` + levels[i] + `"}`; string(r.Value) != want {
			t.Errorf("record %d: %s, want %s", i, r.Value, want)
		}
	}
}

// A repeat of an Idempotency-Key gets the first answer and stores nothing.
func TestApacheKafkaIdempotentReplay(t *testing.T) {
	c := realKafka(t)
	topic := realTopic(t, c, 3, nil)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`handle /one {
		queue_publish {
			brokers %[1]s
			topic %[2]s
			secret %[3]s
			idempotency_window 1m
		}
	}
	handle /many {
		queue_publish {
			brokers %[1]s
			topic %[2]s
			secret %[3]s
			mode records
			idempotency_window 1m
		}
	}`, brokersOf(c, apachekafka.Plaintext), topic, testSecret))
	for path, body := range map[string]string{"/one": `{"order":1}`, "/many": `{"records":[{"value":2},{"value":3}]}`} {
		first := do(t, "POST", path, withKey("key"+path), strings.NewReader(body))
		again := do(t, "POST", path, withKey("key"+path), strings.NewReader(body))
		if first.status != 200 || again.status != 200 || again.body != first.body || again.header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("%s: %d %s, then %d %s (replayed %q)", path, first.status, first.body, again.status, again.body, again.header.Get("Idempotent-Replayed"))
		}
	}
	recs := realRecords(t, c, topic)
	var values []string
	for _, r := range recs {
		values = append(values, string(r.Value)+" "+headerMap(r)["idempotency-key"])
	}
	slices.Sort(values)
	if want := []string{`2 key/many`, `3 key/many`, `{"order":1} key/one`}; !slices.Equal(values, want) {
		t.Errorf("the topic holds %q, want %q", values, want)
	}
}
