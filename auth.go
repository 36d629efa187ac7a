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
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
)

// Authentication is how a request proves that its sender may publish,
// and who it is: a shared secret in Authorization (named or not), a
// webhook's signature of the body, a page's token minted with a secret, a
// JWT from an OAuth issuer, a verified client certificate, or the user an
// earlier Caddy handler authenticated. A handler may take several; the
// ways are chosen once, when the config loads.
type Authentication struct {
	// The shared secrets; a request with any of them is accepted, so
	// that a secret can be rotated without downtime. Clients send one in
	// the Authorization header, as the whole value or after "Bearer ",
	// unless signature_header is set. Use placeholders, {env.NAME} or
	// {file.PATH}, so that secrets stay out of the config; they are
	// resolved once when the config loads, and a secret that resolves
	// empty stops the config from loading. Their holders have no
	// identity: give a secret a name (named_secrets) for that.
	Secrets []string `json:"secrets,omitempty"`

	// Shared secrets by name: a request with one of them is accepted,
	// like one with any of secrets, and its identity is the name, so
	// that permissions and quotas tell clients apart, and revoking one
	// client is removing its line. Values as in secrets.
	NamedSecrets map[string]string `json:"named_secrets,omitempty"`

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

	// JWT access tokens from an OAuth 2.0 / OpenID Connect issuer, sent
	// as "Authorization: Bearer <jwt>" (jwt.go).
	JWT *JWTAuth `json:"jwt,omitempty"`

	// If set, a request over TLS whose client certificate Caddy verified
	// (the server's tls client_auth, with a trust pool) is
	// authenticated by it, its identity the certificate's name of this
	// kind: "cn" (the subject's common name), "dns", "email" or "uri"
	// (the first subject alternative name of that kind; "uri" for a
	// SPIFFE ID). A certificate Caddy did not verify is no credential.
	ClientCertificate string `json:"client_certificate,omitempty"`

	// If true, a request an earlier handler authenticated (basic_auth,
	// or any module that sets {http.auth.user.id}, as Caddy's
	// authentication handler does for its providers) is accepted as that
	// user, its identity the user ID. The earlier
	// handler must refuse the requests it does not authenticate, or
	// leave them to the other ways set here.
	CaddyAuth bool `json:"caddy_auth,omitempty"`

	secrets        secrets        // resolved
	scheme         authenticator  // chosen at provision
	jwt            *jwtScheme     // nil: no JWTs taken
	identityLabels identityLabels // nil: publishers have no names
	topicFor       func(*exchange) (string, *rejection)
}

// check checks the settings.
func (a *Authentication) check() error {
	withSecrets := len(a.Secrets) > 0 || len(a.NamedSecrets) > 0
	if !withSecrets && a.JWT == nil && a.ClientCertificate == "" && !a.CaddyAuth {
		return errNoIdentityKind
	}
	for name := range a.NamedSecrets {
		if err := validIdentityName(name); err != nil {
			return fmt.Errorf("named_secrets: %v", err)
		}
	}
	if err := checkLimits(limit{"token_max_age", int64(a.TokenMaxAge), false}); err != nil {
		return err
	}
	if (a.SignatureHeader != "" || a.TokenMaxAge > 0) && !withSecrets {
		return errors.New("secret: required by signature_header and token_max_age, which are made with a secret")
	}
	if a.SignatureHeader != "" {
		if err := validSignatureHeader(a.SignatureHeader); err != nil {
			return fmt.Errorf("signature_header: %v", err)
		}
		if a.TokenMaxAge > 0 {
			return errors.New("token_max_age: a handler with signature_header takes signed bodies only")
		}
	}
	if a.ClientCertificate != "" {
		if err := checkChoice("client_certificate", a.ClientCertificate, certificateNames); err != nil {
			return err
		}
	}
	if a.JWT != nil {
		if err := a.JWT.check(); err != nil {
			return fmt.Errorf("jwt: %v", err)
		}
	}
	return nil
}

// validIdentityName checks a name given to an identity in the config.
func validIdentityName(name string) error {
	if name == "" {
		return errors.New("a name must not be empty")
	}
	for _, c := range name {
		if c < ' ' || c == 0x7f {
			return fmt.Errorf("%q holds a control character", name)
		}
	}
	return nil
}

// provision resolves the secrets and chooses the scheme.
func (a *Authentication) provision(p *provisioning) error {
	if err := a.secrets.resolve(p.repl, a.Secrets, a.NamedSecrets); err != nil {
		return err
	}
	a.topicFor = p.h.requestTopic
	a.identityLabels = nil
	if len(a.NamedSecrets) > 0 || a.JWT != nil || a.ClientCertificate != "" || a.CaddyAuth {
		a.identityLabels = p.h.namedIdentities()
	}
	var secret authenticator
	switch {
	case len(a.secrets.values) == 0:
	case a.SignatureHeader != "":
		secret = signatures{header: a.SignatureHeader, secrets: &a.secrets}
	case a.TokenMaxAge > 0:
		secret = secretsOrTokens{tokens: tokens{secrets: &a.secrets, maxAge: time.Duration(a.TokenMaxAge), topicFor: p.h.requestTopic}}
	default:
		secret = bearers{&a.secrets}
	}
	if err := a.secrets.distinct(a.JWT != nil); err != nil {
		return err
	}
	if a.JWT != nil {
		s, err := a.JWT.provision(p)
		if err != nil {
			return fmt.Errorf("jwt: %v", err)
		}
		a.jwt = s
	}
	if secret != nil && a.jwt == nil && a.ClientCertificate == "" && !a.CaddyAuth {
		a.scheme = secret // the usual case, without a detour
		return nil
	}
	k := kinds{caddy: a.CaddyAuth, secret: secret, cert: a.ClientCertificate, missing: rejectedAuth}
	if a.jwt != nil {
		k.jwt = a.jwt
		k.missing = rejectedNoCredentials
	}
	a.scheme = k
	return nil
}

func (a *Authentication) cleanup() error {
	if a.jwt != nil {
		err := a.jwt.release()
		a.jwt = nil
		return err
	}
	return nil
}

// namedIdentities are the identities the config names: those of the
// named secrets, and those allow and quota name exactly.
func (h *Handler) namedIdentities() identityLabels {
	l := identityLabels{}
	for name := range h.NamedSecrets {
		l[name] = true
	}
	for _, rule := range h.Allow {
		if rule.Identity != "" && pattern(rule.Identity).literal() {
			l[rule.Identity] = true
		}
	}
	for _, q := range h.Quotas.Quotas {
		if pattern(q.Identity).literal() {
			l[q.Identity] = true
		}
	}
	return l
}

// authorized reports whether an Authorization header holds a secret.
func (a *Authentication) authorized(header string) bool {
	_, ok := a.secrets.authorized(header)
	return ok
}

// An authenticator is one way to authenticate.
type authenticator interface {
	// presented reports whether the request carries credentials of
	// this kind.
	presented(req *request) bool
	// authenticate checks what the request's headers or query carry,
	// before its body is read, and sets the request's identity; nil if
	// they are good.
	authenticate(x *exchange) *rejection
	// verify checks the body, for a scheme that signs it.
	verify(x *exchange, body []byte) bool
}

// bearers take a secret in Authorization.
type bearers struct{ secrets *secrets }

func (bearers) presented(req *request) bool { return req.authorization != "" }

func (b bearers) authenticate(x *exchange) *rejection {
	n, ok := b.secrets.authorized(x.req.authorization)
	x.req.identity = identity{scheme: schemeSecret, secret: n, name: b.secrets.name(n)}
	if !ok {
		return rejectedAuth
	}
	return nil
}

func (bearers) verify(*exchange, []byte) bool { return true }

// signatures take a webhook's signature of the body in a header: its form
// is checked before the body is read, the signature after.
type signatures struct {
	header  string
	secrets *secrets
}

func (signatures) presented(req *request) bool { return req.signature != "" }

func (s signatures) authenticate(x *exchange) *rejection {
	x.req.identity = identity{scheme: schemeSignature}
	if !parseSignature(x.req.signature, &x.req.signed) {
		return rejectedAuth
	}
	return nil
}

func (s signatures) verify(x *exchange, body []byte) bool {
	n, ok := s.secrets.signed(&x.req.signed, body)
	x.req.identity.secret, x.req.identity.name = n, s.secrets.name(n)
	return ok
}

// secretsOrTokens take a secret in Authorization or, without one, a
// token in the query.
type secretsOrTokens struct{ tokens tokens }

func (secretsOrTokens) presented(req *request) bool {
	return req.authorization != "" || req.hasToken
}

func (st secretsOrTokens) authenticate(x *exchange) *rejection {
	if x.req.authorization != "" || !x.req.hasToken {
		return bearers{st.tokens.secrets}.authenticate(x)
	}
	return st.tokens.authenticate(x)
}

func (secretsOrTokens) verify(*exchange, []byte) bool { return true }

// kinds are the ways of a handler that takes more than secrets. A request
// is authenticated by the first of them whose credentials it carries,
// and refused if they are wrong, whatever else it carries:
//  1. the user an earlier Caddy handler authenticated (with caddy_auth):
//     that handler checked the request already, and may have left its
//     own credentials in Authorization;
//  2. a JWT in Authorization: a bearer credential that has the form of
//     one (three dot-separated parts, the first a JSON object), which no
//     shared secret has;
//  3. a secret, a signature or a page's token;
//  4. a client certificate Caddy verified.
type kinds struct {
	caddy   bool
	jwt     authenticator // nil: none
	secret  authenticator // nil: no secrets
	cert    string        // the name a client certificate gives; "": none
	missing *rejection    // the answer to a request without credentials
}

func (k kinds) presented(req *request) bool {
	return k.caddy && req.caddyUser != "" ||
		k.jwt != nil && k.jwt.presented(req) ||
		k.secret != nil && k.secret.presented(req) ||
		k.cert != "" && req.certificate != nil
}

func (k kinds) authenticate(x *exchange) *rejection {
	switch req := &x.req; {
	case k.caddy && req.caddyUser != "":
		req.identity = identity{scheme: schemeCaddy, name: req.caddyUser}
		return nil
	case k.jwt != nil && k.jwt.presented(req):
		return k.jwt.authenticate(x)
	case k.secret != nil && k.secret.presented(req):
		return k.secret.authenticate(x)
	case k.cert != "" && req.certificate != nil:
		name := certificateName(req.certificate, k.cert)
		req.identity = identity{scheme: schemeCertificate, name: name}
		if name == "" {
			return rejectedCertificateName
		}
		return nil
	}
	return k.missing
}

func (k kinds) verify(x *exchange, body []byte) bool {
	if x.req.identity.scheme != schemeSignature {
		return true
	}
	return k.secret.verify(x, body)
}

// secrets are the shared secrets, resolved, and their digests for the
// comparison of an Authorization header.
type secrets struct {
	values  [][]byte
	digests [][sha256.Size]byte
	names   []string // the identity each gives; "" for an unnamed secret
}

// name is the identity of the n-th secret, from 1; "" for none.
func (s *secrets) name(n int) string {
	if n < 1 || n > len(s.names) {
		return ""
	}
	return s.names[n-1]
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

// distinct refuses two secrets of the same value, whose holders could not
// be told apart (the identity would be whichever matched last), and, with
// JWTs taken, a secret that has the form of a JWT, which would be checked
// as one and never match.
func (s *secrets) distinct(withJWT bool) error {
	seen := make(map[[sha256.Size]byte]int, len(s.digests))
	for i, d := range s.digests {
		if j, ok := seen[d]; ok {
			return fmt.Errorf("secret: %s and %s have the same value", s.field(j), s.field(i))
		}
		seen[d] = i
		if withJWT && (&jwtScheme{}).presented(&request{authorization: "Bearer " + string(s.values[i])}) {
			return fmt.Errorf("secret: %s has the form of a JWT, which jwt would check as one; use another secret", s.field(i))
		}
	}
	return nil
}

// field names the i-th secret (from 0) in an error, never by its value.
func (s *secrets) field(i int) string {
	if s.names[i] != "" {
		return fmt.Sprintf("%q", s.names[i])
	}
	return fmt.Sprintf("number %d", i+1)
}

// resolve resolves each secret's placeholders and keeps it, its digest
// and its name: the unnamed secrets in their order, then the named ones
// by name.
func (s *secrets) resolve(repl *caddy.Replacer, unnamed []string, named map[string]string) error {
	s.values, s.digests, s.names = nil, nil, nil
	add := func(field, name, v string) error {
		secret, err := resolveSecret(repl, v)
		if err != nil {
			return fmt.Errorf("%s: %v", field, err)
		}
		if secret == "" {
			return fmt.Errorf("%s: resolves to an empty value", field)
		}
		s.values = append(s.values, []byte(secret))
		s.digests = append(s.digests, sha256.Sum256([]byte(secret)))
		s.names = append(s.names, name)
		return nil
	}
	for i, v := range unnamed {
		field := "secret"
		if len(unnamed) > 1 {
			field = fmt.Sprintf("secret %d", i+1)
		}
		if err := add(field, "", v); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(named)) {
		if err := add(fmt.Sprintf("secret %q", name), name, named[name]); err != nil {
			return err
		}
	}
	return nil
}
