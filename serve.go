package queuepublish

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/go-json-experiment/json/jsontext"
)

// ServeHTTP answers every request itself, always with a JSON body; it never
// calls the next handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	// Until the topic is resolved, a topic from the request is unknown.
	x := exchange{w: w, producer: h.producer}
	if h.use != nil {
		x.producer = h.use.enter()
		defer h.use.leave()
	}
	if len(h.allowTopics) == 0 {
		x.topic = h.Topic
	}
	h.allowOrigin(w, r)
	var err error
	switch {
	case h.isPreflight(r):
		err = h.preflight(&x, r)
	case h.Mode == modeConfluent:
		err = h.serveConfluent(&x, r)
	default:
		err = h.serve(&x, r)
	}
	countRequest(x.topic, x.status)
	if x.reason != "" {
		metricRejections.WithLabelValues(x.reason).Inc()
	}
	return err
}

// serve takes a request through its steps: admitted, turned into
// records, published (once, with an Idempotency-Key), answered.
func (h *Handler) serve(x *exchange, r *http.Request) error {
	body, ref := h.admit(x, r)
	if ref != nil {
		return x.refuse(ref)
	}
	start := time.Now()
	recs, ref := h.toRecords(x, r, body, start)
	if ref != nil {
		return x.refuse(ref)
	}
	if key := r.Header.Get("Idempotency-Key"); key != "" {
		return h.publishOnce(x, r, key, body, recs, start)
	}
	return h.publish(x, r, recs, recs, start)
}

// admit checks a request before anything of it is produced: the method,
// the secret or signature, the Idempotency-Key's length, the body's size
// and JSON, and the topic. It returns the body, or why it is refused.
func (h *Handler) admit(x *exchange, r *http.Request) ([]byte, *refusal) {
	var signature [sha256.Size]byte
	if !x.admitted {
		if ref := h.admitHeaders(x, r, &signature); ref != nil {
			return nil, ref
		}
	}
	body, status := h.readBody(r)
	switch status {
	case http.StatusRequestEntityTooLarge:
		closeUnread(x.w, r)
		return nil, refusedTooLarge
	case http.StatusBadRequest:
		return nil, refusedInvalidJSON
	}
	if h.SignatureHeader != "" && !h.signed(&signature, body) {
		return nil, refusedAuth
	}
	// Records mode checks the JSON as it parses the envelope.
	if h.Mode == modeBody && !validJSON(body) {
		return nil, refusedInvalidJSON
	}
	topic, ref := h.requestTopic(x, r)
	x.topic = topic
	return body, ref
}

// admitHeaders is the part of admit that needs no body: the method, then
// the credentials.
func (h *Handler) admitHeaders(x *exchange, r *http.Request, signature *[sha256.Size]byte) *refusal {
	if r.Method != http.MethodPost {
		x.w.Header()["Allow"] = []string{"POST"}
		closeUnread(x.w, r)
		return refusedMethod
	}
	return h.admitCredentials(x, r, signature)
}

// admitCredentials checks the secret, the token or the signature's form,
// and the Idempotency-Key's length, and marks the request admitted. Its
// refusals close the connection, the body unread.
func (h *Handler) admitCredentials(x *exchange, r *http.Request, signature *[sha256.Size]byte) *refusal {
	w := x.w
	if h.SignatureHeader == "" && !h.authenticated(x, r) ||
		h.SignatureHeader != "" && !parseSignature(r.Header.Get(h.SignatureHeader), signature) {
		// A signed request whose header is missing or malformed is
		// refused before its body costs any memory.
		closeUnread(w, r)
		return refusedAuth
	}
	if len(r.Header.Get("Idempotency-Key")) > maxIdempotencyKey {
		closeUnread(w, r)
		return refusedKeyTooLong
	}
	x.admitted = true
	return nil
}

// requestTopic resolves the request's topic; "" and why if it is not
// allowed.
func (h *Handler) requestTopic(x *exchange, r *http.Request) (string, *refusal) {
	if x.api != nil {
		return h.confluentTopic(x.api)
	}
	if topic, ok := h.topicFor(r); ok {
		return topic, nil
	}
	return "", refusedTopic
}

// topicFor resolves the topic of the handler's topic setting for the
// request; false if it is not allowed.
func (h *Handler) topicFor(r *http.Request) (string, bool) {
	if len(h.allowTopics) == 0 {
		return h.Topic, true
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
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
func (h *Handler) readBody(r *http.Request) ([]byte, int) {
	if r.ContentLength > h.MaxSize {
		return nil, http.StatusRequestEntityTooLarge
	}
	// net/http never gives more than a known length; of an unknown
	// one, a byte past max_size tells that it is too large.
	limit := h.MaxSize + 1
	if r.ContentLength >= 0 {
		limit = r.ContentLength
	}
	var first []byte  // the first chunk: usually the whole body
	var more [][]byte // the chunks after it
	total := int64(0)
	for total < limit {
		size := limit - total // a known length: the rest, up to readStep
		if r.ContentLength < 0 {
			// An unknown length: chunks that start small and
			// grow with the body.
			size = min(size, max(total, minReadChunk))
		}
		chunk := make([]byte, min(size, readStep))
		n, err := io.ReadFull(r.Body, chunk)
		total += int64(n)
		if first == nil {
			first = chunk[:n]
		} else if n > 0 {
			more = append(more, chunk[:n])
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			if r.ContentLength >= 0 {
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

// closeUnread makes an HTTP/1 connection close after a refusal answered
// before the body was read, so that net/http does not read up to 256 KiB
// of a body nobody wants to keep the connection alive. (HTTP/2 needs
// nothing: the stream is reset, and the header would end the connection.)
func closeUnread(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		w.Header()["Connection"] = []string{"close"}
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
