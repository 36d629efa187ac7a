package queuepublish

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/segmentio/kafka-go"
)

// Modes: how a request body becomes records.
const (
	modeBody    = "body"    // the whole body is one record
	modeRecords = "records" // the body is {"records":[...]}
)

// idempotencyHeader is the record header that carries a request's
// Idempotency-Key.
const idempotencyHeader = "idempotency-key"

// clientError is an answer to a request that is wrong; nothing of it is
// produced.
type clientError struct {
	status int
	body   []byte
}

func badRequest(format string, args ...any) *clientError {
	b, _ := json.Marshal(struct {
		Err string `json:"err"`
	}{fmt.Sprintf(format, args...)})
	return &clientError{status: http.StatusBadRequest, body: b}
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
			rec.key = []byte(key)
		}
	}
	for _, name := range h.headerNames {
		if v := repl.ReplaceAll(h.Headers[name], ""); v != "" {
			rec.headers = append(rec.headers, kafka.Header{Key: name, Value: []byte(v)})
		}
	}
	return rec
}

// envelopeRecord is one element of a records-mode body.
type envelopeRecord struct {
	Value     json.RawMessage            `json:"value"`
	Key       *string                    `json:"key"`
	Headers   map[string]json.RawMessage `json:"headers"`
	Partition *int                       `json:"partition"`
}

// parseEnvelope turns a records-mode body, {"records":[{"value":...,
// "key":"...","headers":{"name":"value"},"partition":N}, ...]}, into
// records. A value is kept as the exact JSON text the client sent. Any
// malformed record fails the whole request, naming what is wrong.
func (h *Handler) parseEnvelope(body []byte, now time.Time) ([]*record, *clientError) {
	var env struct {
		Records []json.RawMessage `json:"records"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return nil, badRequest("body must be an object {\"records\":[...]}: %s", jsonProblem(err))
	}
	switch {
	case env.Records == nil:
		return nil, badRequest(`body has no "records" list`)
	case len(env.Records) == 0:
		return nil, badRequest(`"records" is empty`)
	case len(env.Records) > h.MaxRecords:
		return nil, badRequest(`"records" holds %d records, more than max_records (%d)`, len(env.Records), h.MaxRecords)
	}
	recs := make([]*record, len(env.Records))
	for i, raw := range env.Records {
		var er envelopeRecord
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&er); err != nil {
			return nil, badRequest("record %d: %s", i, jsonProblem(err))
		}
		if er.Value == nil {
			return nil, badRequest(`record %d: no "value"`, i)
		}
		rec := newRecord(er.Value, now, time.Duration(h.Timeout))
		if er.Key != nil {
			rec.key = []byte(*er.Key)
		}
		if er.Partition != nil {
			if *er.Partition < 0 {
				return nil, badRequest(`record %d: "partition" must not be negative`, i)
			}
			rec.want = *er.Partition
		}
		for _, name := range slices.Sorted(maps.Keys(er.Headers)) {
			var v string
			if err := json.Unmarshal(er.Headers[name], &v); err != nil {
				return nil, badRequest("record %d: header %q is not a string", i, name)
			}
			rec.headers = append(rec.headers, kafka.Header{Key: name, Value: []byte(v)})
		}
		recs[i] = rec
	}
	return recs, nil
}

// jsonProblem describes a decoding error without Go type names.
func jsonProblem(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field == "" {
			return "not a JSON object"
		}
		return fmt.Sprintf("%q has the wrong type (%s)", typeErr.Field, typeErr.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// checkPartitions rejects records that ask for a partition the topic does
// not have.
func checkPartitions(recs []*record, count int) *clientError {
	for i, rec := range recs {
		if rec.want >= count {
			return badRequest("record %d: partition %d does not exist (the topic has %d)", i, rec.want, count)
		}
	}
	return nil
}

// answerBody answers a body-mode request: the seed's {"success":true},
// with the record's partition and offset.
func answerBody(w http.ResponseWriter, rec *record) error {
	if rec.failure != nil {
		return answerError(w, rec.failure)
	}
	b := make([]byte, 0, 64)
	b = append(b, `{"success":true,"partition":`...)
	b = strconv.AppendInt(b, int64(rec.partition), 10)
	if rec.offset >= 0 {
		b = append(b, `,"offset":`...)
		b = strconv.AppendInt(b, rec.offset, 10)
	}
	b = append(b, '}')
	return answer(w, http.StatusOK, b)
}

// answerRecords answers a records-mode request. If every record was
// acknowledged: 200 with their offsets in request order. Otherwise each
// record's result, so that the client can retry only what failed, under
// the status of the worst failure: 413 or 500 if some record will never
// be taken, else 504 if some outcome is unknown, else 503 (every failed
// record was not written; retrying them is safe).
func answerRecords(w http.ResponseWriter, recs []*record) error {
	var worst *publishError
	for _, rec := range recs {
		if f := rec.failure; f != nil && (worst == nil || severity(f.outcome) > severity(worst.outcome)) {
			worst = f
		}
	}
	b := make([]byte, 0, 32+40*len(recs))
	if worst == nil {
		b = append(b, `{"success":true,"offsets":[`...)
	} else {
		b = append(b, `{"success":false,"error":`...)
		b = appendJSONString(b, worst.reason)
		b = append(b, `,"results":[`...)
	}
	for i, rec := range recs {
		if i > 0 {
			b = append(b, ',')
		}
		if f := rec.failure; f != nil {
			b = append(b, `{"error":`...)
			b = appendJSONString(b, f.reason)
			b = append(b, `,"outcome":"`...)
			b = append(b, outcomeWord(f.outcome)...)
			b = append(b, `"}`...)
			continue
		}
		b = append(b, `{"partition":`...)
		b = strconv.AppendInt(b, int64(rec.partition), 10)
		if rec.offset >= 0 {
			b = append(b, `,"offset":`...)
			b = strconv.AppendInt(b, rec.offset, 10)
		}
		b = append(b, '}')
	}
	b = append(b, "]}"...)
	if worst == nil {
		return answer(w, http.StatusOK, b)
	}
	return answer(w, statusOf(worst.outcome), b)
}

// severity orders outcomes from "retry is safe" to "never works".
func severity(o outcome) int {
	switch o {
	case outcomeRetry:
		return 1
	case outcomeUnknown:
		return 2
	}
	return 3
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s)
	return append(b, q...)
}
