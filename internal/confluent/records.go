package confluent

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
	"github.com/queuepublish/caddy-queue-publish/internal/envelope"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// Options are the settings that bound a request's records.
type Options struct {
	MaxRecords int           // the most records in a request of known length
	MaxSize    int64         // the most bytes of one v3 record
	Timeout    time.Duration // from a record's time to its deadline
}

// header is a record header: the one place that builds one.
func header(name string, value []byte) producer.Header {
	return producer.Header{Key: name, Value: value}
}

// ParseBody turns the body of a request of known length into its
// records, their times now: v2's {"records":[...]}, or v3's record
// objects, one or several concatenated, each one's Shape appended to
// route.Shapes. Any malformed record refuses the whole request.
func ParseBody(route *Route, body []byte, now time.Time, o Options) ([]*producer.Record, *Error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, ErrEmpty
	}
	if !route.V3 {
		return parseV2(route, body, now, o)
	}
	d := jsontext.NewDecoder(bytes.NewReader(body), jsontext.AllowDuplicateNames(true))
	var recs []*producer.Record
	for d.PeekKind() != 0 {
		if len(recs) == o.MaxRecords {
			return nil, badRequest(ReasonRecords, "more than max_records (%d) records in one request; stream them (Transfer-Encoding: chunked) or send fewer", o.MaxRecords)
		}
		rec := producer.NewRecord(nil, now, o.Timeout)
		var shape Shape
		if err := ReadV3Record(d, rec, &shape, o.MaxSize); err != nil {
			return nil, err
		}
		recs = append(recs, rec)
		route.Shapes = append(route.Shapes, shape)
	}
	if _, err := d.ReadToken(); err != io.EOF {
		return nil, ErrInvalidJSON
	}
	return recs, nil
}

// ReadV3Record reads one record object of a v3 request from d into rec:
// {"partition_id", "headers":[{"name","value"}], "key":{"type","data"},
// "value":{...}, "timestamp"}, each optional, and its key's and value's
// shape. A syntax error ends the stream it came from (ErrBrokenJSON); any
// other refusal leaves d after the record. A record longer than maxSize
// is refused, and ends a stream too (ErrRecordTooLarge).
func ReadV3Record(d *jsontext.Decoder, rec *producer.Record, shape *Shape, maxSize int64) *Error {
	if d.PeekKind() != '{' {
		if _, err := d.ReadValue(); err != nil {
			return ErrBrokenJSON
		}
		return dataError("a record must be a JSON object")
	}
	obj, err := d.ReadValue()
	if err != nil {
		return ErrBrokenJSON
	}
	if int64(len(obj)) > maxSize {
		return ErrRecordTooLarge
	}
	// The record is read again from its own bytes: a refusal of one of
	// its fields leaves the stream at the next record.
	rd := jsontext.NewDecoder(bytes.NewReader(obj), jsontext.AllowDuplicateNames(true))
	rd.ReadToken() // {
	for rd.PeekKind() == '"' {
		tok, _ := rd.ReadToken()
		field := tok.String()
		var err *Error
		switch field {
		case "partition_id":
			err = readPartition(rd, rec, "partition_id")
		case "headers":
			err = readV3Headers(rd, rec)
		case "key":
			rec.Key, shape.KeyType, shape.KeySize, err = readV3Data(rd, "key")
		case "value":
			rec.Value, shape.ValueType, shape.ValueSize, err = readV3Data(rd, "value")
		case "timestamp":
			err = readTimestamp(rd, rec)
		default:
			err = dataError("Unrecognized field %q", strings.Clone(field))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// readPartition reads a partition number, or null.
func readPartition(d *jsontext.Decoder, rec *producer.Record, field string) *Error {
	tok, _ := d.ReadToken()
	switch tok.Kind() {
	case 'n':
		return nil
	case '0':
		n, err := tok.Int()
		if errors.Is(err, strconv.ErrRange) {
			return ErrPartitionNotFound // a whole number beyond int64
		}
		if err != nil {
			return dataError("%s must be a whole number", field)
		}
		// Kafka's partitions are numbered in an int32.
		if n < 0 || n > math.MaxInt32 {
			return ErrPartitionNotFound
		}
		rec.Partition = int(n)
		return nil
	}
	return dataError("%s must be a number", field)
}

// readV3Headers reads [{"name":"...","value":<base64>|null}, ...].
func readV3Headers(d *jsontext.Decoder, rec *producer.Record) *Error {
	if d.PeekKind() == 'n' {
		d.ReadToken()
		return nil
	}
	if d.PeekKind() != '[' {
		return dataError("headers must be an array of {\"name\",\"value\"}")
	}
	d.ReadToken()
	for d.PeekKind() == '{' {
		d.ReadToken()
		var name string
		var value []byte
		named := false
		for d.PeekKind() == '"' {
			tok, _ := d.ReadToken()
			switch field := tok.String(); field {
			case "name":
				v, _ := d.ReadToken()
				if v.Kind() != '"' {
					return dataError("a header's name must be a string")
				}
				name, named = v.String(), true
			case "value":
				v, _ := d.ReadToken()
				switch v.Kind() {
				case 'n':
				case '"':
					b, err := base64.StdEncoding.DecodeString(v.String())
					if err != nil {
						return dataError("header value %q is not a valid base64 string.", v.String())
					}
					value = b
				default:
					return dataError("a header's value must be a base64 string")
				}
			default:
				return dataError("Unrecognized field %q in a header", strings.Clone(field))
			}
		}
		d.ReadToken() // }
		if !named {
			return dataError("a header needs a name")
		}
		rec.Headers = append(rec.Headers, header(name, value))
	}
	if d.PeekKind() != ']' {
		return dataError("headers must be an array of {\"name\",\"value\"}")
	}
	d.ReadToken()
	return nil
}

// readV3Data reads a key or value, {"type":"BINARY"|"JSON"|"STRING",
// "data":...}, into its bytes (nil for null data), and its type and size
// for the answer. Absent, or null, there is none: type "".
func readV3Data(d *jsontext.Decoder, field string) ([]byte, string, int, *Error) {
	if d.PeekKind() == 'n' {
		d.ReadToken()
		return nil, "", 0, nil
	}
	if d.PeekKind() != '{' {
		return nil, "", 0, dataError("%s must be an object {\"type\",\"data\"}", field)
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
				return nil, "", 0, dataError("%s type must be a string", field)
			}
			typ = v.String()
		case "data":
			v, _ := d.ReadValue()
			data = bytes.Clone(v)
		case "subject", "subject_name_strategy", "schema_id", "schema_version", "schema":
			return nil, "", 0, ErrSchemaRegistry
		default:
			return nil, "", 0, dataError("Unrecognized field %q in %s", strings.Clone(name), field)
		}
	}
	d.ReadToken() // }
	null := data == nil || data.Kind() == 'n'
	var b []byte
	switch typ {
	case "":
		if !null {
			return nil, "", 0, ErrSchemaRegistry
		}
		return nil, "BINARY", -1, nil
	case "AVRO", "JSONSCHEMA", "PROTOBUF":
		return nil, "", 0, ErrSchemaRegistry
	case "BINARY":
		if !null {
			if data.Kind() != '"' {
				return nil, "", 0, dataError("data=%s is not a base64 string.", data)
			}
			var err error
			if b, err = base64.StdEncoding.DecodeString(unquote(data)); err != nil {
				return nil, "", 0, dataError("data=%s is not a valid base64 string.", data)
			}
		}
	case "STRING":
		if !null {
			if data.Kind() != '"' {
				return nil, "", 0, dataError("data=%s is not a string.", data)
			}
			b = []byte(unquote(data))
		}
	case "JSON":
		if !null {
			// Stored compact, as the REST Proxy stores it.
			if err := data.Compact(); err != nil {
				return nil, "", 0, ErrInvalidJSON
			}
			b = data
		}
	default:
		return nil, "", 0, dataError("type=%s is not one of BINARY, JSON, STRING.", typ)
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
func readTimestamp(d *jsontext.Decoder, rec *producer.Record) *Error {
	tok, _ := d.ReadToken()
	switch tok.Kind() {
	case 'n':
		return nil
	case '"':
		t, err := time.Parse(time.RFC3339Nano, tok.String())
		if err != nil {
			return dataError("timestamp %q is not an ISO 8601 date and time, such as 2021-02-05T19:14:42Z", tok.String())
		}
		if t.Before(minTimestamp) || t.After(maxTimestamp) {
			return dataError("timestamp %q is outside the times a Kafka record can carry, 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z", tok.String())
		}
		rec.Time = t
		return nil
	}
	return dataError("timestamp must be a string, such as 2021-02-05T19:14:42Z")
}

// parseV2 reads v2's {"records":[{"key","value","partition"}, ...]}: keys
// and values as embedded JSON (stored as their JSON text, as the REST
// Proxy stores them) or, binary, base64. A record without a partition
// takes the path's.
func parseV2(route *Route, body []byte, now time.Time, o Options) ([]*producer.Record, *Error) {
	v2 := v2Reader{body: body, binary: route.Binary}
	recs, err := envelope.Parse(body, envelope.Options{MaxRecords: o.MaxRecords, Once: true, Now: now, Timeout: o.Timeout},
		func(d *jsontext.Decoder, _ int, rec *producer.Record) error {
			rec.Partition = route.Partition
			if err := v2.record(d, rec); err != nil {
				return err
			}
			return nil
		},
		func(d *jsontext.Decoder, name string) error {
			switch name {
			case "key_schema", "key_schema_id", "value_schema", "value_schema_id":
				// Schemas of the Schema Registry formats; json and
				// binary have none, and the REST Proxy ignores them
				// there.
				if _, err := d.ReadValue(); err != nil {
					return envelope.ErrInvalid
				}
				return nil
			}
			return dataError("Unrecognized field %q", name)
		})
	if err != nil {
		return nil, v2Error(err, o.MaxRecords)
	}
	return recs, nil
}

// v2Error words an error of v2's envelope.
func v2Error(err error, maxRecords int) *Error {
	switch err := err.(type) {
	case *Error:
		return err
	case *envelope.ShapeError:
		switch err.Problem {
		case envelope.NotObject:
			return dataError(`the body must be an object {"records":[...]}`)
		case envelope.Twice:
			return dataError(`"records" is given twice`)
		case envelope.NotArray:
			return dataError(`"records" must be an array`)
		case envelope.TooMany:
			return badRequest(ReasonRecords, "records: more than max_records (%d)", maxRecords)
		case envelope.RecordNotObject:
			return dataError("a record must be a JSON object")
		case envelope.Missing, envelope.Empty:
			return refuse(ReasonRecords, http.StatusUnprocessableEntity, "records may not be empty")
		}
	}
	return ErrInvalidJSON
}

// v2Reader reads the records of a v2 body.
type v2Reader struct {
	body   []byte
	binary bool // base64 keys and values, not embedded JSON
	// compact holds the compacted keys and values of the request.
	compact []byte
}

// record reads one record object of v2's "records" from d into rec.
func (v2 *v2Reader) record(d *jsontext.Decoder, rec *producer.Record) *Error {
	d.ReadToken() // {
	for d.PeekKind() == '"' {
		tok, _ := d.ReadToken()
		var err *Error
		switch name := tok.String(); name {
		case "key":
			rec.Key, err = v2.data(d)
		case "value":
			rec.Value, err = v2.data(d)
		case "partition":
			err = readPartition(d, rec, "partition")
		default:
			err = dataError("Unrecognized field %q", strings.Clone(name))
		}
		if err != nil {
			return err
		}
	}
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '}' {
		return ErrInvalidJSON
	}
	return nil
}

// data reads a v2 key or value: nil for null, else the embedded JSON's
// compact text (a slice of the body when it was sent compact), or a
// base64 string's bytes.
func (v2 *v2Reader) data(d *jsontext.Decoder) ([]byte, *Error) {
	v, err := d.ReadValue()
	if err != nil {
		return nil, ErrInvalidJSON
	}
	if v.Kind() == 'n' {
		return nil, nil
	}
	if v2.binary {
		if v.Kind() != '"' {
			return nil, dataError("data=%s is not a base64 string.", v)
		}
		b, err := base64.StdEncoding.DecodeString(unquote(v))
		if err != nil {
			return nil, dataError("data=%s is not a valid base64 string.", v)
		}
		return b, nil
	}
	if !bytes.ContainsAny(v, " \t\r\n") {
		end := int(d.InputOffset())
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
		return nil, ErrInvalidJSON
	}
	v2.compact = v2.compact[:start+len(b)]
	return b[:len(b):len(b)], nil
}
