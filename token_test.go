package queuepublish

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/twmb/franz-go/pkg/kfake"
)

func TestTokenValid(t *testing.T) {
	h := handlerWithSecrets("old-secret", "new-secret")
	h.TokenMaxAge = caddy.Duration(time.Hour)
	now := time.Unix(1_800_000_000, 0)
	later := now.Add(time.Minute)
	good := MintToken("new-secret", "events", later)
	exp, mac, _ := strings.Cut(good, ".")
	for name, tt := range map[string]struct {
		token, topic string
		want         bool
	}{
		"valid":                 {good, "events", true},
		"with the older secret": {MintToken("old-secret", "events", later), "events", true},
		"for another topic":     {good, "other", false},
		"of another secret":     {MintToken("not-a-secret", "events", later), "events", false},
		"expired":               {MintToken("new-secret", "events", now), "events", false},
		"expiry changed":        {strconv.FormatInt(later.Unix()+3600, 10) + "." + mac, "events", false},
		"expiry with a plus":    {"+" + exp + "." + mac, "events", false},
		"expiry with a zero":    {"0" + exp + "." + mac, "events", false},
		"MAC cut short":         {exp + "." + mac[:62], "events", false},
		"MAC not hex":           {exp + "." + strings.Repeat("z", 64), "events", false},
		"no dot":                {exp + mac, "events", false},
		"empty":                 {"", "events", false},
		"the secret itself":     {"new-secret", "events", false},
		"a digit moved from the topic into the expiry": {
			strings.Replace(MintToken("new-secret", "events1", later), exp+".", "1"+exp+".", 1), "events", false},
		"valid for longer than token_max_age": {MintToken("new-secret", "events", now.Add(61*time.Minute)), "events", false},
		"valid for token_max_age":             {MintToken("new-secret", "events", now.Add(time.Hour)), "events", true},
		"MAC in capitals":                     {exp + "." + strings.ToUpper(mac), "events", true},
		"far in the past expiry":              {"0." + mac, "events", false},
	} {
		if got := tokenValid(h, tt.token, tt.topic, now); got != tt.want {
			t.Errorf("%s: tokenValid(%q, %q) = %v, want %v", name, tt.token, tt.topic, got, tt.want)
		}
	}
}

// A page publishes with a token in the query instead of the secret: for
// its topic, until it expires.
func TestTokenThroughCaddy(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events", "clicks"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	handle /t/* {
		queue_publish {
			brokers %[1]s
			topic {http.request.uri.path.1}
			allow_topics events clicks
			secret {env.QP_TEST_SECRET}
			token_max_age 10m
			idempotency_window 1m
		}
	}
	handle /plain {
		queue_publish {
			brokers %[1]s
			topic events
			secret {env.QP_TEST_SECRET}
		}
	}
	handle /signed {
		queue_publish {
			brokers %[1]s
			topic events
			secret {env.QP_TEST_SECRET}
			signature_header X-Hub-Signature-256
		}
	}`, c.ListenAddrs()[0]))

	token := MintToken(testSecret, "events", time.Now().Add(time.Minute))
	for _, tt := range []struct {
		name, path string
		header     map[string]string
		status     int
	}{
		{"a token for the topic", "/t/events?token=" + token, nil, 200},
		{"the token for another topic", "/t/clicks?token=" + token, nil, 403},
		{"an expired token", "/t/events?token=" + MintToken(testSecret, "events", time.Now().Add(-time.Second)), nil, 403},
		{"a wrong Authorization beside a valid token", "/t/events?token=" + token, map[string]string{"Authorization": "wrong"}, 403},
		{"a token where a signature is required", "/signed?token=" + token, nil, 403},
		{"a token where tokens are not taken", "/plain?token=" + token, nil, 403},
		{"a token valid for longer than token_max_age", "/t/events?token=" + MintToken(testSecret, "events", time.Now().Add(time.Hour)), nil, 403},
	} {
		got := do(t, "POST", tt.path, tt.header, strings.NewReader(`{"beacon":true}`))
		if got.status != tt.status {
			t.Errorf("%s: %d %s, want %d", tt.name, got.status, got.body, tt.status)
		}
	}
	if n := len(stored(t, c, "events")); n != 1 {
		t.Errorf("events holds %d records, want the one sent with a valid token", n)
	}

	// A visitor with a page's token cannot claim an Idempotency-Key that
	// a client with the secret uses: each has keys of its own.
	byToken := do(t, "POST", "/t/events?token="+token, map[string]string{"Idempotency-Key": "order-1"}, strings.NewReader(`{"from":"page"}`))
	bySecret := do(t, "POST", "/t/events", map[string]string{"Authorization": testSecret, "Idempotency-Key": "order-1"}, strings.NewReader(`{"from":"server"}`))
	if byToken.status != 200 || bySecret.status != 200 || bySecret.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("the same key by a token then by the secret: %d %s, then %d %s (replayed %q); want two records",
			byToken.status, byToken.body, bySecret.status, bySecret.body, bySecret.header.Get("Idempotent-Replayed"))
	}
	if _, ok := recordsByValue(t, c, "events")[`{"from":"server"}`]; !ok {
		t.Error("the request with the secret was not stored")
	}
}

// tokenValid checks a token as a request's is checked.
func tokenValid(h *Handler, token, topic string, now time.Time) bool {
	_, ok := tokens{secrets: &h.secrets, maxAge: time.Duration(h.TokenMaxAge)}.valid(token, topic, now)
	return ok
}
