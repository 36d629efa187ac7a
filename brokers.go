package queuepublish

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/caddyserver/caddy/v2"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// BrokerTLS is how connections to the brokers use TLS. The zero value
// verifies the brokers' certificates against the system's roots.
type BrokerTLS struct {
	// A PEM file of the CA certificates that sign the brokers'
	// certificates, instead of the system's roots.
	CA string `json:"ca,omitempty"`

	// PEM files of a client certificate and its key, for brokers that
	// authenticate clients by certificate (mutual TLS).
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`

	// The name the brokers' certificates must hold, if not the host
	// name each broker is reached by.
	ServerName string `json:"server_name,omitempty"`

	// Accept any broker certificate. Insecure: for tests only.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
}

// BrokerSASL is how the producer authenticates to the brokers: with a
// user name and password (plain, SCRAM), or with the access tokens an
// OAuth 2.0 issuer grants a client (oauthbearer).
type BrokerSASL struct {
	// "plain", "scram-sha-256", "scram-sha-512" or "oauthbearer".
	Mechanism string `json:"mechanism,omitempty"`
	// plain and SCRAM: the user name; it may hold {env.*} or {file.*}
	// placeholders.
	Username string `json:"username,omitempty"`
	// plain and SCRAM: the password; give it as {env.NAME} or
	// {file.PATH}, resolved when the config loads.
	Password string `json:"password,omitempty"`

	// oauthbearer: the issuer's token endpoint, where the producer gets
	// tokens with the client-credentials grant; https outside tests.
	TokenURL string `json:"token_url,omitempty"`
	// oauthbearer: the client's ID; it may hold {env.*} or {file.*}
	// placeholders.
	ClientID string `json:"client_id,omitempty"`
	// oauthbearer: the client's secret; give it as {env.NAME} or
	// {file.PATH}, resolved when the config loads.
	ClientSecret string `json:"client_secret,omitempty"`
	// oauthbearer: the scopes to ask for, separated by spaces.
	Scope string `json:"scope,omitempty"`
	// oauthbearer: the audience to ask for, which issuers such as Hydra,
	// Auth0 and Okta put in the token's aud claim: the brokers'
	// sasl.oauthbearer.expected.audience.
	Audience string `json:"audience,omitempty"`
	// oauthbearer: a PEM file of the CAs that sign the token endpoint's
	// certificate, for an issuer under a private CA; unset, the system's
	// roots. Read when the config loads.
	TokenCA string `json:"token_ca,omitempty"`
}

// tlsMaterial is BrokerTLS with its files read, part of a producer's
// identity in the pool: a changed file makes a new producer.
type tlsMaterial struct {
	CA                 []byte `json:"ca,omitempty"`
	Cert               []byte `json:"cert,omitempty"`
	Key                []byte `json:"key,omitempty"`
	ServerName         string `json:"server_name,omitempty"`
	InsecureSkipVerify bool   `json:"insecure_skip_verify,omitempty"`
}

// material reads the files and resolves the placeholders of the TLS
// settings.
func (t *BrokerTLS) material(repl *caddy.Replacer) (*tlsMaterial, error) {
	m := &tlsMaterial{ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	for _, f := range []struct {
		name, path string
		dst        *[]byte
	}{{"ca", t.CA, &m.CA}, {"cert", t.Cert, &m.Cert}, {"key", t.Key, &m.Key}} {
		if f.path == "" {
			continue
		}
		path, err := repl.ReplaceOrErr(f.path, true, true)
		if err != nil {
			return nil, fmt.Errorf("tls %s: %v", f.name, err)
		}
		if *f.dst, err = os.ReadFile(path); err != nil {
			return nil, fmt.Errorf("tls %s: %v", f.name, err)
		}
	}
	if (m.Cert == nil) != (m.Key == nil) {
		return nil, errors.New("tls: cert and key go together")
	}
	_, err := m.config()
	return m, err
}

// config builds the TLS configuration for broker connections.
func (m *tlsMaterial) config() (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         m.ServerName,
		InsecureSkipVerify: m.InsecureSkipVerify, //nolint:gosec // the user asked for it, for tests
	}
	if m.CA != nil {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(m.CA) {
			return nil, errors.New("tls ca: no PEM certificate in the file")
		}
		cfg.RootCAs = pool
	}
	if m.Cert != nil {
		pair, err := tls.X509KeyPair(m.Cert, m.Key)
		if err != nil {
			return nil, fmt.Errorf("tls cert, key: %v", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// check checks the mechanism and that its settings, and only its, are
// given.
func (s *BrokerSASL) check() error {
	if err := saslMechanisms.check(s.Mechanism); err != nil {
		return fmt.Errorf("sasl: %v", err)
	}
	oauth := s.TokenURL != "" || s.ClientID != "" || s.ClientSecret != "" || s.Scope != "" || s.Audience != "" || s.TokenCA != ""
	if s.Mechanism == "oauthbearer" {
		if s.Username != "" || s.Password != "" {
			return errors.New("sasl oauthbearer: takes token_url, client_id and client_secret, not a username and password")
		}
		if s.TokenURL == "" || s.ClientID == "" || s.ClientSecret == "" {
			return errors.New("sasl oauthbearer: token_url, client_id and client_secret are required")
		}
		return nil
	}
	if oauth {
		return fmt.Errorf("sasl %s: token_url, client_id, client_secret, scope, audience and token_ca are oauthbearer's", s.Mechanism)
	}
	return nil
}

// credentials resolves the placeholders of the SASL settings.
func (s *BrokerSASL) credentials(repl *caddy.Replacer) (*producer.SASL, error) {
	if s.Mechanism == "oauthbearer" {
		return s.oauth(repl)
	}
	user, err := repl.ReplaceOrErr(s.Username, true, true)
	if err != nil {
		return nil, fmt.Errorf("sasl username: %v", err)
	}
	password, err := resolveSecret(repl, s.Password)
	if err != nil {
		return nil, fmt.Errorf("sasl password: %v", err)
	}
	if user == "" || password == "" {
		return nil, errors.New("sasl: username and password are required")
	}
	c := &producer.SASL{Mechanism: s.Mechanism, Username: user, Password: password}
	return c, c.Check()
}

// oauth resolves the placeholders of oauthbearer's settings.
func (s *BrokerSASL) oauth(repl *caddy.Replacer) (*producer.SASL, error) {
	o := &producer.OAuth{Scope: s.Scope, Audience: s.Audience}
	var err error
	if o.TokenURL, err = repl.ReplaceOrErr(s.TokenURL, true, true); err != nil {
		return nil, fmt.Errorf("sasl token_url: %v", err)
	}
	if o.ClientID, err = repl.ReplaceOrErr(s.ClientID, true, true); err != nil {
		return nil, fmt.Errorf("sasl client_id: %v", err)
	}
	if o.ClientSecret, err = resolveSecret(repl, s.ClientSecret); err != nil {
		return nil, fmt.Errorf("sasl client_secret: %v", err)
	}
	if s.TokenCA != "" {
		// Read once here: part of the producer's identity in the pool,
		// so that a changed file makes a new producer.
		if o.CA, err = os.ReadFile(s.TokenCA); err != nil {
			return nil, fmt.Errorf("sasl token_ca: %v", err)
		}
	}
	c := &producer.SASL{Mechanism: s.Mechanism, OAuth: o}
	return c, c.Check()
}
