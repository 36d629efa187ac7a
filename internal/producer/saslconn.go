package producer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go/protocol"
	"go.uber.org/zap"
)

// A SASL session may end (KIP-368): a broker that sets
// connections.max.reauth.ms, or whose OAUTHBEARER token expires, tells the
// client the session's lifetime in its SaslAuthenticate answer, and closes
// a connection on which a request arrives after it, with the request
// lost. kafka-go's transport neither reads the lifetime nor
// re-authenticates, so a connection it keeps would be closed under a
// request: answered 503, or "outcome unknown" if the request carried
// records.
//
// saslConn, the connection kafka-go gets, keeps the session alive: when
// a request starts on it and the session nears its end, it renews the
// session first. kafka-go writes one request at a time on a connection
// and reads the whole answer before it writes the next (its conn.run), so
// at the start of a request nothing is in flight and no answer is pending:
// the renewal's requests and answers cannot interleave with kafka-go's.
// While the session lasts, the renewal is a re-authentication on the same
// connection, KIP-368's SaslHandshake and SaslAuthenticate again, which
// costs their round trips and no new connection. Past that (a connection
// left idle until its session is about to end, when the broker would
// close it at the handshake), the renewal opens and authenticates a new
// connection to the same broker and puts it under kafka-go's in place of
// the old one, which is closed with nothing on it. Either way the request
// goes on a live session, and kafka-go sees nothing of it. A renewal that
// fails fails the request before any of it is written (errUnsent): the
// producer sends it again on a new connection, or answers the broker's
// refusal as such.
//
// Not chosen: retiring the connection before its session ends, so that
// kafka-go opens a new one, fails the request that would have used it
// (kafka-go hands a request to a connection taken from its pool, and does
// not retry); and a timer that renews idle connections would have to know
// that no answer is pending, which only kafka-go knows.

// saslTerm is when a session is renewed, and until when in place; zero
// if it does not expire.
type saslTerm struct {
	renewAt, lastInPlace time.Time
	lifetime             time.Duration
}

// Renewal timing: from 85% of the session's lifetime, as Kafka's Java
// client does at the earliest; in place until 95% of it, after which the
// handshake might reach the broker too late.
const (
	renewAtPercent     = 85
	lastInPlacePercent = 95
)

// termOf is the term of a session that the broker granted for lifetime
// (0: no end) to an exchange that started at start: the broker counts from
// the exchange's end, a little later, so the term errs early.
func termOf(start time.Time, lifetime time.Duration) saslTerm {
	if lifetime <= 0 {
		return saslTerm{}
	}
	return saslTerm{
		renewAt:     start.Add(lifetime * renewAtPercent / 100),
		lastInPlace: start.Add(lifetime * lastInPlacePercent / 100),
		lifetime:    lifetime,
	}
}

// rawConn holds a connection, so that saslConn can swap it atomically.
type rawConn struct{ net.Conn }

// saslConn is an authenticated broker connection that renews its SASL
// session, as above.
type saslConn struct {
	p                *Producer
	network, address string

	raw    atomic.Pointer[rawConn]
	closed atomic.Bool

	// mu is held while a request is written: kafka-go writes from one
	// goroutine, but a renewal must never overlap a write.
	mu   sync.Mutex
	term saslTerm
	// The request being written: its size's bytes seen (head, headN),
	// then the bytes of it still to come (left); both zero between
	// requests.
	head  [4]byte
	headN int
	left  int64

	// The deadlines kafka-go set, which a renewal's own replace for a
	// while. Guarded by deadlineMu.
	deadlineMu                  sync.Mutex
	readDeadline, writeDeadline time.Time
}

// keepSession wraps conn, authenticated for term, for the transport.
func (p *Producer) keepSession(conn net.Conn, term saslTerm, network, address string) net.Conn {
	c := &saslConn{p: p, network: network, address: address, term: term}
	c.raw.Store(&rawConn{conn})
	return c
}

// openSASL opens a connection to address, with TLS if set, and
// authenticates it within ctx.
func (p *Producer) openSASL(ctx context.Context, network, address string) (net.Conn, saslTerm, error) {
	conn, err := p.dialTLS(ctx, network, address)
	if err != nil {
		return nil, saslTerm{}, err
	}
	term, err := p.exchange(ctx, conn, address, nil)
	if err != nil {
		conn.Close()
		return nil, saslTerm{}, err
	}
	conn.SetDeadline(time.Time{})
	return conn, term, nil
}

// exchange runs the SASL exchange on conn within ctx, after asking the
// broker's API versions unless versions are given (a re-authentication
// knows them). It leaves conn's deadlines set: the caller resets them.
func (p *Producer) exchange(ctx context.Context, conn net.Conn, address string, versions map[protocol.ApiKey]int16) (saslTerm, error) {
	// ctx's end interrupts the exchange; once it returns, its caller's
	// deadlines must not be overwritten by a late interruption.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		conn.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired
		}
	}()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	pc := protocol.NewConn(conn, p.cfg.ClientID)
	if versions != nil {
		pc.SetVersions(versions)
	} else if _, err := negotiate(pc); err != nil {
		return saslTerm{}, err
	}
	start := time.Now()
	lifetime, err := authenticate(ctx, pc, p.sasl, address)
	return termOf(start, lifetime), err
}

func (c *saslConn) conn() net.Conn { return c.raw.Load().Conn }

func (c *saslConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.headN == 0 && c.left == 0 && !c.term.renewAt.IsZero() && !time.Now().Before(c.term.renewAt) {
		if err := c.renew(); err != nil {
			c.conn().Close()
			return 0, err
		}
	}
	n, err := c.conn().Write(b)
	c.track(b[:n])
	return n, err
}

// track follows the requests written, each its size (4 bytes, big-endian)
// then as many bytes, to know where the next one starts.
func (c *saslConn) track(b []byte) {
	for len(b) > 0 {
		if c.left == 0 {
			n := copy(c.head[c.headN:], b)
			c.headN += n
			b = b[n:]
			if c.headN == len(c.head) {
				c.left = int64(binary.BigEndian.Uint32(c.head[:]))
				c.headN = 0
			}
			continue
		}
		n := min(int64(len(b)), c.left)
		c.left -= n
		b = b[n:]
	}
}

// renew renews the session before a request, in place while it lasts,
// else on a new connection; c.mu is held. Its error makes the request
// unsent.
func (c *saslConn) renew() error {
	now := time.Now()
	deadline := now.Add(dialTimeout)
	c.deadlineMu.Lock()
	if d := c.writeDeadline; !d.IsZero() && d.Before(deadline) {
		deadline = d // the request's own
	}
	c.deadlineMu.Unlock()
	ctx, cancel := context.WithDeadline(c.p.ctx, deadline)
	defer cancel()
	how := "reauthenticated"
	var term saslTerm
	var err error
	if now.Before(c.term.lastInPlace) {
		term, err = c.reauthenticate(ctx)
		if errors.Is(err, errSASLDropped) && ctx.Err() == nil {
			// The broker closed the connection (its clock ran ahead
			// of ours, or it restarted): a new one may still do.
			c.conn().Close()
			how = "reconnected after a lost re-authentication"
			term, err = c.reconnect(ctx)
		}
	} else {
		how = "reconnected"
		term, err = c.reconnect(ctx)
	}
	if err != nil {
		c.p.logger.Warn("renewing the SASL session of a Kafka connection failed; the request goes on another connection",
			zap.String("broker", c.address), zap.Error(err))
		return unsent(fmt.Errorf("renewing the SASL session: %w", err))
	}
	c.term = term
	c.p.logger.Debug("Kafka SASL session renewed", zap.String("broker", c.address), zap.String("how", how),
		zap.Duration("session_lifetime", term.lifetime))
	return nil
}

// reauthenticate runs the exchange again on the connection (KIP-368).
func (c *saslConn) reauthenticate(ctx context.Context) (saslTerm, error) {
	raw := c.conn()
	term, err := c.p.exchange(ctx, raw, c.address, saslVersions)
	c.restoreDeadlines(raw)
	return term, err
}

// reconnect puts a new, authenticated connection to the same broker in
// place of the old one, which it closes.
func (c *saslConn) reconnect(ctx context.Context) (saslTerm, error) {
	conn, term, err := c.p.openSASL(ctx, c.network, c.address)
	if err != nil {
		return saslTerm{}, err
	}
	c.restoreDeadlines(conn)
	c.raw.Swap(&rawConn{conn}).Close()
	if c.closed.Load() {
		conn.Close() // closed meanwhile: Close saw the old one
	}
	return term, nil
}

// restoreDeadlines sets kafka-go's deadlines on conn again.
func (c *saslConn) restoreDeadlines(conn net.Conn) {
	c.deadlineMu.Lock()
	defer c.deadlineMu.Unlock()
	conn.SetReadDeadline(c.readDeadline)
	conn.SetWriteDeadline(c.writeDeadline)
}

func (c *saslConn) Read(b []byte) (int, error) { return c.conn().Read(b) }

func (c *saslConn) Close() error {
	c.closed.Store(true)
	return c.conn().Close()
}

func (c *saslConn) LocalAddr() net.Addr  { return c.conn().LocalAddr() }
func (c *saslConn) RemoteAddr() net.Addr { return c.conn().RemoteAddr() }

func (c *saslConn) SetDeadline(t time.Time) error {
	c.deadlineMu.Lock()
	c.readDeadline, c.writeDeadline = t, t
	c.deadlineMu.Unlock()
	return c.conn().SetDeadline(t)
}

func (c *saslConn) SetReadDeadline(t time.Time) error {
	c.deadlineMu.Lock()
	c.readDeadline = t
	c.deadlineMu.Unlock()
	return c.conn().SetReadDeadline(t)
}

func (c *saslConn) SetWriteDeadline(t time.Time) error {
	c.deadlineMu.Lock()
	c.writeDeadline = t
	c.deadlineMu.Unlock()
	return c.conn().SetWriteDeadline(t)
}
