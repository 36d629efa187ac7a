package envelope

import (
	"errors"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

var errField = errors.New("a member the caller refuses")

// skipRecord reads a record whole; refuse, if set, refuses the record
// after reading it.
func skipRecord(refuse error) RecordReader {
	return func(d *jsontext.Decoder, _ int, _ *producer.Record) error {
		if err := d.SkipValue(); err != nil {
			return ErrInvalid
		}
		return refuse
	}
}

func refuseField(d *jsontext.Decoder, name string) error {
	if name == "ignored" {
		if err := d.SkipValue(); err != nil {
			return ErrInvalid
		}
		return nil
	}
	return errField
}

// One error policy: a body that is not valid JSON is ErrInvalid whatever
// came first; otherwise the first error, the envelope's or the caller's.
func TestParseErrorPolicy(t *testing.T) {
	errRecord := errors.New("a record the caller refuses")
	for _, tt := range []struct {
		body    string
		once    bool
		refuse  error // of each record
		want    error // ErrInvalid, errField, errRecord or a *ShapeError
		records int
	}{
		{body: `{"records":[{}]}`, records: 1},
		{body: ` {"ignored":[1],"records":[{"a":1},{}]} `, records: 2},
		{body: `{"records":[{}],"records":[{}]}`, records: 2},
		{body: `{"records":[{}],"records":[{}]}`, once: true, want: &ShapeError{Problem: Twice}},
		{body: `[]`, want: &ShapeError{Problem: NotObject}},
		{body: `"records"`, want: &ShapeError{Problem: NotObject}},
		{body: `{"records":{}}`, want: &ShapeError{Problem: NotArray, Found: '{'}},
		{body: `{"records":[{},null]}`, want: &ShapeError{Problem: RecordNotObject, Index: 1, Found: 'n'}},
		{body: `{"records":[{},{},{}]}`, want: &ShapeError{Problem: TooMany}},
		{body: `{"ignored":1}`, want: &ShapeError{Problem: Missing}},
		{body: `{"records":[]}`, want: &ShapeError{Problem: Empty}},
		{body: `{"other":1,"records":[]}`, want: errField},
		{body: `{"records":[{}]}`, refuse: errRecord, want: errRecord},
		// Not valid JSON, whatever came first.
		{body: ``, want: ErrInvalid},
		{body: `{"records":[{}]`, want: ErrInvalid},
		{body: `{"records":[{}]}x`, want: ErrInvalid},
		{body: `{"records":[{}]} {}`, want: ErrInvalid},
		{body: `[] {}`, want: ErrInvalid},
		{body: `{"records":[]} {}`, want: ErrInvalid},
		{body: `{"records":{}} [`, want: ErrInvalid},
		{body: `{"other":1,"records":[]`, want: ErrInvalid},
		{body: `{"records":[{}]} 1`, refuse: errRecord, want: ErrInvalid},
		{body: `{"records":[{"a":"\ud800"}]}`, want: ErrInvalid},
		{body: "{\"records\":[{\"a\":\"\xff\"}]}", want: ErrInvalid},
	} {
		o := Options{MaxRecords: 2, Once: tt.once, Now: time.Unix(7, 0), Timeout: time.Second}
		recs, err := Parse([]byte(tt.body), o, skipRecord(tt.refuse), refuseField)
		var shape, wantShape *ShapeError
		switch {
		case errors.As(tt.want, &wantShape):
			if !errors.As(err, &shape) || *shape != *wantShape {
				t.Errorf("%s: error %v, want %+v", tt.body, err, wantShape)
			}
		case err != tt.want:
			t.Errorf("%s: error %v, want %v", tt.body, err, tt.want)
		}
		if err != nil {
			if recs != nil {
				t.Errorf("%s: %d records with an error", tt.body, len(recs))
			}
			continue
		}
		if len(recs) != tt.records {
			t.Errorf("%s: %d records, want %d", tt.body, len(recs), tt.records)
		}
		for _, rec := range recs {
			if rec.Partition != -1 || !rec.Time.Equal(o.Now) || !rec.Deadline.Equal(o.Now.Add(time.Second)) {
				t.Errorf("%s: record %+v not made with the options", tt.body, rec)
			}
		}
	}
}

// Whatever the body, Parse answers ErrInvalid exactly when it is not
// valid JSON, and accepts only envelopes of 1 to MaxRecords records.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"records":[{}]}`, `{"records":[{"value":1},{"value":[1,{"b":null}]}]}`, `{"records":[]}`, `{}`, `[]`,
		`{"records":[1]}`, `{"records":[{}]}x`, `{"records":[{}]} {}`, `{"ignored":1,"records":[{}]}`,
		`{"records":[{}],"records":[{}]}`, `{"other":1}`, `{"records":[{"a":"\ud800"}]}`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, once bool) {
		o := Options{MaxRecords: 3, Once: once}
		recs, err := Parse(body, o, skipRecord(nil), refuseField)
		if (err == ErrInvalid) != !Valid(body) {
			t.Fatalf("%q: error %v, valid JSON %t", body, err, Valid(body))
		}
		if err == nil && (len(recs) == 0 || len(recs) > o.MaxRecords) {
			t.Fatalf("%q: %d records", body, len(recs))
		}
		if err != nil && recs != nil {
			t.Fatalf("%q: %d records with an error", body, len(recs))
		}
	})
}
