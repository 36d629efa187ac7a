// Package envelope reads a body of the shape {"records":[...]}: records
// mode's envelope and the body of Confluent REST Proxy v2's produce API.
// It walks the envelope and holds the records; the caller reads each
// record, and each other member of the envelope, and words the errors.
//
// One error policy for every caller: a body that is not valid JSON
// (exactly one JSON value, in UTF-8, duplicate names allowed) is
// ErrInvalid, whatever error was met first; otherwise the error is the
// first one met, the envelope's own (a *ShapeError) or the caller's.
//
// It walks the tokens with the jsontext package of encoding/json/v2's
// prototype: encoding/json (a Decoder for the envelope, then one per
// record to name the record at fault) took most of Caddy's CPU per record
// in records mode under load.
package envelope

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// ErrInvalid is the error of a body that is not valid JSON.
var ErrInvalid = errors.New("not valid JSON")

// A Problem is how a body misses the envelope's shape.
type Problem uint8

const (
	NotObject       Problem = iota + 1 // the body is not an object
	NotArray                           // "records" is not an array; Found says what it is
	Twice                              // "records" is given twice, and Options.Once
	TooMany                            // more than Options.MaxRecords records
	RecordNotObject                    // the record at Index is not an object; Found says what it is
	Missing                            // the envelope has no "records"
	Empty                              // "records" is empty
)

// A ShapeError says how a body of valid JSON misses the envelope's shape.
type ShapeError struct {
	Problem Problem
	Index   int           // RecordNotObject: the record's position
	Found   jsontext.Kind // NotArray, RecordNotObject: what is there instead
}

func (e *ShapeError) Error() string {
	return fmt.Sprintf("envelope: problem %d (record %d, found %v)", e.Problem, e.Index, e.Found)
}

// Options are a caller's limits and its records' times.
type Options struct {
	// MaxRecords is the most records a body may hold.
	MaxRecords int
	// Once: "records" may be given once only; otherwise the records of
	// each are read, one after the other.
	Once bool
	// Now and Timeout make each record: producer.MakeRecord(nil, Now,
	// Timeout).
	Now     time.Time
	Timeout time.Duration
}

// RecordReader reads the record object at d into rec; d is before its
// '{'. i is the record's position in the body.
type RecordReader func(d *jsontext.Decoder, i int, rec *producer.Record) error

// FieldReader reads the value of the envelope's member name, other than
// "records", or says why it is refused.
type FieldReader func(d *jsontext.Decoder, name string) error

// Parse reads body's envelope, each record with record and each other
// member with field. The records are held in one slice, one allocation
// for all: about as many as the body has "value" fields, never more than
// MaxRecords.
//
// A reader may return ErrInvalid when its JSON is broken, or any error
// of its own: whatever it returns, a body that is not valid JSON is
// answered ErrInvalid.
func Parse(body []byte, o Options, record RecordReader, field FieldReader) ([]*producer.Record, error) {
	d := jsontext.NewDecoder(bytes.NewReader(body), allowDuplicateNames)
	recs, err := walk(d, body, o, record, field)
	switch {
	case err == nil:
		if _, err := d.ReadToken(); err != io.EOF {
			return nil, ErrInvalid // something after the envelope
		}
		return recs, nil
	case err != ErrInvalid && !Valid(body):
		// A shape error in an invalid body is reported as invalid
		// JSON.
		return nil, ErrInvalid
	}
	return nil, err
}

// Valid reports whether body is exactly one JSON value, in valid UTF-8,
// whose strings are Unicode text (an escaped lone surrogate is refused),
// duplicate names allowed: what Parse's decoder reads without an error.
func Valid(body []byte) bool {
	return jsontext.Value(body).IsValid(allowDuplicateNames)
}

var allowDuplicateNames = jsontext.AllowDuplicateNames(true)

func walk(d *jsontext.Decoder, body []byte, o Options, record RecordReader, field FieldReader) ([]*producer.Record, error) {
	if d.PeekKind() != '{' {
		return nil, &ShapeError{Problem: NotObject}
	}
	d.ReadToken()
	var block []producer.Record
	seen := false
	for d.PeekKind() == '"' {
		tok, err := d.ReadToken()
		if err != nil {
			return nil, ErrInvalid
		}
		if name := tok.String(); name != "records" {
			// A copy, so that name itself stays off the heap.
			if err := field(d, strings.Clone(name)); err != nil {
				return nil, err
			}
			continue
		}
		if seen && o.Once {
			return nil, &ShapeError{Problem: Twice}
		}
		if k := d.PeekKind(); k != '[' {
			return nil, &ShapeError{Problem: NotArray, Found: k}
		}
		d.ReadToken()
		if !seen {
			block = make([]producer.Record, 0, min(bytes.Count(body, []byte(`"value"`)), o.MaxRecords))
			seen = true
		}
		for k := d.PeekKind(); k != ']'; k = d.PeekKind() {
			if k == 0 {
				return nil, ErrInvalid
			}
			if len(block) == o.MaxRecords {
				return nil, &ShapeError{Problem: TooMany}
			}
			if k != '{' {
				return nil, &ShapeError{Problem: RecordNotObject, Index: len(block), Found: k}
			}
			block = append(block, producer.MakeRecord(nil, o.Now, o.Timeout))
			if err := record(d, len(block)-1, &block[len(block)-1]); err != nil {
				return nil, err
			}
		}
		d.ReadToken() // ]
	}
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '}' {
		return nil, ErrInvalid
	}
	switch {
	case !seen:
		return nil, &ShapeError{Problem: Missing}
	case len(block) == 0:
		return nil, &ShapeError{Problem: Empty}
	}
	recs := make([]*producer.Record, len(block))
	for i := range block {
		recs[i] = &block[i]
	}
	return recs, nil
}
