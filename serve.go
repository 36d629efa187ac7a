package queuepublish

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/go-json-experiment/json/jsontext"
)

// ServeHTTP answers every request itself, always with a JSON body; it never
// calls the next handler.
// The request is read once, here; the steps after take what was read.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	// Until the topic is resolved, a topic from the request is unknown.
	// On the heap, and the request read into it in place: a handler's
	// goroutine (one a stream under HTTP/2) starts with a small stack,
	// which a frame holding the exchange would make grow on every request.
	x := &exchange{w: w, producer: h.producer, mode: h.mode}
	h.readRequest(r, &x.req)
	if h.use != nil {
		x.producer = h.use.enter()
		defer h.use.leave()
	}
	if len(h.allowTopics) == 0 {
		x.topic = h.Topic
	}
	h.allowOrigin(x)
	var err error
	switch {
	case h.isPreflight(x):
		err = h.preflight(x)
	default:
		err = h.mode.serve(h, x)
	}
	countRequest(x.topic, x.status)
	if h.identityLabels != nil {
		metricIdentityRequests.WithLabelValues(h.identityLabels.label(&x.req.identity), strconv.Itoa(x.status)).Inc()
	}
	if x.reason != "" {
		metricRejections.WithLabelValues(x.reason).Inc()
	}
	return err
}

// serve takes a request through its steps: admitted, turned into
// records, published (once, with an Idempotency-Key), answered.
func (h *Handler) serve(x *exchange) error {
	if ref := h.admit(x); ref != nil {
		return x.reject(ref)
	}
	x.req.start = time.Now()
	recs, ref := h.toRecords(x)
	if ref != nil {
		return x.reject(ref)
	}
	if x.req.key != "" {
		return h.publishOnce(x, recs)
	}
	return h.publish(x, recs, recs)
}

// admit checks a request before anything of it is produced: the method,
// the secret or signature, the Idempotency-Key's length, the body's size
// and JSON, and the topic. The body joins the request, unless it is
// refused.
func (h *Handler) admit(x *exchange) *rejection {
	if !x.admitted {
		if ref := h.admitHeaders(x); ref != nil {
			return ref
		}
	}
	body, status := h.readBody(&x.req)
	switch status {
	case http.StatusRequestEntityTooLarge:
		x.closeUnread()
		return rejectedTooLarge
	case http.StatusBadRequest:
		return rejectedInvalidJSON
	}
	x.req.body = body
	if !h.scheme.verify(x, body) {
		x.req.identity = identity{} // no one
		return rejectedAuth
	}
	if x.req.identity.scheme == schemeSignature {
		x.named() // known once the body is verified
	}
	if ref := h.mode.checkBody(body); ref != nil {
		return ref
	}
	topic, ref := h.requestTopic(x)
	x.topic = topic
	if ref != nil {
		return ref
	}
	return h.permit(x, topic)
}

// admitHeaders is the part of admit that needs no body: the method, then
// the credentials.
func (h *Handler) admitHeaders(x *exchange) *rejection {
	if x.req.method != http.MethodPost {
		x.w.Header()["Allow"] = []string{"POST"}
		x.closeUnread()
		return rejectedMethod
	}
	return h.admitCredentials(x)
}

// admitCredentials checks the secret, the token or the signature's form,
// and the Idempotency-Key's length, and marks the request admitted. Its
// rejections close the connection, the body unread.
func (h *Handler) admitCredentials(x *exchange) *rejection {
	if ref := h.scheme.authenticate(x); ref != nil {
		// A signed request whose header is missing or malformed is
		// refused before its body costs any memory.
		x.req.identity = identity{} // no one
		x.closeUnread()
		return ref
	}
	x.named()
	if len(x.req.key) > maxIdempotencyKey {
		x.closeUnread()
		return rejectedKeyTooLong
	}
	// Where the topic is known from the path, a publisher refused it
	// is refused before its body is read. (A signature's identity is
	// known only with the body.)
	if h.permissions != nil && x.req.identity.scheme != schemeSignature {
		if topic, ref := h.requestTopic(x); ref == nil {
			if ref := h.permit(x, topic); ref != nil {
				x.closeUnread()
				return ref
			}
		}
	}
	x.admitted = true
	return nil
}

// requestTopic resolves the request's topic; "" and why if it is not
// allowed.
func (h *Handler) requestTopic(x *exchange) (string, *rejection) {
	return h.mode.topic(h, x)
}

// topicFor resolves the topic of the handler's topic setting for the
// request; false if it is not allowed.
func (h *Handler) topicFor(req *request) (string, bool) {
	if len(h.allowTopics) == 0 {
		return h.Topic, true
	}
	repl := req.repl
	if repl == nil {
		return "", false
	}
	topic := repl.ReplaceAll(h.Topic, "")
	return topic, h.allowTopics[topic]
}

// readStep is how far the body buffer grows ahead of the bytes received:
// a client that announces a large Content-Length and then sends slowly
// (or not at all) holds no more memory than it sent, plus this.
const readStep = 32 << 10

// minReadChunk is the first chunk of a body of unknown length.
const minReadChunk = 512

// readBody reads the whole body, but never more than max_size+1 bytes. It
// returns 413 for a body over max_size and 400 for one that ended early.
// A body of known length up to readStep is read into one buffer of its
// size; a larger one, or one of unknown length, in chunks of at most
// readStep, joined once it is all there.
func (h *Handler) readBody(r *request) ([]byte, int) {
	if r.contentLength > h.MaxSize {
		return nil, http.StatusRequestEntityTooLarge
	}
	// net/http never gives more than a known length; of an unknown
	// one, a byte past max_size tells that it is too large.
	limit := h.MaxSize + 1
	if r.contentLength >= 0 {
		limit = r.contentLength
	}
	var first []byte  // the first chunk: usually the whole body
	var more [][]byte // the chunks after it
	total := int64(0)
	for total < limit {
		size := limit - total // a known length: the rest, up to readStep
		if r.contentLength < 0 {
			// An unknown length: chunks that start small and
			// grow with the body.
			size = min(size, max(total, minReadChunk))
		}
		chunk := make([]byte, min(size, readStep))
		n, err := io.ReadFull(r.bodyReader, chunk)
		total += int64(n)
		if first == nil {
			first = chunk[:n]
		} else if n > 0 {
			more = append(more, chunk[:n])
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			if r.contentLength >= 0 {
				return nil, http.StatusBadRequest // shorter than announced
			}
			break
		}
		if err != nil {
			return nil, http.StatusBadRequest
		}
	}
	if total > h.MaxSize {
		return nil, http.StatusRequestEntityTooLarge
	}
	if first == nil {
		return []byte{}, http.StatusOK
	}
	if more == nil {
		return first, http.StatusOK
	}
	return bytes.Join(append([][]byte{first}, more...), nil), http.StatusOK
}

// closeUnread makes an HTTP/1 connection close after a rejection answered
// before the body was read, so that net/http does not read up to 256 KiB
// of a body nobody wants to keep the connection alive. (HTTP/2 needs
// nothing: the stream is reset, and the header would end the connection.)
func (x *exchange) closeUnread() {
	if x.req.protoMajor == 1 && x.req.contentLength != 0 {
		x.w.Header()["Connection"] = []string{"close"}
	}
}

// validJSON reports whether body is exactly one JSON value, in valid
// UTF-8, whose strings are Unicode text: an escaped lone surrogate
// ("\ud800" without its pair) is refused, as the envelope of mode
// records and RFC 7493 (I-JSON) refuse it, since it stands for no
// character and consumers' decoders disagree on what to make of it.
// Duplicate names are allowed, as in the envelope.
func validJSON(body []byte) bool {
	return jsontext.Value(body).IsValid(allowDuplicateNames)
}

var allowDuplicateNames = jsontext.AllowDuplicateNames(true)
