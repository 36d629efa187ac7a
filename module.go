// Package queuepublish is a Caddy HTTP handler that publishes the JSON
// body of authenticated POST requests to a Kafka topic: any HTTP client
// becomes a Kafka producer.
package queuepublish

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

const (
	defaultMaxSize = 1000000 // 1MB
	defaultTimeout = 5 * time.Second
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

	// The topic that records are produced to. It must exist. Required.
	Topic string `json:"topic,omitempty"`

	// The shared secret that clients send in the Authorization header,
	// either as the whole value or after "Bearer ". Use a placeholder,
	// {env.NAME} or {file.PATH}, so that the secret stays out of the
	// config; it is resolved once when the config loads, and a secret
	// that resolves empty stops the config from loading. Required.
	Secret string `json:"secret,omitempty"`

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

	// How record batches are compressed on the way to the brokers:
	// "none", "gzip", "snappy", "lz4" or "zstd". Default: "none".
	Compression string `json:"compression,omitempty"`

	// How long a partition's sender waits, under concurrent load, for
	// more records before sending the next produce request, counted from
	// the start of the previous one. A record arriving at an idle
	// partition is always sent at once. Default: 0 (send as soon as the
	// previous request is answered).
	Linger caddy.Duration `json:"linger,omitempty"`

	// The most records in one produce request. Default: 1000.
	MaxBatchRecords int `json:"max_batch_records,omitempty"`

	// The most bytes of records in one produce request; keep it at or
	// below the brokers' message.max.bytes. Default: 1000000.
	MaxBatchBytes int `json:"max_batch_bytes,omitempty"`

	// How many produce requests each partition may have in flight.
	// Above 1, a retried request may land after a later one, so records
	// of a partition may be stored out of order. Default: 1.
	MaxInFlight int `json:"max_in_flight,omitempty"`

	brokers      []string
	secretDigest [sha256.Size]byte
	producer     *producer
	producerKey  string
	released     bool
	logger       *zap.Logger
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
	if h.MaxSize == 0 {
		h.MaxSize = defaultMaxSize
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(defaultTimeout)
	}
	if h.Acks == "" {
		h.Acks = "all"
	}
	if h.Compression == "" {
		h.Compression = "none"
	}
	if h.MaxBatchRecords == 0 {
		h.MaxBatchRecords = defaultMaxBatchRecords
	}
	if h.MaxBatchBytes == 0 {
		h.MaxBatchBytes = defaultMaxBatchBytes
	}
	if h.MaxInFlight == 0 {
		h.MaxInFlight = defaultMaxInFlight
	}
	if err := h.Validate(); err != nil {
		return err
	}

	repl := caddy.NewReplacer()
	secret, err := repl.ReplaceOrErr(h.Secret, true, true)
	if err != nil {
		return fmt.Errorf("secret: %v", err)
	}
	if secret == "" {
		return errors.New("secret: resolves to an empty value")
	}
	h.secretDigest = sha256.Sum256([]byte(secret))

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

	// The in-memory development broker, when configured, must listen
	// before the producer looks for brokers; apps are otherwise
	// provisioned in no particular order.
	if _, err := ctx.AppIfConfigured(devBrokerApp); err != nil && !errors.Is(err, caddy.ErrNotConfigured) {
		return err
	}

	h.producer, h.producerKey, err = acquireProducer(producerConfig{
		Brokers:         h.brokers,
		Acks:            acksValues[h.Acks],
		Compression:     compressionCodes[h.Compression],
		Linger:          time.Duration(h.Linger),
		MaxBatchRecords: h.MaxBatchRecords,
		MaxBatchBytes:   h.MaxBatchBytes,
		MaxInFlight:     h.MaxInFlight,
	}, h.logger)
	return err
}

var compressionCodes = map[string]kafka.Compression{
	"none":   0,
	"gzip":   kafka.Gzip,
	"snappy": kafka.Snappy,
	"lz4":    kafka.Lz4,
	"zstd":   kafka.Zstd,
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
	if err := validTopic(h.Topic); err != nil {
		return fmt.Errorf("topic: %v", err)
	}
	if h.Secret == "" {
		return errors.New("secret: required; use {env.NAME} or {file.PATH}")
	}
	if h.MaxSize < 0 {
		return errors.New("max_size: must be positive")
	}
	if h.Timeout < 0 {
		return errors.New("timeout: must be positive")
	}
	if _, ok := acksValues[h.Acks]; !ok {
		return fmt.Errorf("acks: %q is not all, leader or none", h.Acks)
	}
	if _, ok := compressionCodes[h.Compression]; !ok && h.Compression != "" {
		return fmt.Errorf("compression: %q is not none, gzip, snappy, lz4 or zstd", h.Compression)
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
// for them on a reload), so the handler keeps its producer: if no config
// uses it any more, they are answered 503.
func (h *Handler) Cleanup() error {
	if h.producer == nil || h.released {
		return nil
	}
	h.released = true
	return releaseProducer(h.producerKey)
}

// Answers with a fixed body.
var (
	bodySuccess      = []byte(`{"success":true}`)
	bodyForbidden    = []byte(`{"err":"invalid auth token provided"}`)
	bodyInvalidJSON  = []byte(`{"err":"payload not valid JSON"}`)
	bodyTooLarge     = []byte(`{"err":"payload too large"}`)
	bodyNotAllowed   = []byte(`{"err":"method not allowed"}`)
	headerJSON       = []string{"application/json"}
	headerAllowPost  = []string{"POST"}
	headerRetryAfter = []string{"1"}
)

// ServeHTTP answers every request itself, always with a JSON body; it never
// calls the next handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodPost {
		w.Header()["Allow"] = headerAllowPost
		return answer(w, http.StatusMethodNotAllowed, bodyNotAllowed)
	}
	if !h.authorized(r.Header.Get("Authorization")) {
		return answer(w, http.StatusForbidden, bodyForbidden)
	}
	body, status := h.readBody(r)
	switch status {
	case http.StatusRequestEntityTooLarge:
		return answer(w, status, bodyTooLarge)
	case http.StatusBadRequest:
		return answer(w, status, bodyInvalidJSON)
	}
	if !validJSON(body) {
		return answer(w, http.StatusBadRequest, bodyInvalidJSON)
	}

	start := time.Now()
	rec := newRecord(body, start, time.Duration(h.Timeout))
	if perr := h.producer.send(r.Context(), h.Topic, rec); perr != nil {
		h.logger.Error("publish failed",
			zap.String("topic", h.Topic),
			zap.String("kind", perr.outcome.String()),
			zap.Int("attempts", rec.attempts),
			zap.Duration("duration", time.Since(start)),
			zap.Error(perr))
		return answerError(w, perr)
	}
	return answer(w, http.StatusOK, bodySuccess)
}

// authorized compares the Authorization header, whole and without a
// "Bearer " prefix, with the secret. It compares SHA-256 digests in constant
// time, so neither the secret's content nor its length shows in the timing.
func (h *Handler) authorized(header string) bool {
	token := header
	if len(header) > 7 && strings.EqualFold(header[:7], "Bearer ") {
		token = header[7:]
	}
	whole := sha256.Sum256(stringBytes(header))
	bare := sha256.Sum256(stringBytes(token))
	return subtle.ConstantTimeCompare(whole[:], h.secretDigest[:])|
		subtle.ConstantTimeCompare(bare[:], h.secretDigest[:]) == 1
}

// stringBytes is s as a byte slice without a copy; the slice must not be
// written to. sha256.Sum256 only reads it.
func stringBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// readBody reads the whole body, but never more than max_size+1 bytes. It
// returns 413 for a body over max_size and 400 for one that ended early.
func (h *Handler) readBody(r *http.Request) ([]byte, int) {
	if r.ContentLength > h.MaxSize {
		return nil, http.StatusRequestEntityTooLarge
	}
	if r.ContentLength >= 0 {
		// The length is known, and net/http never gives more than
		// it: read exactly that, usually in a single Read.
		body := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return nil, http.StatusBadRequest
		}
		return body, http.StatusOK
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(r.Body, h.MaxSize+1)); err != nil {
		return nil, http.StatusBadRequest
	}
	if int64(buf.Len()) > h.MaxSize {
		return nil, http.StatusRequestEntityTooLarge
	}
	return buf.Bytes(), http.StatusOK
}

// validJSON reports whether body is exactly one JSON value, in valid UTF-8.
func validJSON(body []byte) bool {
	return utf8.Valid(body) && json.Valid(body)
}

func answer(w http.ResponseWriter, status int, body []byte) error {
	w.Header()["Content-Type"] = headerJSON
	w.WriteHeader(status)
	_, err := w.Write(body)
	return err
}

// answerError answers a failed publish: the status says whether retrying is
// safe (503), the outcome is unknown (504) or it will never work (413, 500).
func answerError(w http.ResponseWriter, perr *publishError) error {
	status := http.StatusInternalServerError
	switch perr.outcome {
	case outcomeRetry:
		status = http.StatusServiceUnavailable
		w.Header()["Retry-After"] = headerRetryAfter
	case outcomeUnknown:
		status = http.StatusGatewayTimeout
	case outcomeTooLarge:
		status = http.StatusRequestEntityTooLarge
	}
	body, err := json.Marshal(struct {
		Error   string `json:"error"`
		Outcome string `json:"outcome,omitempty"`
	}{perr.reason, outcomeWord(perr.outcome)})
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	return answer(w, status, body)
}

// outcomeWord tells a client whether the record may have been written.
func outcomeWord(o outcome) string {
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
