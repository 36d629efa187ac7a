package queuepublish

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/queuepublish/caddy-queue-publish/internal/confluent"
)

// A mode is how a request's body becomes records and what its answers
// look like: the body as one record, a records-mode envelope, or
// Confluent REST Proxy's produce APIs. It is chosen once, from the mode
// setting, when the config loads; nothing else asks which mode it is.
type mode interface {
	// check checks the settings the mode needs or rejects.
	check(q *Requests) error
	// validate checks the rules the mode sets for other concerns.
	validate(h *Handler) error
	// serve serves a request: the handler's steps, or the mode's own
	// routes around them.
	serve(h *Handler, x *exchange) error
	// checkBody checks a body before its topic is resolved.
	checkBody(body []byte) *rejection
	// topic resolves the request's topic; "" and why if it is not
	// allowed.
	topic(h *Handler, x *exchange) (string, *rejection)
	// records turns a body into records.
	records(h *Handler, x *exchange) ([]*record, *rejection)
	// valuePath is where the value of the i-th record is in the body,
	// as a JSON pointer, for the issues a schema finds.
	valuePath(i int) string
	// digest is what identifies a request for its Idempotency-Key:
	// everything that shapes its records.
	digest(x *exchange, body []byte, recs []*record) [sha256.Size]byte
	// answer answers a request whose records were sent, in the mode's
	// shape; fail answers one none of whose records was, and reject one
	// that is wrong.
	answer(h *Handler, x *exchange, recs []*record, out outcomes) error
	fail(x *exchange, f *publishError) error
	reject(x *exchange, ref *rejection) error
}

// modeOf is the mode a setting names, checked.
func modeOf(name string) (mode, error) {
	m, ok := modes.lookup(name)
	if !ok {
		return nil, fmt.Errorf("mode: %v", modes.check(name))
	}
	return m, nil
}

// ownTopic is the part of a mode whose requests go to the topic setting.
type ownTopic struct{}

func (ownTopic) checkTopics(q *Requests) error {
	switch {
	case q.ClusterID != "":
		return errors.New("cluster_id: applies to mode confluent only")
	case q.Topic == "":
		return errors.New("topic: required")
	case strings.ContainsAny(q.Topic, "{}"):
		if len(q.AllowTopics) == 0 {
			return errors.New("allow_topics: required when topic holds placeholders")
		}
	default:
		if err := validTopic(q.Topic); err != nil {
			return fmt.Errorf("topic: %v", err)
		}
		if len(q.AllowTopics) > 0 && !slices.Contains(q.AllowTopics, q.Topic) {
			return fmt.Errorf("allow_topics: does not list topic %q, which holds no placeholder: every request would be answered 404", q.Topic)
		}
	}
	return nil
}

func (ownTopic) validate(*Handler) error { return nil }

func (ownTopic) serve(h *Handler, x *exchange) error { return h.serve(x) }

func (ownTopic) topic(h *Handler, x *exchange) (string, *rejection) {
	if topic, ok := h.topicFor(&x.req); ok {
		return topic, nil
	}
	return "", rejectedTopic
}

func (ownTopic) fail(x *exchange, f *publishError) error { return x.answerFailure(f) }

func (ownTopic) reject(x *exchange, ref *rejection) error { return x.answer(ref.status, ref.body) }

// bodyMode: the whole body is one record, with the key and headers the
// config takes from the request.
type bodyMode struct{ ownTopic }

func (m bodyMode) check(q *Requests) error { return m.checkTopics(q) }

func (bodyMode) checkBody(body []byte) *rejection {
	if !validJSON(body) {
		return rejectedInvalidJSON
	}
	return nil
}

func (bodyMode) records(h *Handler, x *exchange) ([]*record, *rejection) {
	return []*record{h.bodyRecord(&x.req)}, nil
}

func (bodyMode) valuePath(int) string { return "" }

// digest covers the key and headers taken from the request: records mode
// has them in the body.
func (bodyMode) digest(_ *exchange, body []byte, recs []*record) [sha256.Size]byte {
	return idemDigest(modeBody, body, recs[:1])
}

func (bodyMode) answer(_ *Handler, x *exchange, recs []*record, out outcomes) error {
	return x.answerBody(recs[0], out)
}

// recordsMode: the body is {"records":[...]}, each record with its own
// key, headers and partition.
type recordsMode struct{ ownTopic }

func (m recordsMode) check(q *Requests) error {
	if q.Key != "" || len(q.Headers) > 0 {
		return errors.New("key, header: apply to mode body only; in mode records each record carries its own")
	}
	if q.Delivery == deliveryAsync && q.MaxRecords > q.QueueSize {
		// A request is queued whole or not at all: one larger than the
		// queue would be answered 503 forever, a retry never fitting.
		return fmt.Errorf("queue_size: %d is less than max_records (%d), the most records one request may carry, which could never be queued; raise queue_size or lower max_records", q.QueueSize, q.MaxRecords)
	}
	return m.checkTopics(q)
}

// checkBody: the envelope's JSON is checked as it is parsed.
func (recordsMode) checkBody([]byte) *rejection { return nil }

func (recordsMode) records(h *Handler, x *exchange) ([]*record, *rejection) {
	return h.parseEnvelope(x.req.body, x.req.start)
}

func (recordsMode) valuePath(i int) string { return "/records/" + strconv.Itoa(i) + "/value" }

func (recordsMode) digest(_ *exchange, body []byte, _ []*record) [sha256.Size]byte {
	return idemDigest(modeRecords, body, nil)
}

func (recordsMode) answer(_ *Handler, x *exchange, recs []*record, out outcomes) error {
	return x.answerRecords(recs, out)
}

// confluentMode: the paths, bodies and answers of Confluent REST Proxy's
// produce APIs, v2 and v3, with the topic from the path.
type confluentMode struct{}

func (confluentMode) check(q *Requests) error {
	switch {
	case q.Key != "" || len(q.Headers) > 0:
		return errors.New("key, header: apply to mode body only; in mode confluent each record carries its own")
	case q.Topic != "":
		return errors.New("topic: not used in mode confluent, where the path names the topic; list the topics allowed in allow_topics")
	case len(q.AllowTopics) == 0:
		return errors.New("allow_topics: required in mode confluent")
	case q.Delivery == deliveryAsync:
		return errors.New("delivery async: not in mode confluent, whose answers carry each record's offset")
	case q.Schema != "":
		// A value may be BINARY, STRING or null (a tombstone), of
		// which a JSON Schema says nothing.
		return errors.New("schema: not in mode confluent, whose record values need not be JSON")
	}
	return nil
}

func (confluentMode) validate(h *Handler) error {
	if h.SignatureHeader != "" {
		return errors.New("signature_header: not in mode confluent, whose clients send their credentials in Authorization")
	}
	return nil
}

func (confluentMode) serve(h *Handler, x *exchange) error {
	return h.serveConfluent(x)
}

// checkBody: a body's JSON is checked as it is parsed.
func (confluentMode) checkBody([]byte) *rejection { return nil }

func (confluentMode) topic(h *Handler, x *exchange) (string, *rejection) {
	return h.confluentTopic(x.api)
}

func (confluentMode) records(h *Handler, x *exchange) ([]*record, *rejection) {
	return h.parseConfluent(x.api, x.req.body, x.req.start)
}

func (confluentMode) valuePath(int) string { return "" }

// digest covers the API and format the request named.
func (confluentMode) digest(x *exchange, body []byte, _ []*record) [sha256.Size]byte {
	return idemDigest(fmt.Sprintf("%s v3=%t binary=%t partition=%d", modeConfluent, x.api.V3, x.api.Binary, x.api.Partition), body, nil)
}

func (confluentMode) answer(h *Handler, x *exchange, recs []*record, out outcomes) error {
	return h.answerConfluent(x, recs, out)
}

func (confluentMode) fail(x *exchange, f *publishError) error {
	return x.answerConfluentError(statusOf(f.Outcome), confluent.FailureCode(f.Outcome), f.Reason)
}

func (confluentMode) reject(x *exchange, ref *rejection) error {
	return x.answerConfluentRejection(ref)
}
