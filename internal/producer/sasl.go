package producer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// SASL is how the producer authenticates to the brokers: plain data, so
// that a caller configures it without kafka-go's types, which the
// producer builds from it in New.
type SASL struct {
	// Mechanism is "plain", "scram-sha-256" or "scram-sha-512".
	Mechanism string
	Username  string
	Password  string
}

// Check reports what New would refuse in s: a mechanism it does not know,
// or credentials SCRAM cannot use. A caller checks its settings with it
// when it loads them, before any producer is made.
func (s SASL) Check() error {
	_, err := s.mechanism()
	return err
}

// mechanism builds kafka-go's SASL mechanism.
func (s SASL) mechanism() (sasl.Mechanism, error) {
	switch s.Mechanism {
	case "plain":
		return plain.Mechanism{Username: s.Username, Password: s.Password}, nil
	case "scram-sha-256":
		return scram.Mechanism(scram.SHA256, s.Username, s.Password)
	case "scram-sha-512":
		return scram.Mechanism(scram.SHA512, s.Username, s.Password)
	}
	return nil, fmt.Errorf("sasl: %q is not plain, scram-sha-256 or scram-sha-512", s.Mechanism)
}

// errSASLDropped is what a connection reports when it failed during SASL
// authentication: the broker closed or reset it, or it timed out.
var errSASLDropped = errors.New("the connection to the Kafka broker was lost during SASL authentication")

// A broker refuses bad credentials with an answer (SASL_AUTHENTICATION_FAILED,
// which kafka-go reports as kafka.SASLAuthenticationFailed): only that is a
// rejection, and answered 500. A connection lost during the exchange (a
// broker restarting, a reset, a timeout) is a fault that retrying fixes,
// and answered 503; some brokers (kfake among them) also close the
// connection on bad credentials, which is then answered 503 too, with the
// error logged. kafka-go itself reports a connection closed during the
// exchange as SASLAuthenticationFailed, so the types below tell the two
// apart: the producer's dialer wraps each connection in a saslConn and
// registers it under its connect context; the mechanism, whose context
// derives from that one (same Done channel), marks the connection as
// authenticating until the exchange completes. A read that fails
// meanwhile reports errSASLDropped, which kafka-go passes on as it is.

// saslConn is a broker connection that knows whether SASL authentication
// is under way on it.
type saslConn struct {
	net.Conn
	authenticating atomic.Bool
}

func (c *saslConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil && c.authenticating.Load() {
		// Not wrapping err: kafka-go turns an io.EOF into
		// SASLAuthenticationFailed, a rejection.
		return n, fmt.Errorf("%w (%v)", errSASLDropped, err)
	}
	return n, err
}

// trackedMechanism is a SASL mechanism that marks the connection it
// authenticates.
type trackedMechanism struct {
	sasl.Mechanism
	conns *sync.Map // connect context's Done channel -> *saslConn
}

func (m trackedMechanism) Start(ctx context.Context) (sasl.StateMachine, []byte, error) {
	sess, ir, err := m.Mechanism.Start(ctx)
	if err != nil {
		return sess, ir, err
	}
	c, _ := m.conns.Load(ctx.Done())
	conn, _ := c.(*saslConn)
	if conn != nil {
		conn.authenticating.Store(true)
	}
	return trackedSession{StateMachine: sess, conn: conn}, ir, nil
}

type trackedSession struct {
	sasl.StateMachine
	conn *saslConn
}

func (s trackedSession) Next(ctx context.Context, challenge []byte) (bool, []byte, error) {
	done, resp, err := s.StateMachine.Next(ctx, challenge)
	if done && err == nil && s.conn != nil {
		s.conn.authenticating.Store(false)
	}
	return done, resp, err
}

// trackSASL registers conn, opened under ctx, for the SASL mechanism.
func trackSASL(conns *sync.Map, ctx context.Context, conn net.Conn) net.Conn {
	done := ctx.Done()
	if done == nil {
		return conn
	}
	c := &saslConn{Conn: conn}
	conns.Store(done, c)
	context.AfterFunc(ctx, func() { conns.Delete(done) })
	return c
}
