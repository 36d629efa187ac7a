package bearer

import (
	"fmt"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// forgeKeySet replaces the verifier's keys, without a fetch and without a
// new generation, with a key of rsa-1's ID that is rsa-2's: a token of
// rsa-1 then verifies only from the cache.
func forgeKeySet(v *Verifier, is *issuer) {
	v.keys.current.Store(&keySet{
		keys:   []key{{kid: "rsa-1", algs: setOf(jose.RS256), pub: rsa2().priv.Public()}},
		issuer: is.iss(),
	})
}

func TestCacheHitUntilExpiry(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk, func(c *Config) { c.Leeway = time.Minute })
	exp := clk.Now().Add(10 * time.Minute)
	raw := sign(t, rsa1(), hydraClaims(is, clk.Now(), func(c map[string]any) { c["exp"] = exp.Unix() }))
	first := verify(t, v, raw)
	forgeKeySet(v, is)
	// Verified once, the token is not verified again before its exp...
	clk.Advance(exp.Sub(clk.Now()) - time.Second)
	if tok := verify(t, v, raw); tok != first {
		t.Errorf("another token from the cache: %+v", tok)
	}
	// ...and at its exp, the cache no longer stands for it, even within
	// the leeway a first sight would give it.
	clk.Advance(time.Second)
	if err := expect(t, v, raw, ErrInvalid); err != errSignature {
		t.Errorf("error %q, want the signature's, from a verification", err)
	}
}

func TestCacheIsPerToken(t *testing.T) {
	is := newIssuer(t, ec1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	for range 2 {
		for _, sub := range []string{"a", "b"} {
			raw := sign(t, ec1(), hydraClaims(is, clk.Now(), func(c map[string]any) { c["sub"] = sub }))
			if tok := verify(t, v, raw); tok.Subject != sub {
				t.Fatalf("subject %q, want %q", tok.Subject, sub)
			}
		}
	}
}

// A token accepted only thanks to the leeway is past its exp: not cached.
func TestCacheSkipsExpiredWithinLeeway(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now(), func(c map[string]any) { c["exp"] = clk.Now().Add(-time.Second).Unix() })))
	if n := v.cache.len(); n != 0 {
		t.Errorf("%d cached", n)
	}
	verify(t, v, sign(t, rsa1(), hydraClaims(is, clk.Now())))
	if n := v.cache.len(); n != 1 {
		t.Errorf("%d cached, want 1", n)
	}
}

// A refresh that drops a key drops the tokens it verified.
func TestCacheDropsTokensOfAKeyWithdrawn(t *testing.T) {
	is := newIssuer(t, rsa1(), rsa2())
	clk := newFakeClock()
	v := newVerifier(t, is, clk)
	long := func(c map[string]any) { c["exp"] = clk.Now().Add(24 * time.Hour).Unix() }
	raw1 := sign(t, rsa1(), hydraClaims(is, clk.Now(), long))
	raw2 := sign(t, rsa2(), hydraClaims(is, clk.Now(), long))
	verify(t, v, raw1)
	verify(t, v, raw2)
	clk.nextTimer(t)

	// A refresh that keeps both keys keeps the tokens.
	clk.Advance(DefaultRefreshInterval)
	clk.nextTimer(t)
	forgeKeySet(v, is)
	verify(t, v, raw1)
	is.set(func(is *issuer) { is.keys = []jose.JSONWebKey{rsa2().public()} })
	clk.Advance(DefaultRefreshInterval)
	clk.nextTimer(t)
	expect(t, v, raw1, ErrInvalid)
	verify(t, v, raw2)
}

func TestCacheIsBounded(t *testing.T) {
	is := newIssuer(t, ec1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk, func(c *Config) { c.CacheSize = cacheShards })
	for i := range 4 * cacheShards {
		verify(t, v, sign(t, ec1(), hydraClaims(is, clk.Now(), func(c map[string]any) { c["jti"] = fmt.Sprint(i) })))
	}
	if n := v.cache.len(); n > cacheShards || n == 0 {
		t.Errorf("%d cached, want at most %d", n, cacheShards)
	}
}

// A full shard drops its expired entries before any that may be used.
func TestCacheEvictsExpiredFirst(t *testing.T) {
	c := newCache(cacheShards * 4)
	key := func(i int) *digest { return &digest{0, byte(i)} } // all in shard 0
	for i := range 4 {
		c.put(key(i), cacheEntry{token: &Token{}, expiry: int64(10 + i)}, 0)
	}
	c.put(key(4), cacheEntry{token: &Token{}, expiry: 100}, 12)
	for i, want := range []bool{false, false, false, true, true} {
		if _, ok := c.get(key(i), 0, 0); ok != want {
			t.Errorf("entry %d kept %v, want %v", i, ok, want)
		}
	}
}

func TestCacheOff(t *testing.T) {
	is := newIssuer(t, rsa1())
	clk := newFakeClock()
	v := newVerifier(t, is, clk, func(c *Config) { c.CacheSize = -1 })
	raw := sign(t, rsa1(), hydraClaims(is, clk.Now()))
	verify(t, v, raw)
	forgeKeySet(v, is)
	expect(t, v, raw, ErrInvalid)
}
