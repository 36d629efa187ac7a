//go:build oidc

package queuepublish

// The JWT suite: tokens from a real issuer, Ory Hydra (internal/hydratest),
// through Caddy. Run with -tags oidc (CI does); the first run builds Hydra
// into Go's cache.

import (
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuepublish/caddy-queue-publish/internal/hydratest"
)

const audience = "queue-publish"

func TestJWTFromHydra(t *testing.T) {
	hydra := hydratest.Start(t)
	hydra.CreateClient(t, "client-a", "client-a-secret", []string{audience, "another-service"})
	hydra.CreateClient(t, "client-b", "client-b-secret", []string{audience}, "publish:audit")
	hydra.CreateClient(t, "client-short", "client-short-secret", []string{audience})
	hydra.SetTokenLifetime(t, "client-short", time.Second)
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "audit"))
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	t.Cleanup(func() {
		if t.Failed() { // why the handler refused a token
			b, _ := os.ReadFile(logFile)
			t.Logf("Caddy's log:\n%s", grepLines(string(b), "token refused"))
		}
	})
	startCaddy(t, logFile, fmt.Sprintf(`	handle /topics/* {
		queue_publish {
			brokers %s
			topic {http.request.uri.path.1}
			allow_topics orders audit
			jwt %s {
				audience %s
				leeway 1s
				refetch_interval 1s
			}
			allow client-a orders
			allow client-short orders
			allow_claim scp publish:audit audit
			identity_header producer-identity
		}
	}`, c.ListenAddrs()[0], hydra.Issuer, audience))

	tokenA := hydra.Token(t, "client-a", "client-a-secret", audience, "")
	if got := do(t, "POST", "/topics/orders", bearerAuth(tokenA), strings.NewReader(`{"n":1}`)); got.status != 200 {
		t.Fatalf("client-a to orders: %d %s", got.status, got.body)
	}
	if got := do(t, "POST", "/topics/audit", bearerAuth(tokenA), strings.NewReader(`{}`)); got.status != 403 {
		t.Fatalf("client-a to audit: %d %s, want 403", got.status, got.body)
	}
	// client-b by its scope claim.
	tokenB := hydra.Token(t, "client-b", "client-b-secret", audience, "publish:audit")
	if got := do(t, "POST", "/topics/audit", bearerAuth(tokenB), strings.NewReader(`{"n":2}`)); got.status != 200 {
		t.Fatalf("client-b to audit: %d %s", got.status, got.body)
	}
	if got := do(t, "POST", "/topics/orders", bearerAuth(tokenB), strings.NewReader(`{}`)); got.status != 403 {
		t.Fatalf("client-b to orders: %d %s, want 403", got.status, got.body)
	}
	for topic, want := range map[string]string{"orders": "client-a", "audit": "client-b"} {
		recs := stored(t, c, topic)
		if len(recs) != 1 || headerOf(recs[0].Headers, "producer-identity") != want {
			t.Fatalf("%s holds %v, want one record of %s", topic, recs, want)
		}
	}

	// RFC 6750's answers.
	none := do(t, "POST", "/topics/orders", nil, strings.NewReader(`{}`))
	if none.status != 401 || none.header.Get("WWW-Authenticate") != `Bearer realm="queue_publish"` {
		t.Fatalf("no credentials: %d %v %s", none.status, none.header, none.body)
	}
	invalid := func(what, token string) {
		t.Helper()
		got := do(t, "POST", "/topics/orders", bearerAuth(token), strings.NewReader(`{}`))
		if got.status != 401 || got.header.Get("WWW-Authenticate") != `Bearer realm="queue_publish", error="invalid_token"` ||
			got.body != `{"err":"invalid bearer token"}` {
			t.Fatalf("%s: %d %v %s, want 401 invalid_token", what, got.status, got.header, got.body)
		}
	}
	invalid("a token for another audience", hydra.Token(t, "client-a", "client-a-secret", "another-service", ""))
	parts := strings.Split(tokenA, ".")
	claims, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	forged := strings.Replace(string(claims), `"sub":"client-a"`, `"sub":"client-b"`, 1)
	if forged == string(claims) {
		t.Fatalf("no sub to forge in %s", claims)
	}
	invalid("a token whose claims were changed", parts[0]+"."+base64.RawURLEncoding.EncodeToString([]byte(forged))+"."+parts[2])
	invalid("a token whose signature was changed", parts[0]+"."+parts[1]+"."+strings.Repeat("A", len(parts[2])))

	// A key rotation: tokens signed with the new key verify once the key
	// set is fetched again, which a token of an unknown key does at most
	// once a refetch_interval (1s here): until then, 401.
	kid := hydra.RotateKeys(t)
	rotated := hydra.Token(t, "client-a", "client-a-secret", audience, "")
	if !strings.Contains(jwtHeader(t, rotated), kid) {
		t.Fatalf("the token after the rotation is not signed with %s", kid)
	}
	waitFor(t, 5*time.Second, func() bool {
		got := do(t, "POST", "/topics/orders", bearerAuth(rotated), strings.NewReader(`{}`))
		if got.status != 200 && got.status != 401 {
			t.Fatalf("after the rotation: %d %s", got.status, got.body)
		}
		return got.status == 200
	})
	if got := do(t, "POST", "/topics/orders", bearerAuth(tokenA), strings.NewReader(`{}`)); got.status != 200 {
		t.Fatalf("the token from before the rotation: %d %s", got.status, got.body)
	}

	// A token of a second: accepted, then refused once past exp and
	// the leeway (the cache of verified tokens honours exp).
	short := hydra.Token(t, "client-short", "client-short-secret", audience, "")
	if got := do(t, "POST", "/topics/orders", bearerAuth(short), strings.NewReader(`{}`)); got.status != 200 {
		t.Fatalf("a fresh short token: %d %s", got.status, got.body)
	}
	waitFor(t, 10*time.Second, func() bool {
		got := do(t, "POST", "/topics/orders", bearerAuth(short), strings.NewReader(`{}`))
		if got.status != 200 && got.status != 401 {
			t.Fatalf("a short token: %d %s", got.status, got.body)
		}
		return got.status == 401
	})
}

// An issuer that cannot be reached, and no key cached: 503, retry safe,
// never a pass.
func TestJWTIssuerUnreachable(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
	hydra := hydratest.Start(t)
	hydra.CreateClient(t, "client-a", "client-a-secret", []string{audience})
	token := hydra.Token(t, "client-a", "client-a-secret", audience, "")
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish {
		brokers %s
		topic orders
		jwt {
			jwks_url http://%s/.well-known/jwks.json
			audience %s
		}
	}`, c.ListenAddrs()[0], closedPort(t), audience))
	got := do(t, "POST", "/", bearerAuth(token), strings.NewReader(`{}`))
	if got.status != 503 || got.header.Get("Retry-After") == "" || got.body != `{"err":"token issuer unavailable"}` {
		t.Fatalf("%d %v %s, want 503 token issuer unavailable", got.status, got.header, got.body)
	}
	if n := len(stored(t, c, "orders")); n != 0 {
		t.Fatalf("%d records stored", n)
	}
}

// examples/identity.Caddyfile as written, with Hydra as the issuer: each
// client to its topic only, at most its quota, its identity stamped.
func TestIdentityExample(t *testing.T) {
	hydra := hydratest.Start(t)
	hydra.CreateClient(t, "client-a", "client-a-secret", []string{audience})
	hydra.CreateClient(t, "client-b", "client-b-secret", []string{audience})
	brokerPort := freeTCPPort(t)
	t.Setenv("OIDC_ISSUER", hydra.Issuer)
	t.Setenv("QP_LISTEN", "127.0.0.1:9080")
	t.Setenv("QP_BROKER_PORT", brokerPort)
	b, err := os.ReadFile("examples/identity.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	config := strings.Replace(string(b), "{\n\tqueue_publish_dev_broker", "{\n\tadmin "+adminAddr+"\n\tqueue_publish_dev_broker", 1)
	loadCaddy(t, config)

	a := hydra.Token(t, "client-a", "client-a-secret", audience, "")
	bt := hydra.Token(t, "client-b", "client-b-secret", audience, "")
	if got := do(t, "POST", "/topics/orders", bearerAuth(a), strings.NewReader(`{"id":1}`)); got.status != 200 {
		t.Fatalf("client-a to orders: %d %s", got.status, got.body)
	}
	if got := do(t, "POST", "/topics/audit", bearerAuth(a), strings.NewReader(`{"id":1}`)); got.status != 403 {
		t.Fatalf("client-a to audit: %d %s", got.status, got.body)
	}
	if got := do(t, "POST", "/topics/audit", bearerAuth(bt), strings.NewReader(`{"id":2}`)); got.status != 200 {
		t.Fatalf("client-b to audit: %d %s", got.status, got.body)
	}
	if got := do(t, "POST", "/topics/orders", nil, strings.NewReader(`{}`)); got.status != 401 {
		t.Fatalf("no token: %d %s", got.status, got.body)
	}
	// 50 a second with a burst of 50: a burst of requests meets a 429
	// within the first hundred, however fast the machine.
	limited := false
	for i := range 100 {
		got := do(t, "POST", "/topics/orders", bearerAuth(a), strings.NewReader(`{"id":1}`))
		if got.status == 429 {
			if got.header.Get("Retry-After") != "1" || !strings.HasPrefix(got.header.Get("RateLimit"), `"records";r=0;t=`) ||
				got.header.Get("RateLimit-Policy") != `"records";q=50;w=1;qu="records"` {
				t.Fatalf("429 after %d: %v", i, got.header)
			}
			limited = true
			break
		}
		if got.status != 200 {
			t.Fatalf("request %d: %d %s", i, got.status, got.body)
		}
	}
	if !limited {
		t.Fatal("100 requests at once were never answered 429")
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers("127.0.0.1:"+brokerPort), kgo.ConsumeTopics("audit"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	fetches := cl.PollRecords(t.Context(), 1)
	if err := fetches.Err(); err != nil {
		t.Fatal(err)
	}
	recs := fetches.Records()
	if len(recs) != 1 || headerOf(recs[0].Headers, "producer-identity") != "client-b" {
		t.Fatalf("audit holds %v", recs)
	}
}

func freeTCPPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// jwtHeader is the decoded header of a JWT.
func jwtHeader(t *testing.T, token string) string {
	t.Helper()
	h, _, _ := strings.Cut(token, ".")
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// grepLines is the lines of text that hold s.
func grepLines(text, s string) string {
	var b strings.Builder
	for line := range strings.Lines(text) {
		if strings.Contains(line, s) {
			b.WriteString(line)
		}
	}
	return b.String()
}
