package bearer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"
)

// This file holds the issuer's keys: discovery, fetching the key set,
// refreshing it, and refetching it for an unknown key ID, at most once per
// interval. It is written here rather than taken from a library because
// none of those checked meets the goals; see the package comment.

const (
	// fetchTimeout bounds one discovery or key set request, whatever the
	// HTTP client's own timeout.
	fetchTimeout = 10 * time.Second
	// maxDocument bounds a discovery document or key set read.
	maxDocument = 1 << 20
	// minRSABits: smaller RSA keys in a key set are skipped.
	minRSABits = 2048
)

// key is a public key of the issuer's key set.
type key struct {
	kid  string
	algs algSet // the algorithms it may verify: its type's, its alg's, the config's
	pub  crypto.PublicKey
}

// keySet is one fetched key set, never changed once published.
type keySet struct {
	keys   []key
	issuer string // what a token's iss must equal; "" checks nothing
}

// match returns the keys that may verify a token of kid and alg: those of
// that kid or, for a token without one, every key that fits alg.
func (s *keySet) match(kid string, alg jose.SignatureAlgorithm) (found []key, kidKnown bool) {
	for _, k := range s.keys {
		if kid != "" && k.kid != kid {
			continue
		}
		kidKnown = kidKnown || kid != ""
		if k.algs.has(alg) {
			found = append(found, k)
		}
	}
	return found, kidKnown
}

// attempt is one fetch of the key set, which callers may wait on.
type attempt struct {
	done    chan struct{}
	started time.Time
	// refetch: started for a token's unknown key ID, not the first
	// fetch or a refresh.
	refetch bool
	err     error         // set before done is closed
	maxAge  time.Duration // the key set's Cache-Control max-age, if any
}

// keys fetches and holds the key set.
type keys struct {
	s       *settings
	current atomic.Pointer[keySet]
	// generation changes when a refresh drops a key, so that the tokens
	// cached as verified stop being trusted with the key.
	generation atomic.Uint64

	ctx    context.Context // the background work's
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex
	closed      bool
	inflight    *attempt
	last        *attempt  // the last attempt completed
	lastRefetch time.Time // when the last fetch started for an unknown kid

	// Written only by an attempt, and attempts run one at a time.
	jwksURL string
	issuer  string
}

func newKeys(ctx context.Context, s *settings) *keys {
	k := &keys{s: s, jwksURL: s.jwksURL, issuer: s.issuer}
	k.ctx, k.cancel = context.WithCancel(ctx)
	k.mu.Lock()
	first := k.startLocked()
	k.mu.Unlock()
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		k.refreshLoop(first)
	}()
	return k
}

// refreshLoop fetches the key set again when the last fetch says so: the
// refresh interval after a success (sooner for a short max-age), the
// refetch interval after a failure, so that an issuer that was down at
// start is tried again without waiting for a token to ask.
func (k *keys) refreshLoop(a *attempt) {
	for {
		select {
		case <-a.done:
		case <-k.ctx.Done():
			return
		}
		next := k.s.refreshInterval
		switch {
		case a.err != nil:
			next = k.s.refetchInterval
		case a.maxAge > 0:
			next = min(max(a.maxAge, k.s.refetchInterval), k.s.refreshInterval)
		}
		fire, stop := k.s.clock.After(next)
		select {
		case <-fire:
		case <-k.ctx.Done():
			stop()
			return
		}
		k.mu.Lock()
		a = k.inflight
		if a == nil {
			a = k.startLocked()
		}
		k.mu.Unlock()
	}
}

// startLocked starts an attempt; k.mu is held and no attempt is in flight.
func (k *keys) startLocked() *attempt {
	a := &attempt{done: make(chan struct{}), started: k.s.clock.Now()}
	if k.closed {
		a.err = errors.New("the verifier is closed")
		close(a.done)
		return a
	}
	k.inflight = a
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		ctx, cancel := context.WithTimeout(k.ctx, fetchTimeout)
		defer cancel()
		a.maxAge, a.err = k.fetch(ctx)
		k.mu.Lock()
		k.inflight, k.last = nil, a
		k.mu.Unlock()
		close(a.done)
	}()
	return a
}

// refetch fetches the key set for a token whose key ID is unknown, or
// joins the fetch in flight, and waits for it. If it started one within
// the refetch interval, it fetches nothing and returns the last fetch's
// error: a key ID still unknown is then invalid if that fetch succeeded,
// and cannot be judged if it failed. joined reports that the fetch waited
// for was the first or a refresh, which may have started before the
// token's key was published: a key ID it did not bring may still be had
// by a refetch of its own.
func (k *keys) refetch(ctx context.Context) (joined bool, err error) {
	k.mu.Lock()
	a := k.inflight
	switch {
	case a != nil:
		// Joined, whoever started it: the first fetch, a refresh or
		// another refetch.
		joined = !a.refetch
	case k.lastRefetch.IsZero() || k.s.clock.Now().Sub(k.lastRefetch) >= k.s.refetchInterval:
		a = k.startLocked()
		a.refetch = true
		k.lastRefetch = a.started
	default:
		last := k.last
		k.mu.Unlock()
		if last != nil {
			return false, last.err
		}
		return false, nil
	}
	k.mu.Unlock()
	select {
	case <-a.done:
		return joined, a.err
	case <-ctx.Done():
		return false, fmt.Errorf("waiting for the key set: %w", ctx.Err())
	}
}

func (k *keys) close() {
	k.mu.Lock()
	k.closed = true
	k.mu.Unlock()
	k.cancel()
	k.wg.Wait()
	if k.s.ownClient {
		k.s.client.CloseIdleConnections()
	}
}

// fetch discovers the key set's URL if it must, fetches the key set and
// publishes it.
func (k *keys) fetch(ctx context.Context) (maxAge time.Duration, err error) {
	if k.jwksURL == "" {
		if err := k.discover(ctx); err != nil {
			k.s.log.Warn("issuer discovery failed", zap.String("issuer", k.s.issuer), zap.Error(err))
			return 0, err
		}
	}
	body, header, err := k.get(ctx, k.jwksURL)
	if err == nil {
		var set *keySet
		set, err = k.parseKeySet(body)
		if err == nil {
			k.publish(set)
			return cacheMaxAge(header.Get("Cache-Control")), nil
		}
	}
	err = fmt.Errorf("key set %s: %v", k.jwksURL, err)
	k.s.log.Warn("fetching the key set failed", zap.String("jwks_url", k.jwksURL), zap.Error(err))
	return 0, err
}

// discover reads the issuer's metadata: OpenID Connect discovery first,
// then RFC 8414's OAuth authorization server metadata.
func (k *keys) discover(ctx context.Context) error {
	trimmed := strings.TrimSuffix(k.s.issuer, "/")
	candidates := []string{trimmed + "/.well-known/openid-configuration"}
	u, _ := url.Parse(trimmed) // checked in check
	// RFC 8414 puts the well-known segment before the issuer's path;
	// some servers serve it after, as OpenID Connect does.
	rfc := *u
	rfc.Path = "/.well-known/oauth-authorization-server" + u.Path
	candidates = append(candidates, rfc.String())
	if u.Path != "" {
		candidates = append(candidates, trimmed+"/.well-known/oauth-authorization-server")
	}
	var errs []string
	for _, c := range candidates {
		body, _, err := k.get(ctx, c)
		if err == nil {
			err = k.readMetadata(body)
		}
		if err == nil {
			k.s.log.Info("issuer discovered", zap.String("issuer", k.issuer), zap.String("jwks_url", k.jwksURL))
			return nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v", c, err))
		if ctx.Err() != nil {
			break
		}
	}
	// One line, for the logs.
	return errors.New(strings.Join(errs, "; "))
}

func (k *keys) readMetadata(body []byte) error {
	var m struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return fmt.Errorf("not a metadata document: %v", err)
	}
	// The issuer configured may leave out the trailing slash that the
	// issuer puts in its tokens, as Hydra does; anything else would
	// trust another issuer's tokens.
	if strings.TrimSuffix(m.Issuer, "/") != strings.TrimSuffix(k.s.issuer, "/") {
		return fmt.Errorf("the document's issuer is %q, not the issuer configured", m.Issuer)
	}
	if err := checkURL(m.JWKSURI); err != nil {
		return fmt.Errorf("jwks_uri: %v", err)
	}
	k.issuer, k.jwksURL = m.Issuer, m.JWKSURI
	return nil
}

func (k *keys) get(ctx context.Context, u string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.s.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument+1))
	if err != nil {
		return nil, nil, err
	}
	if len(body) > maxDocument {
		return nil, nil, fmt.Errorf("over %d bytes", maxDocument)
	}
	return body, resp.Header, nil
}

// parseKeySet reads a JWK set, keeping the signature keys that fit the
// allowed algorithms. Keys it cannot use are skipped rather than failing
// the set, as RFC 7517 section 5 asks: an issuer may publish keys of
// types this verifier does not know.
func (k *keys) parseKeySet(body []byte) (*keySet, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, fmt.Errorf("not a JWK set: %v", err)
	}
	set := &keySet{issuer: k.issuer}
	skipped := 0
	for _, r := range raw.Keys {
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(r); err != nil || jwk.Use != "" && jwk.Use != "sig" {
			skipped++
			continue
		}
		if algs := keyAlgs(jwk, k.s.allowed); algs != 0 {
			set.keys = append(set.keys, key{kid: jwk.KeyID, algs: algs, pub: jwk.Public().Key})
		} else {
			skipped++
		}
	}
	if len(set.keys) == 0 {
		return nil, fmt.Errorf("no key fits the algorithms allowed (%d skipped)", skipped)
	}
	if skipped > 0 {
		k.s.log.Debug("key set: keys skipped", zap.Int("skipped", skipped))
	}
	return set, nil
}

// keyAlgs returns the algorithms jwk may verify: those of its type, its
// alg if it names one, and those allowed. A symmetric key fits none.
func keyAlgs(jwk jose.JSONWebKey, allowed algSet) algSet {
	var fits algSet
	switch pub := jwk.Public().Key.(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < minRSABits {
			return 0
		}
		fits = setOf(jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512)
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256():
			fits = setOf(jose.ES256)
		case elliptic.P384():
			fits = setOf(jose.ES384)
		case elliptic.P521():
			fits = setOf(jose.ES512)
		}
	case ed25519.PublicKey:
		fits = setOf(jose.EdDSA)
	}
	if jwk.Algorithm != "" {
		fits &= setOf(jose.SignatureAlgorithm(jwk.Algorithm))
	}
	return fits & allowed
}

// publish makes set the current key set, and drops the tokens verified
// with a key that set no longer holds.
func (k *keys) publish(set *keySet) {
	old := k.current.Swap(set)
	if old != nil && dropsKey(old, set) {
		k.generation.Add(1)
	}
	kids := make([]string, len(set.keys))
	for i, key := range set.keys {
		kids[i] = key.kid
	}
	k.s.log.Debug("key set loaded", zap.String("jwks_url", k.jwksURL), zap.Strings("kids", kids))
}

type equaler interface{ Equal(crypto.PublicKey) bool }

func dropsKey(old, set *keySet) bool {
	for _, o := range old.keys {
		kept := false
		for _, n := range set.keys {
			if n.kid == o.kid && o.pub.(equaler).Equal(n.pub) {
				kept = true
				break
			}
		}
		if !kept {
			return true
		}
	}
	return false
}

// cacheMaxAge reads max-age from a Cache-Control header; 0 if none.
func cacheMaxAge(h string) time.Duration {
	for _, d := range strings.Split(h, ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), "=")
		if !strings.EqualFold(name, "max-age") {
			continue
		}
		n, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64)
		if err != nil || n <= 0 || n > int64(365*24*time.Hour/time.Second) {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	return 0
}
