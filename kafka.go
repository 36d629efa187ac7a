package queuepublish

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
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
