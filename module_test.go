package queuepublish

import (
	"crypto/sha256"
	"encoding/json"
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

// idempotent on makes a cluster that refuses the idempotent producer (here
// without IDEMPOTENT_WRITE) a load error, naming it, and keeps no
// producer; unset, the same cluster is produced to, without idempotence.
func TestIdempotentOnRefusedByTheClusterFailsTheLoad(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.InitProducerID}, Err: kerr.ClusterAuthorizationFailed, Count: -1})
	before := len(pooledProducers(t))
	t.Setenv("QP_TEST_SECRET", testSecret)
	site := func(extra string) string {
		return fmt.Sprintf(`	queue_publish {
		brokers %s
		topic events
		secret {env.QP_TEST_SECRET}
		%s
	}`, c.ListenAddrs()[0], extra)
	}
	caddytest.AssertLoadError(t, caddyConfig(filepath.Join(t.TempDir(), "caddy.log"), site("idempotent on")), "caddyfile",
		"idempotent on: the Kafka cluster refuses the idempotent producer")
	if n := len(pooledProducers(t)); n != before {
		t.Errorf("%d producers after the refused config, want %d as before", n, before)
	}
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), site(""))
	if got := do(t, "POST", "/", auth(testSecret), strings.NewReader(`{"a":1}`)); got.status != 200 {
		t.Errorf("without idempotent on: %d %s, want 200", got.status, got.body)
	}
	unloadChecksLeaks(t)
}

// TestStartsWhileBrokersAreDown checks that Caddy starts while no broker is
// reachable, answers 503 and warns, then serves once a broker comes up.
func TestStartsWhileBrokersAreDown(t *testing.T) {
	addr := closedPort(t)
	t.Setenv("QP_TEST_SECRET", testSecret)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, fmt.Sprintf(`	queue_publish {
		brokers %s
		topic my-queue
		secret {env.QP_TEST_SECRET}
	}`, addr))

	got := do(t, "POST", "/", auth(testSecret), strings.NewReader(seedBody))
	if got.status != 503 || got.header.Get("Retry-After") == "" {
		t.Fatalf("with no broker: %d %s, want 503 with Retry-After", got.status, got.body)
	}
	waitFor(t, 5*time.Second, func() bool {
		logs, _ := os.ReadFile(logFile)
		return hasLogLine(logs, "warn", "no Kafka broker reachable at start; requests are answered 503 until one is", addr)
	})

	var port int
	fmt.Sscanf(addr[strings.LastIndexByte(addr, ':')+1:], "%d", &port)
	c := newCluster(t, kfake.Ports(port), kfake.SeedTopics(1, "my-queue"))
	waitFor(t, 10*time.Second, func() bool {
		return do(t, "POST", "/", auth(testSecret), strings.NewReader(seedBody)).status == 200
	})
	if got := stored(t, c, "my-queue"); len(got) != 1 || string(got[0].Value) != seedBody {
		t.Errorf("topic holds %v, want the one acknowledged record", got)
	}
	unloadChecksLeaks(t)
}

func TestProvisionErrors(t *testing.T) {
	t.Setenv("QP_TEST_SECRET", testSecret)
	before := len(pooledProducers(t))
	valid := func() *Handler {
		return &Handler{Kafka: Kafka{Brokers: []string{"127.0.0.1:1"}}, Requests: Requests{Topic: "t"}, Authentication: Authentication{Secrets: []string{"{env.QP_TEST_SECRET}"}}}
	}
	tests := []struct {
		name    string
		change  func(h *Handler)
		wantErr string
	}{
		{"no brokers", func(h *Handler) { h.Brokers = nil }, "brokers: at least one broker address is required"},
		{"brokers resolve to nothing", func(h *Handler) { h.Brokers = []string{" , "} }, "brokers: resolves to no address"},
		{"no topic", func(h *Handler) { h.Topic = "" }, "topic: required"},
		{"bad topic", func(h *Handler) { h.Topic = "a/b" }, `topic: "a/b" holds '/'`},
		{"no secret", func(h *Handler) { h.Secrets = nil }, "secret: required"},
		{"unset secret", func(h *Handler) { h.Secrets = []string{"{env.QP_UNSET_SECRET}"} }, "secret: evaluated placeholder {env.QP_UNSET_SECRET} is empty"},
		{"bad acks", func(h *Handler) { h.Acks = "most" }, `acks: "most" is not all, leader or none`},
		{"negative timeout", func(h *Handler) { h.Timeout = -1 }, "timeout: must be positive"},
		{"negative queue_timeout", func(h *Handler) { h.Delivery, h.QueueTimeout = "async", -1 }, "queue_timeout: must be positive"},
		{"topic placeholder without allow_topics", func(h *Handler) { h.Topic = "{http.request.uri.path.1}" }, "allow_topics: required when topic holds placeholders"},
		{"bad allowed topic", func(h *Handler) { h.Topic = "{x}"; h.AllowTopics = []string{"ok", "not ok"} }, `allow_topics: "not ok" holds ' '`},
		{"bad mode", func(h *Handler) { h.Mode = "lines" }, `mode: "lines" is not body, records or confluent`},
		{"key in records mode", func(h *Handler) { h.Mode = "records"; h.Key = "{http.request.header.K}" }, "key, header: apply to mode body only"},
		{"topic in mode confluent", func(h *Handler) { h.Mode = "confluent"; h.AllowTopics = []string{"t"} }, "topic: not used in mode confluent, where the path names the topic"},
		{"mode confluent without allow_topics", func(h *Handler) { h.Mode, h.Topic = "confluent", "" }, "allow_topics: required in mode confluent"},
		{"mode confluent with delivery async", func(h *Handler) { h.Mode, h.Topic, h.AllowTopics, h.Delivery = "confluent", "", []string{"t"}, "async" },
			"delivery async: not in mode confluent"},
		{"mode confluent with signature_header", func(h *Handler) {
			h.Mode, h.Topic, h.AllowTopics, h.SignatureHeader = "confluent", "", []string{"t"}, "X-Hub-Signature-256"
		}, "signature_header: not in mode confluent"},
		{"key in mode confluent", func(h *Handler) { h.Mode, h.Topic, h.AllowTopics, h.Key = "confluent", "", []string{"t"}, "k" },
			"key, header: apply to mode body only; in mode confluent each record carries its own"},
		{"cluster_id in another mode", func(h *Handler) { h.ClusterID = "lkc-1" }, "cluster_id: applies to mode confluent only"},
		{"redis store without a window", func(h *Handler) { h.IdempotencyRedis = "redis://127.0.0.1:1" }, "idempotency_store redis: needs an idempotency_window"},
		{"redis store with delivery async", func(h *Handler) {
			h.IdempotencyRedis, h.IdempotencyWindow, h.Delivery = "redis://127.0.0.1:1", caddy.Duration(time.Minute), "async"
		}, "idempotency_store redis: not with delivery async"},
		{"redis key prefix with a brace", func(h *Handler) {
			h.IdempotencyRedis, h.IdempotencyWindow, h.IdempotencyKeyPrefix = "redis://127.0.0.1:1", caddy.Duration(time.Minute), "{app}:"
		}, "idempotency_key_prefix: must not hold '{' or '}'"},
		{"redis URL without a scheme", func(h *Handler) {
			h.IdempotencyRedis, h.IdempotencyWindow = "user:pass@host:6379", caddy.Duration(time.Minute)
		}, "idempotency_store: the URL must start with redis:// or rediss://"},
		{"on_store_error without redis", func(h *Handler) { h.OnStoreError = "produce" }, "idempotency_key_prefix, on_store_error, the TLS settings of idempotency_store: apply to idempotency_store redis only"},
		{"redis TLS settings without redis", func(h *Handler) { h.IdempotencyRedisTLS = &BrokerTLS{CA: "/ca.pem"} },
			"idempotency_key_prefix, on_store_error, the TLS settings of idempotency_store: apply to idempotency_store redis only"},
		{"redis TLS settings with redis://", func(h *Handler) {
			h.IdempotencyRedis, h.IdempotencyWindow, h.IdempotencyRedisTLS = "redis://127.0.0.1:1", caddy.Duration(time.Minute), &BrokerTLS{ServerName: "redis.internal"}
		}, "idempotency_store: TLS settings need a rediss:// URL"},
		{"redis TLS CA unreadable", func(h *Handler) {
			h.IdempotencyRedis, h.IdempotencyWindow, h.IdempotencyRedisTLS = "rediss://127.0.0.1:1", caddy.Duration(time.Minute), &BrokerTLS{CA: "/nonexistent/ca.pem"}
		}, "idempotency_store: tls ca: open /nonexistent/ca.pem: no such file or directory"},
		{"second secret unset", func(h *Handler) { h.Secrets = append(h.Secrets, "{env.QP_UNSET_SECRET}") }, "secret 2: evaluated placeholder {env.QP_UNSET_SECRET} is empty"},
		{"bad compression", func(h *Handler) { h.Compression = "brotli" }, `compression: "brotli" is not none, gzip, snappy, lz4 or zstd`},
		{"idempotent on without acks all", func(h *Handler) { on := Switch(true); h.Idempotent, h.Acks = &on, "leader" }, "idempotent on: needs acks all, not leader"},
		{"fixed topic not in allow_topics", func(h *Handler) { h.AllowTopics = []string{"orders"} },
			`allow_topics: does not list topic "t", which holds no placeholder: every request would be answered 404`},
		{"signature_header not a header name", func(h *Handler) { h.SignatureHeader = "X-Hub Signature" },
			`signature_header: "X-Hub Signature" holds ' ', which no HTTP header name holds`},
		{"signature_header with a colon", func(h *Handler) { h.SignatureHeader = "X-Hub-Signature-256:" },
			`signature_header: "X-Hub-Signature-256:" holds ':'`},
		{"signature_header net/http takes out", func(h *Handler) { h.SignatureHeader = "host" },
			`signature_header: "host" never reaches the handler as a header`},
		{"header without a name", func(h *Handler) { h.Headers = map[string]string{"": "{http.request.header.X-Source}"} },
			"header: a record header needs a name"},
		{"schema in mode confluent", func(h *Handler) {
			h.Mode, h.Topic, h.AllowTopics, h.Schema = "confluent", "", []string{"t"}, "testdata/order.schema.json"
		}, "schema: not in mode confluent, whose record values need not be JSON"},
		{"async queue smaller than max_records", func(h *Handler) { h.Mode, h.Delivery, h.QueueSize, h.MaxRecords = "records", "async", 100, 101 },
			"queue_size: 100 is less than max_records (101)"},
		{"sasl oauthbearer without a secret", func(h *Handler) {
			h.SASL = &BrokerSASL{Mechanism: "oauthbearer", TokenURL: "https://issuer/oauth2/token", ClientID: "producer"}
		}, "sasl oauthbearer: token_url, client_id and client_secret are required"},
		{"sasl oauthbearer with a password", func(h *Handler) {
			h.SASL = &BrokerSASL{Mechanism: "oauthbearer", Password: "p", TokenURL: "https://issuer/oauth2/token", ClientID: "producer", ClientSecret: "s"}
		}, "sasl oauthbearer: takes token_url, client_id and client_secret, not a username and password"},
		{"sasl plain with OAuth settings", func(h *Handler) {
			h.SASL = &BrokerSASL{Mechanism: "plain", Username: "u", Password: "p", Audience: "kafka"}
		}, "sasl plain: token_url, client_id, client_secret, scope, audience and token_ca are oauthbearer's"},
		{"sasl oauthbearer token_ca missing", func(h *Handler) {
			h.SASL = &BrokerSASL{Mechanism: "oauthbearer", TokenURL: "https://issuer/oauth2/token", ClientID: "producer", ClientSecret: "s", TokenCA: "/nonexistent/ca.pem"}
		}, "sasl token_ca: open /nonexistent/ca.pem: no such file or directory"},
		{"sasl oauthbearer token_ca without a certificate", func(h *Handler) {
			h.SASL = &BrokerSASL{Mechanism: "oauthbearer", TokenURL: "https://issuer/oauth2/token", ClientID: "producer", ClientSecret: "s", TokenCA: "module_test.go"}
		}, "sasl oauthbearer: token_ca holds no PEM certificate"},
		{"sasl oauthbearer token_url not a URL", func(h *Handler) {
			h.SASL = &BrokerSASL{Mechanism: "oauthbearer", TokenURL: "issuer/oauth2/token", ClientID: "producer", ClientSecret: "s"}
		}, "sasl oauthbearer: token_url is not an http or https URL"},
		{"sasl oauthbearer secret unset", func(h *Handler) {
			h.SASL = &BrokerSASL{Mechanism: "oauthbearer", TokenURL: "https://issuer/oauth2/token", ClientID: "producer", ClientSecret: "{env.QP_UNSET_SECRET}"}
		}, "sasl client_secret: evaluated placeholder {env.QP_UNSET_SECRET} is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := valid()
			tt.change(h)
			ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
			defer cancel()
			// As Caddy does: Validate, the rules across concerns, after
			// a Provision that succeeded.
			err := h.Provision(ctx)
			if err == nil {
				err = h.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Provision and Validate error = %v, want %q", err, tt.wantErr)
			}
			// As Caddy does after a failed Provision.
			if err := h.Cleanup(); err != nil {
				t.Errorf("Cleanup after a failed Provision: %v", err)
			}
		})
	}
	if n := len(pooledProducers(t)); n != before {
		t.Errorf("%d producers after failed Provisions, want %d as before", n, before)
	}
}

func TestProvisionDefaultsAndBrokerPlaceholders(t *testing.T) {
	t.Setenv("QP_TEST_SECRET", testSecret)
	t.Setenv("QP_TEST_BROKERS", "127.0.0.1:1, 127.0.0.1:2")
	h := &Handler{Kafka: Kafka{Brokers: []string{"{env.QP_TEST_BROKERS}", "127.0.0.1:3"}}, Requests: Requests{Topic: "t"}, Authentication: Authentication{Secrets: []string{"{env.QP_TEST_SECRET}"}}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer h.Cleanup()
	if h.MaxSize != 1000000 || time.Duration(h.Timeout) != 5*time.Second || h.Acks != "all" || time.Duration(h.QueueTimeout) != 2*time.Minute {
		t.Errorf("defaults: max_size %d, timeout %v, acks %q, queue_timeout %v", h.MaxSize, time.Duration(h.Timeout), h.Acks, time.Duration(h.QueueTimeout))
	}
	if got := strings.Join(h.brokers, " "); got != "127.0.0.1:1 127.0.0.1:2 127.0.0.1:3" {
		t.Errorf("brokers = %q", got)
	}
	if len(h.secrets.digests) != 1 || h.secrets.digests[0] != sha256.Sum256([]byte(testSecret)) {
		t.Error("the secret was not resolved from the environment")
	}
}

// A config under which no request could ever succeed does not load: each
// error names the setting. The Caddyfile way to each, as TestProvisionErrors
// has the JSON way.
func TestConfigsThatCannotServeFailTheLoad(t *testing.T) {
	t.Setenv("QP_TEST_SECRET", testSecret)
	before := len(pooledProducers(t))
	for _, tt := range []struct {
		name, lines, wantErr string
	}{
		{"fixed topic not in allow_topics", "topic events\n\t\tallow_topics orders clicks",
			`allow_topics: does not list topic "events", which holds no placeholder: every request would be answered 404`},
		{"signature_header not a header name", "topic events\n\t\tsignature_header \"X-Hub Signature-256\"",
			`signature_header: "X-Hub Signature-256" holds ' ', which no HTTP header name holds`},
		{"header without a name", "topic events\n\t\theader \"\" {http.request.header.X-Source}",
			"header: a record header needs a name"},
		{"schema in mode confluent", "mode confluent\n\t\tallow_topics events\n\t\tschema testdata/order.schema.json",
			"schema: not in mode confluent, whose record values need not be JSON"},
		{"async queue smaller than max_records", "topic events\n\t\tmode records\n\t\tmax_records 200\n\t\tdelivery async\n\t\tqueue_size 100",
			"queue_size: 100 is less than max_records (200), the most records one request may carry"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			caddytest.AssertLoadError(t, caddyConfig(filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish {
		brokers 127.0.0.1:1
		secret {env.QP_TEST_SECRET}
		%s
	}`, tt.lines)), "caddyfile", strings.ReplaceAll(tt.wantErr, `"`, `\"`)) // quoted in the admin API's JSON answer
		})
	}
	if n := len(pooledProducers(t)); n != before {
		t.Errorf("%d producers after refused configs, want %d as before", n, before)
	}
}

// A setting that is on or off is a boolean in JSON, as Caddy's are; the
// words of the Caddyfile, which earlier JSON configs hold, are taken too.
func TestSwitchesInJSON(t *testing.T) {
	for _, tt := range []struct {
		json        string
		trace, idem *bool
		wantErr     string
	}{
		{json: `{}`},
		{json: `{"trace_headers":false,"idempotent":true}`, trace: ptr(false), idem: ptr(true)},
		{json: `{"trace_headers":true,"idempotent":false}`, trace: ptr(true), idem: ptr(false)},
		{json: `{"trace_headers":"off","idempotent":"on"}`, trace: ptr(false), idem: ptr(true)},
		{json: `{"idempotent":"yes"}`, wantErr: `"yes" is not true, false, "on" or "off"`},
		{json: `{"trace_headers":1}`, wantErr: `1 is not true, false, "on" or "off"`},
	} {
		var h Handler
		err := json.Unmarshal([]byte(tt.json), &h)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: error %v, want %q", tt.json, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tt.json, err)
		}
		for _, f := range []struct {
			name string
			got  *Switch
			want *bool
		}{{"trace_headers", h.TraceHeaders, tt.trace}, {"idempotent", h.Idempotent, tt.idem}} {
			if (f.got == nil) != (f.want == nil) || f.got != nil && bool(*f.got) != *f.want {
				t.Errorf("%s: %s = %v, want %v", tt.json, f.name, f.got, f.want)
			}
		}
		out, _ := json.Marshal(h)
		if tt.trace != nil && !strings.Contains(string(out), fmt.Sprintf(`"trace_headers":%t`, *tt.trace)) {
			t.Errorf("%s: marshalled as %s, want a boolean trace_headers", tt.json, out)
		}
	}
}

func ptr[T any](v T) *T { return &v }
