package queuepublish

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
)

// Authentication is how a request proves that its sender may publish:
// a shared secret in Authorization, a webhook's signature of the body, or
// a page's token minted with a secret. The scheme is chosen once, when
// the config loads.
type Authentication struct {
	// The shared secrets; a request with any of them is accepted, so
	// that a secret can be rotated without downtime. Clients send one in
	// the Authorization header, as the whole value or after "Bearer ",
	// unless signature_header is set. Use placeholders, {env.NAME} or
	// {file.PATH}, so that secrets stay out of the config; they are
	// resolved once when the config loads, and a secret that resolves
	// empty stops the config from loading. At least one is required.
	Secrets []string `json:"secrets,omitempty"`

	// If set, requests are authenticated by this header instead of
	// Authorization: it must hold "sha256=" and the hex HMAC-SHA256 of
	// the raw body keyed with a secret, as GitHub signs webhooks
	// (X-Hub-Signature-256). The signature covers the body only: the
	// path, query and other headers of a replayed body may change, so a
	// webhook handler should pin its topic.
	SignatureHeader string `json:"signature_header,omitempty"`

	// If set, a request without Authorization may authenticate with a
	// token in its query (?token=...), minted with a secret for the
	// request's topic (MintToken) and expiring within this long of the
	// request: a page publishes without the secret. Unset, tokens are
	// refused.
	TokenMaxAge caddy.Duration `json:"token_max_age,omitempty"`

	secrets  secrets       // resolved
	scheme   authenticator // chosen at provision
	topicFor func(*exchange) (string, *rejection)
}

// check checks the settings.
func (a *Authentication) check() error {
	if len(a.Secrets) == 0 {
		return errors.New("secret: required; use {env.NAME} or {file.PATH}")
	}
	if err := checkLimits(limit{"token_max_age", int64(a.TokenMaxAge), false}); err != nil {
		return err
	}
	if a.SignatureHeader != "" {
		if err := validSignatureHeader(a.SignatureHeader); err != nil {
			return fmt.Errorf("signature_header: %v", err)
		}
		if a.TokenMaxAge > 0 {
			return errors.New("token_max_age: a handler with signature_header takes signed bodies only")
		}
	}
	return nil
}

// provision resolves the secrets and chooses the scheme.
func (a *Authentication) provision(p *provisioning) error {
	if err := a.secrets.resolve(p.repl, a.Secrets); err != nil {
		return err
	}
	a.topicFor = p.h.requestTopic
	switch {
	case a.SignatureHeader != "":
		a.scheme = signatures{header: a.SignatureHeader, secrets: &a.secrets}
	case a.TokenMaxAge > 0:
		a.scheme = secretsOrTokens{tokens: tokens{secrets: &a.secrets, maxAge: time.Duration(a.TokenMaxAge), topicFor: p.h.requestTopic}}
	default:
		a.scheme = bearers{&a.secrets}
	}
	return nil
}

func (a *Authentication) cleanup() error { return nil }

// authorized reports whether an Authorization header holds a secret.
func (a *Authentication) authorized(header string) bool {
	_, ok := a.secrets.authorized(header)
	return ok
}

// An identity is who a request was authenticated as: today, the holder
// of one of the secrets, or of a token or a signature made with it.
type identity struct {
	scheme string // "secret", "token" or "signature"
	secret int    // which secret, from 1; 0 before the body is verified
}

// An authenticator is one scheme of credentials.
type authenticator interface {
	// authenticate checks what the request's headers or query carry,
	// before its body is read, and sets the request's identity.
	authenticate(x *exchange) bool
	// verify checks the body, for a scheme that signs it.
	verify(x *exchange, body []byte) bool
}

// bearers take a secret in Authorization.
type bearers struct{ secrets *secrets }

func (b bearers) authenticate(x *exchange) bool {
	n, ok := b.secrets.authorized(x.req.authorization)
	x.req.identity = identity{scheme: "secret", secret: n}
	return ok
}

func (bearers) verify(*exchange, []byte) bool { return true }

// signatures take a webhook's signature of the body in a header: its form
// is checked before the body is read, the signature after.
type signatures struct {
	header  string
	secrets *secrets
}

func (s signatures) authenticate(x *exchange) bool {
	x.req.identity = identity{scheme: "signature"}
	return parseSignature(x.req.signature, &x.req.signed)
}

func (s signatures) verify(x *exchange, body []byte) bool {
	n, ok := s.secrets.signed(&x.req.signed, body)
	x.req.identity.secret = n
	return ok
}

// secretsOrTokens take a secret in Authorization or, without one, a
// token in the query.
type secretsOrTokens struct{ tokens tokens }

func (st secretsOrTokens) authenticate(x *exchange) bool {
	if x.req.authorization != "" || !x.req.hasToken {
		return bearers{st.tokens.secrets}.authenticate(x)
	}
	return st.tokens.authenticate(x)
}

func (secretsOrTokens) verify(*exchange, []byte) bool { return true }

// secrets are the shared secrets, resolved, and their digests for the
// comparison of an Authorization header.
type secrets struct {
	values  [][]byte
	digests [][sha256.Size]byte
}

// authorized compares the Authorization header with every secret: whole,
// without a "Bearer " prefix and, for HTTP Basic credentials (which
// Confluent REST Proxy's clients send), as the "user:password" pair and as
// the password alone. It compares SHA-256 digests in constant time and
// checks every secret without stopping at a match, so the time taken shows
// neither which secret matched nor any secret's content or length. It
// returns which secret matched, from 1.
func (s *secrets) authorized(header string) (int, bool) {
	token := header
	if len(header) > 7 && strings.EqualFold(header[:7], "Bearer ") {
		token = header[7:]
	}
	var sent [4][sha256.Size]byte
	sent[0], sent[1] = sha256.Sum256(stringBytes(header)), sha256.Sum256(stringBytes(token))
	n := 2
	if pair, password, ok := basicCredentials(header); ok {
		sent[2], sent[3] = sha256.Sum256(pair), sha256.Sum256(password)
		n = 4
	}
	var m matcher
	for i := range s.digests {
		for j := range n {
			m.compare(i, sent[j][:], s.digests[i][:])
		}
	}
	return m.result()
}

// matcher finds which of the secrets matched, in constant time: every
// comparison is made, and the one that matched chosen without a branch.
type matcher struct{ match, which int }

func (m *matcher) compare(i int, x, y []byte) {
	eq := compareDigests(x, y)
	m.match |= eq
	m.which = subtle.ConstantTimeSelect(eq, i+1, m.which)
}

func (m *matcher) result() (int, bool) { return m.which, m.match == 1 }

// basicCredentials decodes an HTTP Basic Authorization header into its
// "user:password" pair and the password; false if it is not one.
func basicCredentials(header string) (pair, password []byte, ok bool) {
	if len(header) <= 6 || !strings.EqualFold(header[:6], "Basic ") {
		return nil, nil, false
	}
	pair, err := base64.StdEncoding.DecodeString(header[6:])
	if err != nil {
		return nil, nil, false
	}
	_, password, ok = bytes.Cut(pair, []byte{':'})
	return pair, password, ok
}

// parseSignature reads a webhook signature header, "sha256=" and the hex
// HMAC-SHA256 of the body, into sig. It says nothing of the secrets, so a
// malformed header is refused before the body is read.
func parseSignature(header string, sig *[sha256.Size]byte) bool {
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	if !ok || len(hexSig) != 2*sha256.Size {
		return false
	}
	_, err := hex.Decode(sig[:], stringBytes(hexSig))
	return err == nil
}

// validSignatureHeader checks that a request can carry the header that
// signature_header names: otherwise every request would be refused 403.
// The name must be an HTTP field name (RFC 9110's token), and not one
// that net/http takes out of a request's headers (it keeps them apart,
// as Request.Host and Request.TransferEncoding).
func validSignatureHeader(name string) error {
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", c)) {
			return fmt.Errorf("%q holds %q, which no HTTP header name holds", name, c)
		}
	}
	switch http.CanonicalHeaderKey(name) {
	case "Host", "Transfer-Encoding":
		return fmt.Errorf("%q never reaches the handler as a header", name)
	}
	return nil
}

// signed checks a parsed webhook signature against the HMAC of the body
// with every secret, in constant time.
func (s *secrets) signed(sig *[sha256.Size]byte, body []byte) (int, bool) {
	var m matcher
	for i, secret := range s.values {
		mac := hmac.New(sha256.New, secret)
		mac.Write(body)
		m.compare(i, mac.Sum(nil), sig[:])
	}
	return m.result()
}

// resolveSecret resolves the placeholders of a secret's configured value.
// Its error names what failed only when the value is one {env.*} or
// {file.*} placeholder and nothing else: the name of a variable or file is
// no secret, but in any other value, the text the replacer would quote (an
// unrecognized "{...}") may be part of the secret itself.
func resolveSecret(repl *caddy.Replacer, value string) (string, error) {
	secret, err := repl.ReplaceOrErr(value, true, true)
	if err == nil || isSecretPlaceholder(value) {
		return secret, err
	}
	return "", errors.New(`holds an unknown or empty placeholder; give the secret as {env.NAME} or {file.PATH}, or write a literal brace as \{ or \}`)
}

// isSecretPlaceholder reports whether value is one {env.*} or {file.*}
// placeholder.
func isSecretPlaceholder(value string) bool {
	if len(value) < 2 || value[0] != '{' || value[len(value)-1] != '}' {
		return false
	}
	inner := value[1 : len(value)-1]
	if strings.ContainsAny(inner, "{}\\") {
		return false
	}
	return strings.HasPrefix(inner, "env.") || strings.HasPrefix(inner, "file.")
}

// compareDigests compares two digests in constant time. Tests replace it
// to check which comparisons are made.
var compareDigests = subtle.ConstantTimeCompare

// stringBytes is s as a byte slice without a copy; the slice must not be
// written to. The hash and hex functions only read it.
func stringBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// resolve resolves each secret's placeholders and keeps it, and its
// digest.
func (s *secrets) resolve(repl *caddy.Replacer, configured []string) error {
	s.values, s.digests = nil, nil
	for i, v := range configured {
		field := "secret"
		if len(configured) > 1 {
			field = fmt.Sprintf("secret %d", i+1)
		}
		secret, err := resolveSecret(repl, v)
		if err != nil {
			return fmt.Errorf("%s: %v", field, err)
		}
		if secret == "" {
			return fmt.Errorf("%s: resolves to an empty value", field)
		}
		s.values = append(s.values, []byte(secret))
		s.digests = append(s.digests, sha256.Sum256([]byte(secret)))
	}
	return nil
}
