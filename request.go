package queuepublish

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Requests is what a request may carry and how it becomes records: its
// topic, the mode of its body, its bounds, and how it is delivered.
type Requests struct {
	// The topic that records are produced to. It must exist. It may
	// hold request placeholders, such as {http.request.uri.path.1}; then
	// allow_topics lists the topics a request may name. Required.
	Topic string `json:"topic,omitempty"`

	// The topics a topic with placeholders may resolve to; a request
	// naming another is answered 404 without touching Kafka. Required
	// when topic holds placeholders.
	AllowTopics []string `json:"allow_topics,omitempty"`

	// How a request body becomes records: "body" (the whole body is one
	// record), "records" ({"records":[{"value":..., "key":"...",
	// "headers":{...}, "partition":N}, ...]}) or "confluent" (the paths,
	// bodies and answers of Confluent REST Proxy's produce APIs: v3's
	// POST /v3/clusters/{cluster_id}/topics/{topic}/records, streaming
	// included, and v2's POST /topics/{topic}, with the topic from the
	// path, which allow_topics must list). Default: "body".
	Mode string `json:"mode,omitempty"`

	// In mode confluent, the cluster ID that v3 paths must name; a path
	// naming another is answered 404. Unset, any cluster ID is accepted.
	ClusterID string `json:"cluster_id,omitempty"`

	// A file holding a JSON Schema (draft 2020-12 or an earlier draft,
	// as its $schema says) that every body (mode body) or every record
	// value (mode records) must match; a request that does not is
	// answered 400 listing the issues, and nothing of it is produced. It
	// is compiled when the config loads.
	Schema string `json:"schema,omitempty"`

	// The most records one request may carry in records mode.
	// Default: 500.
	MaxRecords int `json:"max_records,omitempty"`

	// In body mode, the record key, usually from a placeholder such as
	// {http.request.header.X-Message-Key}; empty means no key. Keyed
	// records go to the partition Kafka's Java client would choose.
	Key string `json:"key,omitempty"`

	// In body mode, record headers by name; values may hold
	// placeholders, and a header whose value is empty is left out.
	Headers map[string]string `json:"headers,omitempty"`

	// Whether a request's W3C trace context (its traceparent and
	// tracestate headers, or with Caddy's tracing directive the span
	// Caddy made for it) goes with each of its records as headers of the
	// same names, so that a consumer can continue the trace: true or
	// false. A record that has a traceparent header of its own keeps it.
	// Default: true.
	TraceHeaders *Switch `json:"trace_headers,omitempty"`

	// The largest request body accepted, in bytes; larger bodies are
	// answered 413 without being read. Default: 1000000 (1MB).
	MaxSize int64 `json:"max_size,omitempty"`

	// The longest a request waits for the broker's acknowledgement;
	// then it is answered 503 (not written, safe to retry) or 504 (the
	// outcome is unknown). Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// "sync": a request is answered 200 once the broker acknowledged its
	// records. "async": it is answered 202 as soon as its records are
	// in the in-memory queue (queue_size), before the broker has them;
	// queued records are lost if the process dies, and those no broker
	// acknowledges within queue_timeout are dropped, logged and counted.
	// Default: "sync".
	Delivery string `json:"delivery,omitempty"`

	// With delivery async, the most records waiting for the broker; a
	// request that would exceed it is answered 503. Default: 10000.
	QueueSize int `json:"queue_size,omitempty"`

	// With delivery async, how long after its request a record may wait
	// for a broker's acknowledgement, queued while none is reachable and
	// retried on retriable errors; then it is dropped, logged and counted
	// in async_dropped_records_total. When Caddy exits it waits for the
	// queue up to this long. Default: 2m (as Kafka's delivery.timeout.ms).
	QueueTimeout caddy.Duration `json:"queue_timeout,omitempty"`

	mode         mode // of Mode
	allowTopics  map[string]bool
	schema       *jsonschema.Schema
	headerNames  []string // of Headers, sorted
	traceHeaders bool
	asyncPending *atomic.Int64 // records queued by delivery async, not yet done
	asyncDone    func(*record, *publishError)
}

// Defaults of Requests.
const (
	defaultMaxSize      = 1000000 // 1MB
	defaultTimeout      = 5 * time.Second
	defaultMaxRecords   = 500
	defaultQueueSize    = 10000
	defaultQueueTimeout = 2 * time.Minute
)

// check applies the defaults and checks the settings.
func (q *Requests) check() error {
	q.Mode = cmp.Or(q.Mode, modeBody)
	q.Delivery = cmp.Or(q.Delivery, deliverySync)
	var err error
	if q.mode, err = modeOf(q.Mode); err != nil {
		return err
	}
	if err := checkChoice("delivery", q.Delivery, deliveries); err != nil {
		return err
	}
	if err := checkLimits(
		limit{"max_records", int64(q.MaxRecords), false},
		limit{"queue_size", int64(q.QueueSize), false},
		limit{"max_size", q.MaxSize, false},
		limit{"timeout", int64(q.Timeout), false},
		limit{"queue_timeout", int64(q.QueueTimeout), false},
	); err != nil {
		return err
	}
	q.MaxSize = cmp.Or(q.MaxSize, defaultMaxSize)
	q.Timeout = cmp.Or(q.Timeout, caddy.Duration(defaultTimeout))
	q.QueueSize = cmp.Or(q.QueueSize, defaultQueueSize)
	q.QueueTimeout = cmp.Or(q.QueueTimeout, caddy.Duration(defaultQueueTimeout))
	if err := q.mode.check(q); err != nil {
		return err
	}
	if q.MaxRecords == 0 {
		q.MaxRecords = defaultMaxRecords
		if q.Delivery == deliveryAsync {
			// A request is queued whole: by default, at most as many
			// records as the queue holds (more get 413, not a 503 no
			// retry could pass).
			q.MaxRecords = min(q.MaxRecords, q.QueueSize)
		}
	}
	for _, t := range q.AllowTopics {
		if err := validTopic(t); err != nil {
			return fmt.Errorf("allow_topics: %v", err)
		}
	}
	if _, ok := q.Headers[""]; ok {
		return errors.New("header: a record header needs a name")
	}
	return nil
}

// validTopic applies Kafka's rules for topic names.
func validTopic(name string) error {
	if len(name) > 249 {
		return errors.New("longer than 249 characters")
	}
	if name == "." || name == ".." {
		return fmt.Errorf("%q is not a valid topic name", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%q holds %q; Kafka topic names use only letters, digits, '.', '_' and '-'", name, c)
		}
	}
	return nil
}

// provision prepares what serving a request reads: the schema, the
// headers taken from a request, the topics allowed, the accounting of
// delivery async.
func (q *Requests) provision(p *provisioning) error {
	q.schema = nil
	if q.Schema != "" {
		sch, err := compileSchema(q.Schema)
		if err != nil {
			return fmt.Errorf("schema: %v", err)
		}
		q.schema = sch
	}
	q.headerNames = slices.Sorted(maps.Keys(q.Headers))
	q.traceHeaders = q.TraceHeaders.isOn(true)
	q.allowTopics = make(map[string]bool, len(q.AllowTopics))
	for _, t := range q.AllowTopics {
		q.allowTopics[t] = true
	}
	q.asyncPending = new(atomic.Int64)
	q.asyncDone = p.h.onAsyncDone
	if q.Delivery == deliveryAsync {
		asyncQueues.add(q)
	}
	return nil
}

// cleanup stops counting the handler's queue in the gauges.
func (q *Requests) cleanup() error {
	asyncQueues.remove(q)
	return nil
}

// request is what the handler reads of an HTTP request, once, as it
// arrives: the steps after ServeHTTP take it instead of the
// *http.Request. What admission learns (who sent it, its body) joins it.
type request struct {
	ctx           context.Context // done when the client leaves
	repl          *caddy.Replacer // the request's placeholders; nil outside Caddy
	method        string
	path          string
	contentType   string
	contentLength int64 // -1: unknown (chunked)
	protoMajor    int
	protoMinor    int
	expect        string // Expect
	origin        string // Origin
	preflight     string // Access-Control-Request-Method
	authorization string
	token         string // ?token=, read only when tokens are taken
	hasToken      bool
	signature     string // signature_header's value
	key           string // Idempotency-Key
	caddyUser     string // {http.auth.user.id}, read only with caddy_auth
	// certificate: the client's certificate, if Caddy verified it, read
	// only with client_certificate.
	certificate *x509.Certificate
	traceparent string
	tracestate  string
	bodyReader  io.Reader

	start    time.Time // when the body was in: the records' time and deadline start
	body     []byte
	identity identity
	// signed: the webhook signature signature carried, checked once the
	// body is in.
	signed [sha256.Size]byte
}

// readRequest reads what the handler needs of r into req.
func (h *Handler) readRequest(r *http.Request, req *request) {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	*req = request{
		ctx:           r.Context(),
		repl:          repl,
		method:        r.Method,
		path:          r.URL.Path,
		contentType:   r.Header.Get("Content-Type"),
		contentLength: r.ContentLength,
		protoMajor:    r.ProtoMajor,
		protoMinor:    r.ProtoMinor,
		expect:        r.Header.Get("Expect"),
		authorization: r.Header.Get("Authorization"),
		key:           r.Header.Get("Idempotency-Key"),
		traceparent:   r.Header.Get("Traceparent"),
		tracestate:    r.Header.Get("Tracestate"),
		bodyReader:    r.Body,
	}
	if len(h.CORS) > 0 {
		req.origin, req.preflight = r.Header.Get("Origin"), r.Header.Get("Access-Control-Request-Method")
	}
	if h.SignatureHeader != "" {
		req.signature = r.Header.Get(h.SignatureHeader)
	}
	if h.CaddyAuth && repl != nil {
		req.caddyUser, _ = repl.GetString(userIDPlaceholder)
	}
	if h.ClientCertificate != "" && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		req.certificate = r.TLS.VerifiedChains[0][0]
	}
	if h.TokenMaxAge > 0 && req.authorization == "" {
		q := r.URL.Query()
		req.token, req.hasToken = q.Get("token"), q.Has("token")
	}
}
