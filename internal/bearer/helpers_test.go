package bearer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"go.uber.org/goleak"
)

// Every test closes what it starts: a verifier's background work must end
// with Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// signer is a private key of the test issuer, with its key ID.
type signer struct {
	kid  string
	alg  jose.SignatureAlgorithm
	priv crypto.Signer
}

func (s signer) public() jose.JSONWebKey {
	return jose.JSONWebKey{Key: s.priv.Public(), KeyID: s.kid, Algorithm: string(s.alg), Use: "sig"}
}

var (
	rsaKeys = sync.OnceValue(func() [2]*rsa.PrivateKey {
		var k [2]*rsa.PrivateKey
		for i := range k {
			var err error
			if k[i], err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
				panic(err)
			}
		}
		return k
	})
	ecKey = sync.OnceValue(func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
	edKey = sync.OnceValue(func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

func rsa1() signer { return signer{"rsa-1", jose.RS256, rsaKeys()[0]} }
func rsa2() signer { return signer{"rsa-2", jose.RS256, rsaKeys()[1]} }
func ec1() signer  { return signer{"ec-1", jose.ES256, ecKey()} }
func ed1() signer  { return signer{"ed-1", jose.EdDSA, edKey()} }

// sign signs claims as a compact JWS, with kid in the header unless empty.
func sign(t testing.TB, s signer, claims map[string]any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return signPayload(t, s, payload, nil)
}

// signPayload signs payload as it is, with the extra header fields given.
func signPayload(t testing.TB, s signer, payload []byte, extra map[jose.HeaderKey]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if s.kid != "" {
		opts = opts.WithHeader("kid", s.kid)
	}
	for k, v := range extra {
		opts = opts.WithHeader(k, v)
	}
	js, err := jose.NewSigner(jose.SigningKey{Algorithm: s.alg, Key: s.priv}, opts)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := js.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func rsaKey1024() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 1024) }

// craft assembles a compact JWS from parts, for tokens no signer makes.
func craft(header, claims map[string]any, signature []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc(h) + "." + enc(c) + "." + enc(signature)
}

// issuer is a local OAuth issuer: discovery and a JWKS that the test
// changes, counting the key set's fetches.
type issuer struct {
	srv *httptest.Server

	mu           sync.Mutex
	keys         []jose.JSONWebKey
	status       int    // of every answer; 200 if 0
	cacheControl string // the key set's
	docIssuer    string // the discovery document's issuer; the URL and a slash if ""
	oidc         bool   // serves OpenID Connect discovery
	block        chan struct{}

	jwksFetches atomic.Int64
}

func newIssuer(t testing.TB, keys ...signer) *issuer {
	is := &issuer{oidc: true}
	for _, k := range keys {
		is.keys = append(is.keys, k.public())
	}
	mux := http.NewServeMux()
	metadata := func(w http.ResponseWriter, r *http.Request) {
		is.mu.Lock()
		status, doc := is.status, is.docIssuer
		if doc == "" {
			doc = is.srv.URL + "/"
		}
		if r.URL.Path == "/.well-known/openid-configuration" && !is.oidc {
			status = http.StatusNotFound
		}
		is.mu.Unlock()
		if status != 0 {
			http.Error(w, "no", status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"issuer": doc, "jwks_uri": is.srv.URL + "/.well-known/jwks.json"})
	}
	mux.HandleFunc("/.well-known/openid-configuration", metadata)
	mux.HandleFunc("/.well-known/oauth-authorization-server", metadata)
	mux.HandleFunc("/.well-known/jwks.json", func(w http.ResponseWriter, r *http.Request) {
		is.jwksFetches.Add(1)
		is.mu.Lock()
		status, cc, block := is.status, is.cacheControl, is.block
		set := jose.JSONWebKeySet{Keys: append([]jose.JSONWebKey(nil), is.keys...)}
		is.mu.Unlock()
		if block != nil {
			select {
			case <-block:
			case <-r.Context().Done():
				return
			}
		}
		if status != 0 {
			http.Error(w, "no", status)
			return
		}
		if cc != "" {
			w.Header().Set("Cache-Control", cc)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(set)
	})
	is.srv = httptest.NewServer(mux)
	t.Cleanup(is.srv.Close)
	return is
}

// url is the issuer's URL as configured: without the trailing slash its
// tokens and its discovery document have, as Hydra's.
func (is *issuer) url() string { return is.srv.URL }
func (is *issuer) iss() string { return is.srv.URL + "/" }

func (is *issuer) set(f func(is *issuer)) {
	is.mu.Lock()
	defer is.mu.Unlock()
	f(is)
}

func (is *issuer) fetches() int64 { return is.jwksFetches.Load() }

// fakeClock is a clock the test moves; timers fire when it passes them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
	// requested receives the duration of every timer asked for.
	requested chan time.Duration
}

type fakeTimer struct {
	at   time.Time
	c    chan time.Time
	done bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1_800_000_000, 0), requested: make(chan time.Duration, 100)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) (<-chan time.Time, func()) {
	c.mu.Lock()
	t := &fakeTimer{at: c.now.Add(d), c: make(chan time.Time, 1)}
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	c.requested <- d
	return t.c, func() {
		c.mu.Lock()
		t.done = true
		c.mu.Unlock()
	}
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, t := range c.timers {
		if !t.done && !c.now.Before(t.at) {
			t.done = true
			t.c <- c.now
		}
	}
}

// nextTimer returns the duration of the next timer the verifier asks for.
func (c *fakeClock) nextTimer(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.requested:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("the verifier asked for no timer")
		return 0
	}
}

// newVerifier returns a verifier of is's tokens for the audience "queue",
// on clk, closed at the test's end.
func newVerifier(t testing.TB, is *issuer, clk *fakeClock, change ...func(*Config)) *Verifier {
	t.Helper()
	cfg := Config{
		Issuer:     is.url(),
		Audiences:  []string{"queue"},
		HTTPClient: is.srv.Client(),
		clock:      clk,
	}
	for _, f := range change {
		f(&cfg)
	}
	v, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

// settle waits for the fetch in flight, if any, to end.
func settle(v *Verifier) {
	v.keys.mu.Lock()
	a := v.keys.inflight
	v.keys.mu.Unlock()
	if a != nil {
		<-a.done
	}
}

// hydraClaims are a valid token's claims at now, as Hydra mints them, changed
// by change.
func hydraClaims(is *issuer, now time.Time, change ...func(map[string]any)) map[string]any {
	c := map[string]any{
		"iss":       is.iss(),
		"sub":       "client-1",
		"client_id": "client-1",
		"aud":       []string{"queue"},
		"exp":       now.Add(time.Hour).Unix(),
		"iat":       now.Unix(),
		"nbf":       now.Unix(),
		"scp":       []string{"publish", "read"},
		"jti":       "j-1",
	}
	for _, f := range change {
		f(c)
	}
	return c
}

// expect checks that Verify fails with class, and that the error's text
// holds no part of the token that could stand for it.
func expect(t *testing.T, v *Verifier, raw string, class error) error {
	t.Helper()
	tok, err := v.Verify(context.Background(), raw)
	if err == nil {
		t.Fatalf("verified, want %v", class)
	}
	if tok != nil {
		t.Errorf("a token with the error %v", err)
	}
	if !errors.Is(err, class) {
		t.Fatalf("error %q, want %v", err, class)
	}
	other := ErrUnavailable
	if class == ErrUnavailable {
		other = ErrInvalid
	}
	if errors.Is(err, other) {
		t.Fatalf("error %q is both classes", err)
	}
	for _, part := range strings.Split(raw, ".") {
		if len(part) >= 16 && strings.Contains(err.Error(), part) {
			t.Fatalf("error %q holds part of the token", err)
		}
	}
	return err
}

func verify(t *testing.T, v *Verifier, raw string) *Token {
	t.Helper()
	tok, err := v.Verify(context.Background(), raw)
	if err != nil {
		t.Fatalf("not verified: %v", err)
	}
	return tok
}
