package queuepublish

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func signature(secret, body string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// handlerWithSecrets is a handler as Provision leaves it with these
// secrets, without a producer.
func handlerWithSecrets(secrets ...string) *Handler {
	h := &Handler{Authentication: Authentication{Secrets: secrets}}
	if err := h.Authentication.provision(&provisioning{repl: caddy.NewReplacer(), h: h}); err != nil {
		panic(err)
	}
	return h
}

// The identity of a request is which secret it holds, whichever of the
// schemes it uses.
func TestIdentityNamesTheSecret(t *testing.T) {
	h := handlerWithSecrets("first-secret", "second-secret", "third-secret")
	for i, secret := range []string{"first-secret", "second-secret", "third-secret"} {
		if n, ok := h.secrets.authorized("Bearer " + secret); !ok || n != i+1 {
			t.Errorf("Authorization with secret %d: identity %d, %v", i+1, n, ok)
		}
		var sig [sha256.Size]byte
		parseSignature(signature(secret, "{}"), &sig)
		if n, ok := h.secrets.signed(&sig, []byte("{}")); !ok || n != i+1 {
			t.Errorf("signature with secret %d: identity %d, %v", i+1, n, ok)
		}
		h.TokenMaxAge = caddy.Duration(time.Hour)
		tok := tokens{secrets: &h.secrets, maxAge: time.Hour}
		if n, ok := tok.valid(MintToken(secret, "events", time.Now().Add(time.Minute)), "events", time.Now()); !ok || n != i+1 {
			t.Errorf("token with secret %d: identity %d, %v", i+1, n, ok)
		}
	}
	if n, ok := h.secrets.authorized("wrong"); ok || n != 0 {
		t.Errorf("a wrong secret: identity %d, %v", n, ok)
	}
}

func TestSecretRotation(t *testing.T) {
	h := handlerWithSecrets("old-secret", "new-secret")
	for header, want := range map[string]bool{
		"old-secret": true, "new-secret": true, "Bearer new-secret": true,
		"old-secretnew-secret": false, "new": false, "": false,
	} {
		if got := h.authorized(header); got != want {
			t.Errorf("authorized(%q) = %v, want %v", header, got, want)
		}
	}
}

func TestSignedWebhooks(t *testing.T) {
	h := handlerWithSecrets("s1", "s2")
	body := `{"action":"opened"}`
	for _, tt := range []struct {
		name, header, body string
		want               bool
	}{
		{"first secret", signature("s1", body), body, true},
		{"second secret", signature("s2", body), body, true},
		{"other secret", signature("s3", body), body, false},
		{"other body", signature("s1", body), `{"action":"closed"}`, false},
		{"no prefix", strings.TrimPrefix(signature("s1", body), "sha256="), body, false},
		{"sha1 scheme", "sha1=" + strings.TrimPrefix(signature("s1", body), "sha256="), body, false},
		{"upper-case hex", "sha256=" + strings.ToUpper(strings.TrimPrefix(signature("s1", body), "sha256=")), body, true},
		{"truncated", signature("s1", body)[:70], body, false},
		{"not hex", "sha256=" + strings.Repeat("zz", 32), body, false},
		{"missing", "", body, false},
	} {
		if got := signedHeader(h, tt.header, []byte(tt.body)); got != tt.want {
			t.Errorf("%s: signed = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// Every secret is compared, whether or not an earlier one matched, and
// only fixed-size digests are compared: the work depends neither on which
// secret matches nor on how a wrong header relates to a secret (a prefix,
// longer, another length).
func TestSecretChecksDoNotStopEarly(t *testing.T) {
	h := handlerWithSecrets("first-secret", "second-secret", "third-secret")
	var calls, lengths []int
	compareDigests = func(a, b []byte) int {
		calls[len(calls)-1]++
		lengths = append(lengths, len(a), len(b))
		return subtle.ConstantTimeCompare(a, b)
	}
	t.Cleanup(func() { compareDigests = subtle.ConstantTimeCompare })
	for _, header := range []string{"first-secret", "third-secret", "Bearer second-secret", "wrong", "f", "first-secre", "first-secret-and-more", strings.Repeat("x", 500)} {
		calls = append(calls, 0)
		h.authorized(header)
		if got := calls[len(calls)-1]; got != 2*len(h.secrets.digests) {
			t.Errorf("%q: %d digest comparisons, want %d", header, got, 2*len(h.secrets.digests))
		}
	}
	// Basic credentials: the pair and the password too, for every secret.
	for _, pair := range []string{"user:first-secret", "user:third-secret", "first-secret:x", "u:wrong"} {
		calls = append(calls, 0)
		h.authorized(basic(pair))
		if got := calls[len(calls)-1]; got != 4*len(h.secrets.digests) {
			t.Errorf("Basic %q: %d digest comparisons, want %d", pair, got, 4*len(h.secrets.digests))
		}
	}
	body := []byte(`{}`)
	for _, header := range []string{signature("first-secret", string(body)), signature("third-secret", string(body)), signature("nope", string(body))} {
		calls = append(calls, 0)
		signedHeader(h, header, body)
		if got := calls[len(calls)-1]; got != len(h.secrets.values) {
			t.Errorf("signature: %d comparisons, want %d", got, len(h.secrets.values))
		}
	}
	h.TokenMaxAge = caddy.Duration(time.Hour)
	now := time.Now()
	for _, secret := range []string{"first-secret", "third-secret", "nope"} {
		calls = append(calls, 0)
		tokenValid(h, MintToken(secret, "events", now.Add(time.Minute)), "events", now)
		if got := calls[len(calls)-1]; got != len(h.secrets.values) {
			t.Errorf("token: %d comparisons, want %d", got, len(h.secrets.values))
		}
	}
	for _, n := range lengths {
		if n != sha256.Size {
			t.Fatalf("compared a %d-byte value; only %d-byte digests may be compared", n, sha256.Size)
		}
	}
}

func TestSignatureHeaderThroughCaddy(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "hooks"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	t.Setenv("QP_TEST_SECRET_NEXT", "next-"+testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish {
		brokers %s
		topic hooks
		secret {env.QP_TEST_SECRET}
		secret {env.QP_TEST_SECRET_NEXT}
		signature_header X-Hub-Signature-256
	}`, c.ListenAddrs()[0]))
	body := `{"zen":"Design for failure."}`
	for _, tt := range []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"signed", map[string]string{"X-Hub-Signature-256": signature(testSecret, body)}, 200},
		{"signed with the next secret", map[string]string{"X-Hub-Signature-256": signature("next-"+testSecret, body)}, 200},
		{"signed for another body", map[string]string{"X-Hub-Signature-256": signature(testSecret, `{}`)}, 403},
		{"not signed", nil, 403},
		{"the secret in Authorization is not enough", map[string]string{"Authorization": testSecret}, 403},
	} {
		got := do(t, "POST", "/", tt.header, strings.NewReader(body))
		if got.status != tt.want {
			t.Errorf("%s: %d %s, want %d", tt.name, got.status, got.body, tt.want)
		}
	}
	if got := stored(t, c, "hooks"); len(got) != 2 || string(got[0].Value) != body {
		t.Errorf("hooks holds %d records, want the 2 signed ones", len(got))
	}
}

// signedHeader checks a signature header as a request's is checked.
func signedHeader(h *Handler, header string, body []byte) bool {
	var sig [sha256.Size]byte
	if !parseSignature(header, &sig) {
		return false
	}
	_, ok := h.secrets.signed(&sig, body)
	return ok
}

// No load error quotes any part of a literal secret, even one holding
// braces that the replacer takes for a placeholder; errors about a secret
// given as {env.*} or {file.*} still name the variable or file.
func TestSecretErrorsQuoteNoSecret(t *testing.T) {
	for _, tt := range []struct{ value, mustNot, want string }{
		{"abc{def}ghi", "def", "holds an unknown or empty placeholder"},
		{"{literal-secret}", "literal-secret", "holds an unknown or empty placeholder"},
		{"x{http.request.header.Y}z", "http.request", "holds an unknown or empty placeholder"},
		{"{env.QP_UNSET_SECRET}", "", "{env.QP_UNSET_SECRET} is empty"},
		{"{file./nonexistent/secret}", "", "/nonexistent/secret"},
	} {
		os.Unsetenv("QP_UNSET_SECRET")
		for _, h := range []*Handler{
			{Kafka: Kafka{Brokers: []string{"localhost:1"}}, Requests: Requests{Topic: "t"}, Authentication: Authentication{Secrets: []string{tt.value}}},
			{Kafka: Kafka{Brokers: []string{"localhost:1"}, SASL: &BrokerSASL{Mechanism: "plain", Username: "u", Password: tt.value}}, Requests: Requests{Topic: "t"}, Authentication: Authentication{Secrets: []string{"ok"}}},
		} {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			err := h.Provision(ctx)
			cancel()
			h.Cleanup()
			if err == nil || !strings.Contains(err.Error(), tt.want) || tt.mustNot != "" && strings.Contains(err.Error(), tt.mustNot) {
				t.Errorf("%q: error %v, want one saying %q without %q", tt.value, err, tt.want, tt.mustNot)
			}
		}
	}
}

// TestSecretMustResolve checks that a secret which resolves empty or
// cannot be resolved stops the config from loading, naming the field.
func TestSecretMustResolve(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "my-queue"))
	os.Unsetenv("QP_UNSET_SECRET")
	before := len(pooledProducers(t))
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, secret := range map[string]string{
		"unset environment variable": "{env.QP_UNSET_SECRET}",
		"missing file":               "{file./nonexistent/secret}",
		"empty file":                 "{file." + empty + "}",
		"unknown placeholder":        "{http.request.header.X}",
	} {
		t.Run(name, func(t *testing.T) {
			cfg := caddyConfig(filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish {
		brokers %s
		topic my-queue
		secret %s
	}`, c.ListenAddrs()[0], secret))
			caddytest.AssertLoadError(t, cfg, "caddyfile", "secret: ")
		})
	}
	if n := len(pooledProducers(t)); n != before {
		t.Errorf("%d producers after refused configs, want %d as before", n, before)
	}
}

// TestSecretNeverLogged runs accepted and refused requests with the secret
// and with near misses, through a config with debug logging and access
// logs, then looks for the secret in every log line, answer and in the
// running config.
func TestSecretNeverLogged(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "my-queue"))
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "my-queue", Err: kerr.TopicAuthorizationFailed, Count: 1})
	t.Setenv("QP_TEST_SECRET", testSecret)
	dir := t.TempDir()
	// A second secret, from a file, and a third for signed webhooks.
	fileSecret := strings.Repeat("f1e2d3c4", 8)
	hookSecret := strings.Repeat("9a8b7c6d", 8)
	t.Setenv("QP_HOOK_SECRET", hookSecret)
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(fileSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "caddy.log")
	accessLog := filepath.Join(dir, "access.log")
	startCaddy(t, logFile, fmt.Sprintf(`	log {
		output file %[1]s
	}
	handle /hook {
		queue_publish {
			brokers %[2]s %[3]s
			topic my-queue
			secret {env.QP_HOOK_SECRET}
			signature_header X-Hub-Signature-256
			max_size 100
		}
	}
	handle {
		queue_publish {
			brokers %[2]s %[3]s
			topic my-queue
			secret {env.QP_TEST_SECRET}
			secret {file.%[4]s}
			max_size 100
		}
	}`, accessLog, c.ListenAddrs()[0], closedPort(t), secretFile))

	var answers strings.Builder
	statuses := map[int]int{}
	for _, secret := range []string{testSecret, fileSecret} {
		for _, h := range []string{secret, "Bearer " + secret, secret[:32], secret + "x", "Bearer " + secret[1:]} {
			for _, body := range []string{`{}`, `nope`, strings.Repeat("x", 200)} {
				got := do(t, "POST", "/", auth(h), strings.NewReader(body))
				fmt.Fprintln(&answers, got.status, got.header, got.body)
				statuses[got.status]++
			}
		}
	}
	for _, sig := range []string{signature(hookSecret, `{}`), signature(hookSecret[:32], `{}`), signature(hookSecret, `{"other":1}`), "sha256=" + strings.Repeat("0", 64)} {
		got := do(t, "POST", "/hook", map[string]string{"X-Hub-Signature-256": sig}, strings.NewReader(`{}`))
		fmt.Fprintln(&answers, got.status, got.header, got.body)
		statuses[got.status]++
	}
	// 200s for both secrets and the signature (one 500 from the fault),
	// 400s, 403s and 413s.
	if statuses[200]+statuses[500] != 5 || statuses[400] != 4 || statuses[403] != 21 || statuses[413] != 4 {
		t.Errorf("statuses %v", statuses)
	}
	running := []byte(adminConfig(t))

	logs, _ := os.ReadFile(logFile)
	access, _ := os.ReadFile(accessLog)
	for _, placeholder := range []string{"{env.QP_TEST_SECRET}", "{file." + secretFile + "}", "{env.QP_HOOK_SECRET}"} {
		if !bytes.Contains(running, []byte(placeholder)) {
			t.Errorf("the running config should hold the placeholder %s: %s", placeholder, running)
		}
	}
	if !hasLogLine(logs, "error", "publish failed", "Topic Authorization Failed") || len(access) == 0 {
		t.Fatal("the test should produce error logs and access logs")
	}
	for name, text := range map[string][]byte{
		"Caddy's log": logs, "the access log": access,
		"the answers": []byte(answers.String()), "the running config": running,
	} {
		for _, secret := range []string{testSecret, fileSecret, hookSecret} {
			for _, part := range []string{secret, secret[:32], secret[1:]} {
				if bytes.Contains(text, []byte(part)) {
					t.Errorf("%s contains (part of) a secret", name)
				}
			}
		}
	}
	unloadChecksLeaks(t)
}

func TestAuthorized(t *testing.T) {
	h := handlerForUnitTest(10)
	for header, want := range map[string]bool{
		testSecret:                   true,
		"Bearer " + testSecret:       true,
		"BEARER " + testSecret:       true,
		"":                           false,
		"Bearer":                     false,
		"Bearer ":                    false,
		"Bearer  " + testSecret:      false,
		testSecret[:63]:              false,
		testSecret + "0":             false,
		" " + testSecret:             false,
		"Basic " + testSecret:        false,
		strings.ToUpper(testSecret):  false,
		"Bearer " + testSecret + " ": false,
		// HTTP Basic, as Confluent REST Proxy's clients send: the
		// password is the secret, with any user name.
		basic("any-user:" + testSecret):       true,
		basic(":" + testSecret):               true,
		"basic " + b64("u:"+testSecret):       true,
		basic("user:" + testSecret[:63]):      false,
		basic(testSecret):                     false, // no ':': no password
		basic(testSecret + ":"):               false,
		"Basic " + b64("u:"+testSecret) + "=": false, // not base64
		"Basic  " + b64("u:"+testSecret):      false,
	} {
		if got := h.authorized(header); got != want {
			t.Errorf("authorized(%q) = %v, want %v", header, got, want)
		}
	}
	// A secret written as a user:password pair is that pair in Basic
	// credentials, or the whole header.
	h = handlerWithSecrets("alice:s3cret")
	for header, want := range map[string]bool{
		basic("alice:s3cret"): true, "alice:s3cret": true, "Bearer alice:s3cret": true,
		basic("bob:s3cret"): false, basic("alice:s3cre"): false, basic("x:alice:s3cret"): true,
	} {
		if got := h.authorized(header); got != want {
			t.Errorf("secret alice:s3cret: authorized(%q) = %v, want %v", header, got, want)
		}
	}
	// A secret that itself starts with "Bearer " is accepted whole.
	h = handlerWithSecrets("Bearer xyz")
	if !h.authorized("Bearer xyz") || !h.authorized("Bearer Bearer xyz") || h.authorized("xyz") {
		t.Error("a secret starting with \"Bearer \" should match as sent, with or without a Bearer prefix")
	}
}

// basic is the Authorization header of HTTP Basic credentials.
func basic(pair string) string { return "Basic " + b64(pair) }

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func FuzzAuthorized(f *testing.F) {
	const secret = "s3cr3t-with-some-length"
	for _, s := range []string{secret, "Bearer " + secret, "bearer " + secret, "BEARER " + secret,
		secret[:5], secret + "x", "Bearer ", "Bearer", "", " " + secret, "Bearer  " + secret, "\x00", strings.Repeat("A", 10000),
		basic("u:" + secret), basic(secret), basic("u:" + secret[1:])} {
		f.Add(s)
	}
	h := handlerWithSecrets(secret, "other-secret")
	f.Fuzz(func(t *testing.T, header string) {
		want := header == secret || header == "other-secret"
		if len(header) > 7 && strings.EqualFold(header[:7], "Bearer ") {
			want = want || header[7:] == secret || header[7:] == "other-secret"
		}
		if len(header) > 6 && strings.EqualFold(header[:6], "Basic ") {
			if pair, err := base64.StdEncoding.DecodeString(header[6:]); err == nil {
				if _, password, ok := strings.Cut(string(pair), ":"); ok {
					want = want || password == secret || password == "other-secret" ||
						string(pair) == secret || string(pair) == "other-secret"
				}
			}
		}
		if got := h.authorized(header); got != want {
			t.Errorf("authorized(%q) = %v, want %v", header, got, want)
		}
	})
}

func FuzzSigned(f *testing.F) {
	const secret = "webhook-secret"
	sign := func(body string) string {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(body))
		return "sha256=" + hex.EncodeToString(mac.Sum(nil))
	}
	for _, body := range []string{`{}`, ``, `{"a":1}`, "\x00\xff"} {
		f.Add(sign(body), body)
		f.Add(strings.ToUpper(sign(body)), body)
		f.Add(sign(body)[:20], body)
		f.Add("sha1="+sign(body)[7:], body)
	}
	h := handlerWithSecrets(secret)
	f.Fuzz(func(t *testing.T, header, body string) {
		hexSig, ok := strings.CutPrefix(header, "sha256=")
		want := ok && strings.EqualFold(hexSig, sign(body)[len("sha256="):])
		if got := signedHeader(h, header, []byte(body)); got != want {
			t.Errorf("signed(%q, %q) = %v, want %v", header, body, got, want)
		}
	})
}
