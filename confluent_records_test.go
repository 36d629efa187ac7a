package queuepublish

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"
)

// Whatever the body, the parsers of mode confluent answer without
// panicking; what they accept is well formed: v2 only valid JSON, v3
// records each with its shape, and JSON data stored as valid, compact
// JSON.
func FuzzParseREST(f *testing.F) {
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
	h := &Handler{MaxRecords: 20, Timeout: 1}
	f.Fuzz(func(t *testing.T, body string, v3, binary bool) {
		api := &restRoute{v3: v3, binary: binary, partition: -1}
		recs, ref := h.parseREST(api, []byte(body), time.Now())
		if ref != nil {
			if recs != nil || ref.status < 400 || ref.message == "" {
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
		if len(api.shapes) != len(recs) {
			t.Fatalf("%d shapes for %d records", len(api.shapes), len(recs))
		}
		for i, rec := range recs {
			for _, d := range []struct {
				typ  string
				size int
				b    []byte
			}{{api.shapes[i].keyType, api.shapes[i].keySize, rec.Key}, {api.shapes[i].valueType, api.shapes[i].valueSize, rec.Value}} {
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
		if got := string(appendInstant(nil, ts)); got != want {
			t.Errorf("appendInstant(%s) = %s, want %s", in, got, want)
		}
	}
}
