package bearer

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkVerify: a token seen for the first time (the signature
// verified, the claims read and checked, the token cached), and a token
// seen before (a cache hit), from parallel callers as from the handler's
// connections. The tokens are as Hydra mints them, about 0.7-0.9 KB.
func BenchmarkVerify(b *testing.B) {
	for _, s := range []signer{rsa1(), ec1()} {
		b.Run("first sight/"+string(s.alg), func(b *testing.B) {
			is := newIssuer(b, s)
			clk := newFakeClock()
			v := newVerifier(b, is, clk, func(c *Config) { c.CacheSize = max(DefaultCacheSize, b.N) })
			verify1(b, v, sign(b, s, hydraClaims(is, clk.Now())))
			raws := make([]string, b.N)
			for i := range raws {
				raws[i] = sign(b, s, hydraClaims(is, clk.Now(), func(c map[string]any) { c["jti"] = fmt.Sprint(i) }))
			}
			b.SetBytes(int64(len(raws[0])))
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := v.Verify(context.Background(), raws[next.Add(1)-1]); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
	b.Run("cache hit", func(b *testing.B) {
		is := newIssuer(b, rsa1())
		clk := newFakeClock()
		v := newVerifier(b, is, clk)
		// One token per connection of the handler's 64.
		raws := make([]string, 64)
		for i := range raws {
			raws[i] = sign(b, rsa1(), hydraClaims(is, clk.Now(), func(c map[string]any) { c["sub"] = fmt.Sprint("client-", i) }))
			verify1(b, v, raws[i])
		}
		b.SetBytes(int64(len(raws[0])))
		var caller atomic.Int64
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := int(caller.Add(1))
			for pb.Next() {
				if _, err := v.Verify(context.Background(), raws[i%len(raws)]); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}

func verify1(b *testing.B, v *Verifier, raw string) {
	b.Helper()
	if _, err := v.Verify(context.Background(), raw); err != nil {
		b.Fatal(err)
	}
}
