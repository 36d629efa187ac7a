//go:build kafka

package queuepublish

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/test/apachekafka"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"
)

// TLS to the brokers: the server is verified against the CA given, and the
// mutual-TLS listener takes the client's certificate. A CA that did not
// sign the brokers' certificate, or no client certificate where one is
// required, is a TLS failure, answered 500 without waiting for the timeout.
func TestApacheKafkaTLS(t *testing.T) {
	c := realKafka(t)
	topic := realTopic(t, c, 1, nil)
	route := func(path string, l apachekafka.Listener, tls string) string {
		return fmt.Sprintf(`handle %s {
		queue_publish {
			brokers %s
			topic %s
			secret %s
			timeout 10s
			tls {
				%s
			}
		}
	}
	`, path, brokersOf(c, l), topic, testSecret, tls)
	}
	certs := c.Certs
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile,
		route("/verified", apachekafka.TLS, "ca "+certs.CA)+
			route("/mutual", apachekafka.MutualTLS, fmt.Sprintf("ca %s\n\t\t\t\tcert %s\n\t\t\t\tkey %s", certs.CA, certs.ClientCert, certs.ClientKey))+
			route("/other-ca", apachekafka.TLS, "ca "+certs.OtherCA)+
			route("/no-client-cert", apachekafka.MutualTLS, "ca "+certs.CA))

	for _, path := range []string{"/verified", "/mutual"} {
		if a := do(t, "POST", path, auth(testSecret), strings.NewReader(`{"via":"`+path+`"}`)); a.status != 200 {
			t.Errorf("%s: %d %s", path, a.status, a.body)
		}
	}
	for _, path := range []string{"/other-ca", "/no-client-cert"} {
		start := time.Now()
		a := do(t, "POST", path, auth(testSecret), strings.NewReader(`{"via":"`+path+`"}`))
		if want := `{"error":"TLS with the Kafka broker failed","outcome":"not_written"}`; a.status != 500 || a.body != want {
			t.Errorf("%s: %d %s, want 500 %s", path, a.status, a.body, want)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s was answered after %v: a TLS failure was retried toward the 10 s timeout", path, took)
		}
	}
	var values []string
	for _, r := range realRecords(t, c, topic) {
		values = append(values, string(r.Value))
	}
	if want := []string{`{"via":"/verified"}`, `{"via":"/mutual"}`}; strings.Join(values, " ") != strings.Join(want, " ") {
		t.Errorf("the topic holds %q, want %q", values, want)
	}
}

// Each SASL mechanism authenticates with the cluster's credentials; a
// wrong password is answered as the README says, at once, and logged as a
// credential problem.
func TestApacheKafkaSASL(t *testing.T) {
	c := realKafka(t)
	topic := realTopic(t, c, 1, nil)
	mechanisms := []string{"plain", "scram-sha-256", "scram-sha-512"}
	var site strings.Builder
	for _, m := range mechanisms {
		for _, password := range []string{apachekafka.Password, "wrong"} {
			fmt.Fprintf(&site, `handle /%s/%s {
		queue_publish {
			brokers %s
			topic %s
			secret %s
			timeout 10s
			sasl %s %s %s
		}
	}
	`, m, password, brokersOf(c, apachekafka.SASLPlaintext), topic, testSecret, m, apachekafka.User, password)
		}
	}
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, site.String())
	for _, m := range mechanisms {
		if a := do(t, "POST", "/"+m+"/"+apachekafka.Password, auth(testSecret), strings.NewReader(`{"mechanism":"`+m+`"}`)); a.status != 200 {
			t.Errorf("%s: %d %s", m, a.status, a.body)
		}
		start := time.Now()
		a := do(t, "POST", "/"+m+"/wrong", auth(testSecret), strings.NewReader(`{"mechanism":"`+m+`"}`))
		if want := `{"error":"Kafka authentication failed","outcome":"not_written"}`; a.status != 500 || a.body != want {
			t.Errorf("%s with a wrong password: %d %s, want 500 %s", m, a.status, a.body, want)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s with a wrong password was answered after %v, retried toward the 10 s timeout", m, took)
		}
	}
	recs := realRecords(t, c, topic)
	if len(recs) != len(mechanisms) {
		t.Errorf("the topic holds %d records, want one per mechanism", len(recs))
	}
	log, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Caddy's log:\n%s", log)
		}
	})
	// Kafka's own rejection, per mechanism (PLAIN's does not name itself).
	for _, rejection := range []string{"Invalid username or password", "mechanism SCRAM-SHA-256", "mechanism SCRAM-SHA-512"} {
		if !hasLogLine(log, "error", "the Kafka brokers refuse the connection: Kafka authentication failed; check the settings", rejection) ||
			!hasLogLine(log, "error", "publish failed", rejection) {
			t.Errorf("Caddy's log does not say, at error level, that Kafka refused the credentials (%s)", rejection)
		}
	}
	if strings.Contains(string(log), apachekafka.Password) {
		t.Error("Caddy's log holds the SASL password")
	}
}

// A topic the principal may describe but not write to is
// TOPIC_AUTHORIZATION_FAILED: 500 at once, after one attempt, not retried
// until the timeout. One it may not even describe is, to the producer,
// UNKNOWN_TOPIC_OR_PARTITION (Kafka answers so to kafka-go's metadata
// request): 500 unknown topic, with the log naming the missing ACL as a
// possible cause.
func TestApacheKafkaTopicNotAuthorized(t *testing.T) {
	c := realKafka(t)
	describable := realTopic(t, c, 1, nil)
	hidden := describable + "-hidden"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.CreateTopic(ctx, hidden, 1, nil); err != nil {
		t.Fatal(err)
	}
	principal := "User:" + apachekafka.User
	acls := []*kadm.ACLBuilder{
		kadm.NewACLs().Deny(principal).DenyHosts().Topics(describable, hidden).Operations(kadm.OpWrite),
		kadm.NewACLs().Allow(principal).AllowHosts().Topics(describable).Operations(kadm.OpDescribe),
	}
	for _, acl := range acls {
		if _, err := c.Admin().CreateACLs(ctx, acl); err != nil {
			t.Fatal(err)
		}
	}
	waitDenied(t, ctx, c, describable)
	waitDenied(t, ctx, c, hidden)
	waitHidden(t, ctx, c, hidden)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, fmt.Sprintf(`queue_publish /topics/* {
		brokers %s
		topic {http.request.uri.path.1}
		allow_topics %s %s
		secret %s
		timeout 10s
		sasl scram-sha-512 %s %s
	}`, brokersOf(c, apachekafka.SASLPlaintext), describable, hidden, testSecret, apachekafka.User, apachekafka.Password))
	for topic, want := range map[string]string{
		describable: `{"error":"not authorized to write to the topic","outcome":"not_written"}`,
		hidden:      `{"error":"unknown topic","outcome":"not_written"}`,
	} {
		start := time.Now()
		if a := do(t, "POST", "/topics/"+topic, auth(testSecret), strings.NewReader(`{}`)); a.status != 500 || a.body != want {
			t.Errorf("%s: %d %s, want 500 %s", topic, a.status, a.body, want)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s answered after %v: retried toward the 10 s timeout", topic, took)
		}
		if recs := realRecords(t, c, topic); len(recs) != 0 {
			t.Errorf("%s holds %d records", topic, len(recs))
		}
	}
	log, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if !hasLogLine(log, "error", "publish failed", `"attempts":1`) || !hasLogLine(log, "error", "publish failed", "Topic Authorization Failed") {
		t.Errorf("Caddy's log does not show TOPIC_AUTHORIZATION_FAILED after one attempt:\n%s", log)
	}
	if !hasLogLine(log, "error", "publish failed", "may not describe it") {
		t.Errorf("Caddy's log does not name a missing Describe ACL as a cause of the unknown topic:\n%s", log)
	}
}

// waitDenied waits until the leader of topic refuses User's writes: ACLs
// reach the brokers from the controller a moment after they are created.
func waitDenied(t *testing.T, ctx context.Context, c *apachekafka.Cluster, topic string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers(apachekafka.SASLPlaintext)...),
		kgo.SASL(plain.Auth{User: apachekafka.User, Pass: apachekafka.Password}.AsMechanism()),
		kgo.RecordRetries(0), kgo.ProducerLinger(0))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for {
		err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("probe")}).FirstErr()
		if errors.Is(err, kerr.TopicAuthorizationFailed) {
			return
		}
		if err == nil {
			t.Fatalf("the ACL denying %s let a record through", apachekafka.User)
		}
		if ctx.Err() != nil {
			t.Fatalf("the ACL was not applied: %v", err)
		}
	}
}

// waitHidden waits until every node keeps topic out of User's metadata:
// ACLs reach each broker from the controller in its own time, and the
// producer asks whichever answers first.
func waitHidden(t *testing.T, ctx context.Context, c *apachekafka.Cluster, topic string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers(apachekafka.SASLPlaintext)...),
		kgo.SASL(plain.Auth{User: apachekafka.User, Pass: apachekafka.Password}.AsMechanism()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, n := range c.Nodes() {
		for {
			req := kmsg.NewPtrMetadataRequest()
			rt := kmsg.NewMetadataRequestTopic()
			rt.Topic = kmsg.StringPtr(topic)
			req.Topics = append(req.Topics, rt)
			resp, err := cl.Broker(n.ID).Request(ctx, req)
			if err == nil {
				if topics := resp.(*kmsg.MetadataResponse).Topics; len(topics) == 1 && topics[0].ErrorCode != 0 {
					break
				}
			}
			if ctx.Err() != nil {
				t.Fatalf("node %d still shows %s to %s: %v", n.ID, topic, apachekafka.User, err)
			}
			time.Sleep(50 * time.Millisecond) // polls the node; nothing waits on this pace
		}
	}
}
