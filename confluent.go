package queuepublish

import (
	"cmp"
	"net/http"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/confluent"
)

// Mode confluent speaks Confluent REST Proxy's produce APIs (v2 and v3,
// v3's streaming included), whose wire format is internal/confluent's:
// the routes, media types, bodies and answers. Here is what serves them:
// the steps of a request, v3's streaming (confluent_stream.go), and the
// package's rejections made the module's, answered and counted as any.

// rejectedConfluentStream refuses an Idempotency-Key on a stream.
var rejectedConfluentStream = reject(rejectIdempotency, http.StatusBadRequest, "Idempotency-Key applies to a request of known length; a streamed request's records are answered one by one")

// serveConfluent serves a request of mode confluent: its path and
// Content-Type say which API it speaks, then it goes the steps of any
// request, or, a v3 request of unknown length, is streamed.
func (h *Handler) serveConfluent(x *exchange) error {
	api, err := confluent.ParseRoute(x.req.path)
	x.api = api
	x.contentType = confluent.MediaV3
	if !api.V3 {
		x.contentType = confluent.MediaV2
	}
	// The credentials come first, as a REST Proxy with authentication
	// checks them: a client without them learns nothing of the paths,
	// methods and media types served here, and its body is not read.
	// (The path is parsed before: a token is valid for its topic only.)
	if ref := h.admitCredentials(x); ref != nil {
		return x.reject(ref)
	}
	if err == nil {
		err = api.CheckMedia(x.req.method, x.req.contentType)
	}
	if err != nil {
		if err == confluent.ErrMethod {
			x.w.Header()["Allow"] = []string{"POST"}
		}
		return x.reject(confluentRejectionOf(err))
	}
	if api.V3 && x.req.contentLength < 0 && x.req.method == http.MethodPost {
		return h.serveStream(x)
	}
	return h.serve(x)
}

// confluentRejectionOf is the module's rejection for one of the wire format's,
// nil for none.
func confluentRejectionOf(err *confluent.Error) *rejection {
	if err == nil {
		return nil
	}
	ref := confluentRejection(reject(err.Reason, err.Status, err.Message), err.Status, err.Code, err.Message)
	ref.endsStream = err.EndsStream
	return ref
}

// confluentOptions are the settings that bound a request's records.
func (h *Handler) confluentOptions() confluent.Options {
	return confluent.Options{MaxRecords: h.MaxRecords, MaxSize: h.MaxSize, Timeout: time.Duration(h.Timeout)}
}

// parseConfluent turns the body of a request of mode confluent of known
// length into its records.
func (h *Handler) parseConfluent(api *confluent.Route, body []byte, now time.Time) ([]*record, *rejection) {
	recs, err := confluent.ParseBody(api, body, now, h.confluentOptions())
	if err != nil {
		return nil, confluentRejectionOf(err)
	}
	return recs, nil
}

// confluentTopic is the topic a request of mode confluent names, if
// allowed.
func (h *Handler) confluentTopic(api *confluent.Route) (string, *rejection) {
	if err := api.CheckCluster(h.ClusterID); err != nil {
		return "", confluentRejectionOf(err)
	}
	if !h.allowTopics[api.Topic] {
		return "", rejectedTopic
	}
	return api.Topic, nil
}

// answerConfluentRejection answers a rejection in mode confluent: the REST
// Proxy's {"error_code","message"}, with its status where its clients
// expect one of their own (401 and a challenge for wrong credentials).
func (x *exchange) answerConfluentRejection(ref *rejection) error {
	if ref == rejectedAuth && ref.challenge == "" {
		x.w.Header()["Www-Authenticate"] = []string{`Basic realm="queue_publish"`}
	}
	status, code, message := confluentError(ref)
	return x.answerConfluentError(status, code, message)
}

// confluentError is the status, error_code and message of a rejection in
// mode confluent.
func confluentError(ref *rejection) (status, code int, message string) {
	return cmp.Or(ref.confluentStatus, ref.status), cmp.Or(ref.confluentCode, ref.status), cmp.Or(ref.confluentMessage, ref.message)
}

// answerConfluentError writes {"error_code","message"}.
func (x *exchange) answerConfluentError(status, code int, message string) error {
	b := confluent.AppendError(make([]byte, 0, 64+len(message)), code, message)
	if x.api.V3 {
		b = append(b, confluent.Separator...)
	}
	return x.answer(status, b)
}

// answerConfluent answers a request of mode confluent whose records were
// sent, in its API's shape: v3's delivery report of each record, v2's
// offsets. If every record was acknowledged the status is 200; otherwise
// it is that of the worst failure, as in records mode, while the body
// still says how each record ended.
func (h *Handler) answerConfluent(x *exchange, recs []*record, out outcomes) error {
	var b []byte
	if x.api.V3 {
		b = make([]byte, 0, 200*len(recs))
		for i, rec := range recs {
			b = h.appendV3Report(b, x, rec, out.of(i), x.api.Shapes[i])
			b = append(b, confluent.Separator...)
		}
	} else {
		b = confluent.AppendV2Offsets(make([]byte, 0, 64+64*len(recs)), len(recs), func(i int) confluent.Result {
			return confluentResult(recs[i], out.of(i))
		})
	}
	status := http.StatusOK
	if worst := out.worst(); worst != nil {
		status = statusOf(worst.Outcome)
	}
	return x.answer(status, b)
}

// appendV3Report appends v3's answer for one record.
func (h *Handler) appendV3Report(b []byte, x *exchange, rec *record, f *publishError, shape confluent.Shape) []byte {
	return confluent.AppendV3Report(b, x.api.ClusterID(h.ClusterID), x.topic, confluentResult(rec, f), shape)
}

// confluentResult is how a record that was sent ended, f, for its answer.
func confluentResult(rec *record, f *publishError) confluent.Result {
	partition, offset := rec.Placed()
	return confluent.Result{Failure: f, Partition: partition, Offset: offset, Time: rec.Time}
}
