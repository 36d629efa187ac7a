package confluent

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// A Result is how one record of a request ended, for its answer.
type Result struct {
	// Failure is why the record was not acknowledged; nil if it was.
	Failure *producer.Error
	// Partition and Offset are where the broker took it; Offset -1 if
	// the broker did not say.
	Partition int
	Offset    int64
	// Time is the record's timestamp (v3 gives it back).
	Time time.Time
}

// AppendV3Report appends v3's answer for one record: {"error_code":200,
// "cluster_id","topic_name","partition_id","offset","timestamp","key":
// {"type","size"},"value":{...}} if the broker took it, else
// {"error_code","message"}. key and value are there only if the request
// had them, as in the REST Proxy's answers.
func AppendV3Report(b []byte, clusterID, topic string, r Result, shape Shape) []byte {
	if f := r.Failure; f != nil {
		return AppendError(b, FailureCode(f.Outcome), f.Reason)
	}
	b = append(b, `{"error_code":200,"cluster_id":`...)
	b, _ = jsontext.AppendQuote(b, clusterID) // invalid UTF-8 in the path becomes U+FFFD
	b = append(b, `,"topic_name":`...)
	b, _ = jsontext.AppendQuote(b, topic)
	b = append(b, `,"partition_id":`...)
	b = strconv.AppendInt(b, int64(r.Partition), 10)
	if r.Offset >= 0 {
		b = append(b, `,"offset":`...)
		b = strconv.AppendInt(b, r.Offset, 10)
	}
	b = append(b, `,"timestamp":"`...)
	b = AppendInstant(b, r.Time)
	b = append(b, '"')
	if shape.KeyType != "" {
		b = appendData(append(b, `,"key":`...), shape.KeyType, shape.KeySize)
	}
	if shape.ValueType != "" {
		b = appendData(append(b, `,"value":`...), shape.ValueType, shape.ValueSize)
	}
	return append(b, '}')
}

// appendData appends what v3's answer says of a key or value.
func appendData(b []byte, typ string, size int) []byte {
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, `","size":`...)
	b = strconv.AppendInt(b, int64(size), 10)
	return append(b, '}')
}

// AppendInstant appends t as Java's ISO_INSTANT writes a Kafka timestamp,
// which the REST Proxy answers with: UTC, milliseconds only if not zero.
func AppendInstant(b []byte, t time.Time) []byte {
	t = t.UTC().Truncate(time.Millisecond)
	if t.Nanosecond() == 0 {
		return t.AppendFormat(b, "2006-01-02T15:04:05Z")
	}
	return t.AppendFormat(b, "2006-01-02T15:04:05.000Z")
}

// AppendV2Offsets appends v2's answer for n records, result(i) saying how
// the i-th ended: {"offsets":[{"partition","offset","error_code","error"},
// ...],"key_schema_id":null,"value_schema_id":null}, in request order,
// every field written, null where it does not apply.
func AppendV2Offsets(b []byte, n int, result func(i int) Result) []byte {
	b = append(b, `{"offsets":[`...)
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		r := result(i)
		if f := r.Failure; f != nil {
			b = append(b, `{"partition":null,"offset":null,"error_code":`...)
			b = strconv.AppendInt(b, int64(FailureCode(f.Outcome)), 10)
			b = append(b, `,"error":`...)
			b = append(b, quote(f.Reason)...)
			b = append(b, '}')
			continue
		}
		b = append(b, `{"partition":`...)
		b = strconv.AppendInt(b, int64(r.Partition), 10)
		b = append(b, `,"offset":`...)
		if r.Offset >= 0 {
			b = strconv.AppendInt(b, r.Offset, 10)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, `,"error_code":null,"error":null}`...)
	}
	return append(b, `],"key_schema_id":null,"value_schema_id":null}`...)
}

// AppendError appends the REST Proxy's {"error_code","message"}.
func AppendError(b []byte, code int, message string) []byte {
	b = append(b, `{"error_code":`...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, `,"message":`...)
	b = append(b, quote(message)...)
	return append(b, '}')
}

// FailureCode is the error_code of a record that failed to publish:
// ours, the status and a digit, where the REST Proxy's codes do not say
// whether a retry is safe.
func FailureCode(o producer.Outcome) int {
	switch o {
	case producer.OutcomeRetry:
		return CodeNotWritten
	case producer.OutcomeUnknown:
		return CodeOutcomeUnknown
	case producer.OutcomeTooLarge:
		return http.StatusRequestEntityTooLarge
	}
	return CodeKafkaError
}
