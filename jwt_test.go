package queuepublish

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/twmb/franz-go/pkg/kfake"
)

// Hostile tokens through Caddy, signed here against a key set served
// here (the working path is proven against Hydra, -tags oidc): each is
// 401 invalid_token, nothing is produced, and made-up key IDs do not make
// the handler flood the issuer.
func TestJWTHostileTokens(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	var fetches atomic.Int32
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		w.Write(set)
	}))
	defer jwks.Close()
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish {
		brokers %s
		topic orders
		jwt {
			jwks_url %s
			audience queue-publish
			refetch_interval 1h
		}
	}`, c.ListenAddrs()[0], jwks.URL))

	claims := func(extra map[string]any) []byte {
		m := map[string]any{"sub": "client-a", "aud": "queue-publish", "exp": time.Now().Add(time.Hour).Unix()}
		for k, v := range extra {
			m[k] = v
		}
		b, _ := json.Marshal(m)
		return b
	}
	sign := func(alg jose.SignatureAlgorithm, k any, kid string, payload []byte) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: k}, (&jose.SignerOptions{}).WithHeader("kid", kid))
		if err != nil {
			t.Fatal(err)
		}
		jws, err := s.Sign(payload)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := jws.CompactSerialize()
		return out
	}
	b64 := base64.RawURLEncoding.EncodeToString
	good := sign(jose.RS256, key, "k1", claims(nil))
	if got := do(t, "POST", "/", bearerAuth(good), strings.NewReader(`{}`)); got.status != 200 {
		t.Fatalf("a good token: %d %s", got.status, got.body)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	huge := sign(jose.RS256, key, "k1", claims(map[string]any{"pad": strings.Repeat("x", 9000)}))
	for name, token := range map[string]string{
		"alg none":                         b64([]byte(`{"alg":"none","kid":"k1"}`)) + "." + b64(claims(nil)) + ".",
		"HS256 keyed with the public key":  sign(jose.HS256, pubPEM, "k1", claims(nil)),
		"HS256 keyed with the key's bytes": sign(jose.HS256, pub, "k1", claims(nil)),
		"expired":                          sign(jose.RS256, key, "k1", claims(map[string]any{"exp": time.Now().Add(-time.Hour).Unix()})),
		"not yet valid":                    sign(jose.RS256, key, "k1", claims(map[string]any{"nbf": time.Now().Add(time.Hour).Unix()})),
		"another audience":                 sign(jose.RS256, key, "k1", claims(map[string]any{"aud": "another"})),
		"no exp":                           sign(jose.RS256, key, "k1", claims(map[string]any{"exp": nil})),
		"no sub":                           sign(jose.RS256, key, "k1", claims(map[string]any{"sub": nil})),
		"over 8 KiB":                       huge,
	} {
		got := do(t, "POST", "/", bearerAuth(token), strings.NewReader(`{}`))
		if got.status != 401 || got.header.Get("WWW-Authenticate") != `Bearer realm="queue_publish", error="invalid_token"` {
			t.Errorf("%s: %d %v %s, want 401 invalid_token", name, got.status, got.header, got.body)
		}
	}
	// A flood of made-up key IDs: one refetch in the interval, at most.
	before := fetches.Load()
	for i := range 50 {
		other, _ := rsa.GenerateKey(rand.Reader, 1024)
		token := sign(jose.RS256, other, fmt.Sprintf("made-up-%d", i), claims(nil))
		if got := do(t, "POST", "/", bearerAuth(token), strings.NewReader(`{}`)); got.status != 401 {
			t.Fatalf("made-up kid %d: %d %s", i, got.status, got.body)
		}
	}
	if n := fetches.Load() - before; n > 1 {
		t.Errorf("50 made-up key IDs fetched the key set %d times, want at most 1", n)
	}
	if n := len(stored(t, c, "orders")); n != 1 {
		t.Errorf("%d records stored, want only the good token's", n)
	}
}

func bearerAuth(token string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + token}
}
