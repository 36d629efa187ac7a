// Package queuepublish is a Caddy HTTP handler that publishes the JSON
// body of authenticated POST requests to a Kafka topic: any HTTP client
// becomes a Kafka producer.
package queuepublish

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

const (
	defaultMaxSize = 1000000 // 1MB
	defaultTimeout = 5 * time.Second

	defaultMaxRecords          = 500
	defaultQueueSize           = 10000
	defaultIdempotencyMaxKeys  = 100000
	defaultIdempotencyMaxBytes = 100000000

	// lateAckWait is how long, past a request's timeout, the producer
	// still waits for the broker's answer on a record with an
	// Idempotency-Key, so that a repeat learns whether it landed.
	lateAckWait = 30 * time.Second

	deliverySync  = "sync"
	deliveryAsync = "async"
)

// Handler checks a shared secret, validates that the request body is one
// JSON value and produces it, unchanged, as one record to a Kafka topic.
// It answers 200 {"success":true} only after the broker acknowledged the
// record; every other answer says whether retrying is safe.
type Handler struct {
	// Addresses (host:port) of Kafka brokers to bootstrap from. The
	// cluster's other brokers are discovered. Each entry may hold
	// {env.*} or {file.*} placeholders and several addresses separated
	// by commas. Required.
	Brokers []string `json:"brokers,omitempty"`

	// The topic that records are produced to. It must exist. It may
	// hold request placeholders, such as {http.request.uri.path.1}; then
	// allow_topics lists the topics a request may name. Required.
	Topic string `json:"topic,omitempty"`

	// The topics a topic with placeholders may resolve to; a request
	// naming another is answered 404 without touching Kafka. Required
	// when topic holds placeholders.
	AllowTopics []string `json:"allow_topics,omitempty"`

	// The shared secrets; a request with any of them is accepted, so
	// that a secret can be rotated without downtime. Clients send one in
	// the Authorization header, as the whole value or after "Bearer ",
	// unless signature_header is set. Use placeholders, {env.NAME} or
	// {file.PATH}, so that secrets stay out of the config; they are
	// resolved once when the config loads, and a secret that resolves
	// empty stops the config from loading. At least one is required.
	Secrets []string `json:"secrets,omitempty"`

	// If set, requests are authenticated by this header instead of
	// Authorization: it must hold "sha256=" and the hex HMAC-SHA256 of
	// the raw body keyed with a secret, as GitHub signs webhooks
	// (X-Hub-Signature-256). The signature covers the body only: the
	// path, query and other headers of a replayed body may change, so a
	// webhook handler should pin its topic.
	SignatureHeader string `json:"signature_header,omitempty"`

	// How a request body becomes records: "body" (the whole body is one
	// record) or "records" ({"records":[{"value":..., "key":"...",
	// "headers":{...}, "partition":N}, ...]}). Default: "body".
	Mode string `json:"mode,omitempty"`

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

	// The largest request body accepted, in bytes; larger bodies are
	// answered 413 without being read. Default: 1000000 (1MB).
	MaxSize int64 `json:"max_size,omitempty"`

	// The longest a request waits for the broker's acknowledgement;
	// then it is answered 503 (not written, safe to retry) or 504 (the
	// outcome is unknown). Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Which acknowledgement a record needs: "all" (every in-sync
	// replica has it), "leader" (the partition leader has it) or "none"
	// (sent, not confirmed: a 200 then means only that the record was
	// sent). Default: "all".
	Acks string `json:"acks,omitempty"`

	// Whether the producer is idempotent: "on" or "off". Unset, it is
	// with acks "all" (as in Kafka's clients, idempotence needs it),
	// unless the cluster refuses it (an ACL, an old version): then it
	// warns and produces without. "on" makes a refusal a config error
	// when a broker answers at load, and every record's refusal after.
	// Idempotence removes the duplicates the producer's own retries can
	// store; a client's repeat of a request is what Idempotency-Key
	// covers.
	Idempotent string `json:"idempotent,omitempty"`

	// How record batches are compressed on the way to the brokers:
	// "none", "gzip", "snappy", "lz4" or "zstd". Default: "none".
	Compression string `json:"compression,omitempty"`

	// "sync": a request is answered 200 once the broker acknowledged its
	// records. "async": it is answered 202 as soon as its records are
	// in the in-memory queue (queue_size), before the broker has them;
	// queued records are lost if the process dies, and failures are
	// only logged. Default: "sync".
	Delivery string `json:"delivery,omitempty"`

	// With delivery async, the most records waiting for the broker; a
	// request that would exceed it is answered 503. Default: 10000.
	QueueSize int `json:"queue_size,omitempty"`

	// How long an Idempotency-Key is remembered. A repeat of a request
	// with the same key and body within the window is answered from the
	// first (same partitions and offsets) without producing again; the
	// same key with another body is answered 422; a repeat while the
	// first is still being handled is answered 409. Zero (the default)
	// turns this off; the key is still stored as a record header.
	IdempotencyWindow caddy.Duration `json:"idempotency_window,omitempty"`

	// The most Idempotency-Keys remembered at once; beyond it the oldest
	// are forgotten before their window ends. Default: 100000.
	IdempotencyMaxKeys int `json:"idempotency_max_keys,omitempty"`

	// The most memory, in bytes, the remembered Idempotency-Keys and the
	// outcomes of their records may hold; beyond it the oldest are
	// forgotten before their window ends. Default: 100000000 (100MB).
	IdempotencyMaxBytes int64 `json:"idempotency_max_bytes,omitempty"`

	// An identifier the brokers see for this producer, in their logs
	// and quotas. Default: caddy-queue-publish.
	ClientID string `json:"client_id,omitempty"`

	// TLS for broker connections; absent means plaintext.
	TLS *BrokerTLS `json:"tls,omitempty"`

	// SASL authentication to the brokers.
	SASL *BrokerSASL `json:"sasl,omitempty"`

	// How long a broker's sender waits, under concurrent load, for
	// more records before sending the next produce request, counted from
	// the start of the previous one. A record arriving at an idle
	// broker is always sent at once. Default: 0 (send as soon as the
	// previous request is answered).
	Linger caddy.Duration `json:"linger,omitempty"`

	// The most records in one partition's batch (a produce request
	// carries a batch of each partition the broker leads). Default: 1000.
	MaxBatchRecords int `json:"max_batch_records,omitempty"`

	// The most bytes of records in one partition's batch; keep it at or
	// below the brokers' message.max.bytes. Default: 1000000.
	MaxBatchBytes int `json:"max_batch_bytes,omitempty"`

	// How many produce requests each broker may have in flight. A
	// partition has one batch in flight at a time whatever this is, so
	// its records are stored in the order they were queued. Default: 1.
	MaxInFlight int `json:"max_in_flight,omitempty"`

	brokers       []string
	idem          *idempotencyStore
	idemKey       string        // of the store in its pool
	idemScope     string        // the brokers part of the scope of keys
	asyncPending  *atomic.Int64 // records queued by delivery async, not yet done
	asyncDone     func(*record)
	schema        *jsonschema.Schema
	secrets       [][]byte
	secretDigests [][sha256.Size]byte
	headerNames   []string
	allowTopics   map[string]bool
	producer      *producer.Producer
	use           *producerUse
	logger        *zap.Logger
}

// producerUse is a handler's use of its shared producer. It lasts until the
// config is unloaded and the handler's last request has finished: Caddy
// does not wait for running requests on a reload, and they must still be
// able to publish. Caddy even stops the old servers in the background, so
// a request may reach a handler after its Cleanup and after its last
// request ended: then the handler takes its producer from the pool again
// (the same one if the new config kept the settings) for as long as such
// requests run.
type producerUse struct {
	cfg      producerConfig
	logger   *zap.Logger
	original *producer.Producer // the producer while the config is loaded
	inflight atomic.Int64
	unloaded atomic.Bool

	mu       sync.Mutex // guards the fields below once unloaded
	current  *producer.Producer
	key      string
	released bool
	err      error
}

// begin counts a request and returns the producer it publishes with (nil
// if none can be had); end must follow.
func (u *producerUse) begin() *producer.Producer {
	u.inflight.Add(1)
	if !u.unloaded.Load() {
		// unload sees this request in flight, and keeps the producer.
		return u.original
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.released {
		u.logger.Info(msgTakenAgain, zap.Strings("brokers", u.cfg.Brokers))
		p, key, err := acquireProducer(u.cfg, u.logger)
		if err != nil {
			return nil
		}
		u.current, u.key, u.released = p, key, false
	}
	return u.current
}

// msgTakenAgain is logged when a request reaches an unloaded config whose
// producer was released.
const msgTakenAgain = "a request reached a config already unloaded: taking its producer again"

func (u *producerUse) end() {
	if u.inflight.Add(-1) == 0 && u.unloaded.Load() {
		u.releaseIfIdle()
	}
}

// unload is called on Cleanup: the use ends now if no request runs, or
// when the last one ends.
func (u *producerUse) unload() error {
	u.unloaded.Store(true)
	return u.releaseIfIdle()
}

func (u *producerUse) releaseIfIdle() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.inflight.Load() == 0 && !u.released {
		u.err = releaseProducer(u.key)
		u.released = true
	}
	return u.err
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.queue_publish",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision applies defaults, resolves the placeholders of the secret and
// the brokers, and acquires the producer shared by every config that uses
// the same connection settings.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	// Defaults; the producer sets those of the batching options.
	h.MaxSize = cmp.Or(h.MaxSize, defaultMaxSize)
	h.Timeout = cmp.Or(h.Timeout, caddy.Duration(defaultTimeout))
	h.Acks = cmp.Or(h.Acks, "all")
	h.Compression = cmp.Or(h.Compression, "none")
	h.Mode = cmp.Or(h.Mode, modeBody)
	h.MaxRecords = cmp.Or(h.MaxRecords, defaultMaxRecords)
	h.Delivery = cmp.Or(h.Delivery, deliverySync)
	h.QueueSize = cmp.Or(h.QueueSize, defaultQueueSize)
	h.IdempotencyMaxKeys = cmp.Or(h.IdempotencyMaxKeys, defaultIdempotencyMaxKeys)
	h.IdempotencyMaxBytes = cmp.Or(h.IdempotencyMaxBytes, defaultIdempotencyMaxBytes)
	if err := h.Validate(); err != nil {
		return err
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}

	repl := caddy.NewReplacer()
	h.secrets, h.secretDigests = nil, nil
	for i, s := range h.Secrets {
		field := "secret"
		if len(h.Secrets) > 1 {
			field = fmt.Sprintf("secret %d", i+1)
		}
		secret, err := resolveSecret(repl, s)
		if err != nil {
			return fmt.Errorf("%s: %v", field, err)
		}
		if secret == "" {
			return fmt.Errorf("%s: resolves to an empty value", field)
		}
		h.secrets = append(h.secrets, []byte(secret))
		h.secretDigests = append(h.secretDigests, sha256.Sum256([]byte(secret)))
	}
	h.schema = nil
	if h.Schema != "" {
		sch, err := compileSchema(h.Schema)
		if err != nil {
			return fmt.Errorf("schema: %v", err)
		}
		h.schema = sch
	}
	h.headerNames = slices.Sorted(maps.Keys(h.Headers))
	h.idem = nil
	if h.IdempotencyWindow > 0 {
		h.idem, h.idemKey = acquireIdempotencyStore(time.Duration(h.IdempotencyWindow), h.IdempotencyMaxKeys, h.IdempotencyMaxBytes)
	}
	h.asyncPending = new(atomic.Int64)
	h.asyncDone = h.onAsyncDone
	h.allowTopics = make(map[string]bool, len(h.AllowTopics))
	for _, t := range h.AllowTopics {
		h.allowTopics[t] = true
	}

	h.brokers = h.brokers[:0]
	for _, b := range h.Brokers {
		list, err := repl.ReplaceOrErr(b, true, true)
		if err != nil {
			return fmt.Errorf("brokers: %v", err)
		}
		for addr := range strings.SplitSeq(list, ",") {
			if addr = strings.TrimSpace(addr); addr != "" {
				h.brokers = append(h.brokers, addr)
			}
		}
	}
	if len(h.brokers) == 0 {
		return errors.New("brokers: resolves to no address")
	}
	h.idemScope = idemScope(h.brokers)

	// The in-memory development broker, when configured, must listen
	// before the producer looks for brokers; apps are otherwise
	// provisioned in no particular order.
	if _, err := ctx.AppIfConfigured(devBrokerApp); err != nil && !errors.Is(err, caddy.ErrNotConfigured) {
		return err
	}

	cfg := producerConfig{
		Brokers:         h.brokers,
		Acks:            acksValues[h.Acks],
		Idempotence:     idempotenceValues[h.Idempotent],
		Compression:     compressionCodes[h.Compression],
		Linger:          time.Duration(h.Linger),
		MaxBatchRecords: h.MaxBatchRecords,
		MaxBatchBytes:   h.MaxBatchBytes,
		MaxInFlight:     h.MaxInFlight,
		ClientID:        h.ClientID,
	}
	var err error
	if h.TLS != nil {
		if cfg.TLS, err = h.TLS.material(repl); err != nil {
			return err
		}
	}
	if h.SASL != nil {
		if cfg.SASL, err = h.SASL.credentials(repl); err != nil {
			return err
		}
	}
	var key string
	h.producer, key, err = acquireProducer(cfg, h.logger)
	if err != nil {
		return err
	}
	h.use = &producerUse{cfg: cfg, logger: h.logger, original: h.producer, current: h.producer, key: key}
	if h.Idempotent == "on" {
		// A cluster that answers now and refuses is a config error;
		// one that does not answer is not (it may come up later).
		ctx, cancel := context.WithTimeout(context.Background(), idempotenceCheckTimeout)
		defer cancel()
		if err := h.producer.CheckIdempotence(ctx); err != nil {
			return fmt.Errorf("idempotent on: %v", err)
		}
	}
	return nil
}

// idempotenceCheckTimeout bounds the check of idempotent on at load.
const idempotenceCheckTimeout = 2 * time.Second

var compressionCodes = map[string]kafka.Compression{
	"none":   0,
	"gzip":   kafka.Gzip,
	"snappy": kafka.Snappy,
	"lz4":    kafka.Lz4,
	"zstd":   kafka.Zstd,
}

var idempotenceValues = map[string]producer.Idempotence{
	"":    producer.IdempotenceAuto,
	"on":  producer.IdempotenceOn,
	"off": producer.IdempotenceOff,
}

var acksValues = map[string]kafka.RequiredAcks{
	"all":    kafka.RequireAll,
	"leader": kafka.RequireOne,
	"none":   kafka.RequireNone,
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if len(h.Brokers) == 0 {
		return errors.New("brokers: at least one broker address is required")
	}
	if h.Topic == "" {
		return errors.New("topic: required")
	}
	if strings.ContainsAny(h.Topic, "{}") {
		if len(h.AllowTopics) == 0 {
			return errors.New("allow_topics: required when topic holds placeholders")
		}
	} else if err := validTopic(h.Topic); err != nil {
		return fmt.Errorf("topic: %v", err)
	}
	for _, t := range h.AllowTopics {
		if err := validTopic(t); err != nil {
			return fmt.Errorf("allow_topics: %v", err)
		}
	}
	if len(h.Secrets) == 0 {
		return errors.New("secret: required; use {env.NAME} or {file.PATH}")
	}
	if h.Mode != modeBody && h.Mode != modeRecords {
		return fmt.Errorf("mode: %q is not body or records", h.Mode)
	}
	if h.MaxRecords < 0 {
		return errors.New("max_records: must be positive")
	}
	if h.Delivery != deliverySync && h.Delivery != deliveryAsync {
		return fmt.Errorf("delivery: %q is not sync or async", h.Delivery)
	}
	if h.QueueSize < 0 || h.IdempotencyMaxKeys < 0 || h.IdempotencyMaxBytes < 0 || h.IdempotencyWindow < 0 {
		return errors.New("queue_size, idempotency_max_keys, idempotency_max_bytes, idempotency_window: must be positive")
	}
	if h.Mode == modeRecords && (h.Key != "" || len(h.Headers) > 0) {
		return errors.New("key, header: apply to mode body only; in mode records each record carries its own")
	}
	if h.MaxSize < 0 {
		return errors.New("max_size: must be positive")
	}
	if h.Timeout < 0 {
		return errors.New("timeout: must be positive")
	}
	if _, ok := idempotenceValues[h.Idempotent]; !ok {
		return fmt.Errorf("idempotent: %q is not on or off", h.Idempotent)
	}
	if h.Idempotent == "on" && cmp.Or(h.Acks, "all") != "all" {
		return fmt.Errorf("idempotent on: needs acks all, not %s", h.Acks)
	}
	if _, ok := acksValues[h.Acks]; !ok {
		return fmt.Errorf("acks: %q is not all, leader or none", h.Acks)
	}
	if _, ok := compressionCodes[h.Compression]; !ok && h.Compression != "" {
		return fmt.Errorf("compression: %q is not none, gzip, snappy, lz4 or zstd", h.Compression)
	}
	if h.SASL != nil && !saslMechanisms[h.SASL.Mechanism] {
		return fmt.Errorf("sasl: %q is not plain, scram-sha-256 or scram-sha-512", h.SASL.Mechanism)
	}
	if h.Linger < 0 {
		return errors.New("linger: must not be negative")
	}
	if h.MaxBatchRecords < 0 || h.MaxBatchBytes < 0 || h.MaxInFlight < 0 {
		return errors.New("max_batch_records, max_batch_bytes, max_in_flight: must be positive")
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

// Cleanup releases the handler's use of its producer; the last config that
// uses a producer flushes and closes it. It is safe after a failed Provision.
//
// Requests of the unloaded config may still be running (Caddy does not wait
// for them on a reload): the producer is released when the last of them
// ends.
func (h *Handler) Cleanup() error {
	if h.idem != nil {
		// Running requests keep using the store; it only leaves the pool.
		releaseIdempotencyStore(h.idemKey)
	}
	if h.use == nil {
		return nil
	}
	return h.use.unload()
}

// Answers with a fixed body.
var (
	bodyForbidden     = []byte(`{"err":"invalid auth token provided"}`)
	bodyInvalidJSON   = []byte(`{"err":"payload not valid JSON"}`)
	bodyTooLarge      = []byte(`{"err":"payload too large"}`)
	bodyNotAllowed    = []byte(`{"err":"method not allowed"}`)
	bodyUnknownTopic  = []byte(`{"err":"unknown topic"}`)
	bodyAccepted      = []byte(`{"success":true}`)
	errQueueFull      = &clientError{status: http.StatusServiceUnavailable, body: []byte(`{"error":"queue full","outcome":"not_written"}`)}
	bodyKeyReused     = []byte(`{"err":"Idempotency-Key already used with another request"}`)
	bodyKeyInProgress = []byte(`{"err":"a request with this Idempotency-Key is in progress"}`)
	bodyKeyTooLong    = []byte(`{"err":"Idempotency-Key longer than 255 bytes"}`)
)

// ServeHTTP answers every request itself, always with a JSON body; it never
// calls the next handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	// Until the topic is resolved, a topic from the request is unknown.
	x := exchange{w: w, producer: h.producer}
	if h.use != nil {
		x.producer = h.use.begin()
		defer h.use.end()
	}
	if len(h.allowTopics) == 0 {
		x.topic = h.Topic
	}
	err := h.serve(&x, r)
	countRequest(x.topic, x.status)
	if x.reason != "" {
		metricRejections.WithLabelValues(x.reason).Inc()
	}
	return err
}

func (h *Handler) serve(x *exchange, r *http.Request) error {
	w := x.w
	if r.Method != http.MethodPost {
		w.Header()["Allow"] = []string{"POST"}
		closeUnread(w, r)
		return x.reject(rejectMethod, http.StatusMethodNotAllowed, bodyNotAllowed)
	}
	var signature [sha256.Size]byte
	if h.SignatureHeader == "" && !h.authorized(r.Header.Get("Authorization")) ||
		h.SignatureHeader != "" && !parseSignature(r.Header.Get(h.SignatureHeader), &signature) {
		// A signed request whose header is missing or malformed is
		// refused before its body costs any memory.
		closeUnread(w, r)
		return x.reject(rejectAuth, http.StatusForbidden, bodyForbidden)
	}
	idemKey := r.Header.Get("Idempotency-Key")
	if len(idemKey) > maxIdempotencyKey {
		closeUnread(w, r)
		return x.reject(rejectIdempotency, http.StatusBadRequest, bodyKeyTooLong)
	}
	body, status := h.readBody(r)
	switch status {
	case http.StatusRequestEntityTooLarge:
		closeUnread(w, r)
		return x.reject(rejectTooLarge, status, bodyTooLarge)
	case http.StatusBadRequest:
		return x.reject(rejectInvalidJSON, status, bodyInvalidJSON)
	}
	if h.SignatureHeader != "" && !h.signed(&signature, body) {
		return x.reject(rejectAuth, http.StatusForbidden, bodyForbidden)
	}
	// Records mode checks the JSON as it parses the envelope.
	if h.Mode == modeBody && !validJSON(body) {
		return x.reject(rejectInvalidJSON, http.StatusBadRequest, bodyInvalidJSON)
	}
	topic, ok := h.topicFor(r)
	if !ok {
		x.topic = ""
		return x.reject(rejectTopic, http.StatusNotFound, bodyUnknownTopic)
	}
	x.topic = topic

	start := time.Now()
	var recs []*record
	if h.Mode == modeRecords {
		var cerr *clientError
		if recs, cerr = h.parseEnvelope(body, start); cerr != nil {
			reason := rejectRecords
			if cerr == invalidJSON {
				reason = rejectInvalidJSON
			}
			return x.reject(reason, cerr.status, cerr.body)
		}
	} else {
		recs = []*record{h.bodyRecord(r, body, start)}
	}
	if h.schema != nil {
		if cerr := h.checkSchema(recs); cerr != nil {
			return x.reject(rejectSchema, cerr.status, cerr.body)
		}
	}
	if idemKey == "" {
		return h.publish(x, r, recs, recs, start)
	}
	var digest [sha256.Size]byte
	if h.idem != nil {
		digest = idemDigest(h.Mode, body, recs) // before the key joins the headers
	}
	addKeyHeader(recs, idemKey)
	if h.idem == nil {
		return h.publish(x, r, recs, recs, start)
	}

	for _, rec := range recs {
		rec.AckBy = rec.Deadline.Add(lateAckWait)
	}
	entry, st := h.idem.begin(h.idemScope+topic+"\x00"+idemKey, digest, start)
	switch st {
	case idemOtherBody:
		return x.reject(rejectIdempotency, http.StatusUnprocessableEntity, bodyKeyReused)
	case idemInProgress:
		return x.reject(rejectIdempotency, http.StatusConflict, bodyKeyInProgress)
	}
	if st == idemRepeat && len(entry.recs) != len(recs) {
		// Not the same request after all (the digest covers the mode,
		// so this needs a hash collision); never pair records wrongly.
		h.idem.end(entry, nil)
		return x.reject(rejectIdempotency, http.StatusUnprocessableEntity, bodyKeyReused)
	}
	if h.idem.evictedOnce() {
		h.logger.Warn("more Idempotency-Keys than idempotency_max_keys or idempotency_max_bytes hold within idempotency_window: the oldest are forgotten early",
			zap.Int("idempotency_max_keys", h.IdempotencyMaxKeys), zap.Int64("idempotency_max_bytes", h.IdempotencyMaxBytes))
	}
	final, send := recs, recs
	if st == idemRepeat {
		final, send = entry.reuse(r.Context(), recs, recs[0].Deadline, h.Delivery == deliverySync)
		if len(send) == 0 {
			w.Header()["Idempotent-Replayed"] = []string{"true"}
			metricReplays.Inc()
		}
	}
	var stored []*record
	defer func() { h.idem.end(entry, stored) }()
	err := h.publish(x, r, final, send, start)
	if send == nil || send[0].Queued() {
		stored = final // the records were queued
	}
	return err
}

// publish produces the records of send and answers with final, the
// records that stand for the request: send and, for a repeated request,
// those of the first attempt that stand.
func (h *Handler) publish(x *exchange, r *http.Request, final, send []*record, start time.Time) error {
	topic := x.topic
	if len(send) > 0 {
		if h.Delivery == deliveryAsync {
			if cerr := h.enqueue(x.producer, r, topic, send); cerr != nil {
				switch {
				case cerr == errQueueFull:
					x.reason = rejectQueueFull
				case cerr.status == http.StatusBadRequest:
					x.reason = rejectRecords
				}
				return x.answer(cerr.status, cerr.body)
			}
			return x.answer(http.StatusAccepted, bodyAccepted)
		}
		set, perr := x.producer.Topic(r.Context(), topic, send)
		if perr != nil {
			// Every record failed alike, before any was queued.
			for _, rec := range send {
				rec.Answer = perr
				countRecord(topic, rec)
			}
			h.logFailure(topic, send, start)
			if h.Mode == modeRecords {
				return x.answerRecords(final)
			}
			return x.answerError(perr)
		}
		if cerr := checkPartitions(send, set.Partitions()); cerr != nil {
			return x.reject(rejectRecords, cerr.status, cerr.body)
		}
		x.producer.Send(r.Context(), set, send)
		failed := false
		for _, rec := range send {
			countRecord(topic, rec)
			failed = failed || rec.Answer != nil
		}
		if failed {
			h.logFailure(topic, send, start)
		} else {
			metricsFor(topic).latency.Observe(time.Since(start).Seconds())
		}
	} else if h.Delivery == deliveryAsync {
		return x.answer(http.StatusAccepted, bodyAccepted)
	}
	if h.Mode == modeRecords {
		return x.answerRecords(final)
	}
	return x.answerBody(final[0])
}

// enqueue queues the records for delivery async, if they fit in
// queue_size, without waiting for the broker.
func (h *Handler) enqueue(p *producer.Producer, r *http.Request, topic string, recs []*record) *clientError {
	n := int64(len(recs))
	if h.asyncPending.Add(n) > int64(h.QueueSize) {
		h.asyncPending.Add(-n)
		return errQueueFull
	}
	set, perr := p.Topic(r.Context(), topic, recs)
	if perr != nil {
		h.asyncPending.Add(-n)
		for _, rec := range recs {
			rec.Answer = perr
			countRecord(topic, rec)
		}
		h.logFailure(topic, recs, recs[0].Time)
		return errorAnswer(perr)
	}
	if cerr := checkPartitions(recs, set.Partitions()); cerr != nil {
		h.asyncPending.Add(-n)
		return cerr
	}
	for _, rec := range recs {
		rec.OnDone = h.asyncDone
	}
	if queued, perr := p.Enqueue(set, recs); perr != nil {
		// Shutting down: the records before were queued.
		h.asyncPending.Add(-int64(len(recs) - queued))
		return errorAnswer(perr)
	}
	return nil
}

// onAsyncDone accounts for a record of delivery async that is done, and
// logs it if it failed. The record's queue is locked.
func (h *Handler) onAsyncDone(rec *record) {
	h.asyncPending.Add(-1)
	// rec.Answer is its waiter's; a record of delivery async has none,
	// but a repeat of its request may read it.
	countOutcome(rec.Topic(), rec.Err(), rec.ValueLen())
	if rec.Err() != nil {
		h.logger.Error("asynchronous publish failed",
			zap.String("topic", rec.Topic()),
			zap.Int("partition", rec.Partition),
			zap.String("kind", rec.Err().Outcome.String()),
			zap.Int("attempts", rec.Attempts()),
			zap.Duration("duration", time.Since(rec.Time)),
			zap.Error(rec.Err()))
	}
}

// logFailure logs a request whose records were not all acknowledged: one
// line at error level, about the first record that failed: its partition
// if it was queued on one, and the produce requests that carried it (0 if
// it failed before any did).
func (h *Handler) logFailure(topic string, recs []*record, start time.Time) {
	var first *record
	failed := 0
	for _, rec := range recs {
		if rec.Answer != nil {
			first = cmp.Or(first, rec)
			failed++
		}
	}
	if first == nil {
		return
	}
	fields := []zap.Field{
		zap.String("topic", topic),
		zap.String("kind", first.Answer.Outcome.String()),
		zap.Int("records", len(recs)),
		zap.Int("failed", failed),
		zap.Duration("duration", time.Since(start)),
		zap.Error(first.Answer),
	}
	attempts := 0
	if first.Queued() {
		var partition int
		partition, attempts = first.Progress()
		fields = append(fields, zap.Int("partition", partition))
	}
	fields = append(fields, zap.Int("attempts", attempts))
	h.logger.Error("publish failed", fields...)
}

// topicFor resolves the request's topic; false if it is not allowed.
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

// validJSON reports whether body is exactly one JSON value, in valid UTF-8.
func validJSON(body []byte) bool {
	return utf8.Valid(body) && json.Valid(body)
}

// exchange is one request's answer as it is made: the status written,
// the topic, and why the request was refused, for the metrics.
type exchange struct {
	w        http.ResponseWriter
	producer *producer.Producer // nil if the handler has none any more
	status   int
	topic    string
	reason   string
}

// reject answers a request refused before it reached Kafka.
func (x *exchange) reject(reason string, status int, body []byte) error {
	x.reason = reason
	return x.answer(status, body)
}

// answer writes the status and body. Header values are fresh slices for
// each answer: Caddy's deferred header replacements (header >Name ...)
// write into the values in place.
func (x *exchange) answer(status int, body []byte) error {
	w := x.w
	x.status = status
	w.Header()["Content-Type"] = []string{"application/json"}
	if status == http.StatusServiceUnavailable {
		w.Header()["Retry-After"] = []string{"1"}
	}
	w.WriteHeader(status)
	_, err := w.Write(body)
	return err
}

// answerError answers a failed publish: the status says whether retrying is
// safe (503), the outcome is unknown (504) or it will never work (413, 500).
func (x *exchange) answerError(perr *publishError) error {
	cerr := errorAnswer(perr)
	return x.answer(cerr.status, cerr.body)
}

// errorAnswer is the answer for a failed publish.
func errorAnswer(perr *publishError) *clientError {
	body, _ := json.Marshal(struct {
		Error   string `json:"error"`
		Outcome string `json:"outcome,omitempty"`
	}{perr.Reason, outcomeWord(perr.Outcome)})
	return &clientError{status: statusOf(perr.Outcome), body: body}
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

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
