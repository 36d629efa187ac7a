package queuepublish

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
)

// authenticated checks a request's Authorization header or, without one
// and with token_max_age set, the token in its query, which is valid for
// the request's topic only.
func (h *Handler) authenticated(x *exchange, r *http.Request) bool {
	header := r.Header.Get("Authorization")
	if header != "" || h.TokenMaxAge == 0 || !r.URL.Query().Has("token") {
		return h.authorized(header)
	}
	topic, ref := h.requestTopic(x, r)
	x.byToken = ref == nil && h.tokenValid(r.URL.Query().Get("token"), topic, time.Now())
	return x.byToken
}

// authorized compares the Authorization header with every secret: whole,
// without a "Bearer " prefix and, for HTTP Basic credentials (which
// Confluent REST Proxy's clients send), as the "user:password" pair and as
// the password alone. It compares SHA-256 digests in constant time and
// checks every secret without stopping at a match, so the time taken shows
// neither which secret matched nor any secret's content or length.
func (h *Handler) authorized(header string) bool {
	token := header
	if len(header) > 7 && strings.EqualFold(header[:7], "Bearer ") {
		token = header[7:]
	}
	var sent [4][sha256.Size]byte
	sent[0], sent[1] = sha256.Sum256(stringBytes(header)), sha256.Sum256(stringBytes(token))
	n := 2
	if pair, password, ok := basicCredentials(header); ok {
		sent[2], sent[3] = sha256.Sum256(pair), sha256.Sum256(password)
		n = 4
	}
	match := 0
	for i := range h.secretDigests {
		for j := range n {
			match |= compareDigests(sent[j][:], h.secretDigests[i][:])
		}
	}
	return match == 1
}

// basicCredentials decodes an HTTP Basic Authorization header into its
// "user:password" pair and the password; false if it is not one.
func basicCredentials(header string) (pair, password []byte, ok bool) {
	if len(header) <= 6 || !strings.EqualFold(header[:6], "Basic ") {
		return nil, nil, false
	}
	pair, err := base64.StdEncoding.DecodeString(header[6:])
	if err != nil {
		return nil, nil, false
	}
	_, password, ok = bytes.Cut(pair, []byte{':'})
	return pair, password, ok
}

// parseSignature reads a webhook signature header, "sha256=" and the hex
// HMAC-SHA256 of the body, into sig. It says nothing of the secrets, so a
// malformed header is refused before the body is read.
func parseSignature(header string, sig *[sha256.Size]byte) bool {
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	if !ok || len(hexSig) != 2*sha256.Size {
		return false
	}
	_, err := hex.Decode(sig[:], stringBytes(hexSig))
	return err == nil
}

// validSignatureHeader checks that a request can carry the header that
// signature_header names: otherwise every request would be refused 403.
// The name must be an HTTP field name (RFC 9110's token), and not one
// that net/http takes out of a request's headers (it keeps them apart,
// as Request.Host and Request.TransferEncoding).
func validSignatureHeader(name string) error {
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", c)) {
			return fmt.Errorf("%q holds %q, which no HTTP header name holds", name, c)
		}
	}
	switch http.CanonicalHeaderKey(name) {
	case "Host", "Transfer-Encoding":
		return fmt.Errorf("%q never reaches the handler as a header", name)
	}
	return nil
}

// signed checks a parsed webhook signature against the HMAC of the body
// with every secret, in constant time.
func (h *Handler) signed(sig *[sha256.Size]byte, body []byte) bool {
	match := 0
	for _, secret := range h.secrets {
		mac := hmac.New(sha256.New, secret)
		mac.Write(body)
		match |= compareDigests(mac.Sum(nil), sig[:])
	}
	return match == 1
}

// resolveSecret resolves the placeholders of a secret's configured value.
// Its error names what failed only when the value is one {env.*} or
// {file.*} placeholder and nothing else: the name of a variable or file is
// no secret, but in any other value, the text the replacer would quote (an
// unrecognized "{...}") may be part of the secret itself.
func resolveSecret(repl *caddy.Replacer, value string) (string, error) {
	secret, err := repl.ReplaceOrErr(value, true, true)
	if err == nil || isSecretPlaceholder(value) {
		return secret, err
	}
	return "", errors.New(`holds an unknown or empty placeholder; give the secret as {env.NAME} or {file.PATH}, or write a literal brace as \{ or \}`)
}

// isSecretPlaceholder reports whether value is one {env.*} or {file.*}
// placeholder.
func isSecretPlaceholder(value string) bool {
	if len(value) < 2 || value[0] != '{' || value[len(value)-1] != '}' {
		return false
	}
	inner := value[1 : len(value)-1]
	if strings.ContainsAny(inner, "{}\\") {
		return false
	}
	return strings.HasPrefix(inner, "env.") || strings.HasPrefix(inner, "file.")
}

// compareDigests compares two digests in constant time. Tests replace it
// to check which comparisons are made.
var compareDigests = subtle.ConstantTimeCompare

// stringBytes is s as a byte slice without a copy; the slice must not be
// written to. The hash and hex functions only read it.
func stringBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// provisionSecrets resolves each secret's placeholders and keeps it, and
// its digest for the comparison of an Authorization header.
func (h *Handler) provisionSecrets(repl *caddy.Replacer) error {
	h.secrets, h.secretDigests = nil, nil
	for i, s := range h.Secrets {
		field := "secret"
		if len(h.Secrets) > 1 {
			field = fmt.Sprintf("secret %d", i+1)
		}
		secret, err := resolveSecret(repl, s)
		if err != nil {
			return fmt.Errorf("%s: %v", field, err)
		}
		if secret == "" {
			return fmt.Errorf("%s: resolves to an empty value", field)
		}
		h.secrets = append(h.secrets, []byte(secret))
		h.secretDigests = append(h.secretDigests, sha256.Sum256([]byte(secret)))
	}
	return nil
}
