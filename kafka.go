package queuepublish

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
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
	// idempotenceCheckTimeout bounds the check of idempotent on at load.
	idempotenceCheckTimeout = 2 * time.Second
)

// Kafka is where records go and how: the brokers, the connection to them,
// and the producer's acknowledgements, idempotence, compression and
// batching. Handlers whose settings resolve alike share one producer,
// across config reloads.
type Kafka struct {
	// Addresses (host:port) of Kafka brokers to bootstrap from. The
	// cluster's other brokers are discovered. Each entry may hold
	// {env.*} or {file.*} placeholders and several addresses separated
	// by commas. Required.
	Brokers []string `json:"brokers,omitempty"`

	// An identifier the brokers see for this producer, in their logs
	// and quotas. Default: caddy-queue-publish.
	ClientID string `json:"client_id,omitempty"`

	// TLS for broker connections; absent means plaintext.
	TLS *BrokerTLS `json:"tls,omitempty"`

	// SASL authentication to the brokers.
	SASL *BrokerSASL `json:"sasl,omitempty"`

	// Which acknowledgement a record needs: "all" (every in-sync
	// replica has it), "leader" (the partition leader has it) or "none"
	// (sent, not confirmed: a 200 then means only that the record was
	// sent). Default: "all".
	Acks string `json:"acks,omitempty"`

	// Whether the producer is idempotent: true or false. Unset, it is
	// with acks "all" (as in Kafka's clients, idempotence needs it),
	// unless the cluster refuses it (an ACL, an old version): then it
	// warns and produces without. true makes a rejection a config error
	// when a broker answers at load, and every record's rejection after.
	// Idempotence removes the duplicates the producer's own retries can
	// store; a client's repeat of a request is what Idempotency-Key
	// covers.
	Idempotent *Switch `json:"idempotent,omitempty"`

	// How record batches are compressed on the way to the brokers:
	// "none", "gzip", "snappy", "lz4" or "zstd". Default: "none".
	Compression string `json:"compression,omitempty"`

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

	brokers  []string           // Brokers, resolved
	producer *producer.Producer // while the config is loaded
	use      *producerUse
}

// check applies the defaults and checks the settings.
func (k *Kafka) check() error {
	if len(k.Brokers) == 0 {
		return errors.New("brokers: at least one broker address is required")
	}
	k.Acks = cmp.Or(k.Acks, "all")
	k.Compression = cmp.Or(k.Compression, "none")
	if k.Idempotent.isOn(false) && k.Acks != "all" {
		return fmt.Errorf("idempotent on: needs acks all, not %s", k.Acks)
	}
	if err := checkChoice("acks", k.Acks, acksLevels); err != nil {
		return err
	}
	if err := checkChoice("compression", k.Compression, compressions); err != nil {
		return err
	}
	if k.SASL != nil {
		if err := k.SASL.check(); err != nil {
			return err
		}
	}
	return checkLimits(
		limit{"linger", int64(k.Linger), true},
		limit{"max_batch_records", int64(k.MaxBatchRecords), false},
		limit{"max_batch_bytes", int64(k.MaxBatchBytes), false},
		limit{"max_in_flight", int64(k.MaxInFlight), false},
	)
}

// provision resolves the brokers and the connection settings and takes
// the producer shared by the configs that use the same ones.
func (k *Kafka) provision(p *provisioning) error {
	if err := k.resolveBrokers(p.repl); err != nil {
		return err
	}
	// The in-memory development broker, when configured, must listen
	// before the producer looks for brokers; apps are otherwise
	// provisioned in no particular order.
	if _, err := p.ctx.AppIfConfigured(devBrokerApp); err != nil && !errors.Is(err, caddy.ErrNotConfigured) {
		return err
	}
	conn := connection{Kafka: *k}
	conn.Kafka.Brokers = k.brokers
	var err error
	if k.TLS != nil {
		if conn.TLS, err = k.TLS.material(p.repl); err != nil {
			return err
		}
	}
	if k.SASL != nil {
		if conn.SASL, err = k.SASL.credentials(p.repl); err != nil {
			return err
		}
	}
	var key string
	k.producer, key, err = acquireProducer(conn, p.logger)
	if err != nil {
		return err
	}
	k.use = &producerUse{conn: conn, logger: p.logger, original: k.producer, current: k.producer, key: key}
	if k.Idempotent.isOn(false) {
		// A cluster that answers now and refuses is a config error;
		// one that does not answer is not (it may come up later).
		ctx, cancel := context.WithTimeout(context.Background(), idempotenceCheckTimeout)
		defer cancel()
		if err := k.producer.CheckIdempotence(ctx); err != nil {
			return fmt.Errorf("idempotent on: %v", err)
		}
	}
	return nil
}

// cleanup releases the handler's use of its producer; the last config
// that uses a producer flushes and closes it.
func (k *Kafka) cleanup() error {
	if k.use == nil {
		return nil
	}
	return k.use.unload()
}

// resolveBrokers resolves the placeholders of the broker addresses; one
// entry may hold a comma-separated list.
func (k *Kafka) resolveBrokers(repl *caddy.Replacer) error {
	k.brokers = nil
	for _, b := range k.Brokers {
		list, err := repl.ReplaceOrErr(b, true, true)
		if err != nil {
			return fmt.Errorf("brokers: %v", err)
		}
		for addr := range strings.SplitSeq(list, ",") {
			if addr = strings.TrimSpace(addr); addr != "" {
				k.brokers = append(k.brokers, addr)
			}
		}
	}
	if len(k.brokers) == 0 {
		return errors.New("brokers: resolves to no address")
	}
	return nil
}

// cluster is the brokers resolved, sorted and without repeats: the order
// of bootstrap brokers means nothing, so two lists of the same brokers
// name the same cluster.
func cluster(brokers []string) []string {
	return slices.Compact(slices.Sorted(slices.Values(brokers)))
}

// connection is the settings of a producer as resolved: the brokers, the
// files of TLS read and the SASL credentials. Handlers whose connection is
// equal share one producer.
type connection struct {
	Kafka
	TLS  *tlsMaterial   `json:"tls,omitempty"`
	SASL *producer.SASL `json:"sasl,omitempty"`
}

// key is the connection's key in the pool: equal settings, one key.
func (c connection) key() string {
	c.Kafka.Brokers = cluster(c.Kafka.Brokers)
	c.ClientID = cmp.Or(c.ClientID, clientID)
	return sharedKey("producer", c)
}

// idempotence is the producer's idempotence: unset, where the cluster
// allows it.
func (k *Kafka) idempotence() producer.Idempotence {
	switch {
	case k.Idempotent == nil:
		return producer.IdempotenceAuto
	case bool(*k.Idempotent):
		return producer.IdempotenceOn
	}
	return producer.IdempotenceOff
}

// config is the producer's configuration for the connection.
func (c connection) config(logger *zap.Logger) (producer.Config, error) {
	cfg := producer.Config{
		Brokers:         c.Kafka.Brokers,
		Acks:            acksLevels.valueOf(c.Acks),
		Compression:     compressions.valueOf(c.Compression),
		ClientID:        cmp.Or(c.ClientID, clientID),
		Idempotence:     c.idempotence(),
		Linger:          time.Duration(c.Linger),
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
	cfg.SASL = c.SASL
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
	done := p.Close()
	if caddy.Exiting() {
		<-done
	}
	return nil
}

// acquireProducer returns the shared producer for the connection, creating
// it if no loaded config uses these settings yet. Every successful call
// must be matched by one releaseShared(key).
func acquireProducer(c connection, logger *zap.Logger) (p *producer.Producer, key string, err error) {
	key = c.key()
	val, _, err := loadShared(key, func() (pooledProducer, error) {
		cfg, err := c.config(logger)
		if err != nil {
			return pooledProducer{}, err
		}
		p, err := producer.New(cfg)
		return pooledProducer{p}, err
	})
	if err != nil {
		return nil, "", err
	}
	return val.Producer, key, nil
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
	conn     connection
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
		u.logger.Info(msgTakenAgain, zap.Strings("brokers", u.conn.Kafka.Brokers))
		p, key, err := acquireProducer(u.conn, u.logger)
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
		u.err = releaseShared(u.key)
		u.released = true
	}
	return u.err
}
