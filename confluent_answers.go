package queuepublish

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-json-experiment/json/jsontext"
)

// answerREST answers a request of mode confluent whose records were sent,
// in its API's shape: v3's delivery report of each record, v2's offsets.
// If every record was acknowledged the status is 200; otherwise it is
// that of the worst failure, as in records mode, while the body still
// says how each record ended.
func (h *Handler) answerREST(x *exchange, recs []*record, out outcomes) error {
	var b []byte
	if x.api.v3 {
		b = make([]byte, 0, 200*len(recs))
		for i, rec := range recs {
			b = h.appendV3Report(b, x, rec, out.of(i), x.api.shapes[i])
			b = append(b, v3Separator...)
		}
	} else {
		b = appendV2Offsets(make([]byte, 0, 64+64*len(recs)), recs, out)
	}
	status := http.StatusOK
	if worst := out.worst(); worst != nil {
		status = statusOf(worst.Outcome)
	}
	return x.answer(status, b)
}

// appendV3Report appends v3's answer for one record: {"error_code":200,
// "cluster_id","topic_name","partition_id","offset","timestamp","key":
// {"type","size"},"value":{...}} if the broker took it, else
// {"error_code","message"}. key and value are there only if the request
// had them, as in the REST Proxy's answers.
func (h *Handler) appendV3Report(b []byte, x *exchange, rec *record, f *publishError, shape restShape) []byte {
	if f != nil {
		return appendRESTError(b, restFailureCode(f.Outcome), f.Reason)
	}
	partition, offset := rec.Placed()
	b = append(b, `{"error_code":200,"cluster_id":`...)
	b, _ = jsontext.AppendQuote(b, h.restClusterID(x.api)) // invalid UTF-8 in the path becomes U+FFFD
	b = append(b, `,"topic_name":`...)
	b, _ = jsontext.AppendQuote(b, x.topic)
	b = append(b, `,"partition_id":`...)
	b = strconv.AppendInt(b, int64(partition), 10)
	if offset >= 0 {
		b = append(b, `,"offset":`...)
		b = strconv.AppendInt(b, offset, 10)
	}
	b = append(b, `,"timestamp":"`...)
	b = appendInstant(b, rec.Time)
	b = append(b, '"')
	if shape.keyType != "" {
		b = appendRESTData(append(b, `,"key":`...), shape.keyType, shape.keySize)
	}
	if shape.valueType != "" {
		b = appendRESTData(append(b, `,"value":`...), shape.valueType, shape.valueSize)
	}
	return append(b, '}')
}

func appendRESTData(b []byte, typ string, size int) []byte {
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, `","size":`...)
	b = strconv.AppendInt(b, int64(size), 10)
	return append(b, '}')
}

// appendInstant appends t as Java's ISO_INSTANT writes a Kafka timestamp,
// which the REST Proxy answers with: UTC, milliseconds only if not zero.
func appendInstant(b []byte, t time.Time) []byte {
	t = t.UTC().Truncate(time.Millisecond)
	if t.Nanosecond() == 0 {
		return t.AppendFormat(b, "2006-01-02T15:04:05Z")
	}
	return t.AppendFormat(b, "2006-01-02T15:04:05.000Z")
}

// appendV2Offsets appends v2's answer: {"offsets":[{"partition","offset",
// "error_code","error"}, ...],"key_schema_id":null,"value_schema_id":null},
// in request order, every field written, null where it does not apply.
func appendV2Offsets(b []byte, recs []*record, out outcomes) []byte {
	b = append(b, `{"offsets":[`...)
	for i, rec := range recs {
		if i > 0 {
			b = append(b, ',')
		}
		if f := out.of(i); f != nil {
			b = append(b, `{"partition":null,"offset":null,"error_code":`...)
			b = strconv.AppendInt(b, int64(restFailureCode(f.Outcome)), 10)
			b = append(b, `,"error":`...)
			b = append(b, quote(f.Reason)...)
			b = append(b, '}')
			continue
		}
		partition, offset := rec.Placed()
		b = append(b, `{"partition":`...)
		b = strconv.AppendInt(b, int64(partition), 10)
		b = append(b, `,"offset":`...)
		if offset >= 0 {
			b = strconv.AppendInt(b, offset, 10)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, `,"error_code":null,"error":null}`...)
	}
	return append(b, `],"key_schema_id":null,"value_schema_id":null}`...)
}
