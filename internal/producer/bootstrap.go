package producer

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"time"

	"github.com/segmentio/kafka-go/protocol"
	"github.com/segmentio/kafka-go/protocol/apiversions"
)

// kafka-go's transport reads the cluster's metadata on one control
// connection, to the first bootstrap broker that accepts a TCP connection.
// A broker that accepts but does not answer (frozen: a long GC pause, a
// stalled disk, SIGSTOP; the kernel still completes the handshake) then
// holds a new connection pool for the whole dial timeout and leaves it
// with an error, answered 503 "no Kafka broker reachable" though the other
// brokers answer. On a three-node Apache Kafka cluster with one node
// frozen, that was every request for as long as the node was frozen, in
// one run of the failure tests. So with several bootstrap brokers the
// transport dials a single name, bootstrapName, and the producer's dial
// picks for it the first broker that answers a Kafka request.

// bootstrapName is the one address the transport knows the bootstrap
// brokers by.
const bootstrapName = "queue-publish-bootstrap"

// bootstrapAddr is the transport's address for the bootstrap brokers.
type bootstrapAddr struct{}

func (bootstrapAddr) Network() string { return "tcp" }
func (bootstrapAddr) String() string  { return bootstrapName }

// probeStagger is how long a broker has to answer before the next one is
// asked too: a healthy broker answers within it, so usually one is asked.
const probeStagger = 250 * time.Millisecond

// dialBootstrap connects to the first of the bootstrap brokers, tried in a
// random order, that answers an ApiVersions request on a connection of
// its own (which is then closed: on a SASL listener, the connection the
// transport gets must start with its own exchange). A broker that refuses
// or fails is passed over at once, one that is silent after probeStagger
// is raced by the next. If none answers, their errors are returned (a TLS
// failure, say, whose cause the log must show).
func (p *Producer) dialBootstrap(ctx context.Context) (net.Conn, error) {
	brokers := append([]string(nil), p.cfg.Brokers...)
	rand.Shuffle(len(brokers), func(i, j int) { brokers[i], brokers[j] = brokers[j], brokers[i] })
	// The connection is dialled, and authenticated, within the
	// caller's context, not the probes' that ends with this call.
	dialCtx := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the probes still waiting
	type answer struct {
		i   int
		err error
	}
	answers := make(chan answer, len(brokers))
	probe := func(i int) {
		go func() { answers <- answer{i, p.probe(ctx, brokers[i])} }()
	}
	errs := make([]error, len(brokers))
	next, pending := 0, 0
	start := func() {
		if next < len(brokers) {
			probe(next)
			next++
			pending++
		}
	}
	start()
	for pending > 0 {
		stagger := time.NewTimer(probeStagger)
		select {
		case a := <-answers:
			stagger.Stop()
			pending--
			if a.err == nil {
				return p.dialBroker(dialCtx, "tcp", brokers[a.i])
			}
			errs[a.i] = a.err
			start() // a failure: the next one at once
		case <-stagger.C:
			start() // silent so far: race the next one
		case <-ctx.Done():
			stagger.Stop()
			return nil, errors.Join(append(errs, ctx.Err())...)
		}
	}
	return nil, errors.Join(errs...)
}

// probe asks address for its API versions on a connection of its own,
// within the dial timeout.
func (p *Producer) probe(ctx context.Context, address string) error {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	conn, err := p.dialTLS(ctx, "tcp", address)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() }) // a silent broker
	defer stop()
	deadline, _ := ctx.Deadline()
	pc := protocol.NewConn(conn, p.cfg.ClientID)
	pc.SetDeadline(deadline)
	_, err = pc.RoundTrip(new(apiversions.Request))
	return err
}
