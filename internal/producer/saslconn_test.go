package producer

import (
	"fmt"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"
)

// A broker whose SASL sessions last a second (connections.max.reauth.ms)
// closes a connection used after its session ended; records sent one
// after another for several lifetimes are each acknowledged, with no
// connection closed under a request, because each session is renewed in
// place before it ends (KIP-368's re-authentication), and one left idle
// past the time for that is replaced by a new connection before the next
// request. With SCRAM, whose exchange takes two round trips, too.
func TestSASLSessionRenewed(t *testing.T) {
	for _, mechanism := range []string{"plain", "scram-sha-256"} {
		t.Run(mechanism, func(t *testing.T) {
			kafkatest.NoLeaks(t)
			const lifetime = time.Second
			sessions, opts := kafkatest.ExpireSASLSessions(lifetime)
			c := kafkatest.NewCluster(t, append(opts, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"), kfake.EnableSASL(),
				kfake.Superuser("PLAIN", "producer", "producer-pass"), kfake.Superuser("SCRAM-SHA-256", "producer", "producer-pass"))...)
			logger, logs := kafkatest.ObservedLogger()
			p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll,
				SASL: &SASL{Mechanism: mechanism, Username: "producer", Password: "producer-pass"}}, logger)
			defer func() { <-p.Close() }()
			renewed := func(how string) int {
				return logs.FilterMessage("Kafka SASL session renewed").FilterField(zap.String("how", how)).Len()
			}

			// Records one after another, for three lifetimes and until
			// three sessions were renewed, or ten lifetimes.
			sent := 0
			start := time.Now()
			for time.Since(start) < 3*lifetime || renewed("reauthenticated") < 3 && time.Since(start) < 10*lifetime {
				if _, perr := sendOne(p, "events", fmt.Appendf(nil, `{"n":%d}`, sent), 2*time.Second); perr != nil {
					t.Fatalf("record %d: %v", sent, perr)
				}
				sent++
			}
			if n := renewed("reauthenticated"); n < 3 {
				t.Errorf("%d sessions renewed in place over %v of steady requests, want 3 or more", n, time.Since(start))
			}
			if n := sessions.Reauthentications.Load(); n < 3 {
				t.Errorf("the broker saw %d re-authentications, want 3 or more", n)
			}

			// The connection idles past 95% of its session, the last
			// moment for a re-authentication: what is tested is the
			// session's age, which only time makes.
			time.Sleep(lifetime)
			if _, perr := sendOne(p, "events", []byte(`{"after":"idle"}`), 2*time.Second); perr != nil {
				t.Fatalf("after an idle session: %v", perr)
			}
			if n := renewed("reconnected"); n < 1 {
				t.Errorf("a session left to end was not replaced by a new connection")
			}
			if n := sessions.Expired.Load(); n != 0 {
				t.Errorf("the broker closed %d connections used after their session ended", n)
			}
			if n := logs.FilterMessageSnippet("failed").Len(); n != 0 {
				t.Errorf("%d failures logged: %v", n, logs.FilterMessageSnippet("failed").All())
			}
			if got := c.PartitionInfo("events", 0).HighWatermark; got != int64(sent+1) {
				t.Errorf("the topic holds %d records, want %d", got, sent+1)
			}
		})
	}
}
