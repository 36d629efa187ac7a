package queuepublish

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/crypto/bcrypt"
)

// identityServer runs handlers that tell publishers apart by named
// secrets, on topics orders and audit of c: /topics/{topic} with the
// rules of examples/identity.Caddyfile, the identity stamped as
// producer-identity and used as the key.
func identityServer(t *testing.T, c *kfake.Cluster, extra string) (logFile string) {
	t.Helper()
	t.Setenv("QP_SECRET_A", "secret-of-client-a")
	t.Setenv("QP_SECRET_B", "secret-of-client-b")
	t.Setenv("QP_SECRET_ANON", "secret-of-no-one")
	logFile = filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, fmt.Sprintf(`	handle /topics/* {
		queue_publish {
			brokers %[1]s
			topic {http.request.uri.path.1}
			allow_topics orders audit
			secret client-a {env.QP_SECRET_A}
			secret client-b {env.QP_SECRET_B}
			secret {env.QP_SECRET_ANON}
			allow client-a orders
			allow client-b audit
			identity_header producer-identity
			key {http.auth.user.id}
			%[2]s
		}
	}
	handle /records/* {
		queue_publish {
			brokers %[1]s
			topic {http.request.uri.path.1}
			allow_topics orders audit
			mode records
			secret client-a {env.QP_SECRET_A}
			secret {env.QP_SECRET_ANON}
			identity_header producer-identity
		}
	}`, c.ListenAddrs()[0], extra))
	return logFile
}

func TestNamedSecretsArePublishers(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "audit"))
	identityServer(t, c, "")

	a := do(t, "POST", "/topics/orders", auth("secret-of-client-a"), strings.NewReader(`{"n":1}`))
	if a.status != 200 {
		t.Fatalf("client-a to orders: %d %s", a.status, a.body)
	}
	b := do(t, "POST", "/topics/audit", auth("Bearer secret-of-client-b"), strings.NewReader(`{"n":2}`))
	if b.status != 200 {
		t.Fatalf("client-b to audit: %d %s", b.status, b.body)
	}
	got := stored(t, c, "orders")
	if len(got) != 1 || string(got[0].Key) != "client-a" || headerOf(got[0].Headers, "producer-identity") != "client-a" {
		t.Fatalf("orders holds %v", got)
	}
	if got := stored(t, c, "audit"); len(got) != 1 || headerOf(got[0].Headers, "producer-identity") != "client-b" {
		t.Fatalf("audit holds %v", got)
	}

	// Each is refused the other's topic, with the answer.
	for _, tc := range []struct{ secret, path string }{
		{"secret-of-client-a", "/topics/audit"},
		{"secret-of-client-b", "/topics/orders"},
		{"secret-of-no-one", "/topics/orders"}, // no rule names the anonymous
	} {
		got := do(t, "POST", tc.path, auth(tc.secret), strings.NewReader(`{}`))
		if got.status != 403 || got.body != `{"err":"not allowed to publish to this topic"}` {
			t.Errorf("%s: %d %s, want 403 not allowed", tc.path, got.status, got.body)
		}
	}
	// A wrong secret is still the Worker's 403, without a challenge.
	wrong := do(t, "POST", "/topics/orders", auth("wrong"), strings.NewReader(`{}`))
	if wrong.status != 403 || wrong.body != `{"err":"invalid auth token provided"}` || wrong.header.Get("WWW-Authenticate") != "" {
		t.Errorf("wrong secret: %d %v %s", wrong.status, wrong.header, wrong.body)
	}
}

// A publisher refused a topic that the path names is refused before its
// body is read: the answer comes while the client still holds the body.
func TestPermissionRefusedBeforeBody(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "audit"))
	identityServer(t, c, "")
	conn, err := net.Dial("tcp", "127.0.0.1:9080")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /topics/audit HTTP/1.1\r\nHost: x\r\nAuthorization: secret-of-client-a\r\nContent-Length: 1000000\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer before the body was sent: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 403 || string(body) != `{"err":"not allowed to publish to this topic"}` {
		t.Fatalf("%d %s", res.StatusCode, body)
	}
}

// A client cannot claim another identity with the header of the
// identity: its own is dropped (without regard to case), the
// authenticated one set; an anonymous publisher's records get none.
func TestIdentityHeaderCannotBeForged(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "audit"))
	identityServer(t, c, "")
	body := `{"records":[{"value":1,"headers":{"producer-identity":"client-b","Producer-Identity":"root","other":"kept"}}]}`
	if got := do(t, "POST", "/records/orders", auth("secret-of-client-a"), strings.NewReader(body)); got.status != 200 {
		t.Fatalf("%d %s", got.status, got.body)
	}
	if got := do(t, "POST", "/records/audit", auth("secret-of-no-one"), strings.NewReader(body)); got.status != 200 {
		t.Fatalf("%d %s", got.status, got.body)
	}
	orders := stored(t, c, "orders")
	if len(orders) != 1 {
		t.Fatalf("orders holds %d records", len(orders))
	}
	var names []string
	for _, h := range orders[0].Headers {
		names = append(names, h.Key+"="+string(h.Value))
	}
	if strings.Join(names, ",") != "other=kept,producer-identity=client-a" {
		t.Errorf("headers: %v", names)
	}
	audit := stored(t, c, "audit")
	if len(audit) != 1 || len(audit[0].Headers) != 1 || audit[0].Headers[0].Key != "other" {
		t.Errorf("the anonymous publisher's record: %v", audit[0].Headers)
	}
}

// The identity is Caddy's authenticated user: the access log's user_id.
func TestIdentityInAccessLog(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
	t.Setenv("QP_SECRET_A", "secret-of-client-a")
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	access := filepath.Join(t.TempDir(), "access.log")
	loadCaddy(t, caddyGlobals(logFile)+fmt.Sprintf(`
:9080 {
	log {
		output file %s
	}
	queue_publish {
		brokers %s
		topic orders
		secret client-a {env.QP_SECRET_A}
	}
}
`, access, c.ListenAddrs()[0]))
	if got := do(t, "POST", "/", auth("secret-of-client-a"), strings.NewReader(`{}`)); got.status != 200 {
		t.Fatalf("%d %s", got.status, got.body)
	}
	waitFor(t, 5*time.Second, func() bool {
		b, _ := os.ReadFile(access)
		return strings.Contains(string(b), `"user_id":"client-a"`)
	})
}

// Caddy's own authentication: basic_auth authenticates, queue_publish
// publishes as its user, and refuses a request basic_auth let through
// without a user only if it has no other credentials.
func TestCaddyAuthIdentity(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "audit"))
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	startCaddy(t, logFile, fmt.Sprintf(`	route /topics/* {
		basic_auth {
			alice %[2]s
			bob %[2]s
		}
		queue_publish {
			brokers %[1]s
			topic {http.request.uri.path.1}
			allow_topics orders audit
			caddy_auth
			allow alice orders
			identity_header producer-identity
		}
	}`, c.ListenAddrs()[0], hash))
	basic := func(user string) map[string]string {
		return map[string]string{"Authorization": "Basic " + basicAuth(user, "pw")}
	}
	if got := do(t, "POST", "/topics/orders", basic("alice"), strings.NewReader(`{}`)); got.status != 200 {
		t.Fatalf("alice: %d %s", got.status, got.body)
	}
	if got := do(t, "POST", "/topics/orders", basic("bob"), strings.NewReader(`{}`)); got.status != 403 {
		t.Fatalf("bob: %d %s, want 403", got.status, got.body)
	}
	if got := stored(t, c, "orders"); len(got) != 1 || headerOf(got[0].Headers, "producer-identity") != "alice" {
		t.Fatalf("orders holds %v", got)
	}
}

func basicAuth(user, password string) string {
	u := &url.URL{User: url.UserPassword(user, password)}
	req := &http.Request{Header: http.Header{}, URL: u}
	req.SetBasicAuth(user, password)
	return strings.TrimPrefix(req.Header.Get("Authorization"), "Basic ")
}

func headerOf(headers []kgo.RecordHeader, key string) string {
	for _, h := range headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// Client certificates: Caddy verifies the certificate against the trust
// pool; its name of the configured kind is the identity.
func TestClientCertificateIdentity(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
	t.Setenv("QP_SECRET_A", "secret-of-client-a")
	dir := t.TempDir()
	ca, caKey := testCA(t, dir)
	clientA := testClientCert(t, ca, caKey, "client-a", "spiffe://example.org/ns/shop/sa/client-a")
	clientB := testClientCert(t, ca, caKey, "client-b", "spiffe://example.org/ns/ops/sa/client-b")
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	loadCaddy(t, caddyGlobals(logFile)+fmt.Sprintf(`
https://localhost:9443 {
	tls internal {
		client_auth {
			mode require_and_verify
			trust_pool file %s
		}
	}
	handle /cn {
		queue_publish {
			brokers %[2]s
			topic orders
			client_certificate cn
			allow client-a orders
			identity_header producer-identity
		}
	}
	handle /uri {
		queue_publish {
			brokers %[2]s
			topic orders
			client_certificate uri
			allow spiffe://example.org/ns/shop/sa/* orders
			identity_header producer-identity
		}
	}
	handle /either {
		queue_publish {
			brokers %[2]s
			topic orders
			client_certificate cn
			secret {env.QP_SECRET_A}
		}
	}
}

# Caddy asks for a certificate here but does not verify it.
https://unverified.localhost:9443 {
	tls internal {
		client_auth {
			mode request
		}
	}
	queue_publish {
		brokers %[2]s
		topic orders
		client_certificate cn
	}
}
`, filepath.Join(dir, "ca.pem"), c.ListenAddrs()[0]))
	postTo := func(host string, cert tls.Certificate, path string, header map[string]string) answerT {
		cl := &http.Client{Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}, ServerName: host},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, "127.0.0.1:9443")
			},
		}}
		req, _ := http.NewRequest("POST", "https://"+host+":9443"+path, strings.NewReader(`{}`))
		for k, v := range header {
			req.Header.Set(k, v)
		}
		res, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return answerT{res.StatusCode, res.Header, string(b)}
	}
	post := func(cert tls.Certificate, path string) answerT {
		return postTo("localhost", cert, path, nil)
	}
	if got := post(clientA, "/cn"); got.status != 200 {
		t.Fatalf("client-a by cn: %d %s", got.status, got.body)
	}
	if got := post(clientB, "/cn"); got.status != 403 {
		t.Fatalf("client-b by cn: %d %s, want 403", got.status, got.body)
	}
	if got := post(clientA, "/uri"); got.status != 200 {
		t.Fatalf("client-a by uri: %d %s", got.status, got.body)
	}
	if got := post(clientB, "/uri"); got.status != 403 {
		t.Fatalf("client-b by uri: %d %s, want 403", got.status, got.body)
	}
	// Wrong credentials are refused whatever else the request carries: a
	// wrong secret does not fall back on a good certificate.
	if got := postTo("localhost", clientB, "/either", auth("wrong")); got.status != 403 {
		t.Fatalf("a good certificate and a wrong secret: %d %s, want 403", got.status, got.body)
	}
	// A certificate Caddy did not verify is no credential (signed by
	// the test CA or not, Caddy asked for it only).
	other, otherKey := testCA(t, t.TempDir())
	for name, cert := range map[string]tls.Certificate{
		"the trusted CA's": clientA, "another CA's": testClientCert(t, other, otherKey, "client-a", "spiffe://example.org/x"),
	} {
		if got := postTo("unverified.localhost", cert, "/", nil); got.status != 403 || got.body != `{"err":"invalid auth token provided"}` {
			t.Fatalf("an unverified certificate, %s: %d %s, want 403", name, got.status, got.body)
		}
	}
	var ids []string
	for _, r := range stored(t, c, "orders") {
		ids = append(ids, headerOf(r.Headers, "producer-identity"))
	}
	if strings.Join(ids, " ") != "client-a spiffe://example.org/ns/shop/sa/client-a" {
		t.Fatalf("identities stored: %q", ids)
	}
}

func testCA(t *testing.T, dir string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test clients CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func testClientCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn, uri string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(uri)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{u}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// Requests are counted by identity, for the identities the config names
// only: any other is "other", so that a large issuer cannot make the
// series grow without bound.
func TestIdentityMetricsBounded(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "audit"))
	identityServer(t, c, "")
	count := func(identity, code string) float64 {
		var m dto.Metric
		if err := metricIdentityRequests.WithLabelValues(identity, code).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	before := map[string]float64{
		"client-a 200": count("client-a", "200"), "client-b 403": count("client-b", "403"),
		"anonymous 403": count("anonymous", "403"), "none 403": count("none", "403"),
	}
	do(t, "POST", "/topics/orders", auth("secret-of-client-a"), strings.NewReader(`{}`))
	do(t, "POST", "/topics/orders", auth("secret-of-client-b"), strings.NewReader(`{}`))
	do(t, "POST", "/topics/orders", auth("secret-of-no-one"), strings.NewReader(`{}`))
	do(t, "POST", "/topics/orders", auth("wrong"), strings.NewReader(`{}`))
	for k, was := range before {
		id, code, _ := strings.Cut(k, " ")
		if got := count(id, code); got != was+1 {
			t.Errorf("%s: counted %v more, want 1", k, got-was)
		}
	}
	l := identityLabels{"client-a": true}
	for _, tc := range []struct {
		id   identity
		want string
	}{
		{identity{scheme: schemeJWT, name: "client-a"}, "client-a"},
		{identity{scheme: schemeJWT, name: "someone-the-issuer-knows"}, "other"},
		{identity{scheme: schemeSecret}, "anonymous"},
		{identity{}, "none"},
	} {
		if got := l.label(&tc.id); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.id, got, tc.want)
		}
	}
}
