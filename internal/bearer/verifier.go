package bearer

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// The two classes of failure, to be told apart with errors.Is. Every error
// Verify returns is one of them, and its text, safe to log, never holds
// the token.
var (
	// ErrInvalid: the token is not to be trusted (malformed, oversized,
	// an algorithm not allowed, a bad signature, expired or not yet
	// valid, another audience or issuer, a key ID the issuer does not
	// publish). The request is answered 401.
	ErrInvalid = errors.New("invalid token")
	// ErrUnavailable: the token cannot be checked, because no key for it
	// could be had from the issuer. The request is answered 503, never
	// let through.
	ErrUnavailable = errors.New("the issuer's keys are unavailable")
)

// The ErrInvalid errors without details, made once.
var (
	errTooLarge    = fmt.Errorf("%w: longer than %d bytes", ErrInvalid, MaxTokenSize)
	errMalformed   = fmt.Errorf("%w: not a compact JWS", ErrInvalid)
	errCritical    = fmt.Errorf("%w: the header has crit, which is not supported", ErrInvalid)
	errSignature   = fmt.Errorf("%w: the signature does not verify", ErrInvalid)
	errClaims      = fmt.Errorf("%w: the claims are not a JSON object of registered claims", ErrInvalid)
	errNoExpiry    = fmt.Errorf("%w: no exp", ErrInvalid)
	errExpired     = fmt.Errorf("%w: expired", ErrInvalid)
	errNotYet      = fmt.Errorf("%w: not valid yet (nbf)", ErrInvalid)
	errIssuedLater = fmt.Errorf("%w: issued in the future (iat)", ErrInvalid)
	errAudience    = fmt.Errorf("%w: no audience accepted here", ErrInvalid)
	errIssuer      = fmt.Errorf("%w: another issuer", ErrInvalid)
)

// Verifier verifies JWT access tokens against an issuer's keys. It is safe
// for concurrent use.
type Verifier struct {
	s     settings
	keys  *keys
	cache *cache // nil without one
}

// New returns a Verifier for cfg. It fetches the issuer's keys in the
// background: it does not wait for them, nor fail when the issuer cannot
// be reached, so that a server can start while its issuer is down; until
// keys arrive, Verify fails with ErrUnavailable. It fails only for a cfg
// that is wrong. The background work stops when ctx is done or at Close.
func New(ctx context.Context, cfg Config) (*Verifier, error) {
	s, err := cfg.check()
	if err != nil {
		return nil, err
	}
	v := &Verifier{s: s}
	if s.cacheSize > 0 {
		v.cache = newCache(s.cacheSize)
	}
	v.keys = newKeys(ctx, &v.s)
	return v, nil
}

// Close stops the background work and waits for it to end. Verify may
// still be called, and verifies with the keys already fetched.
func (v *Verifier) Close() {
	v.keys.close()
}

// Verify checks raw, a JWT in JWS compact form (what follows "Bearer "),
// and returns its claims. A token verified before and still before its
// exp is not verified again. ctx bounds the wait for the issuer's keys,
// if they must be fetched.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Token, error) {
	return v.VerifyWithin(ctx, raw, 0)
}

// VerifyWithin is Verify waiting at most wait (if positive) for the
// issuer's keys. The deadline is made only when the token is not in the
// cache: a request whose token was verified before pays no timer.
func (v *Verifier) VerifyWithin(ctx context.Context, raw string, wait time.Duration) (*Token, error) {
	if len(raw) > MaxTokenSize {
		return nil, errTooLarge
	}
	now := v.s.clock.Now()
	generation := v.keys.generation.Load()
	var d digest
	if v.cache != nil {
		// The bytes of raw, hashed without a copy: a copy of a token of
		// a kilobyte is an allocation on every request.
		d = sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
		if t, ok := v.cache.get(&d, now.Unix(), generation); ok {
			return t, nil
		}
	}
	if wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
	}
	t, err := v.verify(ctx, raw, now)
	if err != nil {
		return nil, err
	}
	if v.cache != nil && now.Before(t.Expiry) {
		v.cache.put(&d, cacheEntry{token: t, expiry: t.Expiry.Unix(), generation: generation}, now.Unix())
	}
	return t, nil
}

func (v *Verifier) verify(ctx context.Context, raw string, now time.Time) (*Token, error) {
	jws, err := jose.ParseSignedCompact(raw, v.s.algorithms)
	if err != nil {
		return nil, v.parseError(raw)
	}
	header := jws.Signatures[0].Header
	if _, ok := header.ExtraHeaders["crit"]; ok {
		// go-jose honours crit "b64" (RFC 7797), which no access token
		// needs: refused rather than reasoned about.
		return nil, errCritical
	}
	alg := jose.SignatureAlgorithm(header.Algorithm)
	candidates, set, err := v.keysFor(ctx, header.KeyID, alg)
	if err != nil {
		return nil, err
	}
	var payload []byte
	for _, k := range candidates {
		if payload, err = jws.Verify(k.pub); err == nil {
			break
		}
	}
	if err != nil {
		return nil, errSignature
	}

	var registered jwt.Claims
	var claims map[string]any
	if json.Unmarshal(payload, &registered) != nil || json.Unmarshal(payload, &claims) != nil || claims == nil {
		return nil, errClaims
	}
	if registered.Expiry == nil {
		return nil, errNoExpiry
	}
	expected := jwt.Expected{Issuer: set.issuer, AnyAudience: v.s.audiences, Time: now}
	switch err := registered.ValidateWithLeeway(expected, v.s.leeway); {
	case err == nil:
	case errors.Is(err, jwt.ErrExpired):
		return nil, errExpired
	case errors.Is(err, jwt.ErrNotValidYet):
		return nil, errNotYet
	case errors.Is(err, jwt.ErrIssuedInTheFuture):
		return nil, errIssuedLater
	case errors.Is(err, jwt.ErrInvalidAudience):
		return nil, errAudience
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return nil, errIssuer
	default:
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return &Token{
		Subject:  registered.Subject,
		Issuer:   registered.Issuer,
		Audience: []string(registered.Audience),
		Expiry:   registered.Expiry.Time(),
		Claims:   claims,
	}, nil
}

// keysFor returns the keys that may verify a token of kid and alg, and
// their key set, refetching the set, at most once per refetch interval,
// if it has none.
func (v *Verifier) keysFor(ctx context.Context, kid string, alg jose.SignatureAlgorithm) ([]key, *keySet, error) {
	set := v.keys.current.Load()
	if set != nil {
		found, kidKnown := set.match(kid, alg)
		if len(found) > 0 {
			return found, set, nil
		}
		if kidKnown {
			// The issuer's key of that ID is for other algorithms: a
			// fetch would not change that.
			return nil, nil, fmt.Errorf("%w: algorithm %s does not fit key %s", ErrInvalid, alg, quote(kid))
		}
	}
	for range 2 { // a second time only after joining a fetch not made for this token
		joined, err := v.keys.refetch(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if set = v.keys.current.Load(); set != nil {
			if found, _ := set.match(kid, alg); len(found) > 0 {
				return found, set, nil
			}
		}
		if !joined {
			break
		}
	}
	if set == nil {
		// Not expected: a fetch that succeeds loads a set.
		return nil, nil, fmt.Errorf("%w: no key set yet", ErrUnavailable)
	}
	if kid == "" {
		return nil, nil, fmt.Errorf("%w: no key ID, and no key for %s", ErrInvalid, alg)
	}
	return nil, nil, fmt.Errorf("%w: key ID %s is not in the issuer's key set", ErrInvalid, quote(kid))
}

// parseError says why go-jose refused raw: an algorithm not allowed, when
// the header names one, as that is what an operator must fix; otherwise
// malformed, without go-jose's text, which may quote the token.
func (v *Verifier) parseError(raw string) error {
	protected, _, ok := strings.Cut(raw, ".")
	if !ok {
		return errMalformed
	}
	b, err := base64.RawURLEncoding.DecodeString(protected)
	if err != nil {
		return errMalformed
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(b, &h) != nil || h.Alg == "" {
		return errMalformed
	}
	if !v.s.allowed.has(jose.SignatureAlgorithm(h.Alg)) {
		return fmt.Errorf("%w: algorithm %s is not allowed", ErrInvalid, quote(h.Alg))
	}
	return errMalformed
}

// quote quotes a value of a token's header for an error, cut short so
// that a token cannot fill a log line.
func quote(s string) string {
	const most = 40
	if len(s) > most {
		cut := most
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return fmt.Sprintf("%q…", s[:cut])
	}
	return fmt.Sprintf("%q", s)
}
