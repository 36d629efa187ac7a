package bearer

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestVerifiesHydraToken(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	tok := verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now())))
	if tok.Subject != "client-1" || tok.Issuer != is.iss() || !slices.Equal(tok.Audience, []string{"queue"}) {
		t.Errorf("token %+v", tok)
	}
	if !tok.Expiry.Equal(clk.Now().Add(time.Hour)) {
		t.Errorf("expiry %v, want %v", tok.Expiry, clk.Now().Add(time.Hour))
	}
	if id, ok := tok.String("client_id"); !ok || id != "client-1" {
		t.Errorf("client_id %q %v", id, ok)
	}
	if scp, ok := tok.Scopes("scp"); !ok || !slices.Equal(scp, []string{"publish", "read"}) {
		t.Errorf("scp %q %v", scp, ok)
	}
}

func TestVerifiesEachAlgorithm(t *testing.T) {
	ps := signer{"ps-1", jose.PS256, rsaKeys()[1]}
	is := newIssuer(t, rsa1(), ec1(), ed1(), ps)
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	for _, s := range []signer{rsa1(), ec1(), ed1(), ps} {
		t.Run(string(s.alg), func(t *testing.T) {
			verify(t, v, sign(t, s, hydraClaims(is, clk.Now())))
		})
	}
}

func TestClaimHelpers(t *testing.T) {
	tok := &Token{Claims: map[string]any{
		"s":      "a b",
		"list":   []any{"x", "y"},
		"mixed":  []any{"x", 1.0},
		"number": 1.0,
	}}
	if s, ok := tok.String("s"); !ok || s != "a b" {
		t.Errorf("String(s) = %q %v", s, ok)
	}
	if _, ok := tok.String("list"); ok {
		t.Error("String(list) is a string")
	}
	for _, c := range []struct {
		name   string
		f      func(string) ([]string, bool)
		want   []string
		wantOK bool
	}{
		{"s", tok.Strings, []string{"a b"}, true},
		{"s", tok.Scopes, []string{"a", "b"}, true},
		{"list", tok.Strings, []string{"x", "y"}, true},
		{"list", tok.Scopes, []string{"x", "y"}, true},
		{"mixed", tok.Strings, nil, false},
		{"number", tok.Scopes, nil, false},
		{"absent", tok.Strings, nil, false},
	} {
		got, ok := c.f(c.name)
		if ok != c.wantOK || !slices.Equal(got, c.want) {
			t.Errorf("%s: %q %v, want %q %v", c.name, got, ok, c.want, c.wantOK)
		}
	}
}

func TestRefusesAlgNone(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	for _, alg := range []string{"none", "None", "NONE"} {
		raw := craft(map[string]any{"alg": alg, "kid": "rsa-1", "typ": "JWT"}, hydraClaims(is, clk.Now()), nil)
		expect(t, v, raw, ErrInvalid)
	}
}

// An HS256 token whose MAC is keyed with the issuer's public key, which
// anyone can fetch: a verifier that took the key's bytes as a MAC secret
// would accept it.
func TestRefusesAlgConfusion(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	der, err := x509.MarshalPKIXPublicKey(rsa1().priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	for name, secret := range map[string][]byte{
		"pem": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"der": der,
	} {
		t.Run(name, func(t *testing.T) {
			js, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: secret},
				(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "rsa-1"))
			if err != nil {
				t.Fatal(err)
			}
			obj, err := js.Sign([]byte(fmt.Sprintf(`{"iss":%q,"aud":"queue","exp":%d}`, is.iss(), clk.Now().Add(time.Hour).Unix())))
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := obj.CompactSerialize()
			err = expect(t, v, raw, ErrInvalid)
			if !strings.Contains(err.Error(), `"HS256" is not allowed`) {
				t.Errorf("error %q does not name the algorithm", err)
			}
		})
	}
	// And by hand, with the MAC over the exact signing input.
	header := map[string]any{"alg": "HS256", "kid": "rsa-1"}
	unsigned := craft(header, hydraClaims(is, clk.Now()), nil)
	input := unsigned[:strings.LastIndex(unsigned, ".")]
	mac := hmac.New(sha256.New, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	mac.Write([]byte(input))
	expect(t, v, craft(header, hydraClaims(is, clk.Now()), mac.Sum(nil)), ErrInvalid)
}

func TestRefusesAlgorithmNotAllowed(t *testing.T) {
	is := newIssuer(t, rsa1(), ec1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk, func(c *Config) { c.Algorithms = []string{"ES256"} })
	verify(t, v, sign(t, ec1(), hydraClaims(is, clk.Now())))
	err := expect(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now())), ErrInvalid)
	if !strings.Contains(err.Error(), `"RS256" is not allowed`) {
		t.Errorf("error %q does not name the algorithm", err)
	}
}

// A key published for RS256 does not verify a PS256 token of its key ID,
// though its type could, and no refetch is made for it.
func TestRefusesAlgorithmOtherThanTheKeys(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	settle(v)
	before := is.fetches()
	ps := signer{"rsa-1", jose.PS256, rsaKeys()[0]}
	err := expect(t, v, sign(t, ps, hydraClaims(is, clk.Now())), ErrInvalid)
	if !strings.Contains(err.Error(), "does not fit key") {
		t.Errorf("error %q", err)
	}
	if n := is.fetches() - before; n != 0 {
		t.Errorf("%d fetches", n)
	}
}

func TestRefusesUnknownKeyID(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	settle(v)
	err := expect(t, v, sign(t, rsa2(), hydraClaims(is, clk.Now())), ErrInvalid)
	if !strings.Contains(err.Error(), `"rsa-2" is not in the issuer's key set`) {
		t.Errorf("error %q", err)
	}
	if n := is.fetches(); n != 2 {
		t.Errorf("%d fetches, want the first and one refetch", n)
	}
}

// Tokens with made-up key IDs, many at once and one after another, make
// one fetch per refetch interval.
func TestUnknownKeyIDFloodFetchesOncePerInterval(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk, func(c *Config) { c.RefetchInterval = time.Minute })
	settle(v)
	flood := func(round int) {
		var wg sync.WaitGroup
		for i := range 64 {
			wg.Go(func() {
				s := signer{fmt.Sprintf("made-up-%d-%d", round, i), jose.ES256, ecKey()}
				expect(t, v, sign(t, s, hydraClaims(is, clk.Now())), ErrInvalid)
			})
		}
		wg.Wait()
		for i := range 64 {
			s := signer{fmt.Sprintf("made-up-%d-more-%d", round, i), jose.ES256, ecKey()}
			expect(t, v, sign(t, s, hydraClaims(is, clk.Now())), ErrInvalid)
		}
	}
	flood(0)
	if n := is.fetches(); n != 2 {
		t.Fatalf("%d fetches, want the first and one refetch", n)
	}
	clk.Advance(59 * time.Second)
	flood(1)
	if n := is.fetches(); n != 2 {
		t.Fatalf("%d fetches within the interval, want 2", n)
	}
	clk.Advance(time.Second)
	flood(2)
	if n := is.fetches(); n != 3 {
		t.Fatalf("%d fetches once the interval passed, want 3", n)
	}
}

func TestKeyRotationAcceptedAfterOneRefetch(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now())))
	is.set(func(is *issuer) { is.keys = append(is.keys, rsa2().public()) })
	verify(t, v, sign(t, rsa2(), hydraClaims(is, clk.Now())))
	if n := is.fetches(); n != 2 {
		t.Errorf("%d fetches, want the first and one refetch", n)
	}
	// The old key, still published, still verifies, without a fetch.
	verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now(), func(c map[string]any) { c["jti"] = "j-2" })))
	if n := is.fetches(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
}

func TestTimes(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk, func(c *Config) { c.Leeway = 30 * time.Second; c.CacheSize = -1 })
	now := clk.Now()
	at := func(name string, d time.Duration) func(map[string]any) {
		return func(c map[string]any) { c[name] = now.Add(d).Unix() }
	}
	for _, c := range []struct {
		name   string
		change func(map[string]any)
		want   error // nil: verifies
	}{
		{"expired beyond leeway", at("exp", -31*time.Second), errExpired},
		{"expired within leeway", at("exp", -29*time.Second), nil},
		{"expires now", at("exp", 0), nil},
		{"nbf beyond leeway", at("nbf", 31*time.Second), errNotYet},
		{"nbf within leeway", at("nbf", 29*time.Second), nil},
		{"iat in the future", at("iat", 31*time.Second), errIssuedLater},
		{"no exp", func(c map[string]any) { delete(c, "exp") }, errNoExpiry},
		{"exp not a number", func(c map[string]any) { c["exp"] = "tomorrow" }, errClaims},
		{"exp overflowing", func(c map[string]any) { c["exp"] = 1e300 }, errClaims},
	} {
		t.Run(c.name, func(t *testing.T) {
			raw := sign(t, rsa1(), hydraClaims(is, now, c.change))
			if c.want == nil {
				verify(t, v, raw)
				return
			}
			if err := expect(t, v, raw, ErrInvalid); err != c.want {
				t.Errorf("error %q, want %q", err, c.want)
			}
		})
	}
}

func TestAudience(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk, func(c *Config) { c.Audiences = []string{"queue", "queue-eu"} })
	aud := func(a any) func(map[string]any) { return func(c map[string]any) { c["aud"] = a } }
	verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now(), aud("queue-eu"))))
	verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now(), aud([]string{"other", "queue"}))))
	for name, change := range map[string]func(map[string]any){
		"other":    aud("other"),
		"others":   aud([]string{"other", "queue-us"}),
		"empty":    aud([]string{}),
		"absent":   func(c map[string]any) { delete(c, "aud") },
		"prefix":   aud("queue-"),
		"a number": aud(7),
	} {
		t.Run(name, func(t *testing.T) {
			expect(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now(), change)), ErrInvalid)
		})
	}
}

func TestIssuer(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	iss := func(s any) func(map[string]any) { return func(c map[string]any) { c["iss"] = s } }

	t.Run("discovered", func(t *testing.T) {
		v := newVerifier(t, is, clk)
		for _, other := range []any{"https://evil.example/", is.url(), nil} {
			change := iss(other)
			if other == nil {
				change = func(c map[string]any) { delete(c, "iss") }
			}
			if err := expect(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now(), change)), ErrInvalid); err != errIssuer {
				t.Errorf("iss %v: %q", other, err)
			}
		}
	})
	t.Run("jwks_url and issuer", func(t *testing.T) {
		v := newVerifier(t, is, clk, func(c *Config) { c.JWKSURL = is.url() + "/.well-known/jwks.json" })
		// Without discovery, iss must be the issuer as configured.
		verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now(), iss(is.url()))))
		expect(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now(), iss(is.iss()))), ErrInvalid)
	})
	t.Run("jwks_url alone", func(t *testing.T) {
		v := newVerifier(t, is, clk, func(c *Config) { c.Issuer = ""; c.JWKSURL = is.url() + "/.well-known/jwks.json" })
		verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now(), iss("anyone"))))
	})
}

func TestRefusesOversizedToken(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	pad := func(n int) func(map[string]any) {
		return func(c map[string]any) { c["pad"] = strings.Repeat("x", n) }
	}
	small := sign(t, rsa1(), hydraClaims(is, clk.Now(), pad(5000)))
	verify(t, v, small)
	big := sign(t, rsa1(), hydraClaims(is, clk.Now(), pad(7000)))
	if len(big) <= MaxTokenSize {
		t.Fatalf("the token is %d bytes", len(big))
	}
	if err := expect(t, v, big, ErrInvalid); err != errTooLarge {
		t.Errorf("error %q", err)
	}
}

func TestRefusesMalformed(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	good := sign(t, rsa1(), hydraClaims(is, clk.Now()))
	parts := strings.Split(good, ".")
	other := strings.Split(sign(t, rsa1(), hydraClaims(is, clk.Now(), func(c map[string]any) { c["sub"] = "admin" })), ".")
	payload, _ := json.Marshal(hydraClaims(is, clk.Now()))
	for name, raw := range map[string]string{
		"empty":              "",
		"garbage":            "not a token at all",
		"one segment":        parts[0],
		"two segments":       parts[0] + "." + parts[1],
		"four segments":      good + ".x",
		"five segments":      good + ".x.y",
		"JWE-like":           "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a.b.c.d",
		"JSON serialization": `{"payload":"` + parts[1] + `","signatures":[]}`,
		"bad base64":         parts[0] + ".!!!." + parts[2],
		"header not JSON":    "bm90IGpzb24." + parts[1] + "." + parts[2],
		"payload swapped":    parts[0] + "." + other[1] + "." + parts[2],
		"signature cut":      parts[0] + "." + parts[1] + "." + parts[2][:len(parts[2])-4],
		"no signature":       parts[0] + "." + parts[1] + ".",
		"claims null":        signPayload(t, rsa1(), []byte("null"), nil),
		"claims an array":    signPayload(t, rsa1(), []byte(`["exp"]`), nil),
		"claims not JSON":    signPayload(t, rsa1(), []byte("exp"), nil),
		"whitespace":         " " + good,
		"crit":               signPayload(t, rsa1(), payload, map[jose.HeaderKey]any{"crit": []string{"b64"}, "b64": true}),
	} {
		t.Run(name, func(t *testing.T) {
			expect(t, v, raw, ErrInvalid)
		})
	}
	verify(t, v, good)
}

func TestIssuerDownWithoutKeys(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	is.srv.Close() // connections refused from the start
	v := newVerifier(t, is, clk)
	raw := sign(t, rsa1(), hydraClaims(is, clk.Now()))
	err := expect(t, v, raw, ErrUnavailable)
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error %q does not say why", err)
	}
	// Within the interval, nothing new is tried: still unavailable.
	expect(t, v, raw, ErrUnavailable)
}

func TestIssuerDownAtStartThenUp(t *testing.T) {
	is := newIssuer(t, rsa1())
	is.set(func(is *issuer) { is.status = http.StatusServiceUnavailable })
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	raw := sign(t, rsa1(), hydraClaims(is, clk.Now()))
	expect(t, v, raw, ErrUnavailable)
	if d := clk.nextTimer(t); d != DefaultRefetchInterval {
		t.Errorf("after a failure, retried in %v, want %v", d, DefaultRefetchInterval)
	}
	// The first token after the first fetch may refetch; the next,
	// within the interval, may not.
	expect(t, v, raw, ErrUnavailable)
	expect(t, v, raw, ErrUnavailable)
	is.set(func(is *issuer) { is.status = 0 })
	expect(t, v, raw, ErrUnavailable)
	// The background retry loads the keys without a token asking.
	before := is.fetches()
	clk.Advance(DefaultRefetchInterval)
	if d := clk.nextTimer(t); d != DefaultRefreshInterval {
		t.Errorf("after a success, refreshed in %v, want %v", d, DefaultRefreshInterval)
	}
	if n := is.fetches() - before; n != 1 {
		t.Errorf("%d fetches", n)
	}
	verify(t, v, raw)
}

func TestIssuerDownWithKeys(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now())))
	is.set(func(is *issuer) { is.status = http.StatusInternalServerError })
	// A token not seen before, of a key held, verifies.
	verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now(), func(c map[string]any) { c["jti"] = "j-2" })))
	// A token of a key not held cannot be judged: unavailable, not
	// invalid, when the refetch fails and within the interval after.
	expect(t, v, sign(t, rsa2(), hydraClaims(is, clk.Now())), ErrUnavailable)
	expect(t, v, sign(t, rsa2(), hydraClaims(is, clk.Now())), ErrUnavailable)
	if n := is.fetches(); n != 2 {
		t.Errorf("%d fetches", n)
	}
	// Once up and past the interval, the unknown key ID is invalid.
	is.set(func(is *issuer) { is.status = 0 })
	clk.Advance(DefaultRefetchInterval)
	expect(t, v, sign(t, rsa2(), hydraClaims(is, clk.Now())), ErrInvalid)
}

// A refresh that fails keeps the keys held.
func TestFailedRefreshKeepsKeys(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	settle(v)
	clk.nextTimer(t)
	is.set(func(is *issuer) { is.status = http.StatusBadGateway })
	clk.Advance(DefaultRefreshInterval)
	clk.nextTimer(t)
	if n := is.fetches(); n != 2 {
		t.Fatalf("%d fetches", n)
	}
	verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now())))
}

func TestVerifyWaitIsBoundedByContext(t *testing.T) {
	is := newIssuer(t, rsa1())
	block := make(chan struct{})
	defer close(block)
	is.set(func(is *issuer) { is.block = block })
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := v.Verify(ctx, sign(t, rsa1(), hydraClaims(is, clk.Now())))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("error %v", err)
	}
	// Close ends the fetch in flight rather than waiting for the issuer.
	v.Close()
}

func TestDiscovery(t *testing.T) {
	clk := newFakeClock()
	t.Run("OAuth metadata when OpenID Connect's is missing", func(t *testing.T) {
		is := newIssuer(t, rsa1())
		is.set(func(is *issuer) { is.oidc = false })
		v := newVerifier(t, is, clk)
		verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now())))
	})
	t.Run("issuer configured with the slash", func(t *testing.T) {
		is := newIssuer(t, rsa1())
		v := newVerifier(t, is, clk, func(c *Config) { c.Issuer = is.iss() })
		verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now())))
	})
	t.Run("a document of another issuer", func(t *testing.T) {
		is := newIssuer(t, rsa1())
		is.set(func(is *issuer) { is.docIssuer = "https://evil.example/" })
		v := newVerifier(t, is, clk)
		err := expect(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now())), ErrUnavailable)
		if !strings.Contains(err.Error(), "not the issuer configured") {
			t.Errorf("error %q", err)
		}
	})
}

func TestKeySetParsing(t *testing.T) {
	is := newIssuer(t)
	clk := newFakeClock()
	small, err := rsaKey1024()
	if err != nil {
		t.Fatal(err)
	}
	is.set(func(is *issuer) {
		is.keys = []jose.JSONWebKey{
			{Key: []byte("a shared secret"), KeyID: "oct", Algorithm: "HS256"},
			{Key: rsa2().priv.Public(), KeyID: "enc", Use: "enc"},
			{Key: small.Public(), KeyID: "small", Algorithm: "RS256"},
			{Key: ecKey().Public(), KeyID: "es-as-rs", Algorithm: "RS256"},
			// Published with its private part, by mistake: the
			// public part is used.
			{Key: rsaKeys()[0], KeyID: "rsa-1", Algorithm: "RS256"},
			{Key: edKey().Public(), KeyID: "ed-1"},
		}
	})
	v := newVerifier(t, is, clk)
	settle(v)
	set := v.keys.current.Load()
	if set == nil {
		t.Fatal("no key set")
	}
	var kids []string
	for _, k := range set.keys {
		kids = append(kids, k.kid)
	}
	if !slices.Equal(kids, []string{"rsa-1", "ed-1"}) {
		t.Errorf("keys %q", kids)
	}
	verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now())))
	verify(t, v, sign(t, ed1(), hydraClaims(is, clk.Now())))
	expect(t, v, sign(t, signer{"small", jose.RS256, small}, hydraClaims(is, clk.Now())), ErrInvalid)
}

func TestTokenWithoutKeyID(t *testing.T) {
	is := newIssuer(t, ec1(), rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	verify(t, v, sign(t, signer{"", jose.RS256, rsaKeys()[0]}, hydraClaims(is, clk.Now())))
	verify(t, v, sign(t, signer{"", jose.ES256, ecKey()}, hydraClaims(is, clk.Now())))
	expect(t, v, sign(t, signer{"", jose.RS256, rsaKeys()[1]}, hydraClaims(is, clk.Now())), ErrInvalid)
}

func TestConfigCheck(t *testing.T) {
	ok := Config{Issuer: "https://issuer.example/", Audiences: []string{"queue"}}
	for name, c := range map[string]struct {
		change func(*Config)
		want   string
	}{
		"no issuer":         {func(c *Config) { c.Issuer = "" }, "issuer or jwks_url"},
		"relative issuer":   {func(c *Config) { c.Issuer = "/issuer" }, "issuer:"},
		"issuer with query": {func(c *Config) { c.Issuer = "https://i.example/?a=b" }, "query"},
		"ftp jwks_url":      {func(c *Config) { c.JWKSURL = "ftp://i.example/jwks" }, "jwks_url:"},
		"no audience":       {func(c *Config) { c.Audiences = nil }, "audiences"},
		"empty audience":    {func(c *Config) { c.Audiences = []string{""} }, "audiences"},
		"none":              {func(c *Config) { c.Algorithms = []string{"RS256", "none"} }, `"none" is never accepted`},
		"HS256":             {func(c *Config) { c.Algorithms = []string{"HS256"} }, "never accepted"},
		"hs512":             {func(c *Config) { c.Algorithms = []string{"hs512"} }, "never accepted"},
		"unknown":           {func(c *Config) { c.Algorithms = []string{"RS1"} }, "not one of"},
		"negative leeway":   {func(c *Config) { c.Leeway = -time.Second }, "leeway"},
		"huge leeway":       {func(c *Config) { c.Leeway = time.Hour }, "leeway"},
		"refresh < refetch": {func(c *Config) { c.RefetchInterval = time.Hour; c.RefreshInterval = time.Minute }, "refresh_interval"},
		"negative refetch":  {func(c *Config) { c.RefetchInterval = -1 }, "refetch_interval"},
		"negative refresh":  {func(c *Config) { c.RefreshInterval = -1 }, "refresh_interval"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := ok
			cfg.Audiences = slices.Clone(ok.Audiences)
			c.change(&cfg)
			v, err := New(context.Background(), cfg)
			if err == nil {
				v.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q, want %q", err, c.want)
			}
		})
	}
	s, err := ok.check()
	if err != nil {
		t.Fatal(err)
	}
	if s.leeway != DefaultLeeway || s.refetchInterval != DefaultRefetchInterval ||
		s.refreshInterval != DefaultRefreshInterval || s.cacheSize != DefaultCacheSize || len(s.algorithms) != len(DefaultAlgorithms) {
		t.Errorf("defaults %+v", s)
	}
}

func TestCacheMaxAge(t *testing.T) {
	for h, want := range map[string]time.Duration{
		"":                         0,
		"max-age=300":              5 * time.Minute,
		"public, max-age=120, x=1": 2 * time.Minute,
		"Max-Age=\"60\"":           time.Minute,
		"max-age=-5":               0,
		"max-age=abc":              0,
		"no-store":                 0,
		"max-age=99999999999999":   0,
	} {
		if got := cacheMaxAge(h); got != want {
			t.Errorf("%q: %v, want %v", h, got, want)
		}
	}
}

func TestRefreshHonoursMaxAge(t *testing.T) {
	for _, c := range []struct {
		cacheControl string
		want         time.Duration
	}{
		{"", time.Hour},
		{"max-age=300", 5 * time.Minute},
		{"max-age=5", time.Minute},   // not sooner than the refetch interval
		{"max-age=86400", time.Hour}, // not later than the refresh interval
	} {
		t.Run(c.cacheControl, func(t *testing.T) {
			is := newIssuer(t, rsa1())
			is.set(func(is *issuer) { is.cacheControl = c.cacheControl })
			clk := newFakeClock()
			newVerifier(t, is, clk, func(cfg *Config) { cfg.RefetchInterval = time.Minute; cfg.RefreshInterval = time.Hour })
			if d := clk.nextTimer(t); d != c.want {
				t.Errorf("refresh in %v, want %v", d, c.want)
			}
			clk.Advance(c.want - time.Second)
			if n := is.fetches(); n != 1 {
				t.Errorf("%d fetches before the refresh is due", n)
			}
			clk.Advance(time.Second)
			clk.nextTimer(t)
			if n := is.fetches(); n != 2 {
				t.Errorf("%d fetches once the refresh is due", n)
			}
		})
	}
}

// What the verifier logs, fetches that fail included, holds no token.
func TestLogsHoldNoToken(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk, func(c *Config) { c.Logger = zap.New(core) })
	raws := []string{sign(t, rsa1(), hydraClaims(is, clk.Now()))}
	verify(t, v, raws[0])
	is.set(func(is *issuer) { is.status = http.StatusInternalServerError })
	raws = append(raws, sign(t, rsa2(), hydraClaims(is, clk.Now())))
	expect(t, v, raws[1], ErrUnavailable)
	if logs.FilterMessage("fetching the key set failed").Len() != 1 {
		t.Errorf("the failed fetch is not logged: %v", logs.All())
	}
	for _, e := range logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		for _, raw := range raws {
			for _, part := range strings.Split(raw, ".") {
				if strings.Contains(line, part) {
					t.Errorf("logged a part of a token: %s", line)
				}
			}
		}
	}
}

// A token whose key the issuer published while the first fetch was in
// flight: the fetch it joined started before the key was there, so the
// token gets a refetch of its own (the interval has not been spent by a
// refetch), not a 401.
func TestKeyPublishedDuringTheFirstFetch(t *testing.T) {
	is := newIssuer(t, rsa1())
	release := make(chan struct{})
	is.set(func(is *issuer) { is.block = release })
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	// The first fetch has its answer, without rsa-2, and waits.
	waitUntil(t, func() bool { return is.fetches() == 1 })
	is.set(func(is *issuer) { is.keys = append(is.keys, rsa2().public()); is.block = nil })
	raw := sign(t, rsa2(), hydraClaims(is, clk.Now()))
	verified := make(chan error, 1)
	go func() {
		_, err := v.Verify(context.Background(), raw)
		verified <- err
	}()
	// Verify has joined the first fetch.
	waitUntil(t, func() bool {
		buf := make([]byte, 1<<20)
		return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "bearer.(*keys).refetch")
	})
	close(release)
	if err := <-verified; err != nil {
		t.Fatalf("a key published during the first fetch: %v", err)
	}
	if n := is.fetches(); n != 2 {
		t.Errorf("%d fetches, want the first and one refetch", n)
	}
}

// waitUntil polls cond until it holds, for up to 10 s.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}
