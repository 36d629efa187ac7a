package queuepublish

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// parseREST turns the body of a request of mode confluent of known length
// into its records: v2's {"records":[...]}, or v3's record objects, one or
// several concatenated. Any malformed record refuses the whole request.
func (h *Handler) parseREST(api *restRoute, body []byte, now time.Time) ([]*record, *refusal) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, refusedRESTEmpty
	}
	d := jsontext.NewDecoder(bytes.NewReader(body), jsontext.AllowDuplicateNames(true))
	if !api.v3 {
		if !validJSON(body) {
			return nil, refusedInvalidJSON
		}
		return h.parseV2(api, d, body, now)
	}
	var recs []*record
	for d.PeekKind() != 0 {
		if len(recs) == h.MaxRecords {
			return nil, badRequest(rejectRecords, "more than max_records (%d) records in one request; stream them (Transfer-Encoding: chunked) or send fewer", h.MaxRecords)
		}
		rec := newRecord(nil, now, time.Duration(h.Timeout))
		var shape restShape
		if ref := readV3Record(d, rec, &shape, h.MaxSize); ref != nil {
			return nil, ref
		}
		recs = append(recs, rec)
		api.shapes = append(api.shapes, shape)
	}
	if _, err := d.ReadToken(); err != io.EOF {
		return nil, refusedInvalidJSON
	}
	return recs, nil
}

// restDataError is a 400 of a record's data, worded as the REST Proxy's.
func restDataError(format string, args ...any) *refusal {
	return badRequest(rejectRecords, "Bad Request: "+format, args...)
}

// refusedSchemaRegistry refuses the formats that need a Schema Registry.
var refusedSchemaRegistry = restRefusal(refuse(rejectRecords, http.StatusUnprocessableEntity,
	"Payload error. Schema Registry formats (AVRO, JSONSCHEMA, PROTOBUF, or data without a type) are not supported: give each key and value a type of BINARY, JSON or STRING."), 0, codeSchemaRegistry, "")

// readV3Record reads one record object of a v3 request from d into rec:
// {"partition_id", "headers":[{"name","value"}], "key":{"type","data"},
// "value":{...}, "timestamp"}, each optional. A syntax error ends the
// stream it came from; any other refusal leaves d after the record. A
// record longer than maxSize is refused, and ends a stream too.
func readV3Record(d *jsontext.Decoder, rec *record, shape *restShape, maxSize int64) *refusal {
	if d.PeekKind() != '{' {
		if _, err := d.ReadValue(); err != nil {
			return brokenJSON()
		}
		return restDataError("a record must be a JSON object")
	}
	obj, err := d.ReadValue()
	if err != nil {
		return brokenJSON()
	}
	if int64(len(obj)) > maxSize {
		return refusedStreamTooLarge
	}
	// The record is read again from its own bytes: a refusal of one of
	// its fields leaves the stream at the next record.
	rd := jsontext.NewDecoder(bytes.NewReader(obj), jsontext.AllowDuplicateNames(true))
	rd.ReadToken() // {
	for rd.PeekKind() == '"' {
		tok, _ := rd.ReadToken()
		field := tok.String()
		var ref *refusal
		switch field {
		case "partition_id":
			ref = readPartition(rd, rec, "partition_id")
		case "headers":
			ref = readV3Headers(rd, rec)
		case "key":
			rec.Key, shape.keyType, shape.keySize, ref = readV3Data(rd, "key")
		case "value":
			rec.Value, shape.valueType, shape.valueSize, ref = readV3Data(rd, "value")
		case "timestamp":
			ref = readTimestamp(rd, rec)
		default:
			ref = restDataError("Unrecognized field %q", strings.Clone(field))
		}
		if ref != nil {
			return ref
		}
	}
	return nil
}

// brokenJSON refuses a body whose JSON is broken: a stream ends there.
func brokenJSON() *refusal {
	ref := *refusedInvalidJSON
	ref.endsStream = true
	return &ref
}

// readPartition reads a partition number, or null.
func readPartition(d *jsontext.Decoder, rec *record, field string) *refusal {
	tok, _ := d.ReadToken()
	switch tok.Kind() {
	case 'n':
		return nil
	case '0':
		n, err := tok.Int()
		if errors.Is(err, strconv.ErrRange) {
			return refusedPartitionNotFound // a whole number beyond int64
		}
		if err != nil {
			return restDataError("%s must be a whole number", field)
		}
		// Kafka's partitions are numbered in an int32.
		if n < 0 || n > math.MaxInt32 {
			return refusedPartitionNotFound
		}
		rec.Partition = int(n)
		return nil
	}
	return restDataError("%s must be a number", field)
}

// readV3Headers reads [{"name":"...","value":<base64>|null}, ...].
func readV3Headers(d *jsontext.Decoder, rec *record) *refusal {
	if d.PeekKind() == 'n' {
		d.ReadToken()
		return nil
	}
	if d.PeekKind() != '[' {
		return restDataError("headers must be an array of {\"name\",\"value\"}")
	}
	d.ReadToken()
	for d.PeekKind() == '{' {
		d.ReadToken()
		var hd producer.Header
		named := false
		for d.PeekKind() == '"' {
			tok, _ := d.ReadToken()
			switch field := tok.String(); field {
			case "name":
				v, _ := d.ReadToken()
				if v.Kind() != '"' {
					return restDataError("a header's name must be a string")
				}
				hd.Key, named = v.String(), true
			case "value":
				v, _ := d.ReadToken()
				switch v.Kind() {
				case 'n':
				case '"':
					b, err := base64.StdEncoding.DecodeString(v.String())
					if err != nil {
						return restDataError("header value %q is not a valid base64 string.", v.String())
					}
					hd.Value = b
				default:
					return restDataError("a header's value must be a base64 string")
				}
			default:
				return restDataError("Unrecognized field %q in a header", strings.Clone(field))
			}
		}
		d.ReadToken() // }
		if !named {
			return restDataError("a header needs a name")
		}
		rec.Headers = append(rec.Headers, hd)
	}
	if d.PeekKind() != ']' {
		return restDataError("headers must be an array of {\"name\",\"value\"}")
	}
	d.ReadToken()
	return nil
}

// readV3Data reads a key or value, {"type":"BINARY"|"JSON"|"STRING",
// "data":...}, into its bytes (nil for null data), and its type and size
// for the answer. Absent, or null, there is none: type "".
func readV3Data(d *jsontext.Decoder, field string) ([]byte, string, int, *refusal) {
	if d.PeekKind() == 'n' {
		d.ReadToken()
		return nil, "", 0, nil
	}
	if d.PeekKind() != '{' {
		return nil, "", 0, restDataError("%s must be an object {\"type\",\"data\"}", field)
	}
	d.ReadToken()
	typ := ""
	var data jsontext.Value
	for d.PeekKind() == '"' {
		tok, _ := d.ReadToken()
		switch name := tok.String(); name {
		case "type":
			v, _ := d.ReadToken()
			if v.Kind() != '"' {
				return nil, "", 0, restDataError("%s type must be a string", field)
			}
			typ = v.String()
		case "data":
			v, _ := d.ReadValue()
			data = bytes.Clone(v)
		case "subject", "subject_name_strategy", "schema_id", "schema_version", "schema":
			return nil, "", 0, refusedSchemaRegistry
		default:
			return nil, "", 0, restDataError("Unrecognized field %q in %s", strings.Clone(name), field)
		}
	}
	d.ReadToken() // }
	null := data == nil || data.Kind() == 'n'
	var b []byte
	switch typ {
	case "":
		if !null {
			return nil, "", 0, refusedSchemaRegistry
		}
		return nil, "BINARY", -1, nil
	case "AVRO", "JSONSCHEMA", "PROTOBUF":
		return nil, "", 0, refusedSchemaRegistry
	case "BINARY":
		if !null {
			if data.Kind() != '"' {
				return nil, "", 0, restDataError("data=%s is not a base64 string.", data)
			}
			var err error
			if b, err = base64.StdEncoding.DecodeString(unquote(data)); err != nil {
				return nil, "", 0, restDataError("data=%s is not a valid base64 string.", data)
			}
		}
	case "STRING":
		if !null {
			if data.Kind() != '"' {
				return nil, "", 0, restDataError("data=%s is not a string.", data)
			}
			b = []byte(unquote(data))
		}
	case "JSON":
		if !null {
			// Stored compact, as the REST Proxy stores it.
			if err := data.Compact(); err != nil {
				return nil, "", 0, refusedInvalidJSON
			}
			b = data
		}
	default:
		return nil, "", 0, restDataError("type=%s is not one of BINARY, JSON, STRING.", typ)
	}
	if null {
		return nil, typ, -1, nil
	}
	return b, typ, len(b), nil
}

// unquote is the text of a JSON string value.
func unquote(v jsontext.Value) string {
	b, _ := jsontext.AppendUnquote(nil, v)
	return string(b)
}

// The timestamps a record may carry. Kafka's are milliseconds since
// 1970: a negative one means none, and Kafka's clients refuse to send
// any other; and the answer gives the timestamp back as an RFC 3339
// instant in UTC, whose year has four digits (an offset can push a time
// written in year 9999 past it).
var (
	minTimestamp = time.Unix(0, 0)
	maxTimestamp = time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC)
)

// readTimestamp reads an ISO 8601 timestamp, or null, as the record's.
func readTimestamp(d *jsontext.Decoder, rec *record) *refusal {
	tok, _ := d.ReadToken()
	switch tok.Kind() {
	case 'n':
		return nil
	case '"':
		t, err := time.Parse(time.RFC3339Nano, tok.String())
		if err != nil {
			return restDataError("timestamp %q is not an ISO 8601 date and time, such as 2021-02-05T19:14:42Z", tok.String())
		}
		if t.Before(minTimestamp) || t.After(maxTimestamp) {
			return restDataError("timestamp %q is outside the times a Kafka record can carry, 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z", tok.String())
		}
		rec.Time = t
		return nil
	}
	return restDataError("timestamp must be a string, such as 2021-02-05T19:14:42Z")
}

// parseV2 reads v2's {"records":[{"key","value","partition"}, ...]}: keys
// and values as embedded JSON (stored as their JSON text, as the REST
// Proxy stores them) or, binary, base64. A record without a partition
// takes the path's.
func (h *Handler) parseV2(api *restRoute, d *jsontext.Decoder, body []byte, now time.Time) ([]*record, *refusal) {
	if d.PeekKind() != '{' {
		if _, err := d.ReadValue(); err != nil {
			return nil, refusedInvalidJSON
		}
		return nil, restDataError(`the body must be an object {"records":[...]}`)
	}
	d.ReadToken()
	// The records are held in one slice, one allocation for all, as in
	// records mode.
	var block []record
	seen := false
	v2 := v2Reader{d: d, body: body, binary: api.binary}
	for d.PeekKind() == '"' {
		tok, _ := d.ReadToken()
		switch name := tok.String(); name {
		case "records":
			if seen {
				return nil, restDataError(`"records" is given twice`)
			}
			seen = true
			if d.PeekKind() != '[' {
				return nil, restDataError(`"records" must be an array`)
			}
			d.ReadToken()
			block = make([]record, 0, min(bytes.Count(body, []byte(`"value"`)), h.MaxRecords))
			for d.PeekKind() != ']' && d.PeekKind() != 0 {
				if len(block) == h.MaxRecords {
					return nil, badRequest(rejectRecords, "records: more than max_records (%d)", h.MaxRecords)
				}
				block = append(block, producer.MakeRecord(nil, now, time.Duration(h.Timeout)))
				rec := &block[len(block)-1]
				rec.Partition = api.partition
				if ref := v2.record(rec); ref != nil {
					return nil, ref
				}
			}
			d.ReadToken() // ]
		case "key_schema", "key_schema_id", "value_schema", "value_schema_id":
			// Schemas of the Schema Registry formats; json and binary
			// have none, and the REST Proxy ignores them there.
			if _, err := d.ReadValue(); err != nil {
				return nil, refusedInvalidJSON
			}
		default:
			return nil, restDataError("Unrecognized field %q", strings.Clone(name))
		}
	}
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '}' {
		return nil, refusedInvalidJSON
	}
	if _, err := d.ReadToken(); err != io.EOF {
		return nil, refusedInvalidJSON
	}
	if len(block) == 0 {
		return nil, refuse(rejectRecords, http.StatusUnprocessableEntity, "records may not be empty")
	}
	recs := make([]*record, len(block))
	for i := range block {
		recs[i] = &block[i]
	}
	return recs, nil
}

// v2Reader reads the records of a v2 body.
type v2Reader struct {
	d      *jsontext.Decoder
	body   []byte
	binary bool // base64 keys and values, not embedded JSON
	// compact holds the compacted keys and values of the request.
	compact []byte
}

// record reads one record of v2's "records" into rec.
func (v2 *v2Reader) record(rec *record) *refusal {
	d := v2.d
	if d.PeekKind() != '{' {
		if _, err := d.ReadValue(); err != nil {
			return refusedInvalidJSON
		}
		return restDataError("a record must be a JSON object")
	}
	d.ReadToken()
	for d.PeekKind() == '"' {
		tok, _ := d.ReadToken()
		var ref *refusal
		switch name := tok.String(); name {
		case "key":
			rec.Key, ref = v2.data()
		case "value":
			rec.Value, ref = v2.data()
		case "partition":
			ref = readPartition(d, rec, "partition")
		default:
			ref = restDataError("Unrecognized field %q", strings.Clone(name))
		}
		if ref != nil {
			return ref
		}
	}
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '}' {
		return refusedInvalidJSON
	}
	return nil
}

// data reads a v2 key or value: nil for null, else the embedded JSON's
// compact text (a slice of the body when it was sent compact), or a
// base64 string's bytes.
func (v2 *v2Reader) data() ([]byte, *refusal) {
	v, err := v2.d.ReadValue()
	if err != nil {
		return nil, refusedInvalidJSON
	}
	if v.Kind() == 'n' {
		return nil, nil
	}
	if v2.binary {
		if v.Kind() != '"' {
			return nil, restDataError("data=%s is not a base64 string.", v)
		}
		b, err := base64.StdEncoding.DecodeString(unquote(v))
		if err != nil {
			return nil, restDataError("data=%s is not a valid base64 string.", v)
		}
		return b, nil
	}
	if !bytes.ContainsAny(v, " \t\r\n") {
		end := int(v2.d.InputOffset())
		return v2.body[end-len(v) : end], nil
	}
	// Compacted into one buffer for the request: the values are no
	// longer than the body, so it never grows.
	if v2.compact == nil {
		v2.compact = make([]byte, 0, len(v2.body))
	}
	start := len(v2.compact)
	b := jsontext.Value(append(v2.compact, v...)[start:])
	if err := b.Compact(); err != nil {
		return nil, refusedInvalidJSON
	}
	v2.compact = v2.compact[:start+len(b)]
	return b[:len(b):len(b)], nil
}
