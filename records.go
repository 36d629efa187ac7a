package queuepublish

import (
	"bytes"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-json-experiment/json/jsontext"
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
func (h *Handler) toRecords(x *exchange, r *http.Request, body []byte, now time.Time) ([]*record, *refusal) {
	recs, ref := h.mode.records(h, x, r, body, now)
	if ref != nil {
		return nil, ref
	}
	if h.schema != nil {
		if ref := h.checkSchema(recs); ref != nil {
			return nil, ref
		}
	}
	return recs, nil
}

// bodyRecord is the record of a request in body mode: the body unchanged,
// with the key and headers the config takes from the request.
func (h *Handler) bodyRecord(r *http.Request, body []byte, now time.Time) *record {
	rec := newRecord(body, now, time.Duration(h.Timeout))
	if h.Key == "" && len(h.headerNames) == 0 {
		return rec
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
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
//
// It walks the tokens with the jsontext package of encoding/json/v2's
// prototype: encoding/json (a Decoder for the envelope, then one per
// record to name the record at fault) took most of Caddy's CPU per record
// in records mode under load.
func (h *Handler) parseEnvelope(body []byte, now time.Time) ([]*record, *refusal) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, refusedInvalidJSON
	}
	p := envelopeParser{d: jsontext.NewDecoder(bytes.NewReader(body), jsontext.AllowDuplicateNames(true)), body: body}
	recs, cerr := p.parse(h, now)
	if cerr == nil {
		if _, err := p.d.ReadToken(); err != io.EOF {
			cerr = refusedInvalidJSON // something after the envelope
		}
	}
	if p.syntax {
		return nil, refusedInvalidJSON
	}
	return recs, cerr
}

// envelopeParser reads a records-mode body token by token.
type envelopeParser struct {
	d      *jsontext.Decoder
	body   []byte
	syntax bool // the body is not valid JSON
}

const envelopeShape = `body must be an object {"records":[...]}: `

func (p *envelopeParser) parse(h *Handler, now time.Time) ([]*record, *refusal) {
	if k := p.d.PeekKind(); k != '{' {
		return nil, p.fail(envelopeShape + "not a JSON object")
	}
	p.token()
	// The records are held in one slice, one allocation for all: about as
	// many as the body has "value" fields, never more than max_records.
	block := make([]record, 0, min(bytes.Count(p.body, []byte(`"value"`)), h.MaxRecords))
	seen := false
	for !p.syntax && p.d.PeekKind() == '"' {
		name := p.token().String()
		if name != "records" {
			// A copy, so that name itself stays off the heap.
			return nil, p.fail(envelopeShape+"unknown field %q", strings.Clone(name))
		}
		if k := p.d.PeekKind(); k != '[' {
			return nil, p.fail(envelopeShape+`"records" has the wrong type (%s)`, kindName(k))
		}
		p.token()
		seen = true
		for p.d.PeekKind() != ']' && !p.syntax {
			if len(block) == h.MaxRecords {
				return nil, p.fail(`"records" holds more than max_records (%d) records`, h.MaxRecords)
			}
			block = append(block, producer.MakeRecord(nil, now, time.Duration(h.Timeout)))
			if cerr := p.record(len(block)-1, &block[len(block)-1]); cerr != nil {
				return nil, cerr
			}
		}
		p.token() // ]
	}
	if p.token().Kind() != '}' {
		return nil, p.fail("")
	}
	switch {
	case !seen:
		return nil, p.fail(`body has no "records" list`)
	case len(block) == 0:
		return nil, p.fail(`"records" is empty`)
	}
	recs := make([]*record, len(block))
	for i := range block {
		recs[i] = &block[i]
	}
	return recs, nil
}

// record reads the i-th record into rec.
func (p *envelopeParser) record(i int, rec *record) *refusal {
	if k := p.d.PeekKind(); k != '{' {
		return p.fail("record %d: not a JSON object", i)
	}
	p.token()
	for !p.syntax && p.d.PeekKind() == '"' {
		field := p.token().String()
		kind := p.d.PeekKind()
		switch field {
		case "value":
			v, err := p.d.ReadValue()
			if err != nil {
				return p.fail("")
			}
			end := int(p.d.InputOffset())
			rec.Value = p.body[end-len(v) : end]
		case "key":
			switch kind {
			case '"':
				rec.Key = []byte(p.token().String())
			case 'n':
				p.token()
			default:
				return p.fail(`record %d: "key" has the wrong type (%s)`, i, kindName(kind))
			}
		case "partition":
			if kind != '0' {
				return p.fail(`record %d: "partition" has the wrong type (%s)`, i, kindName(kind))
			}
			tok := p.token()
			if p.syntax {
				return refusedInvalidJSON
			}
			n, err := tok.Int()
			switch {
			case err != nil:
				return p.fail(`record %d: "partition" must be a whole number`, i)
			case n < 0:
				return p.fail(`record %d: "partition" must not be negative`, i)
			}
			rec.Partition = int(min(n, math.MaxInt32))
		case "headers":
			if kind != '{' {
				return p.fail(`record %d: "headers" has the wrong type (%s)`, i, kindName(kind))
			}
			p.token()
			for !p.syntax && p.d.PeekKind() == '"' {
				name := p.token().String()
				if p.d.PeekKind() != '"' {
					return p.fail("record %d: header %q is not a string", i, name)
				}
				rec.Headers = append(rec.Headers, producer.Header{Key: name, Value: []byte(p.token().String())})
			}
			p.token() // }
		default:
			// A copy, so that field itself stays off the heap.
			return p.fail("record %d: unknown field %q", i, strings.Clone(field))
		}
	}
	if p.token().Kind() != '}' {
		return p.fail("")
	}
	if rec.Value == nil {
		return p.fail(`record %d: no "value"`, i)
	}
	return nil
}

// token reads the next token; a syntax error marks the body invalid.
func (p *envelopeParser) token() jsontext.Token {
	tok, err := p.d.ReadToken()
	if err != nil {
		p.syntax = true
	}
	return tok
}

// fail is a 400 naming what is wrong, unless the body is not valid JSON
// to begin with: then that is what the client is told.
func (p *envelopeParser) fail(format string, args ...any) *refusal {
	if !p.syntax {
		// Is the rest of the body valid JSON? A shape error in an
		// invalid body is reported as invalid JSON.
		for {
			if _, err := p.d.ReadToken(); err != nil {
				p.syntax = err != io.EOF
				break
			}
		}
	}
	if p.syntax || format == "" {
		return refusedInvalidJSON
	}
	return badRequest(rejectRecords, format, args...)
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
