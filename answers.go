package queuepublish

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/queuepublish/caddy-queue-publish/internal/confluent"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// Every answer is JSON, in one of three shapes, as the seed answers:
//   - a success: {"success":true,...} with where the records went;
//   - a rejection, a request that is wrong and of which nothing is produced:
//     {"err":"..."} (a schema mismatch adds "issues");
//   - a failure to publish: {"error":"...","outcome":"not_written"|"unknown"},
//     whose status says whether retrying is safe (503), the outcome is
//     unknown (504) or it will never work (413, 500).

// A rejection is the answer to a request that is wrong: nothing of it is
// produced.
type rejection struct {
	reason  string // the label of queue_publish_rejections_total
	status  int
	body    []byte
	message string
	// In mode confluent, the status, error_code and message that
	// Confluent REST Proxy's clients know for this rejection; zero or
	// empty: status, status and message.
	confluentStatus, confluentCode int
	confluentMessage               string
	// endsStream: a rejection of a record in a stream after which the
	// stream cannot be read on (its JSON is broken, or too long).
	endsStream bool
	// challenge: the WWW-Authenticate of a 401 (RFC 6750 for bearer
	// tokens).
	challenge string
}

// The rejections with a fixed body.
var (
	rejectedMethod        = reject(rejectMethod, http.StatusMethodNotAllowed, "method not allowed")
	rejectedOrigin        = reject(rejectOrigin, http.StatusForbidden, "origin not allowed")
	rejectedAuth          = confluentRejection(reject(rejectAuth, http.StatusForbidden, "invalid auth token provided"), http.StatusUnauthorized, http.StatusUnauthorized, "Unauthorized")
	rejectedKeyTooLong    = reject(rejectIdempotency, http.StatusBadRequest, "Idempotency-Key longer than 255 bytes")
	rejectedTooLarge      = reject(rejectTooLarge, http.StatusRequestEntityTooLarge, "payload too large")
	rejectedInvalidJSON   = reject(rejectInvalidJSON, http.StatusBadRequest, "payload not valid JSON")
	rejectedTopic         = confluentRejection(reject(rejectTopic, http.StatusNotFound, "unknown topic"), http.StatusNotFound, confluent.CodeTopicNotFound, "Topic not found.")
	rejectedKeyReused     = reject(rejectIdempotency, http.StatusUnprocessableEntity, "Idempotency-Key already used with another request")
	rejectedKeyInProgress = reject(rejectIdempotency, http.StatusConflict, "a request with this Idempotency-Key is in progress")

	// A handler that takes JWTs challenges a request without
	// credentials, and one with a bad token, as RFC 6750 says; one that
	// takes only shared secrets answers 403, as the Worker did.
	rejectedNoCredentials = challenged(confluentRejection(reject(rejectAuth, http.StatusUnauthorized, "credentials required"), http.StatusUnauthorized, http.StatusUnauthorized, "Unauthorized"),
		`Bearer realm="queue_publish"`)
	rejectedInvalidToken = challenged(confluentRejection(reject(rejectAuth, http.StatusUnauthorized, "invalid bearer token"), http.StatusUnauthorized, http.StatusUnauthorized, "Unauthorized"),
		`Bearer realm="queue_publish", error="invalid_token"`)
	// The issuer's keys cannot be had: nothing was read or produced, a
	// retry is safe.
	rejectedIssuerUnavailable = confluentRejection(reject(rejectIssuer, http.StatusServiceUnavailable, "token issuer unavailable"), http.StatusServiceUnavailable, confluent.CodeNotWritten, "Token issuer unavailable.")
	// A verified certificate without the name client_certificate takes.
	rejectedCertificateName = confluentRejection(reject(rejectAuth, http.StatusForbidden, "client certificate names no identity"), http.StatusForbidden, confluent.CodeForbidden, "Forbidden")
	rejectedPermission      = confluentRejection(reject(rejectPermission, http.StatusForbidden, "not allowed to publish to this topic"), http.StatusForbidden, confluent.CodeForbidden, "Not authorized to publish to this topic.")
)

// challenged gives ref a WWW-Authenticate challenge.
func challenged(ref *rejection, challenge string) *rejection {
	ref.challenge = challenge
	return ref
}

// errQueueFull is the failure of a request of delivery async that
// queue_size cannot hold.
var errQueueFull = &publishError{Outcome: outcomeRetry, Reason: "queue full"}

// bodyAccepted answers a request of delivery async, once queued.
var bodyAccepted = []byte(`{"success":true}`)

// Error makes a rejection an error, for the readers of the envelope.
func (ref *rejection) Error() string { return ref.message }

func reject(reason string, status int, message string) *rejection {
	return &rejection{reason: reason, status: status, body: errBody(message), message: message}
}

// confluentRejection gives ref the status, error_code and message of mode
// confluent.
func confluentRejection(ref *rejection, status, code int, message string) *rejection {
	ref.confluentStatus, ref.confluentCode, ref.confluentMessage = status, code, message
	return ref
}

// badRequest is a 400 rejection whose message says what is wrong.
func badRequest(reason, format string, args ...any) *rejection {
	return reject(reason, http.StatusBadRequest, fmt.Sprintf(format, args...))
}

// errBody is the body of a rejection.
func errBody(message string) []byte {
	b := append([]byte(`{"err":`), quote(message)...)
	return append(b, '}')
}

// exchange is one request's answer as it is made: the status written,
// the topic, and why the request was rejected, for the metrics.
type exchange struct {
	w        http.ResponseWriter
	producer *producer.Producer // nil if the handler has none any more
	status   int
	topic    string
	reason   string
	req      request // what was read of the request
	// admitted: the credentials were checked (mode confluent checks them
	// before its path, method and Content-Type).
	admitted bool
	mode     mode
	// api: in mode confluent, what the path names and the answer's shape.
	api         *confluent.Route
	contentType string // of the answer; empty: application/json
}

// reject answers a request that is wrong.
func (x *exchange) reject(ref *rejection) error {
	x.reason = ref.reason
	if ref.challenge != "" {
		x.w.Header()["Www-Authenticate"] = []string{ref.challenge}
	}
	return x.mode.reject(x, ref)
}

// fail answers a request none of whose records was published.
func (x *exchange) fail(f *publishError) error { return x.mode.fail(x, f) }

// answer writes the status and body. Header values are fresh slices for
// each answer: Caddy's deferred header replacements (header >Name ...)
// write into the values in place.
func (x *exchange) answer(status int, body []byte) error {
	w := x.w
	x.status = status
	w.Header()["Content-Type"] = []string{cmp.Or(x.contentType, "application/json")}
	if status == http.StatusServiceUnavailable {
		w.Header()["Retry-After"] = []string{"1"}
	}
	w.WriteHeader(status)
	_, err := w.Write(body)
	return err
}

// answerFailure answers a request none of whose records was published,
// in the shape of body and records mode.
func (x *exchange) answerFailure(f *publishError) error {
	b := appendFailure(append(make([]byte, 0, 96), '{'), f)
	return x.answer(statusOf(f.Outcome), append(b, '}'))
}

// answerBody answers a body-mode request: the seed's {"success":true},
// with the record's partition and offset.
func (x *exchange) answerBody(rec *record, out outcomes) error {
	if f := out.of(0); f != nil {
		return x.answerFailure(f)
	}
	b := appendPlace(append(make([]byte, 0, 64), `{"success":true,`...), rec)
	return x.answer(http.StatusOK, append(b, '}'))
}

// answerRecords answers a records-mode request. If every record was
// acknowledged: 200 with their offsets in request order. Otherwise each
// record's result, so that the client can retry only what failed, under
// the status of the worst failure: 413 or 500 if some record will never
// be taken, else 504 if some outcome is unknown, else 503 (every failed
// record was not written; retrying them is safe).
func (x *exchange) answerRecords(recs []*record, out outcomes) error {
	worst := out.worst()
	b := make([]byte, 0, 32+40*len(recs))
	if worst == nil {
		b = append(b, `{"success":true,"offsets":[`...)
	} else {
		b = append(b, `{"success":false,"error":`...)
		b = append(b, quote(worst.Reason)...)
		b = append(b, `,"results":[`...)
	}
	for i, rec := range recs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '{')
		if f := out.of(i); f != nil {
			b = appendFailure(b, f)
			b = append(b, `,"status":`...)
			b = strconv.AppendInt(b, int64(statusOf(f.Outcome)), 10)
		} else {
			b = appendPlace(b, rec)
		}
		b = append(b, '}')
	}
	b = append(b, "]}"...)
	if worst == nil {
		return x.answer(http.StatusOK, b)
	}
	return x.answer(statusOf(worst.Outcome), b)
}

// appendPlace appends where an acknowledged record went: "partition" and,
// if the broker said, "offset".
func appendPlace(b []byte, rec *record) []byte {
	partition, offset := rec.Placed()
	b = append(b, `"partition":`...)
	b = strconv.AppendInt(b, int64(partition), 10)
	if offset >= 0 {
		b = append(b, `,"offset":`...)
		b = strconv.AppendInt(b, offset, 10)
	}
	return b
}

// appendFailure appends the fields of a failure: "error" and "outcome".
func appendFailure(b []byte, f *publishError) []byte {
	b = append(b, `"error":`...)
	b = append(b, quote(f.Reason)...)
	b = append(b, `,"outcome":"`...)
	b = append(b, outcomeWord(f.Outcome)...)
	return append(b, '"')
}

// statusOf is the HTTP status for a failed publish.
func statusOf(o producer.Outcome) int {
	switch o {
	case outcomeRetry:
		return http.StatusServiceUnavailable
	case outcomeUnknown:
		return http.StatusGatewayTimeout
	case outcomeTooLarge:
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusInternalServerError
}

// outcomeWord tells a client whether the record may have been written.
func outcomeWord(o producer.Outcome) string {
	if o == outcomeUnknown {
		return "unknown"
	}
	return "not_written"
}

// severity orders outcomes from "retry is safe" to "never works".
func severity(o producer.Outcome) int {
	switch o {
	case outcomeRetry:
		return 1
	case outcomeUnknown:
		return 2
	}
	return 3
}

// quote is s as a JSON string.
func quote(s string) []byte {
	q, _ := json.Marshal(s)
	return q
}
