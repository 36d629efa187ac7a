package queuepublish

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/twmb/franz-go/pkg/kfake"
)

func signature(secret, body string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// handlerWithSecrets is a handler as Provision leaves it with these
// secrets, without a producer.
func handlerWithSecrets(secrets ...string) *Handler {
	h := &Handler{}
	for _, s := range secrets {
		h.secrets = append(h.secrets, []byte(s))
		h.secretDigests = append(h.secretDigests, sha256.Sum256([]byte(s)))
	}
	return h
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
		if got := calls[len(calls)-1]; got != 2*len(h.secretDigests) {
			t.Errorf("%q: %d digest comparisons, want %d", header, got, 2*len(h.secretDigests))
		}
	}
	body := []byte(`{}`)
	for _, header := range []string{signature("first-secret", string(body)), signature("third-secret", string(body)), signature("nope", string(body))} {
		calls = append(calls, 0)
		signedHeader(h, header, body)
		if got := calls[len(calls)-1]; got != len(h.secrets) {
			t.Errorf("signature: %d comparisons, want %d", got, len(h.secrets))
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
	return parseSignature(header, &sig) && h.signed(&sig, body)
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
			{Brokers: []string{"localhost:1"}, Topic: "t", Secrets: []string{tt.value}},
			{Brokers: []string{"localhost:1"}, Topic: "t", Secrets: []string{"ok"}, SASL: &BrokerSASL{Mechanism: "plain", Username: "u", Password: tt.value}},
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
