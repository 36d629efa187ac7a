package confluent

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// v2's refusals of a body, word for word: a body that is not valid JSON
// is answered as such whatever is wrong with its shape; otherwise the
// first thing wrong.
func TestV2Refusals(t *testing.T) {
	for _, tt := range []struct {
		body   string
		status int
		code   int
		reason string
		msg    string
	}{
		{"", 422, 422, ReasonInvalidJSON, "Payload error. Request body is empty. Data is required."},
		{" \r\n", 422, 422, ReasonInvalidJSON, "Payload error. Request body is empty. Data is required."},
		{`[]`, 400, 400, ReasonRecords, `Bad Request: the body must be an object {"records":[...]}`},
		{`{"records":{}}`, 400, 400, ReasonRecords, `Bad Request: "records" must be an array`},
		{`{"records":[{"value":1}],"records":[]}`, 400, 400, ReasonRecords, `Bad Request: "records" is given twice`},
		{`{"records":[1]}`, 400, 400, ReasonRecords, "Bad Request: a record must be a JSON object"},
		{`{"records":[{"value":1},{"value":2},{"value":3}]}`, 400, 400, ReasonRecords, "records: more than max_records (2)"},
		{`{"records":[{"value":1,"headers":[]}]}`, 400, 400, ReasonRecords, `Bad Request: Unrecognized field "headers"`},
		{`{"value_schema":"x","schema":1}`, 400, 400, ReasonRecords, `Bad Request: Unrecognized field "schema"`},
		{`{"key_schema_id":1}`, 422, 422, ReasonRecords, "records may not be empty"},
		{`{"records":[]}`, 422, 422, ReasonRecords, "records may not be empty"},
		{`{"records":[{"value":1,"partition":2147483648}]}`, 404, CodePartitionNotFound, ReasonRecords, "Partition not found."},
		{`{"records":[{"value":1,"partition":1.5}]}`, 400, 400, ReasonRecords, "Bad Request: partition must be a whole number"},
		{`{"records":[{"value":1,"partition":"1"}]}`, 400, 400, ReasonRecords, "Bad Request: partition must be a number"},
		// Not valid JSON, whatever came first.
		{`{"records":[1]`, 400, 400, ReasonInvalidJSON, "payload not valid JSON"},
		{`{"records":[{"value":1}]} {}`, 400, 400, ReasonInvalidJSON, "payload not valid JSON"},
		{`[] {}`, 400, 400, ReasonInvalidJSON, "payload not valid JSON"},
		{`{"records":[{"value":1,"headers":[]}]}]`, 400, 400, ReasonInvalidJSON, "payload not valid JSON"},
		{`{"records":[{"value":"\ud800"}]}`, 400, 400, ReasonInvalidJSON, "payload not valid JSON"},
	} {
		route := &Route{Partition: -1}
		recs, err := ParseBody(route, []byte(tt.body), time.Now(), Options{MaxRecords: 2, Timeout: time.Second})
		if err == nil || recs != nil || err.Status != tt.status || err.Code != tt.code || err.Reason != tt.reason || err.Message != tt.msg || err.EndsStream {
			t.Errorf("%s: %d records, %+v; want %d, %d, %s, %q", tt.body, len(recs), err, tt.status, tt.code, tt.reason, tt.msg)
		}
	}
	// Binary: base64 data.
	route := &Route{Partition: -1, Binary: true}
	_, err := ParseBody(route, []byte(`{"records":[{"value":"!"}]}`), time.Now(), Options{MaxRecords: 2})
	if err == nil || err.Message != `Bad Request: data="!" is not a valid base64 string.` {
		t.Errorf("binary: %+v", err)
	}
}

// v2's records: keys and values as their compact JSON text, or base64's
// bytes; the path's partition unless a record names one.
func TestV2Records(t *testing.T) {
	route := &Route{Partition: 3}
	now := time.Unix(1700000000, 0)
	recs, err := ParseBody(route, []byte(`{"key_schema":null,"records":[{"key":"k","value":{ "a" : [1, 2] }},{"value":null,"partition":0}]}`), now, Options{MaxRecords: 2, Timeout: time.Second})
	if err != nil || len(recs) != 2 {
		t.Fatalf("%d records, %+v", len(recs), err)
	}
	if string(recs[0].Key) != `"k"` || string(recs[0].Value) != `{"a":[1,2]}` || recs[0].Partition != 3 || !recs[0].Time.Equal(now) {
		t.Errorf("record 0: %q %q %d %v", recs[0].Key, recs[0].Value, recs[0].Partition, recs[0].Time)
	}
	if recs[1].Key != nil || recs[1].Value != nil || recs[1].Partition != 0 {
		t.Errorf("record 1: %q %q %d", recs[1].Key, recs[1].Value, recs[1].Partition)
	}
	route = &Route{Partition: -1, Binary: true}
	recs, err = ParseBody(route, []byte(`{"records":[{"key":"a2V5","value":"Y29uZmx1ZW50"}]}`), now, Options{MaxRecords: 2})
	if err != nil || string(recs[0].Key) != "key" || string(recs[0].Value) != "confluent" || recs[0].Partition != -1 {
		t.Errorf("binary: %+v %+v", recs, err)
	}
}

// A stream's refusals that end it, and those after which it goes on.
func TestReadV3RecordEndsStream(t *testing.T) {
	for _, tt := range []struct {
		body string
		want *Error
	}{
		{`{"value":`, ErrBrokenJSON},
		{`{"value":{"type":"STRING","data":"` + strings.Repeat("x", 100) + `"}}`, ErrRecordTooLarge},
	} {
		route := &Route{V3: true, Partition: -1}
		_, err := ParseBody(route, []byte(tt.body), time.Now(), Options{MaxRecords: 2, MaxSize: 50})
		if err != tt.want || !err.EndsStream {
			t.Errorf("%q: %+v, want %+v", tt.body, err, tt.want)
		}
	}
	route := &Route{V3: true, Partition: -1}
	_, err := ParseBody(route, []byte(`{"other":1}`), time.Now(), Options{MaxRecords: 2, MaxSize: 50})
	if err == nil || err.EndsStream || err.Message != `Bad Request: Unrecognized field "other"` {
		t.Errorf("unknown field: %+v", err)
	}
}

// The answers' bodies, byte for byte.
func TestAnswers(t *testing.T) {
	at := time.Date(2021, 2, 5, 19, 14, 42, 500_000_000, time.UTC)
	ok := Result{Partition: 1, Offset: 7, Time: at}
	notWritten := Result{Failure: &producer.Error{Outcome: producer.OutcomeRetry, Reason: "Kafka broker not available"}, Partition: -1, Offset: -1}
	for _, tt := range []struct{ got, want string }{
		{string(AppendV3Report(nil, "c-1", "t", ok, Shape{KeyType: "BINARY", KeySize: -1, ValueType: "JSON", ValueSize: 13})),
			`{"error_code":200,"cluster_id":"c-1","topic_name":"t","partition_id":1,"offset":7,"timestamp":"2021-02-05T19:14:42.500Z","key":{"type":"BINARY","size":-1},"value":{"type":"JSON","size":13}}`},
		{string(AppendV3Report(nil, "c\xff", "t", Result{Partition: 0, Offset: -1, Time: at.Truncate(time.Second)}, Shape{})),
			`{"error_code":200,"cluster_id":"c` + "\ufffd" + `","topic_name":"t","partition_id":0,"timestamp":"2021-02-05T19:14:42Z"}`},
		{string(AppendV3Report(nil, "c", "t", notWritten, Shape{})), `{"error_code":50301,"message":"Kafka broker not available"}`},
		{string(AppendV2Offsets(nil, 3, func(i int) Result {
			return []Result{ok, notWritten, {Partition: 2, Offset: -1}}[i]
		})), `{"offsets":[{"partition":1,"offset":7,"error_code":null,"error":null},` +
			`{"partition":null,"offset":null,"error_code":50301,"error":"Kafka broker not available"},` +
			`{"partition":2,"offset":null,"error_code":null,"error":null}],"key_schema_id":null,"value_schema_id":null}`},
		{string(AppendError(nil, 400, `<a> & "b"`)), `{"error_code":400,"message":"\u003ca\u003e \u0026 \"b\""}`},
	} {
		if tt.got != tt.want {
			t.Errorf("got  %s\nwant %s", tt.got, tt.want)
		}
	}
	for o, want := range map[producer.Outcome]int{
		producer.OutcomeRetry: CodeNotWritten, producer.OutcomeUnknown: CodeOutcomeUnknown,
		producer.OutcomeTooLarge: http.StatusRequestEntityTooLarge, producer.OutcomeRejected: CodeKafkaError,
	} {
		if got := FailureCode(o); got != want {
			t.Errorf("FailureCode(%v) = %d, want %d", o, got, want)
		}
	}
}
