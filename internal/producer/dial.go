package producer

import (
	"context"
	"crypto/tls"
	"net"
)

// dial opens broker connections for the transport: to the bootstrap
// broker that answers first for bootstrapName (bootstrap.go), else to the
// address; TLS, if set, as kafka-go would do it (server name from the
// address unless given), then SASL above it.
func (p *Producer) dial(ctx context.Context, network, address string) (net.Conn, error) {
	if address == bootstrapName {
		return p.dialBootstrap(ctx)
	}
	return p.dialBroker(ctx, network, address)
}

// dialBroker opens a connection to one broker, with TLS if set; with
// SASL, authenticated (sasl.go) and keeping its session (saslconn.go), so
// that kafka-go's transport takes it as it would a plain one.
func (p *Producer) dialBroker(ctx context.Context, network, address string) (net.Conn, error) {
	if p.sasl == nil {
		return p.dialTLS(ctx, network, address)
	}
	conn, lifetime, err := p.openSASL(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return p.keepSession(conn, lifetime, network, address), nil
}

// dialTLS opens a TCP connection to address, with TLS if set (its
// handshake happens on the first write).
func (p *Producer) dialTLS(ctx context.Context, network, address string) (net.Conn, error) {
	conn, err := p.cfg.Dial(ctx, network, address)
	if err != nil {
		return nil, err
	}
	if cfg := p.cfg.TLS; cfg != nil {
		if cfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(address)
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
		conn = tls.Client(conn, cfg)
	}
	return conn, nil
}
