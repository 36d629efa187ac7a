package queuepublish

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"time"
)

// A token lets a page publish to one topic until it expires without the
// secret in the page: an application's server mints it with the secret
// (MintToken) and puts it in the page, which sends it in the query
// (?token=...), as navigator.sendBeacon cannot set Authorization. It is
// "<expiry, Unix seconds>.<hex HMAC-SHA256 of the topic and the expiry,
// keyed with the secret>".

// tokenContext keeps a token's MAC from standing for any other HMAC made
// with the same secret, such as a webhook signature.
const tokenContext = "queue_publish token\x00"

// MintToken returns a token for publishing to topic until expiry, signed
// with secret (one of the handler's secrets, as resolved).
func MintToken(secret, topic string, expiry time.Time) string {
	exp := strconv.FormatInt(expiry.Unix(), 10)
	mac := tokenMAC([]byte(secret), topic, exp)
	return exp + "." + hex.EncodeToString(mac[:])
}

func tokenMAC(secret []byte, topic, expiry string) [sha256.Size]byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(tokenContext))
	mac.Write([]byte(topic))
	mac.Write([]byte{0})
	mac.Write([]byte(expiry))
	var sum [sha256.Size]byte
	mac.Sum(sum[:0])
	return sum
}

// tokens take a token, for the request's topic, in the query.
type tokens struct {
	secrets  *secrets
	maxAge   time.Duration
	topicFor func(*exchange) (string, *rejection)
}

func (tokens) presented(req *request) bool { return req.hasToken }

func (t tokens) authenticate(x *exchange) *rejection {
	x.req.identity = identity{scheme: schemeToken}
	topic, ref := t.topicFor(x)
	if ref != nil {
		return rejectedAuth
	}
	n, ok := t.valid(x.req.token, topic, time.Now())
	x.req.identity.secret, x.req.identity.name = n, t.secrets.name(n)
	if !ok {
		return rejectedAuth
	}
	return nil
}

func (tokens) verify(*exchange, []byte) bool { return true }

// valid checks a token for topic at now: not expired, expiring within
// token_max_age, and signed with one of the secrets. Every secret is
// checked, in constant time, whatever matched.
func (t tokens) valid(token, topic string, now time.Time) (int, bool) {
	exp, hexMAC, ok := strings.Cut(token, ".")
	if !ok || len(hexMAC) != 2*sha256.Size {
		return 0, false
	}
	expiry, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || strconv.FormatInt(expiry, 10) != exp || now.Unix() >= expiry ||
		expiry > now.Add(t.maxAge).Unix() {
		return 0, false // expired, or valid for longer than token_max_age
	}
	var sent [sha256.Size]byte
	if _, err := hex.Decode(sent[:], stringBytes(hexMAC)); err != nil {
		return 0, false
	}
	var m matcher
	for i, secret := range t.secrets.values {
		want := tokenMAC(secret, topic, exp)
		m.compare(i, want[:], sent[:])
	}
	return m.result()
}
