package queuepublish

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"

	"github.com/queuepublish/caddy-queue-publish/internal/bearer"
)

// BenchmarkAuthentication is what authenticating a request costs, by
// scheme, 64 callers at once: a shared secret, a JWT seen before (a
// digest and a cache lookup), and the first sight of a JWT (its
// signature checked), RS256 and ES256. Compare the difference between
// secret and jwt/cached with BenchmarkHandler/mode=body/callers=64 of the
// same run: that is the cost a JWT adds to a request.
func BenchmarkAuthentication(b *testing.B) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keys := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &rsaKey.PublicKey, KeyID: "rsa", Algorithm: "RS256", Use: "sig"},
		{Key: &ecKey.PublicKey, KeyID: "ec", Algorithm: "ES256", Use: "sig"},
	}}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(keys)
	}))
	defer jwks.Close()
	v, err := bearer.New(context.Background(), bearer.Config{JWKSURL: jwks.URL, Audiences: []string{"queue-publish"}})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	scheme := &jwtScheme{v: v, claim: "sub", wait: time.Second, logger: zap.NewNop()}
	sign := func(alg jose.SignatureAlgorithm, key any, kid string, n int) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", kid).WithType("JWT"))
		if err != nil {
			b.Fatal(err)
		}
		claims, _ := json.Marshal(map[string]any{"sub": "client-" + strconv.Itoa(n), "aud": "queue-publish", "exp": time.Now().Add(time.Hour).Unix()})
		jws, err := s.Sign(claims)
		if err != nil {
			b.Fatal(err)
		}
		t, _ := jws.CompactSerialize()
		return t
	}
	secret := bearers{&secrets{}}
	secret.secrets.resolve(nil, []string{testSecret}, nil)
	cached := "Bearer " + sign(jose.RS256, rsaKey, "rsa", 0)
	run := func(name string, a authenticator, header func(i int) string) {
		b.Run(name+"/callers=64", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(32)
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					x := &exchange{}
					x.req.ctx = context.Background()
					x.req.authorization = header(i)
					if ref := a.authenticate(x); ref != nil {
						b.Errorf("refused: %s", ref.message)
						return
					}
					i++
				}
			})
		})
	}
	run("secret", secret, func(int) string { return "Bearer " + testSecret })
	run("jwt/cached", scheme, func(int) string { return cached })
	for _, k := range []struct {
		name string
		alg  jose.SignatureAlgorithm
		key  any
		kid  string
	}{{"RS256", jose.RS256, rsaKey, "rsa"}, {"ES256", jose.ES256, ecKey, "ec"}} {
		b.Run("jwt/first-sight/"+k.name, func(b *testing.B) {
			// Tokens signed before the clock starts, each seen once.
			tokens := make([]string, b.N)
			for i := range tokens {
				tokens[i] = "Bearer " + sign(k.alg, k.key, k.kid, i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				x := &exchange{}
				x.req.ctx = context.Background()
				x.req.authorization = tokens[i]
				if ref := scheme.authenticate(x); ref != nil {
					b.Fatalf("refused: %s", ref.message)
				}
			}
		})
	}
}

// BenchmarkQuotaTake is a quota's take in memory, 64 callers at once:
// all of one identity (one lock, the worst case), and each caller an
// identity of its own.
func BenchmarkQuotaTake(b *testing.B) {
	q := &quota{records: bucketRate{rate: 1e12, burst: 1e12}, bytes: bucketRate{rate: 1e12, burst: 1e12}}
	for _, shared := range []bool{true, false} {
		name := "identities=64"
		if shared {
			name = "identities=1"
		}
		b.Run(name+"/callers=64", func(b *testing.B) {
			l := &memoryLimiter{now: time.Now}
			var next atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(32)
			b.RunParallel(func(pb *testing.PB) {
				id := "client"
				if !shared {
					id += strconv.FormatInt(next.Add(1), 10)
				}
				for pb.Next() {
					if t, _ := l.take(context.Background(), q, id, 1, 100); !t.taken {
						b.Error("refused")
						return
					}
				}
			})
		})
	}
}
