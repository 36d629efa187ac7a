package queuepublish

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/queuepublish/caddy-queue-publish/internal/bearer"
)

// JWTAuth takes JWT access tokens from an OAuth 2.0 / OpenID Connect
// issuer, sent as "Authorization: Bearer <jwt>", verified with the
// issuer's published keys (internal/bearer). A request without
// credentials is then answered 401 with WWW-Authenticate: Bearer, and
// one with a token that is invalid, expired or for another audience 401
// with error="invalid_token" (RFC 6750); while the issuer's keys cannot
// be had, 503 (nothing is read or produced; retrying is safe), never a
// pass. A token verified once is not verified again until its exp.
type JWTAuth struct {
	// The issuer's URL: its keys are found by discovery
	// (/.well-known/openid-configuration, or the OAuth authorization
	// server's metadata), and a token's iss must be the issuer as
	// discovery gives it. Takes {env.*} placeholders.
	Issuer string `json:"issuer,omitempty"`

	// The URL of the issuer's key set (JWKS), for an issuer without
	// discovery; then iss is checked only if issuer is set too.
	JWKSURL string `json:"jwks_url,omitempty"`

	// A token's aud must hold one of these: a token minted for another
	// service of the same issuer is refused. Required.
	Audiences []string `json:"audiences,omitempty"`

	// The JWS algorithms taken. Default: the asymmetric ones (RS*, PS*,
	// ES*, EdDSA); "none" and the HMAC algorithms are never taken, so
	// that a public key is never used as a shared secret.
	Algorithms []string `json:"algorithms,omitempty"`

	// The claim whose value (a string) is the identity. Default: "sub".
	IdentityClaim string `json:"identity_claim,omitempty"`

	// How far exp, nbf and iat may be off, for clocks that differ.
	// Default: 30s; at most 5m.
	Leeway caddy.Duration `json:"leeway,omitempty"`

	// A token signed with a key not in the cached key set makes the key
	// set be fetched again, at most once in this long, so that tokens
	// with made-up key IDs cannot flood the issuer. Default: 1m.
	RefetchInterval caddy.Duration `json:"refetch_interval,omitempty"`

	// How often the key set is fetched again in the background, so that
	// a key the issuer withdraws stops being trusted. Default: 1h.
	RefreshInterval caddy.Duration `json:"refresh_interval,omitempty"`

	// The most verified tokens remembered, each until its exp, so that
	// a client reusing its token costs one digest. Default: 10000.
	CacheSize int `json:"cache_size,omitempty"`
}

// check checks what needs no network.
func (j *JWTAuth) check() error {
	if j.Issuer == "" && j.JWKSURL == "" {
		return errors.New("issuer or jwks_url: required")
	}
	if len(j.Audiences) == 0 {
		return errors.New("audience: required, so that tokens for other services are refused")
	}
	if j.IdentityClaim == "" {
		j.IdentityClaim = "sub"
	}
	return checkLimits(
		limit{"leeway", int64(j.Leeway), true},
		limit{"refetch_interval", int64(j.RefetchInterval), true},
		limit{"refresh_interval", int64(j.RefreshInterval), true},
		limit{"cache_size", int64(j.CacheSize), true},
	)
}

// provision takes the verifier of these settings, shared by every
// handler that has the same, across reloads: its keys and verified
// tokens survive a reload.
func (j *JWTAuth) provision(p *provisioning) (*jwtScheme, error) {
	cfg := bearer.Config{
		JWKSURL:         j.JWKSURL,
		Algorithms:      j.Algorithms,
		Leeway:          time.Duration(j.Leeway),
		RefetchInterval: time.Duration(j.RefetchInterval),
		RefreshInterval: time.Duration(j.RefreshInterval),
		CacheSize:       j.CacheSize,
	}
	var err error
	if cfg.Issuer, err = p.repl.ReplaceOrErr(j.Issuer, true, true); err != nil {
		return nil, err
	}
	if cfg.JWKSURL, err = p.repl.ReplaceOrErr(j.JWKSURL, true, true); err != nil {
		return nil, err
	}
	for _, a := range j.Audiences {
		aud, err := p.repl.ReplaceOrErr(a, true, true)
		if err != nil {
			return nil, err
		}
		cfg.Audiences = append(cfg.Audiences, aud)
	}
	key := sharedKey("jwt", cfg)
	logger := p.logger.Named("jwt")
	for _, u := range []string{cfg.Issuer, cfg.JWKSURL} {
		if insecureURL(u) {
			// Keys fetched in the clear can be swapped on the way.
			logger.Warn("the issuer's keys are fetched over plain HTTP; use https outside a test", zap.String("url", u))
		}
	}
	v, _, err := loadShared(key, func() (*sharedVerifier, error) {
		ctx, cancel := context.WithCancel(context.Background())
		c := cfg
		c.Logger = logger
		v, err := bearer.New(ctx, c)
		if err != nil {
			cancel()
			return nil, err
		}
		return &sharedVerifier{v: v, cancel: cancel}, nil
	})
	if err != nil {
		return nil, err
	}
	return &jwtScheme{v: v.v, claim: j.IdentityClaim, wait: time.Duration(p.h.Timeout) / 2, logger: logger, poolKey: key}, nil
}

// insecureURL reports whether u is plain HTTP to a host other than the
// loopback.
func insecureURL(u string) bool {
	parsed, err := url.Parse(u)
	if err != nil || parsed.Scheme != "http" {
		return false
	}
	host := parsed.Hostname()
	if host == "localhost" {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}

// sharedVerifier is a verifier in the pool.
type sharedVerifier struct {
	v      *bearer.Verifier
	cancel context.CancelFunc
}

// Destruct stops the verifier's fetches when the last handler releases
// it.
func (s *sharedVerifier) Destruct() error {
	s.cancel()
	s.v.Close()
	return nil
}

// jwtScheme takes JWTs in Authorization.
type jwtScheme struct {
	v       *bearer.Verifier
	claim   string
	wait    time.Duration // the longest a request waits for the issuer's keys
	logger  *zap.Logger
	poolKey string
}

// presented reports whether Authorization holds a bearer credential that
// has the form of a JWT: three dot-separated parts, the first a
// base64url JSON object ("eyJ" is `{"`). No shared secret a handler
// takes looks like one, so the two share the header.
func (*jwtScheme) presented(req *request) bool {
	raw, ok := bearerCredential(req.authorization)
	return ok && strings.HasPrefix(raw, "eyJ") && strings.Count(raw, ".") == 2
}

// bearerCredential is what follows "Bearer " in an Authorization header.
func bearerCredential(header string) (string, bool) {
	if len(header) > 7 && strings.EqualFold(header[:7], "Bearer ") {
		return header[7:], true
	}
	return "", false
}

func (s *jwtScheme) authenticate(x *exchange) *rejection {
	raw, _ := bearerCredential(x.req.authorization)
	t, err := s.v.VerifyWithin(x.req.ctx, raw, s.wait)
	x.req.identity = identity{scheme: schemeJWT}
	if err != nil {
		// The error says what is wrong, never the token.
		s.logger.Debug("token refused", zap.Error(err))
		if errors.Is(err, bearer.ErrUnavailable) {
			return rejectedIssuerUnavailable
		}
		return rejectedInvalidToken
	}
	name, ok := t.String(s.claim)
	if !ok || name == "" {
		s.logger.Debug("token refused", zap.String("reason", "no identity claim"), zap.String("claim", s.claim))
		return rejectedInvalidToken
	}
	x.req.identity = identity{scheme: schemeJWT, name: name, claims: tokenClaims{t}}
	return nil
}

func (*jwtScheme) verify(*exchange, []byte) bool { return true }

func (s *jwtScheme) release() error { return releaseShared(s.poolKey) }

// tokenClaims are a verified token's claims: a scope claim ("scope",
// "scp") as the list of its scopes, any other as a string or the strings
// of an array.
type tokenClaims struct{ t *bearer.Token }

func (c tokenClaims) values(name string) []string {
	var l []string
	if name == "scope" || name == "scp" {
		l, _ = c.t.Scopes(name)
	} else {
		l, _ = c.t.Strings(name)
	}
	return l
}
