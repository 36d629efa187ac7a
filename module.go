// Package queuepublish is a Caddy HTTP handler that publishes the JSON
// body of authenticated POST requests to a Kafka topic: any HTTP client
// becomes a Kafka producer.
package queuepublish

import (
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"github.com/santhosh-tekuri/jsonschema/v6"
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
	defaultQueueTimeout        = 2 * time.Minute
	defaultIdempotencyMaxKeys  = 100000
	defaultIdempotencyMaxBytes = 100000000

	// lateAckWait is how long, past a request's timeout, the producer
	// still waits for the broker's answer on a record with an
	// Idempotency-Key, so that a repeat learns whether it landed.
	lateAckWait = 30 * time.Second
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

	// The origins (scheme://host[:port]) whose pages may send requests
	// from a browser and read the answers: a CORS preflight from one of
	// them is answered 204, one from another origin 403, and the answers
	// to a listed origin's requests let its page read them. Empty: no
	// CORS, and a preflight is answered 405 as any method but POST.
	CORS []string `json:"cors,omitempty"`

	// If set, a request without Authorization may authenticate with a
	// token in its query (?token=...), minted with a secret for the
	// request's topic (MintToken) and expiring within this long of the
	// request: a page publishes without the secret. Unset, tokens are
	// refused.
	TokenMaxAge caddy.Duration `json:"token_max_age,omitempty"`

	// If set, requests are authenticated by this header instead of
	// Authorization: it must hold "sha256=" and the hex HMAC-SHA256 of
	// the raw body keyed with a secret, as GitHub signs webhooks
	// (X-Hub-Signature-256). The signature covers the body only: the
	// path, query and other headers of a replayed body may change, so a
	// webhook handler should pin its topic.
	SignatureHeader string `json:"signature_header,omitempty"`

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
	// same names, so that a consumer can continue the trace: "on" or
	// "off". A record that has a traceparent header of its own keeps it.
	// Default: "on".
	TraceHeaders string `json:"trace_headers,omitempty"`

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

	// How long an Idempotency-Key is remembered. A repeat of a request
	// with the same key and body within the window is answered from the
	// first (same partitions and offsets) without producing again; the
	// same key with another body is answered 422; a repeat while the
	// first is still being handled is answered 409. Zero (the default)
	// turns this off; the key is still stored as a record header.
	IdempotencyWindow caddy.Duration `json:"idempotency_window,omitempty"`

	// Where the Idempotency-Keys of idempotency_window are remembered:
	// unset, in this instance's memory; a redis:// or rediss:// (TLS) URL,
	// on that Redis or Valkey server, shared by every instance that names
	// it, so that a repeat reaching another instance of a fleet is still
	// answered from the first attempt. The URL holds the user and
	// password and should be a placeholder, {env.*} or {file.*}; it is
	// never logged. With ?master_name=<name> it names Sentinels, with
	// ?addr=<host:port> for each further node a Redis Cluster.
	IdempotencyRedis string `json:"idempotency_redis,omitempty"`

	// With a rediss:// idempotency_redis, how its TLS connections are
	// verified and authenticated, with the settings of the brokers' tls:
	// a CA instead of the system's roots, a client certificate and key,
	// the name the server's certificate must hold.
	IdempotencyRedisTLS *BrokerTLS `json:"idempotency_redis_tls,omitempty"`

	// With idempotency_redis, what the Redis keys start with.
	// Default: "queue_publish:".
	IdempotencyKeyPrefix string `json:"idempotency_key_prefix,omitempty"`

	// With idempotency_redis, what a request with an Idempotency-Key gets
	// when the store cannot be reached: "reject" (503 with Retry-After;
	// nothing is produced, a retry is safe) or "produce" (it is
	// published without the store, and a repeat may be stored twice).
	// Requests without a key are never affected. Default: "reject".
	OnStoreError string `json:"on_store_error,omitempty"`

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
	idemSettings  idemSettings // this handler's, counted by idem
	shared        *redisStore
	sharedPoolKey string        // the shared store's key in its pool
	idemScope     string        // the brokers part of the scope of keys
	asyncPending  *atomic.Int64 // records queued by delivery async, not yet done
	asyncDone     func(*record)
	schema        *jsonschema.Schema
	secrets       [][]byte
	secretDigests [][sha256.Size]byte
	headerNames   []string
	traceHeaders  bool
	// corsAllowHeaders: the request headers a page of a cors origin may send.
	corsAllowHeaders string
	allowTopics      map[string]bool
	producer         *producer.Producer
	use              *producerUse
	logger           *zap.Logger
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
	h.applyDefaults()
	if err := h.Validate(); err != nil {
		return err
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	repl := caddy.NewReplacer()
	if err := h.provisionSecrets(repl); err != nil {
		return err
	}
	if err := h.provisionRequests(); err != nil {
		return err
	}
	if err := h.provisionSharedStore(repl); err != nil {
		return err
	}
	if err := h.provisionProducer(ctx, repl); err != nil {
		return err
	}
	h.provisionIdempotency() // its keys' scope is the brokers resolved
	return nil
}

// applyDefaults sets every unset option but the producer's batching,
// which the producer defaults.
func (h *Handler) applyDefaults() {
	h.MaxSize = cmp.Or(h.MaxSize, defaultMaxSize)
	h.Timeout = cmp.Or(h.Timeout, caddy.Duration(defaultTimeout))
	h.Acks = cmp.Or(h.Acks, "all")
	h.Compression = cmp.Or(h.Compression, "none")
	h.Mode = cmp.Or(h.Mode, modeBody)
	h.Delivery = cmp.Or(h.Delivery, deliverySync)
	h.QueueSize = cmp.Or(h.QueueSize, defaultQueueSize)
	if h.MaxRecords == 0 {
		h.MaxRecords = defaultMaxRecords
		if h.Delivery == deliveryAsync && h.QueueSize > 0 {
			// A request is queued whole: by default, at most as many
			// records as the queue holds (more get 413, not a 503 no
			// retry could pass).
			h.MaxRecords = min(h.MaxRecords, h.QueueSize)
		}
	}
	h.QueueTimeout = cmp.Or(h.QueueTimeout, caddy.Duration(defaultQueueTimeout))
	h.IdempotencyMaxKeys = cmp.Or(h.IdempotencyMaxKeys, defaultIdempotencyMaxKeys)
	h.IdempotencyMaxBytes = cmp.Or(h.IdempotencyMaxBytes, defaultIdempotencyMaxBytes)
	if h.IdempotencyRedis != "" {
		h.IdempotencyKeyPrefix = cmp.Or(h.IdempotencyKeyPrefix, "queue_publish:")
		h.OnStoreError = cmp.Or(h.OnStoreError, storeErrorReject)
	}
}

// provisionRequests prepares what serving a request reads: the schema,
// the headers taken from a request, the topics allowed, the accounting of
// delivery async.
func (h *Handler) provisionRequests() error {
	h.schema = nil
	if h.Schema != "" {
		sch, err := compileSchema(h.Schema)
		if err != nil {
			return fmt.Errorf("schema: %v", err)
		}
		h.schema = sch
	}
	h.headerNames = slices.Sorted(maps.Keys(h.Headers))
	h.traceHeaders = h.TraceHeaders != "off"
	h.corsAllowHeaders = h.corsHeaders()
	h.allowTopics = make(map[string]bool, len(h.AllowTopics))
	for _, t := range h.AllowTopics {
		h.allowTopics[t] = true
	}
	h.asyncPending = new(atomic.Int64)
	h.asyncDone = h.onAsyncDone
	if h.Delivery == deliveryAsync {
		asyncQueues.add(h)
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if len(h.Brokers) == 0 {
		return errors.New("brokers: at least one broker address is required")
	}
	switch {
	case h.Mode == modeConfluent:
		if h.Topic != "" {
			return errors.New("topic: not used in mode confluent, where the path names the topic; list the topics allowed in allow_topics")
		}
		if len(h.AllowTopics) == 0 {
			return errors.New("allow_topics: required in mode confluent")
		}
		if h.SignatureHeader != "" {
			return errors.New("signature_header: not in mode confluent, whose clients send their credentials in Authorization")
		}
		if h.Delivery == deliveryAsync {
			return errors.New("delivery async: not in mode confluent, whose answers carry each record's offset")
		}
		if h.Schema != "" {
			// A value may be BINARY, STRING or null (a tombstone), of
			// which a JSON Schema says nothing.
			return errors.New("schema: not in mode confluent, whose record values need not be JSON")
		}
	case h.ClusterID != "":
		return errors.New("cluster_id: applies to mode confluent only")
	case h.Topic == "":
		return errors.New("topic: required")
	case strings.ContainsAny(h.Topic, "{}"):
		if len(h.AllowTopics) == 0 {
			return errors.New("allow_topics: required when topic holds placeholders")
		}
	default:
		if err := validTopic(h.Topic); err != nil {
			return fmt.Errorf("topic: %v", err)
		}
		if len(h.AllowTopics) > 0 && !slices.Contains(h.AllowTopics, h.Topic) {
			return fmt.Errorf("allow_topics: does not list topic %q, which holds no placeholder: every request would be answered 404", h.Topic)
		}
	}
	for _, t := range h.AllowTopics {
		if err := validTopic(t); err != nil {
			return fmt.Errorf("allow_topics: %v", err)
		}
	}
	for _, origin := range h.CORS {
		if err := validOrigin(origin); err != nil {
			return fmt.Errorf("cors: %v", err)
		}
	}
	if h.TokenMaxAge < 0 {
		return errors.New("token_max_age: must be positive")
	}
	if h.SignatureHeader != "" {
		if err := validSignatureHeader(h.SignatureHeader); err != nil {
			return fmt.Errorf("signature_header: %v", err)
		}
	}
	if h.TokenMaxAge > 0 && h.SignatureHeader != "" {
		return errors.New("token_max_age: a handler with signature_header takes signed bodies only")
	}
	if len(h.Secrets) == 0 {
		return errors.New("secret: required; use {env.NAME} or {file.PATH}")
	}
	if err := modes.check(h.Mode); err != nil {
		return fmt.Errorf("mode: %v", err)
	}
	if h.MaxRecords < 0 {
		return errors.New("max_records: must be positive")
	}
	if err := deliveries.check(h.Delivery); err != nil {
		return fmt.Errorf("delivery: %v", err)
	}
	if h.QueueSize < 0 || h.IdempotencyMaxKeys < 0 || h.IdempotencyMaxBytes < 0 || h.IdempotencyWindow < 0 {
		return errors.New("queue_size, idempotency_max_keys, idempotency_max_bytes, idempotency_window: must be positive")
	}
	if h.Delivery == deliveryAsync && h.Mode == modeRecords {
		// A request is queued whole or not at all: one larger than the
		// queue would be answered 503 forever, a retry never fitting.
		queueSize, maxRecords := cmp.Or(h.QueueSize, defaultQueueSize), h.MaxRecords // 0: not set, min(500, queue_size)
		if queueSize < maxRecords {
			return fmt.Errorf("queue_size: %d is less than max_records (%d), the most records one request may carry, which could never be queued; raise queue_size or lower max_records", queueSize, maxRecords)
		}
	}
	if h.IdempotencyRedis != "" && h.IdempotencyWindow == 0 {
		return errors.New("idempotency_store redis: needs an idempotency_window")
	}
	if h.IdempotencyRedis != "" && h.Delivery == deliveryAsync {
		return errors.New("idempotency_store redis: not with delivery async, whose requests are answered before the broker settles their records")
	}
	if strings.ContainsAny(h.IdempotencyKeyPrefix, "{}") {
		return errors.New("idempotency_key_prefix: must not hold '{' or '}', which would change the keys' Redis Cluster hash slot")
	}
	if h.IdempotencyRedis == "" && (h.IdempotencyKeyPrefix != "" || h.OnStoreError != "" || h.IdempotencyRedisTLS != nil) {
		return errors.New("idempotency_key_prefix, on_store_error, the TLS settings of idempotency_store: apply to idempotency_store redis only")
	}
	if h.OnStoreError != "" {
		if err := storeErrorChoices.check(h.OnStoreError); err != nil {
			return fmt.Errorf("on_store_error: %v", err)
		}
	}
	if h.Mode != modeBody && (h.Key != "" || len(h.Headers) > 0) {
		return fmt.Errorf("key, header: apply to mode body only; in mode %s each record carries its own", h.Mode)
	}
	if _, ok := h.Headers[""]; ok {
		return errors.New("header: a record header needs a name")
	}
	if h.MaxSize < 0 {
		return errors.New("max_size: must be positive")
	}
	if h.Timeout < 0 {
		return errors.New("timeout: must be positive")
	}
	if h.QueueTimeout < 0 {
		return errors.New("queue_timeout: must be positive")
	}
	if h.Idempotent != "" {
		if err := idempotence.check(h.Idempotent); err != nil {
			return fmt.Errorf("idempotent: %v", err)
		}
	}
	if h.TraceHeaders != "" {
		if err := switches.check(h.TraceHeaders); err != nil {
			return fmt.Errorf("trace_headers: %v", err)
		}
	}
	if h.Idempotent == "on" && cmp.Or(h.Acks, "all") != "all" {
		return fmt.Errorf("idempotent on: needs acks all, not %s", h.Acks)
	}
	if err := acksLevels.check(h.Acks); err != nil {
		return fmt.Errorf("acks: %v", err)
	}
	if h.Compression != "" {
		if err := compressions.check(h.Compression); err != nil {
			return fmt.Errorf("compression: %v", err)
		}
	}
	if h.SASL != nil {
		if err := saslMechanisms.check(h.SASL.Mechanism); err != nil {
			return fmt.Errorf("sasl: %v", err)
		}
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
	asyncQueues.remove(h)
	if h.idem != nil {
		// Running requests keep using the store; it only leaves the pool.
		h.idem.release(h.idemSettings)
	}
	if h.shared != nil {
		redisStores.Delete(h.sharedPoolKey)
	}
	if h.use == nil {
		return nil
	}
	return h.use.unload()
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
