//go:build oidc

package producer

// The token source against a real issuer, Ory Hydra (internal/hydratest):
//
//	go test -tags oidc -run Token ./internal/producer

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/hydratest"
	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"go.uber.org/zap/zaptest/observer"
)

// hydraTokens is a started token source of a client of a new Hydra whose
// tokens live lifetime, with its log; both end with the test.
func hydraTokens(t *testing.T, lifetime time.Duration) (*hydratest.Server, *tokenSource, *observer.ObservedLogs) {
	t.Helper()
	hydra := hydratest.Start(t)
	hydra.CreateClient(t, "producer", "producer-secret-0123456789", []string{"kafka"}, "produce")
	hydra.SetTokenLifetime(t, "producer", lifetime)
	logger, logs := kafkatest.ObservedLogger()
	ctx, cancel := context.WithCancel(context.Background())
	s := newTokenSource(ctx, &OAuth{TokenURL: hydra.TokenURL, ClientID: "producer", ClientSecret: "producer-secret-0123456789",
		Scope: "produce", Audience: "kafka"}, logger)
	s.start()
	t.Cleanup(func() {
		cancel()
		s.close()
	})
	return hydra, s, logs
}

// fetch is a token's fetch as logged: when its request started, when it
// was logged (once the token came), and when the token expires.
type fetch struct{ started, logged, expires time.Time }

func fetched(logs *observer.ObservedLogs) []fetch {
	var fs []fetch
	for _, e := range logs.FilterMessage("OAuth token for Kafka fetched").All() {
		fields := e.ContextMap()
		expires, _ := fields["expires"].(time.Time)
		lifetime, _ := fields["lifetime"].(time.Duration)
		fs = append(fs, fetch{started: expires.Add(-lifetime), logged: e.Time, expires: expires})
	}
	return fs
}

// A token is fetched when the source starts and again at 80% of its
// lifetime, before it expires; meanwhile every exchange gets the token at
// hand, and after the refresh the new one.
func TestTokenRefreshedBeforeExpiry(t *testing.T) {
	kafkatest.NoLeaks(t)
	const lifetime = 4 * time.Second
	_, s, logs := hydraTokens(t, lifetime)
	first, err := s.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if exp := jwtExpiry(first); time.Until(exp) < lifetime/2 {
		t.Fatalf("Hydra's token expires at %v, not %v from now", exp, lifetime)
	}
	kafkatest.WaitFor(t, 2*lifetime, func() bool { return len(fetched(logs)) >= 2 })
	fs := fetched(logs)
	life := fs[0].expires.Sub(fs[0].started)
	if at := fs[1].started.Sub(fs[0].started); at < life*3/4 || at > life*85/100 {
		t.Errorf("the second token was asked for %v into the first's life of %v, want at 80%%", at, life)
	}
	if !fs[1].logged.Before(fs[0].expires) {
		t.Errorf("the second token came at %v, after the first expired at %v", fs[1].logged, fs[0].expires)
	}
	second, err := s.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if second == first {
		t.Error("after the refresh, an exchange still gets the first token")
	}
}

// With the issuer gone, a cached token that is still valid serves every
// exchange at once while the refresh fails and is retried; once it
// expires, an exchange fails, retriably, and the log says why.
func TestTokenServesWhileRefreshFails(t *testing.T) {
	kafkatest.NoLeaks(t)
	const lifetime = 10 * time.Second
	hydra, s, logs := hydraTokens(t, lifetime)
	token, err := s.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	expiry := jwtExpiry(token)
	hydra.Stop()
	// An exchange must not wait for the issuer: with a context that
	// has already ended, only a token at hand can be had.
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if got, err := s.get(ended); err != nil || got != token {
		t.Fatalf("with the issuer down and a valid token cached: %v", err)
	}
	kafkatest.WaitFor(t, lifetime, func() bool {
		return logs.FilterMessage("refreshing the OAuth token for Kafka failed; the current one serves until it expires").Len() > 0
	})
	if time.Until(expiry) > time.Second { // the token's last second is not used
		if got, err := s.get(ended); err != nil || got != token {
			t.Fatalf("a failed refresh, %v before the token expires: %v", time.Until(expiry), err)
		}
	} else {
		t.Fatalf("the refresh failed only %v before the token expired, not at 80%% of its life", time.Until(expiry))
	}
	kafkatest.WaitFor(t, lifetime, func() bool {
		_, err = s.get(context.Background())
		return err != nil
	})
	if time.Now().Before(expiry.Add(-2 * time.Second)) {
		t.Errorf("an exchange failed %v before the token expired", time.Until(expiry))
	}
	var terr *tokenError
	if !errors.As(err, &terr) || !terr.retriable || classify(err).Outcome != OutcomeRetry {
		t.Errorf("with no valid token and the issuer down: %v, want a retriable failure", err)
	}
	kafkatest.WaitFor(t, 5*time.Second, func() bool {
		return logs.FilterMessageSnippet("no OAuth token for Kafka: connections to the brokers fail").Len() > 0
	})
}
