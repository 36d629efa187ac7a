package producer

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"github.com/segmentio/kafka-go/compress"
	"go.uber.org/zap"
)

// The producer's settings. They are the package's own types, not
// kafka-go's, so that kafka-go stays an implementation detail of this
// package: a caller configures the producer without importing it.

// Defaults of Config.
const (
	defaultMaxBatchRecords = 1000
	// The byte bound stays below Kafka's default message.max.bytes
	// (1048588), which applies to a whole batch.
	defaultMaxBatchBytes   = 1000000
	defaultMaxInFlight     = 1
	defaultDeliveryTimeout = 2 * time.Minute
	defaultClientID        = "caddy-queue-publish"
)

// Config is how a producer connects and batches.
type Config struct {
	Brokers     []string
	Acks        Acks
	Compression Compression
	ClientID    string
	TLS         *tls.Config // nil: plain TCP
	SASL        *SASL       // nil: none
	Idempotence Idempotence
	// Linger is how long a sink waits, after its previous request
	// started, before sending the next one, when the previous one held
	// more than one record. Zero sends as soon as a sink is free.
	Linger time.Duration
	// MaxBatchRecords and MaxBatchBytes bound one partition's batch.
	MaxBatchRecords int
	MaxBatchBytes   int
	// MaxInFlight is the number of produce requests a broker may have
	// in flight; each partition has one batch in flight at a time.
	MaxInFlight int
	// DeliveryTimeout is how long, with idempotence, a batch whose
	// callers have all stopped waiting is still retried until the broker
	// settles it (as the Java client's delivery.timeout.ms).
	DeliveryTimeout time.Duration
	// Dial opens network connections; nil: a net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Hooks, if set, learns of the producer's work.
	Hooks  Hooks
	Logger *zap.Logger
}

// Hooks are told of the producer's work, for metrics. They are called
// from the producer's goroutines and must not block.
type Hooks interface {
	// Batch is called for each batch the broker acknowledged.
	Batch(topic string, records int)
}

// Acks is how many replicas must have a record before the broker
// acknowledges it. Its values are the produce request's own (the zero
// value is AcksNone, as on the wire), so the sinks send it as it is.
type Acks int8

const (
	// AcksNone: the broker does not answer; a record is acknowledged
	// once sent, and its offset is unknown.
	AcksNone Acks = 0
	// AcksLeader: the partition's leader has appended the record.
	AcksLeader Acks = 1
	// AcksAll: every in-sync replica has it. Idempotence needs it.
	AcksAll Acks = -1
)

// String is the setting's name in the producer's log ("none", "one",
// "all"), the names it had as kafka-go's RequiredAcks.
func (a Acks) String() string {
	switch a {
	case AcksNone:
		return "none"
	case AcksLeader:
		return "one"
	case AcksAll:
		return "all"
	}
	return "unknown"
}

// Compression is the codec a batch's records are compressed with. Its
// values are the record batch's attribute bits, which the encoder writes
// as they are.
type Compression int8

// The codecs, as Kafka numbers them.
const (
	CompressionNone   Compression = 0
	CompressionGzip   Compression = 1
	CompressionSnappy Compression = 2
	CompressionLZ4    Compression = 3
	CompressionZstd   Compression = 4
)

// codec is kafka-go's codec for c, which the encoder writes with.
func (c Compression) codec() compress.Compression { return compress.Compression(c) }
