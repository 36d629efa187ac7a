package queuepublish

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"syscall"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
)

// What a failed produce request means for the client: whether the records
// may have been written (the status then says "outcome unknown") and
// whether retrying can help.

// outcome says what a failed publish means for the client.
type outcome uint8

const (
	// outcomeRetry: the record was not written; retrying is safe (503).
	outcomeRetry outcome = iota + 1
	// outcomeUnknown: the record may or may not have been written (504).
	outcomeUnknown
	// outcomeTooLarge: the broker will never take a record this large (413).
	outcomeTooLarge
	// outcomeRejected: the broker refused for a reason retrying does not
	// fix, such as an unknown topic or missing authorization (500).
	outcomeRejected
)

func (o outcome) String() string {
	switch o {
	case outcomeRetry:
		return "retriable"
	case outcomeUnknown:
		return "timeout"
	case outcomeTooLarge:
		return "too_large"
	case outcomeRejected:
		return "permanent"
	}
	return "unknown"
}

// publishError is why a record was not acknowledged.
type publishError struct {
	outcome outcome
	// reason is short and safe to show to clients.
	reason string
	// err carries the details, for the log only.
	err error
}

func (e *publishError) Error() string {
	if e.err == nil {
		return e.reason
	}
	return e.reason + ": " + e.err.Error()
}

func (e *publishError) Unwrap() error { return e.err }

// classify maps an error from kafka-go to what it means for the client.
func classify(err error) *publishError {
	if perr := refusedConnection(err); perr != nil {
		return perr
	}
	var kerr kafka.Error
	switch {
	case errors.As(err, &kerr):
		switch kerr {
		case kafka.MessageSizeTooLarge, kafka.RecordListTooLarge:
			return &publishError{outcome: outcomeTooLarge, reason: "record too large for the Kafka broker", err: err}
		case kafka.TopicAuthorizationFailed, kafka.ClusterAuthorizationFailed:
			return &publishError{outcome: outcomeRejected, reason: "not authorized to write to the topic", err: err}
		case kafka.InvalidRecord, kafka.InvalidMessage:
			// Retrying the same bytes gets the same answer; deliver
			// isolates the record at fault.
			return &publishError{outcome: outcomeRejected, reason: "Kafka broker refused the record: " + kerr.Title(), err: err}
		case kafka.RequestTimedOut:
			return &publishError{outcome: outcomeUnknown, reason: "Kafka broker timed out", err: err}
		case kafka.BrokerNotAvailable:
			// kafka-go's own answer while its cluster layout changes.
			return &publishError{outcome: outcomeRetry, reason: "Kafka broker not available", err: err}
		}
		if kerr.Temporary() {
			return &publishError{outcome: outcomeRetry, reason: "Kafka broker not ready: " + kerr.Title(), err: err}
		}
		return &publishError{outcome: outcomeRejected, reason: "Kafka broker refused the record: " + kerr.Title(), err: err}
	case errors.Is(err, protocol.ErrNoTopic), errors.Is(err, protocol.ErrNoLeader), errors.Is(err, protocol.ErrNoPartition):
		// The transport's cached layout lacks the partition or its
		// leader: the cluster is not known yet, or is changing.
		return &publishError{outcome: outcomeRetry, reason: "Kafka partition has no known leader", err: err}
	case errors.Is(err, errSASLDropped):
		return &publishError{outcome: outcomeRetry, reason: "Kafka connection lost during authentication", err: err}
	case errors.Is(err, errAnswerWithoutPartition):
		return &publishError{outcome: outcomeUnknown, reason: reasonUnknown, err: err}
	case isDialError(err):
		return &publishError{outcome: outcomeRetry, reason: "no Kafka broker reachable", err: err}
	case errors.Is(err, context.DeadlineExceeded):
		return &publishError{outcome: outcomeUnknown, reason: reasonUnknown, err: err}
	}
	return &publishError{outcome: outcomeRetry, reason: "Kafka connection failed", err: err}
}

// refusedConnection recognises a connection the brokers refuse for a
// reason retrying does not fix: the broker answered that SASL
// authentication failed, or TLS failed. These are configuration errors,
// not an unreachable broker. A connection lost during SASL authentication
// is not among them: a broker restarting drops it too.
func refusedConnection(err error) *publishError {
	var kerr kafka.Error
	if errors.As(err, &kerr) {
		switch kerr {
		case kafka.SASLAuthenticationFailed, kafka.IllegalSASLState, kafka.UnsupportedSASLMechanism:
			return &publishError{outcome: outcomeRejected, reason: "Kafka authentication failed", err: err}
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
		return &publishError{outcome: outcomeRejected, reason: "TLS with the Kafka broker failed", err: err}
	}
	return nil
}

// connectError is why no metadata could be read from the brokers.
func connectError(err error) *publishError {
	if perr := refusedConnection(err); perr != nil {
		return perr
	}
	if errors.Is(err, errSASLDropped) {
		return classify(err)
	}
	return &publishError{outcome: outcomeRetry, reason: "no Kafka broker reachable", err: err}
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

// mayBeWritten reports whether a failed request that carried records may
// have written them: every answer but those of appendedNothing, and every
// failure after the request was written to a connection (its answer was
// lost). With acks=all a broker can answer NOT_LEADER_OR_FOLLOWER after
// appending, when it loses leadership while waiting for the replicas;
// with fewer acks it does not wait, and that answer means the broker
// refused the record before appending.
func mayBeWritten(err error, acks kafka.RequiredAcks) bool {
	var kerr kafka.Error
	if errors.As(err, &kerr) {
		if kerr == kafka.NotLeaderForPartition {
			return acks == kafka.RequireAll
		}
		return !appendedNothing[kerr]
	}
	if errors.Is(err, protocol.ErrNoTopic) || errors.Is(err, protocol.ErrNoLeader) ||
		errors.Is(err, protocol.ErrNoPartition) || errors.Is(err, errSASLDropped) {
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
