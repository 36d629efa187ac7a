package queuepublish

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/confluent"
	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// confluentSite is a Caddy site serving mode confluent on every path, with
// topic_1 (2 partitions) and jsontest (1) allowed.
func confluentSite(brokers, extra string) string {
	return fmt.Sprintf(`	queue_publish {
		mode confluent
		brokers %s
		allow_topics topic_1 jsontest
		secret {env.QP_TEST_SECRET}
		%s
	}
`, brokers, extra)
}

const v3Path = "/v3/clusters/cluster-1/topics/topic_1/records"

func jsonHeader(ct string) map[string]string {
	return map[string]string{"Authorization": testSecret, "Content-Type": ct}
}

var (
	v2Answer = map[string]string{"Content-Type": confluent.MediaV2}
)

// Confluent's own request and answer examples for v3 (its OpenAPI
// reference), and the rejections a REST Proxy client knows, through Caddy:
// same paths, bodies and answers, byte for byte.
func TestConfluentV3Examples(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), confluentSite(c.ListenAddrs()[0], "cluster_id cluster-1\n\t\tmax_size 4KB"))

	ok := jsonHeader(confluent.MediaV3)
	const binaryAndJSON = `{"partition_id":1,"headers":[{"name":"Header-1","value":"SGVhZGVyLTE="},{"name":"Header-2","value":"SGVhZGVyLTI="}],` +
		`"key":{"type":"BINARY","data":"Zm9vYmFy"},"value":{"type":"JSON","data":{"foo":"bar"}},"timestamp":"2021-02-05T19:14:42Z"}`
	report := func(partition, offset int, rest string) string {
		return fmt.Sprintf(`{"error_code":200,"cluster_id":"cluster-1","topic_name":"topic_1","partition_id":%d,"offset":%d,%s}`+"\r\n", partition, offset, rest)
	}
	expectAnswers(t, []answerCase{
		{"binary_and_json", "POST", v3Path, ok, strings.NewReader(binaryAndJSON), 200,
			report(1, 0, `"timestamp":"2021-02-05T19:14:42Z","key":{"type":"BINARY","size":6},"value":{"type":"JSON","size":13}`), nil, 0},
		{"string, with milliseconds", "POST", v3Path, ok, strings.NewReader(`{"partition_id":0,"value":{"type":"STRING","data":"My message"},"timestamp":"2023-05-16T18:20:51.844Z"}`), 200,
			report(0, 0, `"timestamp":"2023-05-16T18:20:51.844Z","value":{"type":"STRING","size":10}`), nil, 0},
		{"Confluent Cloud's path", "POST", "/kafka" + v3Path, ok, strings.NewReader(`{"partition_id":0,"key":{"type":"STRING","data":"k"},"timestamp":"2021-02-05T19:14:42Z"}`), 200,
			report(0, 1, `"timestamp":"2021-02-05T19:14:42Z","key":{"type":"STRING","size":1}`), nil, 0},
		{"null data", "POST", v3Path, ok, strings.NewReader(`{"partition_id":0,"key":{"type":"BINARY","data":null},"value":{"type":"JSON"},"timestamp":"2021-02-05T19:14:42Z"}`), 200,
			report(0, 2, `"timestamp":"2021-02-05T19:14:42Z","key":{"type":"BINARY","size":-1},"value":{"type":"JSON","size":-1}`), nil, 0},
		{"records concatenated", "POST", v3Path, ok, strings.NewReader(`{"partition_id":1,"timestamp":"2021-02-05T19:14:42Z"}` + "\n" + `{"partition_id":1,"timestamp":"2021-02-05T19:14:43Z"}`), 200,
			report(1, 1, `"timestamp":"2021-02-05T19:14:42Z"`) + report(1, 2, `"timestamp":"2021-02-05T19:14:43Z"`), nil, 0},
		{"Basic credentials, the secret as password", "POST", v3Path, map[string]string{"Authorization": basic("API_KEY:" + testSecret), "Content-Type": confluent.MediaV3},
			strings.NewReader(`{"partition_id":0,"timestamp":"2021-02-05T19:14:42Z"}`), 200, report(0, 3, `"timestamp":"2021-02-05T19:14:42Z"`), nil, 0},

		{"produce_record_bad_binary_data", "POST", v3Path, ok, strings.NewReader(`{"value":{"type":"BINARY","data":1}}`), 400,
			`{"error_code":400,"message":"Bad Request: data=1 is not a base64 string."}` + "\r\n", nil, 0},
		{"bad base64", "POST", v3Path, ok, strings.NewReader(`{"value":{"type":"BINARY","data":"!!"}}`), 400,
			`{"error_code":400,"message":"Bad Request: data=\"!!\" is not a valid base64 string."}` + "\r\n", nil, 0},
		{"unknown field", "POST", v3Path, ok, strings.NewReader(`{ "records": {"subject": "foobar" } }`), 400,
			`{"error_code":400,"message":"Bad Request: Unrecognized field \"records\""}` + "\r\n", nil, 0},
		{"unknown type", "POST", v3Path, ok, strings.NewReader(`{"value":{"type":"XML","data":"<a/>"}}`), 400,
			`{"error_code":400,"message":"Bad Request: type=XML is not one of BINARY, JSON, STRING."}` + "\r\n", nil, 0},
		{"data without a type needs a Schema Registry", "POST", v3Path, ok, strings.NewReader(`{"key":{"data":1000}}`), 422,
			`{"error_code":42206,"message":` + string(quote(confluent.ErrSchemaRegistry.Message)) + "}\r\n", nil, 0},
		{"AVRO", "POST", v3Path, ok, strings.NewReader(`{"value":{"type":"AVRO","subject":"topic-1-key","schema":"{\"type\":\"string\"}","data":"foobar"}}`), 422,
			`{"error_code":42206,"message":` + string(quote(confluent.ErrSchemaRegistry.Message)) + "}\r\n", nil, 0},
		{"negative partition", "POST", v3Path, ok, strings.NewReader(`{"partition_id":-1}`), 404,
			`{"error_code":40402,"message":"Partition not found."}` + "\r\n", nil, 0},
		{"partition beyond the topic's", "POST", v3Path, ok, strings.NewReader(`{"partition_id":2}`), 404,
			`{"error_code":40402,"message":"record 0: partition 2 does not exist (the topic has 2)"}` + "\r\n", nil, 0},
		{"broken JSON", "POST", v3Path, ok, strings.NewReader(`{"value":`), 400, `{"error_code":400,"message":"payload not valid JSON"}` + "\r\n", nil, 0},
		{"empty body", "POST", v3Path, ok, strings.NewReader(``), 422,
			`{"error_code":422,"message":"Payload error. Request body is empty. Data is required."}` + "\r\n", nil, 0},
		{"over max_size", "POST", v3Path, ok, strings.NewReader(`{"value":{"type":"STRING","data":"` + strings.Repeat("a", 5000) + `"}}`), 413,
			`{"error_code":413,"message":"payload too large"}` + "\r\n", nil, 0},
		{"topic not allowed", "POST", "/v3/clusters/cluster-1/topics/secret/records", ok, strings.NewReader(`{}`), 404,
			`{"error_code":40401,"message":"Topic not found."}` + "\r\n", nil, 0},
		{"another cluster", "POST", "/v3/clusters/other/topics/topic_1/records", ok, strings.NewReader(`{}`), 404,
			`{"error_code":404,"message":"Cluster not found."}` + "\r\n", nil, 0},
		{"no credentials", "POST", v3Path, map[string]string{"Content-Type": confluent.MediaV3}, strings.NewReader(`{}`), 401,
			`{"error_code":401,"message":"Unauthorized"}` + "\r\n", map[string]string{"Www-Authenticate": `Basic realm="queue_publish"`}, 0},
		{"wrong password", "POST", v3Path, map[string]string{"Authorization": basic("API_KEY:nope"), "Content-Type": confluent.MediaV3}, strings.NewReader(`{}`), 401,
			`{"error_code":401,"message":"Unauthorized"}` + "\r\n", nil, 0},
		{"not application/json", "POST", v3Path, jsonHeader("text/plain"), strings.NewReader(`{}`), 415,
			`{"error_code":415,"message":"HTTP 415 Unsupported Media Type"}` + "\r\n", nil, 0},
		{"GET", "GET", v3Path, ok, nil, 405, `{"error_code":405,"message":"HTTP 405 Method Not Allowed"}` + "\r\n", map[string]string{"Allow": "POST"}, 0},
		{"no produce API there", "POST", "/v3/clusters", ok, strings.NewReader(`{}`), 404, `{"error_code":404,"message":"HTTP 404 Not Found"}` + "\r\n", nil, 0},
	})

	recs := stored(t, c, "topic_1")
	if len(recs) != 7 {
		t.Fatalf("stored %d records, want the 7 acknowledged", len(recs))
	}
	first := recs[0]
	for _, r := range recs {
		if r.Partition == 1 && r.Offset == 0 {
			first = r
		}
	}
	if string(first.Key) != "foobar" || string(first.Value) != `{"foo":"bar"}` || first.Timestamp.UTC().Format(time.RFC3339) != "2021-02-05T19:14:42Z" ||
		headerMap(first)["Header-1"] != "Header-1" || headerMap(first)["Header-2"] != "Header-2" {
		t.Errorf("binary_and_json stored as key %q value %q at %v, headers %v", first.Key, first.Value, first.Timestamp, headerMap(first))
	}
	for _, r := range recs {
		if r.Partition == 0 && r.Offset == 2 && (r.Key != nil || r.Value != nil) {
			t.Errorf("null data stored as key %q value %q, want nulls", r.Key, r.Value)
		}
	}
}

// The v2 examples of Confluent's API reference and quick start: the same
// answers, in request order, with keys and values stored as the REST
// Proxy stores them (embedded JSON as its text, binary decoded).
func TestConfluentV2Examples(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), confluentSite(c.ListenAddrs()[0], ""))

	offsets := func(places ...string) string {
		return `{"offsets":[` + strings.Join(places, ",") + `],"key_schema_id":null,"value_schema_id":null}`
	}
	place := func(partition, offset int) string {
		return fmt.Sprintf(`{"partition":%d,"offset":%d,"error_code":null,"error":null}`, partition, offset)
	}
	jsonV2, binV2 := jsonHeader(confluent.MediaV2JSON), jsonHeader(confluent.MediaV2Binary)
	expectAnswers(t, []answerCase{
		{"quick start", "POST", "/topics/jsontest", jsonV2, strings.NewReader(`{"records":[{"value":{"foo":"bar"}}]}`), 200, offsets(place(0, 0)), v2Answer, 0},
		{"json, the reference's example", "POST", "/topics/topic_1", jsonV2,
			strings.NewReader(`{"records":[{"key":"somekey","value":{"foo":"bar"}},{"value":["foo","bar"],"partition":1},{"value":53.5,"partition":0}]}`), 200,
			offsets(place(int(kafkatest.JavaPartition("\"somekey\"", 2)), 0), place(1, 0), place(0, 1)), v2Answer, 0},
		{"binary, to a partition", "POST", "/topics/topic_1/partitions/1", binV2,
			strings.NewReader(`{"records":[{"key":"a2V5","value":"Y29uZmx1ZW50"},{"value":"a2Fma2E="}]}`), 200, offsets(place(1, 1), place(1, 2)), v2Answer, 0},
		{"schemas of other formats are ignored", "POST", "/topics/jsontest", jsonV2, strings.NewReader(`{"value_schema_id":null,"records":[{"value":1}]}`), 200, offsets(place(0, 1)), v2Answer, 0},

		{"avro needs a Schema Registry", "POST", "/topics/jsontest", jsonHeader(confluent.MediaV2Avro), strings.NewReader(`{"value_schema":"{\"type\":\"int\"}","records":[{"value":12}]}`), 415,
			`{"error_code":415,"message":"embedded format avro needs a Schema Registry, which this endpoint does not have: send application/vnd.kafka.json.v2+json or application/vnd.kafka.binary.v2+json"}`, v2Answer, 0},
		{"protobuf", "POST", "/topics/jsontest", jsonHeader(confluent.MediaV2Protobuf), strings.NewReader(`{"records":[{"value":{}}]}`), 415,
			`{"error_code":415,"message":"embedded format protobuf needs a Schema Registry, which this endpoint does not have: send application/vnd.kafka.json.v2+json or application/vnd.kafka.binary.v2+json"}`, v2Answer, 0},
		{"jsonschema", "POST", "/topics/jsontest", jsonHeader(confluent.MediaV2JSONSchema), strings.NewReader(`{"records":[{"value":{}}]}`), 415,
			`{"error_code":415,"message":"embedded format jsonschema needs a Schema Registry, which this endpoint does not have: send application/vnd.kafka.json.v2+json or application/vnd.kafka.binary.v2+json"}`, v2Answer, 0},
		{"generic JSON, as the REST Proxy since 6.0", "POST", "/topics/jsontest", jsonHeader("application/json"), strings.NewReader(`{"records":[{"value":{}}]}`), 415,
			`{"error_code":415,"message":"HTTP 415 Unsupported Media Type"}`, v2Answer, 0},
		{"records may not be empty", "POST", "/topics/jsontest", jsonV2, strings.NewReader(`{"records":[]}`), 422,
			`{"error_code":422,"message":"records may not be empty"}`, v2Answer, 0},
		{"bad base64", "POST", "/topics/jsontest", binV2, strings.NewReader(`{"records":[{"value":"%%%"}]}`), 400,
			`{"error_code":400,"message":"Bad Request: data=\"%%%\" is not a valid base64 string."}`, v2Answer, 0},
		{"records twice", "POST", "/topics/jsontest", jsonV2, strings.NewReader(`{"records":[{"value":1}],"records":[{"value":2}]}`), 400,
			`{"error_code":400,"message":"Bad Request: \"records\" is given twice"}`, v2Answer, 0},
		{"not JSON", "POST", "/topics/jsontest", jsonV2, strings.NewReader(`{"records":[{"value":}]}`), 400,
			`{"error_code":400,"message":"payload not valid JSON"}`, v2Answer, 0},
		{"no such partition", "POST", "/topics/jsontest/partitions/3", jsonV2, strings.NewReader(`{"records":[{"value":1}]}`), 404,
			`{"error_code":40402,"message":"record 0: partition 3 does not exist (the topic has 1)"}`, v2Answer, 0},
		{"topic not allowed", "POST", "/topics/other", jsonV2, strings.NewReader(`{"records":[{"value":1}]}`), 404,
			`{"error_code":40401,"message":"Topic not found."}`, v2Answer, 0},
		{"no credentials", "POST", "/topics/jsontest", map[string]string{"Content-Type": confluent.MediaV2JSON}, strings.NewReader(`{"records":[{"value":1}]}`), 401,
			`{"error_code":401,"message":"Unauthorized"}`, v2Answer, 0},
	})

	byPlace := map[[2]int64]*kgo.Record{}
	for _, r := range stored(t, c, "topic_1") {
		byPlace[[2]int64{int64(r.Partition), r.Offset}] = r
	}
	somekey := byPlace[[2]int64{int64(kafkatest.JavaPartition("\"somekey\"", 2)), 0}]
	if somekey == nil || string(somekey.Key) != `"somekey"` || string(somekey.Value) != `{"foo":"bar"}` {
		t.Errorf("embedded JSON key and value stored as %v, want their JSON text", somekey)
	}
	if r := byPlace[[2]int64{1, 1}]; r == nil || string(r.Key) != "key" || string(r.Value) != "confluent" {
		t.Errorf("binary record stored as %v, want key %q value %q", r, "key", "confluent")
	}
	if r := byPlace[[2]int64{1, 2}]; r == nil || r.Key != nil || string(r.Value) != "kafka" {
		t.Errorf("binary record without key stored as %v", r)
	}
}

// A broker that cannot be reached: each API says the record was not
// written, in its own shape, under 503 (a retry is safe).
func TestConfluentNotWritten(t *testing.T) {
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), confluentSite(closedPort(t), "timeout 300ms"))

	got := do(t, "POST", v3Path, jsonHeader(confluent.MediaV3), strings.NewReader(`{"value":{"type":"JSON","data":1}}`))
	var report struct {
		Code    int    `json:"error_code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(got.body), &report); got.status != 503 || err != nil || report.Code != confluent.CodeNotWritten || report.Message == "" ||
		!strings.HasSuffix(got.body, "}\r\n") || got.header.Get("Retry-After") == "" {
		t.Errorf("v3: got %d %q, want 503 with error_code %d and Retry-After", got.status, got.body, confluent.CodeNotWritten)
	}

	got = do(t, "POST", "/topics/jsontest", jsonHeader(confluent.MediaV2JSON), strings.NewReader(`{"records":[{"value":1},{"value":2}]}`))
	var v2 struct {
		Offsets []struct {
			Partition *int   `json:"partition"`
			Offset    *int64 `json:"offset"`
			Code      int    `json:"error_code"`
			Error     string `json:"error"`
		} `json:"offsets"`
	}
	if err := json.Unmarshal([]byte(got.body), &v2); got.status != 503 || err != nil || len(v2.Offsets) != 2 {
		t.Fatalf("v2: got %d %q, want 503 with two offsets", got.status, got.body)
	}
	for i, o := range v2.Offsets {
		if o.Partition != nil || o.Offset != nil || o.Code != confluent.CodeNotWritten || o.Error == "" {
			t.Errorf("v2 offset %d = %+v, want null partition and offset, error_code %d and an error", i, o, confluent.CodeNotWritten)
		}
	}
}

// Streaming mode: records sent one by one on one chunked request are each
// answered as soon as they are settled, before the request ends, in
// order; a bad record is answered and the stream goes on; broken JSON is
// answered and ends it.
func TestConfluentStream(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), confluentSite(c.ListenAddrs()[0], "max_size 100"))

	send, reports, done := openStream(t, v3Path)
	next := func(record string) string {
		t.Helper()
		send(record)
		line, err := reports.ReadString('\n')
		if err != nil {
			t.Fatalf("no report for %s: %v", record, err)
		}
		return line
	}
	// Each report comes while the request is still open: the next
	// record is sent only once the one before is answered.
	for i, tt := range []struct{ record, want string }{
		{`{"partition_id":1,"value":{"type":"STRING","data":"one"},"timestamp":"2021-02-05T19:14:42Z"}`,
			`{"error_code":200,"cluster_id":"cluster-1","topic_name":"topic_1","partition_id":1,"offset":0,"timestamp":"2021-02-05T19:14:42Z","value":{"type":"STRING","size":3}}`},
		{`{"value":{"type":"BINARY","data":1}}`, `{"error_code":400,"message":"Bad Request: data=1 is not a base64 string."}`},
		{`{"partition_id":1,"value":{"type":"STRING","data":"three"},"timestamp":"2021-02-05T19:14:43Z"}`,
			`{"error_code":200,"cluster_id":"cluster-1","topic_name":"topic_1","partition_id":1,"offset":1,"timestamp":"2021-02-05T19:14:43Z","value":{"type":"STRING","size":5}}`},
		{`{"partition_id":1,"value":{"type":"STRING","data":"` + strings.Repeat("x", 200) + `"}}`, `{"error_code":413,"message":"payload too large"}`},
	} {
		if got := next(tt.record); got != tt.want+"\r\n" {
			t.Errorf("report %d = %q, want %q", i, got, tt.want+"\r\n")
		}
	}
	// The record over max_size ended the stream.
	if rest, err := io.ReadAll(reports); err != nil || len(rest) != 0 {
		t.Errorf("after the record over max_size: %q, %v; want the end of the answer", rest, err)
	}
	if status := done(); status != 200 {
		t.Errorf("stream status %d, want 200", status)
	}

	// Broken JSON: answered, then the end.
	send, reports, done = openStream(t, v3Path)
	send(`{"partition_id":0}{"partition_id":`)
	send(`}`)
	want := `{"error_code":200,"cluster_id":"cluster-1","topic_name":"topic_1","partition_id":0,"offset":0,"timestamp":`
	if line, _ := reports.ReadString('\n'); !strings.HasPrefix(line, want) {
		t.Errorf("first report %q, want one starting %q", line, want)
	}
	if line, _ := reports.ReadString('\n'); line != `{"error_code":400,"message":"payload not valid JSON"}`+"\r\n" {
		t.Errorf("report of broken JSON %q", line)
	}
	done()
	if got := len(stored(t, c, "topic_1")); got != 3 {
		t.Errorf("stored %d records, want the 3 answered 200", got)
	}
}

// openStream starts a chunked request of mode confluent's v3; send writes
// to its body, reports reads its answer, and done ends the body and
// returns the status.
func openStream(t *testing.T, path string) (send func(string), reports *bufio.Reader, done func() int) {
	t.Helper()
	return openStreamWith(t, path, nil)
}

// openStreamWith is openStream with more request headers.
func openStreamWith(t *testing.T, path string, header map[string]string) (send func(string), reports *bufio.Reader, done func() int) {
	t.Helper()
	pr, pw := io.Pipe()
	req, err := http.NewRequest("POST", baseURL+path, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", confluent.MediaV3)
	req.Header.Set("Authorization", testSecret)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	answered := make(chan *http.Response, 1)
	go func() {
		res, err := testClient.Do(req)
		if err != nil {
			t.Error(err)
			close(answered)
			return
		}
		answered <- res
	}()
	send = func(s string) {
		if _, err := pw.Write([]byte(s)); err != nil {
			t.Errorf("sending %q: %v", s, err)
		}
	}
	// The status comes before any record is known.
	send("")
	res := <-answered
	if res == nil {
		t.FailNow()
	}
	t.Cleanup(func() { res.Body.Close() })
	if ct := res.Header.Get("Content-Type"); ct != confluent.MediaV3 {
		t.Errorf("stream Content-Type %q", ct)
	}
	return send, bufio.NewReader(res.Body), func() int {
		pw.Close()
		io.Copy(io.Discard, res.Body)
		return res.StatusCode
	}
}

// An Idempotency-Key works in mode confluent as in the other modes: a
// repeat gets the first answer, byte for byte, without producing again,
// whichever API; a stream, whose records are answered one by one, refuses
// one.
func TestConfluentIdempotencyKey(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), confluentSite(c.ListenAddrs()[0], "idempotency_window 1m"))

	keyed := func(ct, key string) map[string]string {
		h := jsonHeader(ct)
		h["Idempotency-Key"] = key
		return h
	}
	for _, tt := range []struct{ name, path, ct, body string }{
		{"v2", "/topics/jsontest", confluent.MediaV2JSON, `{"records":[{"value":1},{"value":2}]}`},
		{"v3", v3Path, confluent.MediaV3, `{"value":{"type":"JSON","data":3}}{"value":{"type":"STRING","data":"4"}}`},
	} {
		first := do(t, "POST", tt.path, keyed(tt.ct, "key-"+tt.name), strings.NewReader(tt.body))
		again := do(t, "POST", tt.path, keyed(tt.ct, "key-"+tt.name), strings.NewReader(tt.body))
		if first.status != 200 || again.status != 200 || again.body != first.body || again.header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("%s: first %d %q, repeat %d %q (replayed %q); want the first answer again, replayed",
				tt.name, first.status, first.body, again.status, again.body, again.header.Get("Idempotent-Replayed"))
		}
		other := do(t, "POST", tt.path, keyed(tt.ct, "key-"+tt.name), strings.NewReader(strings.Replace(tt.body, "2", "5", 1)))
		if tt.name == "v2" && (other.status != 422 || !strings.Contains(other.body, `"error_code":422`)) {
			t.Errorf("%s: another body with the key: %d %q, want 422", tt.name, other.status, other.body)
		}
	}
	if n := len(stored(t, c, "jsontest")) + len(stored(t, c, "topic_1")); n != 4 {
		t.Errorf("stored %d records, want the 4 of the first attempts", n)
	}

	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", baseURL+v3Path, pr)
	for k, v := range keyed(confluent.MediaV3, "stream-key") {
		req.Header.Set(k, v)
	}
	res, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 400 || !strings.HasPrefix(string(b), `{"error_code":400,"message":"Idempotency-Key applies to a request of known length`) {
		t.Errorf("a stream with an Idempotency-Key: %d %q, want 400", res.StatusCode, b)
	}
}

// A stream from a client that waits for 100 Continue before it sends the
// body (curl does, for a body of unknown length): the 100 comes first, then
// the status with the first report.
func TestConfluentStreamExpectContinue(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), confluentSite(c.ListenAddrs()[0], ""))

	ctx, cancel := contextWithTimeout(20 * time.Second)
	defer cancel()
	body := onlyBody{strings.NewReader(`{"partition_id":0}{"partition_id":1}`)}
	req, _ := http.NewRequestWithContext(ctx, "POST", baseURL+v3Path, body)
	for k, v := range jsonHeader(confluent.MediaV3) {
		req.Header.Set(k, v)
	}
	req.Header.Set("Expect", "100-continue")
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, ExpectContinueTimeout: time.Minute}}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != 200 || strings.Count(string(b), `"error_code":200`) != 2 {
		t.Errorf("got %d %q (%v), want 200 and two reports", res.StatusCode, b, err)
	}
}

// A stream's record is timed from when it arrives: a client that pauses
// longer than timeout between records still gets each one produced. And
// the CRLF between records, as the REST Proxy's clients write them, does
// not count against max_size.
func TestConfluentStreamPausesAndSpacing(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), confluentSite(c.ListenAddrs()[0], "timeout 200ms\n\t\tmax_size 64"))

	record := `{"partition_id":0,"value":{"type":"STRING","data":"` + strings.Repeat("x", 64-len(`{"partition_id":0,"value":{"type":"STRING","data":""}}`)) + `"}}`
	if len(record) != 64 {
		t.Fatalf("the record is %d bytes, want max_size", len(record))
	}
	send, reports, done := openStream(t, v3Path)
	for i := range 3 {
		if i == 2 {
			time.Sleep(400 * time.Millisecond) // the client pauses longer than timeout
		}
		send(record + "\r\n")
		line, err := reports.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, `{"error_code":200,`) {
			t.Errorf("record %d: %q %v, want 200", i, line, err)
		}
	}
	done()
	if got := len(stored(t, c, "topic_1")); got != 3 {
		t.Errorf("stored %d records, want 3", got)
	}
}

// A stream refused before any of its records is read (an Idempotency-Key,
// a topic not allowed, another cluster) gets its answer and its connection
// closed: its body, which may go on for as long as the client likes, is
// not read to keep the connection, and net/http is left in no state where
// it reads the connection twice at once (which it answers with a panic).
func TestConfluentStreamRefusedUnread(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, confluentSite(c.ListenAddrs()[0], "cluster_id cluster-1\n\t\tidempotency_window 1m"))

	record := `{"partition_id":0,"value":{"type":"STRING","data":"never"}}`
	for _, tt := range []struct {
		name, path, header string
		want               int
		body               string
	}{
		{"Idempotency-Key", v3Path, "Idempotency-Key: stream-1\r\n", 400,
			`{"error_code":400,"message":` + string(quote(rejectedConfluentStream.message)) + "}\r\n"},
		{"topic not allowed", "/v3/clusters/cluster-1/topics/secret/records", "", 404,
			`{"error_code":40401,"message":"Topic not found."}` + "\r\n"},
		{"another cluster", "/v3/clusters/other/topics/topic_1/records", "", 404,
			`{"error_code":404,"message":"Cluster not found."}` + "\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The whole chunked body, its end included, is sent at
			// once, on a connection the client would keep.
			got := rawExchange(t, "POST "+tt.path+" HTTP/1.1\r\nHost: x\r\nAuthorization: "+testSecret+
				"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"+tt.header+"\r\n"+
				fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(record), record), false)
			if got.status != tt.want || got.body != tt.body {
				t.Errorf("got %d %q, want %d %q", got.status, got.body, tt.want, tt.body)
			}
			if !got.connectionClose || !got.closed || got.rest != "" {
				t.Errorf("Connection: close %v, then %q (closed: %v); want the connection closed after the answer",
					got.connectionClose, got.rest, got.closed)
			}
		})
	}
	noPanicLogged(t, logFile)
	if n := len(stored(t, c, "topic_1")); n != 0 {
		t.Errorf("stored %d records of refused streams", n)
	}
	unloadChecksLeaks(t)
}

// Credentials come first in mode confluent, as in a REST Proxy with
// authentication: a request without them is answered 401 whatever its
// path, method or Content-Type, and its connection closed, its body
// unread. With them, the path, method and Content-Type are answered as
// before, on a connection that goes on.
func TestConfluentCredentialsFirst(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), confluentSite(c.ListenAddrs()[0], ""))

	// A request the server answers only if it reads past the one before.
	const next = "POST /v3/clusters HTTP/1.1\r\nHost: x\r\nAuthorization: " + testSecret +
		"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
	body := strings.Repeat(" ", 1000)
	wrong := []struct {
		name, path, method, contentType string
		want                            int
		answer                          string // with credentials
	}{
		{"no produce API there", "/v3/clusters", "POST", confluent.MediaV3, 404, `{"error_code":404,"message":"HTTP 404 Not Found"}` + "\r\n"},
		{"no v2 produce API there", "/topics", "POST", confluent.MediaV2JSON, 404, `{"error_code":404,"message":"HTTP 404 Not Found"}`},
		{"another method", v3Path, "PUT", confluent.MediaV3, 405, `{"error_code":405,"message":"HTTP 405 Method Not Allowed"}` + "\r\n"},
		{"another Content-Type", v3Path, "POST", "text/plain", 415, `{"error_code":415,"message":"HTTP 415 Unsupported Media Type"}` + "\r\n"},
		{"v2 and application/json", "/topics/jsontest", "POST", confluent.MediaV3, 415, `{"error_code":415,"message":"HTTP 415 Unsupported Media Type"}`},
	}
	for _, tt := range wrong {
		unauthorized := `{"error_code":401,"message":"Unauthorized"}`
		if strings.HasSuffix(tt.answer, "\r\n") {
			unauthorized += "\r\n" // v3's shape
		}
		for _, credentials := range []string{"", "Authorization: guess\r\n", "Authorization: " + basic("API_KEY:nope") + "\r\n"} {
			t.Run(tt.name+", credentials "+strings.TrimSpace(credentials), func(t *testing.T) {
				got := rawExchange(t, fmt.Sprintf("%s %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s",
					tt.method, tt.path, credentials, tt.contentType, len(body), body)+next, false)
				if got.status != 401 || got.body != unauthorized || got.header.Get("Www-Authenticate") != `Basic realm="queue_publish"` {
					t.Errorf("got %d %q (WWW-Authenticate %q), want 401 %q with a challenge",
						got.status, got.body, got.header.Get("Www-Authenticate"), unauthorized)
				}
				if !got.connectionClose || !got.closed || got.rest != "" {
					t.Errorf("Connection: close %v, then %.60q (closed: %v); want the connection closed, the body unread",
						got.connectionClose, got.rest, got.closed)
				}
			})
		}
		t.Run(tt.name+", right credentials", func(t *testing.T) {
			got := rawExchange(t, fmt.Sprintf("%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s",
				tt.method, tt.path, testSecret, tt.contentType, len(body), body)+next, false)
			if got.status != tt.want || got.body != tt.answer {
				t.Errorf("got %d %q, want %d %q", got.status, got.body, tt.want, tt.answer)
			}
			if !strings.HasPrefix(got.rest, "HTTP/1.1 404 ") {
				t.Errorf("then %.60q; want the next request answered on the same connection", got.rest)
			}
		})
	}
	unloadChecksLeaks(t)
}

// A v3 record's timestamp must be one a Kafka record can carry, from
// 1970 to year 9999, and its partition a Kafka partition, in an int32:
// before or beyond, the record is refused, saying so, and never reaches
// the producer. So is a v2 path's partition beyond an int32.
func TestConfluentTimestampsAndPartitions(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), confluentSite(c.ListenAddrs()[0], ""))

	ok := jsonHeader(confluent.MediaV3)
	outside := func(timestamp string) string {
		return `{"error_code":400,"message":"Bad Request: timestamp \"` + timestamp +
			`\" is outside the times a Kafka record can carry, 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"}` + "\r\n"
	}
	notFound := `{"error_code":40402,"message":"Partition not found."}`
	record := func(fields string) io.Reader { return strings.NewReader(`{"partition_id":0,` + fields + `}`) }
	expectAnswers(t, []answerCase{
		{"year 1", "POST", v3Path, ok, record(`"timestamp":"0001-01-01T00:00:00Z"`), 400, outside("0001-01-01T00:00:00Z"), nil, 0},
		{"a millisecond before 1970", "POST", v3Path, ok, record(`"timestamp":"1969-12-31T23:59:59.999Z"`), 400, outside("1969-12-31T23:59:59.999Z"), nil, 0},
		{"past 9999 in UTC", "POST", v3Path, ok, record(`"timestamp":"9999-12-31T23:59:59-01:00"`), 400, outside("9999-12-31T23:59:59-01:00"), nil, 0},
		{"epoch milliseconds", "POST", v3Path, ok, record(`"timestamp":-1`), 400,
			`{"error_code":400,"message":"Bad Request: timestamp must be a string, such as 2021-02-05T19:14:42Z"}` + "\r\n", nil, 0},
		{"partition beyond an int32", "POST", v3Path, ok, strings.NewReader(`{"partition_id":2147483648}`), 404, notFound + "\r\n", nil, 0},
		{"partition beyond an int64", "POST", v3Path, ok, strings.NewReader(`{"partition_id":9223372036854775808}`), 404, notFound + "\r\n", nil, 0},
		{"v2 path's partition beyond an int32", "POST", "/topics/jsontest/partitions/2147483648", jsonHeader(confluent.MediaV2JSON),
			strings.NewReader(`{"records":[{"value":1}]}`), 404, notFound, v2Answer, 0},
	})
	if n := len(stored(t, c, "topic_1")) + len(stored(t, c, "jsontest")); n != 0 {
		t.Errorf("stored %d records, want none", n)
	}
}

// A record's timestamp is the client's data, never the producer's clock:
// a record stamped far in the future or at the edges of what Kafka can
// carry is stored with its timestamp, and the next record to its
// partition, another client's, is answered at once. (Such a record once
// held its partition until the delivery timeout, then crashed Caddy.)
func TestConfluentTimestampIsNotAClock(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, confluentSite(c.ListenAddrs()[0], "timeout 2s"))

	stamps := []string{"2099-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z", "1970-01-01T00:00:00Z"}
	for i, ts := range stamps {
		got := do(t, "POST", v3Path, jsonHeader(confluent.MediaV3),
			strings.NewReader(`{"partition_id":0,"timestamp":"`+ts+`","value":{"type":"JSON","data":`+strconv.Itoa(i)+`}}`))
		if got.status != 200 || !strings.Contains(got.body, `"timestamp":"`+ts+`"`) {
			t.Errorf("a record stamped %s: %d %q, want 200 with its timestamp", ts, got.status, got.body)
		}
		start := time.Now()
		got = do(t, "POST", v3Path, jsonHeader(confluent.MediaV3), strings.NewReader(`{"partition_id":0,"value":{"type":"JSON","data":"next"}}`))
		if got.status != 200 {
			t.Errorf("the next record to the partition, %v after one stamped %s: %d %q, want 200", time.Since(start), ts, got.status, got.body)
		}
	}
	var times []int64
	for _, r := range stored(t, c, "topic_1") {
		if string(r.Value) != `"next"` {
			times = append(times, r.Timestamp.UnixMilli())
		}
	}
	want := []int64{4070908800000, 253402300799999, 0}
	// franz-go reads a timestamp back through nanoseconds, which end in
	// 2262: the year 9999 is checked in the answer above only.
	if len(times) != 3 || times[0] != want[0] || times[2] != want[2] {
		t.Errorf("stored timestamps %v ms, want %v", times, want)
	}
	noPanicLogged(t, logFile)
}

// A stream that a record ends (broken JSON, a record over max_size) while
// the client's body goes on: the answer ends as a response does, at once,
// and the connection is closed, the rest of the body unread, whether or
// not the client ends it. None makes net/http panic (it did, reading what
// full duplex left of the body).
func TestConfluentStreamEndedEarly(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "topic_1"), kfake.SeedTopics(1, "jsontest"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, confluentSite(c.ListenAddrs()[0], "max_size 200\n\t\ttimeout 500ms"))

	good := `{"partition_id":0,"value":{"type":"STRING","data":"good"}}`
	chunk := func(s string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(s), s) }
	head := "POST " + v3Path + " HTTP/1.1\r\nHost: x\r\nAuthorization: " + testSecret +
		"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
	big := `{"partition_id":0,"value":{"type":"STRING","data":"` + strings.Repeat("x", 5000) + `"}}`
	for _, tt := range []struct {
		name, body string
		report     string
	}{
		{"broken JSON, then the body ends", chunk(good) + chunk(`{"partition_id":0,}}}}`+good+good) + "0\r\n\r\n", `"error_code":400`},
		{"a record over max_size, then the body ends", chunk(good) + chunk(big+good) + "0\r\n\r\n", `"error_code":413`},
		{"broken JSON, and the body goes on", chunk(good) + chunk(`{"partition_id":0,}}}}`+good), `"error_code":400`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", strings.TrimPrefix(baseURL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(conn, head+tt.body); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(conn)
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(res.Body)
			reports := strings.Split(strings.TrimSuffix(string(body), "\r\n"), "\r\n")
			if res.StatusCode != 200 || len(reports) != 2 || !strings.Contains(reports[0], `"error_code":200`) || !strings.Contains(reports[1], tt.report) {
				t.Errorf("got %d %q, want 200 with a report of the good record, then %s", res.StatusCode, body, tt.report)
			}
			if err != nil {
				t.Errorf("the answer did not end as a response does: %v", err)
			}
			if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
				t.Errorf("after the answer: %q, %v; want the connection closed", rest, err)
			}
		})
	}
	noPanicLogged(t, logFile)
	unloadChecksLeaks(t)
}

// noPanicLogged checks that Caddy's log has no panic: net/http logs one,
// with its stack, before it closes the connection of a handler that
// panicked.
func noPanicLogged(t *testing.T, logFile string) {
	t.Helper()
	log, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for line := range bytes.Lines(log) {
		if bytes.Contains(line, []byte("panic")) || bytes.Contains(line, []byte("invalid concurrent Body.Read")) {
			t.Errorf("Caddy logged: %.300s", line)
		}
	}
}

// The wire format's rejections count under the module's labels, and those
// it shares with the other modes have their words.
func TestConfluentRejectionsAreTheModules(t *testing.T) {
	for _, pair := range [][2]string{
		{confluent.ReasonRecords, rejectRecords}, {confluent.ReasonPath, rejectPath},
		{confluent.ReasonContentType, rejectContentType}, {confluent.ReasonInvalidJSON, rejectInvalidJSON},
		{confluent.ReasonTooLarge, rejectTooLarge}, {confluent.ReasonTopic, rejectTopic}, {confluent.ReasonMethod, rejectMethod},
	} {
		if pair[0] != pair[1] {
			t.Errorf("label %q, the module's is %q", pair[0], pair[1])
		}
	}
	for _, pair := range []struct {
		err *confluent.Error
		ref *rejection
	}{{confluent.ErrInvalidJSON, rejectedInvalidJSON}, {confluent.ErrBrokenJSON, rejectedInvalidJSON}, {confluent.ErrRecordTooLarge, rejectedTooLarge}} {
		ref := confluentRejectionOf(pair.err)
		if ref.reason != pair.ref.reason || ref.status != pair.ref.status || ref.message != pair.ref.message || string(ref.body) != string(pair.ref.body) {
			t.Errorf("%+v answered as %+v, the module's %+v", pair.err, ref, pair.ref)
		}
	}
}
