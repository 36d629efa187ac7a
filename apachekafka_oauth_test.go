//go:build kafka

package queuepublish

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/test/apachekafka"
)

// The shared cluster's OAuth listener (apachekafka.OAuth) takes tokens of
// the shared Hydra for this audience, in SASL sessions of at most
// kafkaReauthMs: connections.max.reauth.ms, short so that a test sees
// sessions end.
const (
	kafkaAudience = "kafka-cluster"
	kafkaReauthMs = 10000
)

// oauthClient registers a client of the shared Hydra, for the test, that
// may ask for audiences and whose tokens live lifetime; it returns the
// client's ID and secret.
func oauthClient(t *testing.T, lifetime time.Duration, audiences ...string) (id, secret string) {
	t.Helper()
	suffix := make([]byte, 4)
	rand.Read(suffix)
	id = strings.NewReplacer("/", ".", "#", ".").Replace(t.Name()) + "-" + hex.EncodeToString(suffix)
	key := make([]byte, 24)
	rand.Read(key)
	secret = hex.EncodeToString(key)
	kafkaHydra.CreateClient(t, id, secret, audiences, "produce")
	kafkaHydra.SetTokenLifetime(t, id, lifetime)
	return id, secret
}

// saslOAuthBearer is the sasl oauthbearer option of a client whose secret
// is in the environment variable secretEnv.
func saslOAuthBearer(id, secretEnv, audience string) string {
	return fmt.Sprintf(`sasl oauthbearer {
			token_url %s
			client_id %s
			client_secret {env.%s}
			scope produce
			audience %s
		}`, kafkaHydra.TokenURL, id, secretEnv, audience)
}

// logLines counts the lines of Caddy's JSON log at level with message
// msg that hold detail.
func logLines(log []byte, level, msg, detail string) int {
	n := 0
	for line := range bytes.Lines(log) {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(line, &entry) == nil && entry.Level == level && entry.Msg == msg && bytes.Contains(line, []byte(detail)) {
			n++
		}
	}
	return n
}

// Publishing under load through sasl oauthbearer, to the listener that
// validates Hydra's tokens against its keys, with tokens of 15 s and SASL
// sessions of at most 10 s: the load goes on until the producer has
// refreshed its token twice and renewed sessions in place (KIP-368's
// re-authentication, which the broker answers with the session's new
// lifetime) three times, each counted in Caddy's debug log. Every request
// is answered 200, every record is in the topic, once, and nothing is
// logged at warn or error level: neither a token's refresh nor a
// session's end cost a request, nor a connection.
func TestApacheKafkaOAuth(t *testing.T) {
	c := realKafka(t)
	topic := realTopic(t, c, 3, nil)
	id, secret := oauthClient(t, 15*time.Second, kafkaAudience)
	t.Setenv("QP_OAUTH_CLIENT_SECRET", secret)
	logFile := publishVia(t, c, apachekafka.OAuth, topic, "timeout 10s", saslOAuthBearer(id, "QP_OAUTH_CLIENT_SECRET", kafkaAudience))
	load := startClientLoad(t, "/", 8)

	var log []byte
	counts := func() (fetched, reauthenticated, reconnected int) {
		log, _ = os.ReadFile(logFile)
		return logLines(log, "debug", "OAuth token for Kafka fetched", ""),
			logLines(log, "debug", "Kafka SASL session renewed", `"how":"reauthenticated"`),
			logLines(log, "debug", "Kafka SASL session renewed", `"how":"reconnected`)
	}
	start := time.Now()
	for {
		fetched, reauthenticated, _ := counts()
		if fetched >= 3 && reauthenticated >= 3 {
			break
		}
		if time.Since(start) > 90*time.Second {
			t.Fatalf("after %v of load, %d tokens fetched and %d sessions renewed in place, want 3 and 3", time.Since(start), fetched, reauthenticated)
		}
		time.Sleep(250 * time.Millisecond) // polls the log; nothing waits on this pace
	}
	load.finish()
	took := time.Since(start)
	tl := load.count(t, c, topic)
	fetched, reauthenticated, reconnected := counts()
	t.Logf("%v of load: %v; %d tokens fetched (%d refreshes), %d sessions renewed in place, %d on a new connection",
		took.Round(time.Second), tl, fetched, fetched-1, reauthenticated, reconnected)
	if tl.requests == 0 || tl.acknowledged != tl.requests || tl.lost != 0 || tl.duplicated != 0 || tl.stored != tl.requests {
		t.Errorf("every request must be answered 200 and stored once: %v", tl)
	}
	// A connection closed under a request, a failed renewal or refresh:
	// each is logged at warn or error level.
	for line := range bytes.Lines(log) {
		var entry struct{ Level, Logger string }
		if json.Unmarshal(line, &entry) == nil && strings.Contains(entry.Logger, "queue_publish") && (entry.Level == "warn" || entry.Level == "error") {
			t.Errorf("Caddy logged: %s", line)
		}
	}
	if bytes.Contains(log, []byte(secret)) {
		t.Error("Caddy's log holds the client secret")
	}
}

// The broker refuses a token without its audience, and Hydra refuses a
// wrong client secret: each is answered 500 Kafka authentication failed
// at once, not retried toward the timeout, and logged with its cause.
func TestApacheKafkaOAuthRefused(t *testing.T) {
	c := realKafka(t)
	topic := realTopic(t, c, 1, nil)
	other, otherSecret := oauthClient(t, time.Minute, "another-service")
	id, _ := oauthClient(t, time.Minute, kafkaAudience)
	t.Setenv("QP_OAUTH_OTHER_SECRET", otherSecret)
	t.Setenv("QP_OAUTH_WRONG_SECRET", "not-the-secret-of-the-client")
	route := func(path, sasl string) string {
		return fmt.Sprintf(`handle %s {
		queue_publish {
			brokers %s
			topic %s
			secret %s
			timeout 10s
			%s
		}
	}
	`, path, brokersOf(c, apachekafka.OAuth), topic, testSecret, sasl)
	}
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, route("/other-audience", saslOAuthBearer(other, "QP_OAUTH_OTHER_SECRET", "another-service"))+
		route("/wrong-secret", saslOAuthBearer(id, "QP_OAUTH_WRONG_SECRET", kafkaAudience)))
	for _, path := range []string{"/other-audience", "/wrong-secret"} {
		start := time.Now()
		a := do(t, "POST", path, auth(testSecret), strings.NewReader(`{}`))
		if want := `{"error":"Kafka authentication failed","outcome":"not_written"}`; a.status != 500 || a.body != want {
			t.Errorf("%s: %d %s, want 500 %s", path, a.status, a.body, want)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s was answered after %v, retried toward the 10 s timeout", path, took)
		}
	}
	log, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if !hasLogLine(log, "error", "the Kafka brokers refuse the connection: Kafka authentication failed; check the settings", "the broker refused the OAuth token (status invalid_token)") {
		t.Error("Caddy's log does not say that the broker refused the token")
	}
	if !hasLogLine(log, "error", "no OAuth token for Kafka: connections to the brokers fail until the token endpoint answers", "401 Unauthorized: invalid_client") {
		t.Error("Caddy's log does not say that Hydra refused the client")
	}
	if recs := realRecords(t, c, topic); len(recs) != 0 {
		t.Errorf("the topic holds %d records", len(recs))
	}
}
