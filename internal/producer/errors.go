package producer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/segmentio/kafka-go/protocol/rawproduce"
)

// What a failed produce request means for the client: whether the records
// may have been written (the status then says "outcome unknown") and
// whether retrying can help.

// Outcome says what a failed publish means for the client.
type Outcome uint8

const (
	// OutcomeRetry: the record was not written; retrying is safe (503).
	OutcomeRetry Outcome = iota + 1
	// OutcomeUnknown: the record may or may not have been written (504).
	OutcomeUnknown
	// OutcomeTooLarge: the broker will never take a record this large (413).
	OutcomeTooLarge
	// OutcomeRejected: the broker refused for a reason retrying does not
	// fix, such as an unknown topic or missing authorization (500).
	OutcomeRejected
)

func (o Outcome) String() string {
	switch o {
	case OutcomeRetry:
		return "retriable"
	case OutcomeUnknown:
		return "timeout"
	case OutcomeTooLarge:
		return "too_large"
	case OutcomeRejected:
		return "permanent"
	}
	return "unknown"
}

// Error is why a record was not acknowledged.
type Error struct {
	Outcome Outcome
	// Reason is short and safe to show to clients.
	Reason string
	// Err carries the details, for the log only.
	Err error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Reason
	}
	return e.Reason + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// PartitionError is why a call queued nothing: the record at Index asks
// for a partition the topic does not have (it has Partitions). It is the
// client's mistake, not a failure of Kafka, so it is not an Error and no
// record's Outcome: a caller tells it apart with errors.As, and answers
// it as a request for something that does not exist.
type PartitionError struct {
	Index      int
	Partition  int
	Partitions int
}

func (e *PartitionError) Error() string {
	return fmt.Sprintf("record %d: partition %d does not exist (the topic has %d)", e.Index, e.Partition, e.Partitions)
}

// classify maps an error from kafka-go to what it means for the client.
func classify(err error) *Error {
	if perr := refusedConnection(err); perr != nil {
		return perr
	}
	var kerr kafka.Error
	switch {
	case errors.As(err, &kerr):
		switch kerr {
		case kafka.MessageSizeTooLarge, kafka.RecordListTooLarge:
			return &Error{Outcome: OutcomeTooLarge, Reason: "record too large for the Kafka broker", Err: err}
		case kafka.TopicAuthorizationFailed, kafka.ClusterAuthorizationFailed:
			return &Error{Outcome: OutcomeRejected, Reason: "not authorized to write to the topic", Err: err}
		case kafka.InvalidRecord, kafka.InvalidMessage:
			// Retrying the same bytes gets the same answer; deliver
			// isolates the record at fault.
			return &Error{Outcome: OutcomeRejected, Reason: "Kafka broker refused the record: " + kerr.Title(), Err: err}
		case kafka.RequestTimedOut:
			return &Error{Outcome: OutcomeUnknown, Reason: "Kafka broker timed out", Err: err}
		case kafka.BrokerNotAvailable:
			// kafka-go's own answer while its cluster layout changes.
			return &Error{Outcome: OutcomeRetry, Reason: "Kafka broker not available", Err: err}
		}
		if kerr.Temporary() {
			return &Error{Outcome: OutcomeRetry, Reason: "Kafka broker not ready: " + kerr.Title(), Err: err}
		}
		return &Error{Outcome: OutcomeRejected, Reason: "Kafka broker refused the record: " + kerr.Title(), Err: err}
	case errors.Is(err, protocol.ErrNoTopic), errors.Is(err, protocol.ErrNoLeader), errors.Is(err, protocol.ErrNoPartition),
		errors.As(err, new(*rawproduce.Error)):
		// The transport's cached layout lacks the partition or its
		// leader: the cluster is not known yet, or is changing.
		return &Error{Outcome: OutcomeRetry, Reason: "Kafka partition has no known leader", Err: err}
	case errors.Is(err, errSASLDropped):
		return &Error{Outcome: OutcomeRetry, Reason: "Kafka connection lost during authentication", Err: err}
	case errors.As(err, new(*tokenError)):
		// refusedConnection took the endpoint's refusals.
		return &Error{Outcome: OutcomeRetry, Reason: "no OAuth token for Kafka: the token endpoint failed", Err: err}
	case errors.Is(err, errAnswerWithoutPartition):
		return &Error{Outcome: OutcomeUnknown, Reason: reasonUnknown, Err: err}
	case isDialError(err):
		return &Error{Outcome: OutcomeRetry, Reason: "no Kafka broker reachable", Err: err}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Outcome: OutcomeUnknown, Reason: reasonUnknown, Err: err}
	}
	return &Error{Outcome: OutcomeRetry, Reason: "Kafka connection failed", Err: err}
}

// refusedConnection recognises a connection the brokers refuse for a
// reason retrying does not fix: the broker answered that SASL
// authentication failed, the OAuth token endpoint refused the client, or
// TLS failed. These are configuration errors, not an unreachable broker.
// A connection lost during SASL authentication is not among them: a
// broker restarting drops it too.
func refusedConnection(err error) *Error {
	var terr *tokenError
	if errors.As(err, &terr) && !terr.retriable {
		return &Error{Outcome: OutcomeRejected, Reason: "Kafka authentication failed", Err: err}
	}
	var kerr kafka.Error
	if errors.As(err, &kerr) {
		switch kerr {
		case kafka.SASLAuthenticationFailed, kafka.IllegalSASLState, kafka.UnsupportedSASLMechanism:
			return &Error{Outcome: OutcomeRejected, Reason: "Kafka authentication failed", Err: err}
		}
		return nil
	}
	var verr *tls.CertificateVerificationError
	var recErr tls.RecordHeaderError
	var alert tls.AlertError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	if errors.As(err, &verr) || errors.As(err, &recErr) || errors.As(err, &alert) ||
		errors.As(err, &unknownCA) || errors.As(err, &hostErr) || strings.Contains(err.Error(), "remote error: tls:") {
		return &Error{Outcome: OutcomeRejected, Reason: "TLS with the Kafka broker failed", Err: err}
	}
	return nil
}

// connectError is why no metadata could be read from the brokers.
func connectError(err error) *Error {
	if perr := refusedConnection(err); perr != nil {
		return perr
	}
	if errors.Is(err, errSASLDropped) || errors.As(err, new(*tokenError)) {
		return classify(err)
	}
	return &Error{Outcome: OutcomeRetry, Reason: "no Kafka broker reachable", Err: err}
}

// Errors the producer's decisions name.
var (
	errNotLeader     = kafka.NotLeaderForPartition
	errInvalidRecord = kafka.InvalidRecord
)

// isSequenceError reports whether the broker refused a batch of the
// idempotent producer for its identity or sequence: nothing was appended,
// and the producer needs a new identity.
func isSequenceError(err error) bool {
	var kerr kafka.Error
	if !errors.As(err, &kerr) {
		return false
	}
	switch kerr {
	case kafka.OutOfOrderSequenceNumber, kafka.UnknownProducerId, kafka.InvalidProducerEpoch,
		kafka.InvalidProducerIDMapping, kafka.ProducerFenced:
		return true
	}
	return false
}

// recordAtFault reports whether the broker refused a whole batch for
// something one of its records holds, without saying which.
func recordAtFault(err error) bool {
	var kerr kafka.Error
	if !errors.As(err, &kerr) {
		return false
	}
	switch kerr {
	case kafka.MessageSizeTooLarge, kafka.RecordListTooLarge, kafka.InvalidRecord, kafka.InvalidMessage:
		return true
	}
	return false
}

// appendedNothing holds the errors a broker answers a produce request with
// before it appends anything: the request is checked (routing, versions,
// authorization, the records themselves, quotas, the in-sync replicas
// before the append) and refused whole. Any other answer may follow an
// append (REQUEST_TIMED_OUT and NOT_ENOUGH_REPLICAS_AFTER_APPEND while
// waiting for the replicas, KAFKA_STORAGE_ERROR, UNKNOWN_SERVER_ERROR).
var appendedNothing = map[kafka.Error]bool{
	kafka.UnknownTopicOrPartition:            true,
	kafka.InvalidTopic:                       true,
	kafka.LeaderNotAvailable:                 true,
	kafka.MessageSizeTooLarge:                true,
	kafka.RecordListTooLarge:                 true,
	kafka.InvalidMessage:                     true, // CORRUPT_MESSAGE
	kafka.InvalidRecord:                      true,
	kafka.InvalidTimestamp:                   true,
	kafka.InvalidRequiredAcks:                true,
	kafka.UnsupportedForMessageFormat:        true,
	kafka.UnsupportedCompressionType:         true,
	kafka.UnsupportedVersion:                 true,
	kafka.TopicAuthorizationFailed:           true,
	kafka.ClusterAuthorizationFailed:         true,
	kafka.TransactionalIDAuthorizationFailed: true,
	kafka.PolicyViolation:                    true,
	kafka.NotEnoughReplicas:                  true,
	kafka.ThrottlingQuotaExceeded:            true,
	kafka.InvalidProducerEpoch:               true,
	kafka.InvalidProducerIDMapping:           true,
	kafka.InvalidTransactionState:            true,
	kafka.OutOfOrderSequenceNumber:           true,
	kafka.UnknownProducerId:                  true,
	kafka.ProducerFenced:                     true,
	kafka.BrokerNotAvailable:                 true, // kafka-go's, before sending
	kafka.SASLAuthenticationFailed:           true, // on connecting, before sending
}

// errUnsent marks the failure of an attempt that never wrote its batch
// into a request: nothing of it reached a broker.
var errUnsent = errors.New("the request was not written")

// unsent is err, for an attempt that never wrote its batch.
func unsent(err error) error { return fmt.Errorf("%w (%w)", err, errUnsent) }

// mayBeWritten reports whether a failed request that carried records may
// have written them: every answer but those of appendedNothing, and every
// failure after the request was written to a connection (its answer was
// lost). With acks=all a broker can answer NOT_LEADER_OR_FOLLOWER after
// appending, when it loses leadership while waiting for the replicas;
// with fewer acks it does not wait, and that answer means the broker
// refused the record before appending.
func mayBeWritten(err error, acks Acks) bool {
	if errors.Is(err, errUnsent) {
		return false
	}
	var kerr kafka.Error
	if errors.As(err, &kerr) {
		if kerr == kafka.NotLeaderForPartition {
			return acks == AcksAll
		}
		return !appendedNothing[kerr]
	}
	if errors.Is(err, protocol.ErrNoTopic) || errors.Is(err, protocol.ErrNoLeader) || errors.Is(err, protocol.ErrNoRecord) ||
		errors.Is(err, protocol.ErrNoPartition) || errors.As(err, new(*rawproduce.Error)) ||
		errors.Is(err, errSASLDropped) || errors.As(err, new(*tokenError)) {
		return false // routing and connecting come before sending
	}
	return !isDialError(err)
}

// needsMetadata reports whether err suggests the cached cluster layout is
// stale: the leader moved, a broker went away or stopped answering, a
// topic or partition appeared.
func needsMetadata(err error) bool {
	var kerr kafka.Error
	if errors.As(err, &kerr) {
		switch kerr {
		case kafka.NotLeaderForPartition, kafka.LeaderNotAvailable,
			kafka.UnknownTopicOrPartition, kafka.FencedLeaderEpoch,
			kafka.UnknownLeaderEpoch, kafka.KafkaStorageError, kafka.BrokerNotAvailable,
			kafka.RequestTimedOut, kafka.NetworkException, kafka.NotEnoughReplicasAfterAppend:
			return true
		}
		return false
	}
	return true // a lost connection or answer
}

func isDialError(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}
