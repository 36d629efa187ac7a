package producer

import (
	"context"
	"errors"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/segmentio/kafka-go/protocol/initproducerid"
	"go.uber.org/zap"
)

// The idempotent producer (KIP-98): the brokers give the producer an ID
// and epoch, and each batch carries them with the sequence number of its
// first record in its partition. A broker that already holds a batch with
// those numbers (a retry after a lost answer) answers with the first one's
// outcome instead of appending it again. So a batch, once sent, is sent
// again byte for byte until the broker settles it, and a partition has one
// batch in flight at a time, which keeps its sequence in order on the
// wire. When the producer loses track of a partition's sequence (a batch
// given up after the delivery timeout, or the broker's
// OUT_OF_ORDER_SEQUENCE_NUMBER or UNKNOWN_PRODUCER_ID), it takes a new
// producer ID: batches of other partitions under the old one are still
// settled as they were, and each partition starts at sequence 0 under the
// new one with its next batch.

// Idempotence is whether the producer is idempotent.
type Idempotence uint8

const (
	// IdempotenceAuto: idempotent unless the cluster refuses it; then
	// with a warning, not.
	IdempotenceAuto Idempotence = iota
	// IdempotenceOn: idempotent; a cluster that refuses it gets every
	// record refused.
	IdempotenceOn
	// IdempotenceOff: not idempotent: a retry after a lost answer may
	// store a record twice.
	IdempotenceOff
)

// session is one producer ID and epoch.
type session struct {
	id    int64
	epoch int16
}

// currentSession is the identity new batches carry, nil without
// idempotence.
func (p *Producer) currentSession() *session {
	return p.session.Load()
}

// ensureSession makes sure that, if the producer is idempotent, it has an
// identity; it fails while none can be had. It is called by the sinks, and
// waits at most sessionWait: the identity is asked for by a goroutine of
// its own, so that a broker slow to answer InitProducerId (up to
// dialTimeout) holds no sink, and the batches that keep an earlier
// identity go on meanwhile.
func (p *Producer) ensureSession() error {
	if !p.idempotent.Load() || p.session.Load() != nil {
		return nil
	}
	p.sessionMu.Lock()
	if !p.idempotent.Load() || p.session.Load() != nil {
		p.sessionMu.Unlock()
		return nil
	}
	asking := p.sessionAsking
	if asking == nil {
		if wait := time.Until(p.sessionRetry); wait > 0 {
			p.sessionMu.Unlock()
			return p.sessionErr
		}
		asking = make(chan struct{})
		p.sessionAsking = asking
		p.watchers.Add(1)
		go p.askSession(asking)
	}
	p.sessionMu.Unlock()
	timer := startTimer(sessionWait)
	select {
	case <-asking:
	case <-timer.C:
	}
	stopTimer(timer)
	if !p.idempotent.Load() || p.session.Load() != nil {
		return nil
	}
	p.sessionMu.Lock()
	defer p.sessionMu.Unlock()
	if p.sessionAsking != nil {
		return errNoIdentity // still asking: the records wait
	}
	return p.sessionErr
}

// sessionWait is how long a sink waits for a new identity before it goes
// on with what it can send without one; sessionTry, the time the first
// try of askSession has.
const (
	sessionWait = 50 * time.Millisecond
	sessionTry  = time.Second
)

// askSession asks the brokers for an identity, then closes done. A try
// that has no answer in time is followed at once by another on a new
// connection, given twice the time: a connection that stopped answering
// (a broker restarted behind a firewall that drops its packets) is left
// after a second, while a slow link still gets up to 4 s.
func (p *Producer) askSession(done chan struct{}) {
	defer p.watchers.Done()
	var s *session
	var err error
	for try := sessionTry; ; try *= 2 {
		ctx, cancel := context.WithTimeout(p.ctx, try)
		deadline, _ := ctx.Deadline()
		s, err = p.initProducerID(ctx)
		// The connection's deadline (the same instant) may fire
		// before the context's timer marks it done: ask the clock.
		timedOut := err != nil && p.ctx.Err() == nil && !time.Now().Before(deadline)
		cancel()
		if err == nil || !timedOut || try >= dialTimeout/2 {
			break
		}
	}
	p.sessionMu.Lock()
	defer func() {
		p.sessionAsking = nil
		p.sessionMu.Unlock()
		close(done)
	}()
	if err == nil {
		p.session.Store(s)
		p.logger.Debug("idempotent producer identity", zap.Int64("producer_id", s.id), zap.Int16("epoch", s.epoch))
		return
	}
	if refused := idempotenceRefused(err); refused != nil {
		if p.cfg.Idempotence == IdempotenceOn {
			p.sessionErr = refused
			p.sessionRetry = time.Now().Add(retryBackoffMax)
			p.logger.Error("the Kafka cluster refuses the idempotent producer, which idempotent on requires: records are refused", zap.Strings("brokers", p.cfg.Brokers), zap.Error(err))
			return
		}
		p.idempotent.Store(false)
		p.logger.Warn("the Kafka cluster refuses the idempotent producer: producing without it, so that a retry after a lost answer may store a record twice; grant IDEMPOTENT_WRITE on the cluster (Kafka before 2.8) or set idempotent off", zap.Strings("brokers", p.cfg.Brokers), zap.Error(err))
		return
	}
	p.sessionErr = connectError(err)
	p.sessionRetry = time.Now().Add(retryBackoffMin)
}

// idempotenceRefused recognises a cluster's refusal of InitProducerId: an
// authorization error or a broker too old for it.
func idempotenceRefused(err error) *Error {
	var kerr kafka.Error
	if errors.As(err, &kerr) {
		switch kerr {
		case kafka.ClusterAuthorizationFailed, kafka.TransactionalIDAuthorizationFailed, kafka.UnsupportedVersion, kafka.InvalidRequest:
			return &Error{Outcome: OutcomeRejected, Reason: "the Kafka cluster refuses the idempotent producer", Err: err}
		}
	}
	if errors.Is(err, errNoInitProducerID) {
		return &Error{Outcome: OutcomeRejected, Reason: "the Kafka cluster refuses the idempotent producer", Err: err}
	}
	return nil
}

// renewSession drops the identity s after the producer lost track of a
// partition's sequence under it; the next batch takes a new one.
func (p *Producer) renewSession(s *session, cause error) {
	if p.session.CompareAndSwap(s, nil) {
		p.logger.Warn("the idempotent producer takes a new producer ID", zap.Int64("producer_id", s.id), zap.Error(cause))
	}
}

var errNoInitProducerID = errors.New("the Kafka broker does not support InitProducerId")

// initProducerID asks a bootstrap broker for a producer ID. kafka-go's
// transport sends InitProducerId to the coordinator of its transactional
// ID, which for the idempotent producer (no transactional ID) would make
// the broker create the transaction log: so it is sent on a connection of
// its own, authenticated as the transport's are.
func (p *Producer) initProducerID(ctx context.Context) (*session, error) {
	conn, err := p.dial(ctx, "tcp", p.bootstrapAddress())
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	pc := protocol.NewConn(conn, p.cfg.ClientID)
	if deadline, ok := ctx.Deadline(); ok {
		pc.SetDeadline(deadline)
	}
	versions, err := negotiate(pc)
	if err != nil {
		return nil, err
	}
	if _, ok := versions[protocol.InitProducerId]; !ok {
		return nil, errNoInitProducerID
	}
	msg, err := pc.RoundTrip(&initproducerid.Request{ProducerID: -1, ProducerEpoch: -1})
	if err != nil {
		return nil, err
	}
	res := msg.(*initproducerid.Response)
	if res.ErrorCode != 0 {
		return nil, kafka.Error(res.ErrorCode)
	}
	return &session{id: res.ProducerID, epoch: res.ProducerEpoch}, nil
}

// bootstrapAddress is the address the transport dials for the bootstrap
// brokers.
func (p *Producer) bootstrapAddress() string {
	return p.client.Addr.String()
}
