package confluent

import (
	"encoding/json"
	"math"
	"net/http"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// Whatever the body, ParseBody answers without panicking; what they accept is well formed: v2 only valid JSON, v3
// records each with its shape, and JSON data stored as valid, compact
// JSON.
func FuzzParseBody(f *testing.F) {
	for _, body := range []string{
		`{"partition_id":1,"headers":[{"name":"Header-1","value":"SGVhZGVyLTE="}],"key":{"type":"BINARY","data":"Zm9vYmFy"},"value":{"type":"JSON","data":{"foo":"bar"}},"timestamp":"2021-02-05T19:14:42Z"}`,
		`{"value":{"type":"STRING","data":"My message"}}`,
		`{"key":{"data":1000}}`,
		`{"value":{"type":"BINARY","data":1}}`,
		`{}{"partition_id":null}` + "\n" + `{"value":{"type":"JSON","data":[1, 2 ,{"a" : null}]}}`,
		`{"records":[{"key":"somekey","value":{"foo":"bar"}},{"value":["foo","bar"],"partition":1},{"value":53.5}]}`,
		`{"records":[{"key":"a2V5","value":"Y29uZmx1ZW50"},{"value":"a2Fma2E=","partition":1}]}`,
		`{"records":[{"key": "a b", "value": {"x": [1, 2]}}, {"value": " "}, {"value":3}]}`,
		`{"records":[]}`, `[]`, `{"headers":[{"name":"a"},{"value":null,"name":"b"}]}`, `{"timestamp":"x"}`, "",
	} {
		f.Add(body, true, false)
		f.Add(body, false, false)
		f.Add(body, false, true)
	}
	o := Options{MaxRecords: 20, Timeout: 1}
	f.Fuzz(func(t *testing.T, body string, v3, binary bool) {
		api := &Route{V3: v3, Binary: binary, Partition: -1}
		recs, ref := ParseBody(api, []byte(body), time.Now(), o)
		if ref != nil {
			if recs != nil || ref.Status < 400 || ref.Message == "" {
				t.Fatalf("refusal %+v with %d records", ref, len(recs))
			}
			return
		}
		if len(recs) == 0 {
			t.Fatal("accepted without records")
		}
		if !v3 {
			if !json.Valid([]byte(body)) {
				t.Fatalf("v2 accepted invalid JSON %q", body)
			}
			for i, rec := range recs {
				for _, b := range [][]byte{rec.Key, rec.Value} {
					if b == nil || binary {
						continue
					}
					v := jsontext.Value(append([]byte(nil), b...))
					if v.Compact() != nil || string(v) != string(b) {
						t.Fatalf("v2 record %d: %q is not compact valid JSON", i, b)
					}
				}
			}
			return
		}
		if len(api.Shapes) != len(recs) {
			t.Fatalf("%d shapes for %d records", len(api.Shapes), len(recs))
		}
		for i, rec := range recs {
			for _, d := range []struct {
				typ  string
				size int
				b    []byte
			}{{api.Shapes[i].KeyType, api.Shapes[i].KeySize, rec.Key}, {api.Shapes[i].ValueType, api.Shapes[i].ValueSize, rec.Value}} {
				if d.b == nil && d.size > 0 || d.b != nil && d.size != len(d.b) {
					t.Fatalf("record %d: size %d for %q", i, d.size, d.b)
				}
				if d.typ == "JSON" && d.b != nil {
					v := jsontext.Value(append([]byte(nil), d.b...))
					if v.Compact() != nil || string(v) != string(d.b) {
						t.Fatalf("record %d: JSON data stored as %q, not compact valid JSON", i, d.b)
					}
				}
			}
		}
	})
}

// Kafka timestamps are answered as the REST Proxy's Java writes them.
func TestAppendInstant(t *testing.T) {
	for in, want := range map[string]string{
		"2021-02-05T19:14:42Z":             "2021-02-05T19:14:42Z",
		"2023-05-16T18:20:51.844Z":         "2023-05-16T18:20:51.844Z",
		"2023-05-16T18:20:51.8449Z":        "2023-05-16T18:20:51.844Z", // Kafka keeps milliseconds
		"2023-05-16T18:20:51.1Z":           "2023-05-16T18:20:51.100Z",
		"2023-05-16T20:20:51.000001+02:00": "2023-05-16T18:20:51Z",
	} {
		ts, err := time.Parse(time.RFC3339Nano, in)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(AppendInstant(nil, ts)); got != want {
			t.Errorf("AppendInstant(%s) = %s, want %s", in, got, want)
		}
	}
}

// v3's path in the tests.
const v3Path = "/v3/clusters/cluster-1/topics/topic_1/records"

// From a request (its path, Content-Type and body) to the producer's
// records, whatever the request: its route and media type are read, its
// body turned into records as a request's is, and what
// reaches the producer is what Kafka can carry. A partition is the path's,
// a record's in an int32, or -1; a record's time is the request's or a
// timestamp Kafka can carry, given back in the answer as the same RFC 3339
// instant, and never moves its deadline; headers have UTF-8 names, and v2
// records none; keys and values keep the sizes and JSON the answer gives.
// A refusal is a client error with a message.
func FuzzRequestRecords(f *testing.F) {
	for _, tt := range []struct{ path, contentType, body string }{
		{v3Path, MediaV3, `{"partition_id":1,"headers":[{"name":"Header-1","value":"SGVhZGVyLTE="}],"key":{"type":"BINARY","data":"Zm9vYmFy"},"value":{"type":"JSON","data":{"foo":"bar"}},"timestamp":"2021-02-05T19:14:42Z"}`},
		// Timestamps Kafka can carry, and those it cannot.
		{v3Path, MediaV3, `{"timestamp":"2099-01-01T00:00:00Z"}`},
		{v3Path, MediaV3, `{"timestamp":"0001-01-01T00:00:00Z"}`},
		{v3Path, MediaV3, `{"timestamp":"0000-01-01T00:00:00+01:00"}`},
		{v3Path, MediaV3, `{"timestamp":"9999-12-31T23:59:59Z"}`},
		{v3Path, MediaV3, `{"timestamp":"9999-12-31T23:59:59.999999999Z"}`},
		{v3Path, MediaV3, `{"timestamp":"9999-12-31T23:59:59-23:59"}`},
		{v3Path, MediaV3, `{"timestamp":"1970-01-01T00:00:00Z"}{"timestamp":"1969-12-31T23:59:59.9995Z"}`},
		{v3Path, MediaV3, `{"timestamp":"1970-01-01T01:00:00+01:00"}`},
		{v3Path, MediaV3, `{"timestamp":"2021-02-05T19:14:60Z"}`},
		{v3Path, MediaV3, `{"timestamp":-1}`},
		{v3Path, MediaV3, `{"timestamp":-62135596800000}`},
		{v3Path, MediaV3, `{"timestamp":9223372036854775808}`},
		{v3Path, MediaV3, `{"timestamp":1e400}`},
		{v3Path, MediaV3, `{"timestamp":"-0001-01-01T00:00:00Z"}`},
		{v3Path, MediaV3, `{"timestamp":"+10000-01-01T00:00:00Z"}`},
		// Partitions beyond an int32, and below 0.
		{v3Path, MediaV3, `{"partition_id":2147483647}`},
		{v3Path, MediaV3, `{"partition_id":2147483648}`},
		{v3Path, MediaV3, `{"partition_id":-2}`},
		{v3Path, MediaV3, `{"partition_id":9223372036854775808}`},
		{v3Path, MediaV3, `{"partition_id":-9223372036854775809}`},
		{v3Path, MediaV3, `{"partition_id":1.5}{"partition_id":1e2}{"partition_id":"1"}`},
		{"/topics/jsontest/partitions/2147483648", MediaV2JSON, `{"records":[{"value":1}]}`},
		{"/topics/jsontest/partitions/2147483647", MediaV2Binary, `{"records":[{"value":"AA==","partition":-2}]}`},
		{"/topics/jsontest/partitions/-2", MediaV2JSON, `{"records":[{"value":1}]}`},
		{"/topics/jsontest/partitions/01", MediaV2JSON, `{"records":[{"value":1,"partition":2147483648}]}`},
		{"/kafka/v3/clusters/c/topics/t/records", MediaV3 + "; charset=utf-8", `{}`},
		// Odd headers.
		{v3Path, MediaV3, `{"headers":[{"name":""},{"name":"a","value":null},{"name":"a","value":""},{"value":"AA==","name":"\u0000\u00e9\ud83d\ude00"}]}`},
		{v3Path, MediaV3, `{"headers":[{"name":"a","name":"b","value":"AA=="}]}{"headers":null}{"headers":[]}`},
		{v3Path, MediaV3, `{"headers":[{"name":null}]}{"headers":[{"value":"AA=="}]}{"headers":[{"name":"x","value":"!"}]}`},
		{v3Path, MediaV3, `{"headers":[{"name":"x","other":1}]}{"headers":{"name":"x"}}{"headers":[1]}{"headers":[{"name":1}]}`},
		{v3Path, MediaV3, `{"headers":[{"name":"x","value":"AA"}]}{"headers":[{"name":"x","value":[]}]}`},
		{"/topics/jsontest", MediaV2JSON, `{"records":[{"value":1,"headers":[{"name":"a"}]}]}`},
		{"/topics/jsontest", "text/plain", `{}`},
	} {
		f.Add(tt.path, tt.contentType, tt.body)
	}
	o := Options{MaxRecords: 20, MaxSize: 1 << 20, Timeout: time.Second}
	now := time.Date(2026, 1, 2, 3, 4, 5, 678_901_234, time.UTC)
	// What a record's time may be: Kafka's milliseconds from 1970, and an
	// RFC 3339 instant in the answer.
	first, last := time.Unix(0, 0), time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC)
	f.Fuzz(func(t *testing.T, path, contentType, body string) {
		api, ref := ParseRoute(path)
		if api == nil {
			t.Fatalf("no route for %q", path)
		}
		if ref == nil {
			ref = api.CheckMedia(http.MethodPost, contentType)
		}
		var recs []*producer.Record
		if ref == nil {
			recs, ref = ParseBody(api, []byte(body), now, o)
		}
		if ref != nil {
			if recs != nil || ref.Status < 400 || ref.Status >= 500 || ref.Message == "" {
				t.Fatalf("refusal %+v with %d records", ref, len(recs))
			}
			status, code, message := ref.Status, ref.Code, ref.Message
			if status < 400 || status >= 500 || code < 400 || message == "" {
				t.Fatalf("refusal answered %d, error_code %d, %q", status, code, message)
			}
			return
		}
		if len(recs) == 0 {
			t.Fatal("accepted without records")
		}
		if api.Partition < -1 || api.Partition > math.MaxInt32 {
			t.Fatalf("path %q read as partition %d", path, api.Partition)
		}
		for i, rec := range recs {
			if rec.Partition < -1 || rec.Partition > math.MaxInt32 {
				t.Fatalf("record %d: partition %d", i, rec.Partition)
			}
			if !api.V3 && rec.Partition == -1 && api.Partition != -1 {
				t.Fatalf("record %d: the path's partition %d lost", i, api.Partition)
			}
			if want := now.Add(time.Second); !rec.Deadline.Equal(want) {
				t.Fatalf("record %d: deadline %v, want %v whatever its timestamp", i, rec.Deadline, want)
			}
			if !rec.Time.Equal(now) {
				if !api.V3 {
					t.Fatalf("v2 record %d: time %v, not the request's", i, rec.Time)
				}
				if ms := rec.Time.UnixMilli(); ms < 0 || rec.Time.Before(first) || rec.Time.After(last) {
					t.Fatalf("record %d: time %v (%d ms), which Kafka cannot carry", i, rec.Time, ms)
				}
			}
			// The answer gives the time Kafka keeps, in milliseconds.
			instant := string(AppendInstant(nil, rec.Time))
			back, err := time.Parse(time.RFC3339Nano, instant)
			if err != nil || back.UnixMilli() != rec.Time.UnixMilli() {
				t.Fatalf("record %d: time %v answered as %q (%v)", i, rec.Time, instant, err)
			}
			if !api.V3 && rec.Headers != nil {
				t.Fatalf("v2 record %d: headers %v", i, rec.Headers)
			}
			for _, hd := range rec.Headers {
				if !utf8.ValidString(hd.Key) {
					t.Fatalf("record %d: header name %q is not UTF-8", i, hd.Key)
				}
			}
			if int64(len(rec.Key)+len(rec.Value)) > int64(len(body)) {
				t.Fatalf("record %d: %d bytes of key and value from a body of %d", i, len(rec.Key)+len(rec.Value), len(body))
			}
			if rec.Outcome() != nil {
				t.Fatalf("record %d: an outcome, %v, before it was sent", i, rec.Outcome())
			}
		}
		if api.V3 {
			if len(api.Shapes) != len(recs) {
				t.Fatalf("%d shapes for %d records", len(api.Shapes), len(recs))
			}
			for i, rec := range recs {
				for _, d := range []struct {
					size int
					b    []byte
				}{{api.Shapes[i].KeySize, rec.Key}, {api.Shapes[i].ValueSize, rec.Value}} {
					if d.b == nil && d.size > 0 || d.b != nil && d.size != len(d.b) {
						t.Fatalf("record %d: size %d for %q", i, d.size, d.b)
					}
				}
			}
		}
	})
}
