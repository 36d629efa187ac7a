package queuepublish

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"go.uber.org/zap"

	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// The handler's side of Kafka: its settings become a producer.Config, and
// handlers with the same settings share one producer across config
// reloads, through a caddy.UsagePool.

// record, publishError and the outcomes are the producer's.
type (
	record       = producer.Record
	publishError = producer.Error
)

const (
	outcomeRetry    = producer.OutcomeRetry
	outcomeUnknown  = producer.OutcomeUnknown
	outcomeTooLarge = producer.OutcomeTooLarge
	outcomeRejected = producer.OutcomeRejected
)

func newRecord(value []byte, now time.Time, timeout time.Duration) *record {
	return producer.NewRecord(value, now, timeout)
}

const (
	// clientID identifies this producer to the brokers.
	clientID = "caddy-queue-publish"
	// devBrokerApp is the module ID of the in-memory development broker.
	devBrokerApp = "queue_publish_dev_broker"
)

// producers holds one producer per distinct connection setting, shared by
// every handler (across config reloads) that uses the same settings.
var producers = caddy.NewUsagePool()

// producerConfig is everything that shapes a connection to a Kafka cluster.
// Handlers whose producerConfig is equal share one producer.
type producerConfig struct {
	Brokers     []string             `json:"brokers"`
	Acks        kafka.RequiredAcks   `json:"acks"`
	Compression kafka.Compression    `json:"compression"`
	ClientID    string               `json:"client_id"`
	TLS         *tlsMaterial         `json:"tls,omitempty"`
	SASL        *saslCredentials     `json:"sasl,omitempty"`
	Idempotence producer.Idempotence `json:"idempotence"`
	Linger      time.Duration        `json:"linger"`
	// MaxBatchRecords and MaxBatchBytes bound a partition's batch;
	// MaxInFlight bounds the requests in flight to a broker.
	MaxBatchRecords int `json:"max_batch_records"`
	MaxBatchBytes   int `json:"max_batch_bytes"`
	MaxInFlight     int `json:"max_in_flight"`
}

// key is the canonical identity of the settings in the producer pool. It is
// a digest, so that the credentials in the settings never sit in a key.
func (c producerConfig) key() string {
	c.Brokers = slices.Clone(c.Brokers)
	slices.Sort(c.Brokers)
	c.Brokers = slices.Compact(c.Brokers)
	c.ClientID = cmp.Or(c.ClientID, clientID)
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // plain data; cannot fail
	}
	sum := sha256.Sum256(b)
	return "queue_publish.producer." + hex.EncodeToString(sum[:])
}

// config is the producer's configuration for these settings.
func (c producerConfig) config(logger *zap.Logger) (producer.Config, error) {
	cfg := producer.Config{
		Brokers:         c.Brokers,
		Acks:            c.Acks,
		Compression:     c.Compression,
		ClientID:        cmp.Or(c.ClientID, clientID),
		Idempotence:     c.Idempotence,
		Linger:          c.Linger,
		MaxBatchRecords: c.MaxBatchRecords,
		MaxBatchBytes:   c.MaxBatchBytes,
		MaxInFlight:     c.MaxInFlight,
		Hooks:           producerMetrics{},
		Logger:          logger,
	}
	var err error
	if c.TLS != nil {
		if cfg.TLS, err = c.TLS.config(); err != nil {
			return cfg, err
		}
	}
	if c.SASL != nil {
		var mechanism sasl.Mechanism
		if mechanism, err = c.SASL.mechanism(); err != nil {
			return cfg, err
		}
		cfg.SASL = mechanism
	}
	return cfg, nil
}

// pooledProducer is a producer in the pool.
type pooledProducer struct{ *producer.Producer }

// Destruct stops taking records and closes the producer once every queued
// record is acknowledged or has failed (each within its own deadline). It
// implements caddy.Destructor for the producer pool, whose last user (a
// config's Cleanup, or the last request of an unloaded config) calls it:
// it returns at once, so that neither a reload nor that request's client
// waits for records already answered, and the flush goes on in the
// background. When the process exits, it flushes before returning.
func (p pooledProducer) Destruct() error {
	p.Stop()
	if caddy.Exiting() {
		p.Finish()
		return nil
	}
	go p.Finish()
	return nil
}

// acquireProducer returns the shared producer for cfg, creating it if no
// loaded config uses these settings yet. Every successful call must be
// matched by one releaseProducer(key).
func acquireProducer(c producerConfig, logger *zap.Logger) (p *producer.Producer, key string, err error) {
	key = c.key()
	val, _, err := producers.LoadOrNew(key, func() (caddy.Destructor, error) {
		cfg, err := c.config(logger)
		if err != nil {
			return nil, err
		}
		return pooledProducer{producer.New(cfg)}, nil
	})
	if err != nil {
		return nil, "", err
	}
	return val.(pooledProducer).Producer, key, nil
}

// releaseProducer gives back one use of a shared producer; the last release
// flushes and closes it.
func releaseProducer(key string) error {
	_, err := producers.Delete(key)
	return err
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

// enter counts a request and returns the producer it publishes with (nil
// if none can be had); leave must follow.
func (u *producerUse) enter() *producer.Producer {
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

// leave ends a request that entered.
func (u *producerUse) leave() {
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

// idempotenceCheckTimeout bounds the check of idempotent on at load.
const idempotenceCheckTimeout = 2 * time.Second

// provisionProducer resolves the brokers and the connection settings and
// acquires the producer shared by the configs that use the same ones.
func (h *Handler) provisionProducer(ctx caddy.Context, repl *caddy.Replacer) error {
	if err := h.resolveBrokers(repl); err != nil {
		return err
	}
	// The in-memory development broker, when configured, must listen
	// before the producer looks for brokers; apps are otherwise
	// provisioned in no particular order.
	if _, err := ctx.AppIfConfigured(devBrokerApp); err != nil && !errors.Is(err, caddy.ErrNotConfigured) {
		return err
	}
	cfg := producerConfig{
		Brokers:         h.brokers,
		Acks:            acksLevels.valueOf(h.Acks),
		Idempotence:     idempotence.valueOf(h.Idempotent),
		Compression:     compressions.valueOf(h.Compression),
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

// resolveBrokers resolves the placeholders of the broker addresses; one
// entry may hold a comma-separated list.
func (h *Handler) resolveBrokers(repl *caddy.Replacer) error {
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
	return nil
}
