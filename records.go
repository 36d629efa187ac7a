package queuepublish

import (
	"math"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/queuepublish/caddy-queue-publish/internal/envelope"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// idempotencyHeader is the record header that carries a request's
// Idempotency-Key.
const idempotencyHeader = "idempotency-key"

// addKeyHeader stores a request's Idempotency-Key as a header of each of
// its records, all sharing one copy of it.
func addKeyHeader(recs []*record, key string) {
	header := producer.Header{Key: idempotencyHeader, Value: []byte(key)}
	for _, rec := range recs {
		rec.Headers = append(rec.Headers, header)
	}
}

// toRecords turns a request's body into its records, and checks them
// against the schema.
func (h *Handler) toRecords(x *exchange) ([]*record, *rejection) {
	recs, ref := h.mode.records(h, x)
	if ref != nil {
		return nil, ref
	}
	if h.schema != nil {
		if ref := h.checkSchema(recs); ref != nil {
			return nil, ref
		}
	}
	h.stampIdentity(&x.req.identity, recs)
	return recs, nil
}

// bodyRecord is the record of a request in body mode: the body unchanged,
// with the key and headers the config takes from the request.
func (h *Handler) bodyRecord(req *request) *record {
	rec := newRecord(req.body, req.start, time.Duration(h.Timeout))
	if h.Key == "" && len(h.headerNames) == 0 {
		return rec
	}
	repl := req.repl
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	if h.Key != "" {
		if key := repl.ReplaceAll(h.Key, ""); key != "" {
			rec.Key = []byte(key)
		}
	}
	for _, name := range h.headerNames {
		if v := repl.ReplaceAll(h.Headers[name], ""); v != "" {
			rec.Headers = append(rec.Headers, producer.Header{Key: name, Value: []byte(v)})
		}
	}
	return rec
}

// parseEnvelope turns a records-mode body, {"records":[{"value":...,
// "key":"...","headers":{"name":"value"},"partition":N}, ...]}, into
// records. A value is kept as the exact JSON text the client sent: a slice
// of the body. Any malformed record fails the whole request, naming what
// is wrong; a body that is not JSON at all is reported as such.
func (h *Handler) parseEnvelope(body []byte, now time.Time) ([]*record, *rejection) {
	recs, err := envelope.Parse(body, envelope.Options{MaxRecords: h.MaxRecords, Now: now, Timeout: time.Duration(h.Timeout)},
		func(d *jsontext.Decoder, i int, rec *record) error {
			return readEnvelopeRecord(d, body, i, rec)
		},
		func(_ *jsontext.Decoder, name string) error {
			return badRequest(rejectRecords, envelopeShape+"unknown field %q", name)
		})
	if err != nil {
		return nil, envelopeRefusal(err, h.MaxRecords)
	}
	return recs, nil
}

const envelopeShape = `body must be an object {"records":[...]}: `

// envelopeRefusal words an error of the envelope for records mode.
func envelopeRefusal(err error, maxRecords int) *rejection {
	switch err := err.(type) {
	case *rejection:
		return err
	case *envelope.ShapeError:
		switch err.Problem {
		case envelope.NotObject:
			return badRequest(rejectRecords, envelopeShape+"not a JSON object")
		case envelope.NotArray:
			return badRequest(rejectRecords, envelopeShape+`"records" has the wrong type (%s)`, kindName(err.Found))
		case envelope.TooMany:
			return badRequest(rejectRecords, `"records" holds more than max_records (%d) records`, maxRecords)
		case envelope.RecordNotObject:
			return badRequest(rejectRecords, "record %d: not a JSON object", err.Index)
		case envelope.Missing:
			return badRequest(rejectRecords, `body has no "records" list`)
		case envelope.Empty:
			return badRequest(rejectRecords, `"records" is empty`)
		}
	}
	return rejectedInvalidJSON
}

// readEnvelopeRecord reads the i-th record of a records-mode body into
// rec.
func readEnvelopeRecord(d *jsontext.Decoder, body []byte, i int, rec *record) error {
	d.ReadToken() // {
	for d.PeekKind() == '"' {
		tok, err := d.ReadToken()
		if err != nil {
			return envelope.ErrInvalid
		}
		field := tok.String()
		kind := d.PeekKind()
		switch field {
		case "value":
			v, err := d.ReadValue()
			if err != nil {
				return envelope.ErrInvalid
			}
			end := int(d.InputOffset())
			rec.Value = body[end-len(v) : end]
		case "key":
			switch kind {
			case '"':
				tok, err := d.ReadToken()
				if err != nil {
					return envelope.ErrInvalid
				}
				rec.Key = []byte(tok.String())
			case 'n':
				d.ReadToken()
			default:
				return badRequest(rejectRecords, `record %d: "key" has the wrong type (%s)`, i, kindName(kind))
			}
		case "partition":
			if kind != '0' {
				return badRequest(rejectRecords, `record %d: "partition" has the wrong type (%s)`, i, kindName(kind))
			}
			tok, err := d.ReadToken()
			if err != nil {
				return envelope.ErrInvalid
			}
			n, err := tok.Int()
			switch {
			case err != nil:
				return badRequest(rejectRecords, `record %d: "partition" must be a whole number`, i)
			case n < 0:
				return badRequest(rejectRecords, `record %d: "partition" must not be negative`, i)
			}
			rec.Partition = int(min(n, math.MaxInt32))
		case "headers":
			if kind != '{' {
				return badRequest(rejectRecords, `record %d: "headers" has the wrong type (%s)`, i, kindName(kind))
			}
			d.ReadToken()
			for d.PeekKind() == '"' {
				tok, err := d.ReadToken()
				if err != nil {
					return envelope.ErrInvalid
				}
				name := tok.String()
				if d.PeekKind() != '"' {
					return badRequest(rejectRecords, "record %d: header %q is not a string", i, name)
				}
				tok, err = d.ReadToken()
				if err != nil {
					return envelope.ErrInvalid
				}
				rec.Headers = append(rec.Headers, producer.Header{Key: name, Value: []byte(tok.String())})
			}
			d.ReadToken() // }
		default:
			// A copy, so that field itself stays off the heap.
			return badRequest(rejectRecords, "record %d: unknown field %q", i, strings.Clone(field))
		}
	}
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '}' {
		return envelope.ErrInvalid
	}
	if rec.Value == nil {
		return badRequest(rejectRecords, `record %d: no "value"`, i)
	}
	return nil
}

func kindName(k jsontext.Kind) string {
	switch k {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case '0':
		return "number"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "invalid"
}
