package producer

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/segmentio/kafka-go/protocol/apiversions"
	"github.com/segmentio/kafka-go/protocol/saslauthenticate"
	"github.com/segmentio/kafka-go/protocol/saslhandshake"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// SASL is how the producer authenticates to the brokers: plain data, so
// that a caller configures it without kafka-go's types, which the
// producer builds from it in New.
type SASL struct {
	// Mechanism is "plain", "scram-sha-256", "scram-sha-512" or
	// "oauthbearer".
	Mechanism string
	// Username and Password are plain's and SCRAM's credentials.
	Username string
	Password string
	// OAuth is OAUTHBEARER's: the client-credentials grant that gets the
	// tokens it presents.
	OAuth *OAuth `json:",omitempty"`
}

// OAuth is a client of the OAuth 2.0 client-credentials grant (RFC 6749
// 4.4), whose access tokens the producer presents to the brokers.
type OAuth struct {
	// TokenURL is the issuer's token endpoint.
	TokenURL     string
	ClientID     string
	ClientSecret string
	// Scope is the scopes asked for, separated by spaces; none if empty.
	Scope string `json:",omitempty"`
	// Audience, if set, is sent as the audience parameter, which issuers
	// such as Hydra, Auth0 and Okta put in the token's aud claim (the
	// brokers may require one: sasl.oauthbearer.expected.audience).
	Audience string `json:",omitempty"`
	// CA is PEM certificates that sign the token endpoint's, for an
	// issuer under a private CA; empty: the system's roots.
	CA []byte `json:",omitempty"`
}

// Check reports what New would refuse in s: a mechanism it does not know,
// credentials missing or of another mechanism, or credentials SCRAM
// cannot use. A caller checks its settings with it when it loads them,
// before any producer is made.
func (s SASL) Check() error {
	if s.Mechanism == "oauthbearer" {
		if s.Username != "" || s.Password != "" {
			return errors.New("sasl oauthbearer: takes a client ID and secret, not a username and password")
		}
		return s.OAuth.check()
	}
	if s.OAuth != nil {
		return fmt.Errorf("sasl %s: takes a username and password, not OAuth settings", s.Mechanism)
	}
	_, err := s.mechanism(nil)
	return err
}

func (o *OAuth) check() error {
	if o == nil || o.TokenURL == "" || o.ClientID == "" || o.ClientSecret == "" {
		return errors.New("sasl oauthbearer: token_url, client_id and client_secret are required")
	}
	u, err := url.Parse(o.TokenURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		// Not the URL itself: it may hold credentials.
		return errors.New("sasl oauthbearer: token_url is not an http or https URL")
	}
	if len(o.CA) > 0 {
		if _, err := o.roots(); err != nil {
			return err
		}
	}
	return nil
}

// roots is the pool of CA's certificates; nil without CA (the system's).
func (o *OAuth) roots() (*x509.CertPool, error) {
	if len(o.CA) == 0 {
		return nil, nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(o.CA) {
		return nil, errors.New("sasl oauthbearer: token_ca holds no PEM certificate")
	}
	return pool, nil
}

// mechanism builds kafka-go's SASL mechanism; OAUTHBEARER's takes its
// tokens from tokens.
func (s SASL) mechanism(tokens *tokenSource) (sasl.Mechanism, error) {
	switch s.Mechanism {
	case "plain":
		return plain.Mechanism{Username: s.Username, Password: s.Password}, nil
	case "scram-sha-256":
		return scram.Mechanism(scram.SHA256, s.Username, s.Password)
	case "scram-sha-512":
		return scram.Mechanism(scram.SHA512, s.Username, s.Password)
	case "oauthbearer":
		return oauthBearer{tokens: tokens}, nil
	}
	return nil, fmt.Errorf("sasl: %q is not plain, scram-sha-256, scram-sha-512 or oauthbearer", s.Mechanism)
}

// errSASLDropped is what a connection reports when it failed during SASL
// authentication: the broker closed or reset it, or it timed out.
var errSASLDropped = errors.New("the connection to the Kafka broker was lost during SASL authentication")

// The producer authenticates each broker connection itself, as it opens
// it (dialBroker), instead of leaving it to kafka-go's transport: the
// broker's answer to SaslAuthenticate v1 carries the session's lifetime
// (KIP-368, when the broker sets connections.max.reauth.ms, or a token
// expires), which kafka-go drops, and the connection must know it to
// renew its session in time (saslconn.go). Owning the exchange also tells
// its failures apart without guessing: a broker refusing the credentials
// answers SASL_AUTHENTICATION_FAILED, a rejection answered 500; a
// connection lost during the exchange (a broker restarting, a reset, a
// timeout) is errSASLDropped, a fault that retrying fixes, answered 503.
// Some brokers (kfake among them) also close the connection on bad
// credentials, which is then answered 503 too, with the error logged.

// saslVersions are the versions of the exchange's requests a renewal
// uses: a session has a lifetime only if the broker took SaslAuthenticate
// v1, which goes with SaslHandshake v1, kafka-go's newest of each.
var saslVersions = map[protocol.ApiKey]int16{protocol.SaslHandshake: 1, protocol.SaslAuthenticate: 1}

// negotiate asks the broker's API versions on a new connection, for the
// requests that follow on it, and returns them.
func negotiate(pc *protocol.Conn) (map[protocol.ApiKey]int16, error) {
	msg, err := pc.RoundTrip(new(apiversions.Request))
	if err != nil {
		return nil, err
	}
	versions := msg.(*apiversions.Response)
	if versions.ErrorCode != 0 {
		return nil, kafka.Error(versions.ErrorCode)
	}
	selected := make(map[protocol.ApiKey]int16, len(versions.ApiKeys))
	for _, k := range versions.ApiKeys {
		key := protocol.ApiKey(k.ApiKey)
		selected[key] = key.SelectVersion(k.MinVersion, k.MaxVersion)
	}
	pc.SetVersions(selected)
	return selected, nil
}

// authenticate runs the SASL exchange on pc as kafka-go's transport
// would, and returns the session's lifetime that the broker granted (0:
// none, it does not expire). Its failures are kafka.Errors (refused),
// errSASLDropped (lost), or the mechanism's own (an OAuth token that
// could not be had).
func authenticate(ctx context.Context, pc *protocol.Conn, mechanism sasl.Mechanism, addr string) (time.Duration, error) {
	// The first message before the handshake: an OAuth token that
	// cannot be had fails the exchange before the broker is asked.
	meta := &sasl.Metadata{}
	if host, port, err := splitHostPort(addr); err == nil {
		meta.Host, meta.Port = host, port
	}
	ctx = sasl.WithMetadata(ctx, meta)
	sess, state, err := mechanism.Start(ctx)
	if err != nil {
		return 0, err
	}
	msg, err := pc.RoundTrip(&saslhandshake.Request{Mechanism: mechanism.Name()})
	if err != nil {
		return 0, dropped(err)
	}
	if code := msg.(*saslhandshake.Response).ErrorCode; code != 0 {
		return 0, kafka.Error(code)
	}
	for done := false; !done; {
		msg, err := pc.RoundTrip(&saslauthenticate.Request{AuthBytes: state})
		if err != nil {
			return 0, dropped(err)
		}
		res := msg.(*saslauthenticate.Response)
		if res.ErrorCode != 0 {
			return 0, fmt.Errorf("%w: %s", kafka.Error(res.ErrorCode), res.ErrorMessage)
		}
		if done, state, err = sess.Next(ctx, res.AuthBytes); err != nil {
			return 0, err
		}
		if done {
			return time.Duration(res.SessionLifetimeMs) * time.Millisecond, nil
		}
	}
	return 0, nil
}

// dropped is err, a connection's failure during the exchange, as
// errSASLDropped. Not wrapping err: an io.EOF must not read as the
// broker's refusal.
func dropped(err error) error {
	return fmt.Errorf("%w (%v)", errSASLDropped, err)
}

func splitHostPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(port)
	return host, n, err
}
