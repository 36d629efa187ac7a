package queuepublish

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/queuepublish/caddy-queue-publish/devbroker"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    Handler
		wantErr string
	}{
		{
			name: "every option",
			input: `queue_publish {
				brokers a:9092 b:9092
				brokers c:9092
				topic my-queue
				secret {env.QUEUE_AUTH_SECRET}
				max_size 256KB
				timeout 1500ms
				acks leader
				compression zstd
				linger 2ms
				max_batch_records 200
				max_batch_bytes 64KiB
				max_in_flight 2
			}`,
			want: Handler{Kafka: Kafka{Brokers: []string{"a:9092", "b:9092", "c:9092"}, Acks: "leader", Compression: "zstd", Linger: caddy.Duration(2 * time.Millisecond), MaxBatchRecords: 200, MaxBatchBytes: 65536, MaxInFlight: 2}, Requests: Requests{Topic: "my-queue", MaxSize: 256000, Timeout: caddy.Duration(1500 * time.Millisecond)}, Authentication: Authentication{Secrets: []string{"{env.QUEUE_AUTH_SECRET}"}}},
		},
		{
			name:  "required options only",
			input: block("brokers a:9092", "topic t", "secret {file./run/secret}"),
			want:  Handler{Kafka: Kafka{Brokers: []string{"a:9092"}}, Requests: Requests{Topic: "t"}, Authentication: Authentication{Secrets: []string{"{file./run/secret}"}}},
		},
		{
			name: "records mode, topics from the request, rotation, webhooks",
			input: `queue_publish {
				brokers a:9092
				topic {http.request.uri.path.1}
				allow_topics orders clicks
				allow_topics views
				secret {env.NEW}
				secret {env.OLD}
				signature_header X-Hub-Signature-256
				mode records
				max_records 100
				schema /etc/caddy/order.json
			}`,
			want: Handler{Kafka: Kafka{Brokers: []string{"a:9092"}}, Requests: Requests{Topic: "{http.request.uri.path.1}", AllowTopics: []string{"orders", "clicks", "views"}, Mode: "records", MaxRecords: 100, Schema: "/etc/caddy/order.json"}, Authentication: Authentication{Secrets: []string{"{env.NEW}", "{env.OLD}"}, SignatureHeader: "X-Hub-Signature-256"}},
		},
		{
			name: "key and headers from the request",
			input: `queue_publish {
				key {http.request.header.X-Message-Key}
				header source {http.request.header.X-Source}
				header kind order
			}`,
			want: Handler{Requests: Requests{Key: "{http.request.header.X-Message-Key}", Headers: map[string]string{"source": "{http.request.header.X-Source}", "kind": "order"}}},
		},
		{
			name: "secure brokers",
			input: `queue_publish {
				client_id checkout
				sasl scram-sha-512 producer {env.KAFKA_PASSWORD}
				tls {
					ca /etc/kafka/ca.pem
					cert /etc/kafka/client.pem
					key /etc/kafka/client-key.pem
					server_name kafka.internal
					insecure_skip_verify
				}
			}`,
			want: Handler{Kafka: Kafka{ClientID: "checkout", SASL: &BrokerSASL{Mechanism: "scram-sha-512", Username: "producer", Password: "{env.KAFKA_PASSWORD}"}, TLS: &BrokerTLS{CA: "/etc/kafka/ca.pem", Cert: "/etc/kafka/client.pem", Key: "/etc/kafka/client-key.pem",
				ServerName: "kafka.internal", InsecureSkipVerify: true}}},
		},
		{
			name: "delivery and idempotency",
			input: `queue_publish {
				delivery async
				queue_size 5000
				queue_timeout 5m
				idempotency_window 10m
				idempotency_max_keys 20000
			}`,
			want: Handler{Requests: Requests{Delivery: "async", QueueSize: 5000, QueueTimeout: caddy.Duration(5 * time.Minute)}, Idempotency: Idempotency{IdempotencyWindow: caddy.Duration(10 * time.Minute), IdempotencyMaxKeys: 20000}},
		},
		{
			name: "browsers and traces",
			input: `queue_publish {
				cors https://shop.example.com http://localhost:8080
				cors https://www.example.com
				trace_headers off
			}`,
			want: Handler{Requests: Requests{TraceHeaders: ptr(Switch(false))}, CrossOrigin: CrossOrigin{CORS: []string{"https://shop.example.com", "http://localhost:8080", "https://www.example.com"}}},
		},
		{name: "cors without an origin", input: block("cors"), wantErr: "wrong argument count"},
		{name: "bad trace_headers", input: block("trace_headers maybe"), wantErr: `trace_headers: "maybe" is not on or off`},
		{name: "bad delivery", input: block("delivery later"), wantErr: `delivery: "later" is not sync or async`},
		{name: "zero queue_timeout", input: block("queue_timeout 0s"), wantErr: `queue_timeout: invalid duration "0s"`},
		{name: "zero idempotency window", input: block("idempotency_window 0s"), wantErr: `idempotency_window: invalid duration "0s"`},
		{name: "tls with system roots", input: block("tls"), want: Handler{Kafka: Kafka{TLS: &BrokerTLS{}}}},
		{name: "tls with an argument", input: block("tls on"), wantErr: "wrong argument count"},
		{name: "unknown tls option", input: "queue_publish {\ntls {\nverify no\n}\n}", wantErr: `tls: unrecognized option "verify"`},
		{name: "unknown redis tls option", input: "queue_publish {\nidempotency_store redis rediss://r:6380 {\nverify no\n}\n}", wantErr: `idempotency_store: unrecognized option "verify"`},
		{name: "memory store with tls", input: "queue_publish {\nidempotency_store memory {\nca /ca.pem\n}\n}", wantErr: "idempotency_store memory: takes no block"},
		{name: "sasl without password", input: block("sasl plain user"), wantErr: "wrong argument count"},
		{name: "unknown sasl mechanism", input: block("sasl gssapi user pass"), wantErr: `sasl: "gssapi" is not plain, scram-sha-256, scram-sha-512 or oauthbearer`},
		{
			name: "sasl oauthbearer",
			input: `queue_publish {
				sasl oauthbearer {
					token_url https://issuer.example.com/oauth2/token
					client_id {env.KAFKA_CLIENT_ID}
					client_secret {file./etc/caddy/kafka_client_secret}
					scope kafka:produce kafka:describe
					audience kafka
				}
				client_id checkout
			}`,
			want: Handler{Kafka: Kafka{ClientID: "checkout", SASL: &BrokerSASL{Mechanism: "oauthbearer", TokenURL: "https://issuer.example.com/oauth2/token",
				ClientID: "{env.KAFKA_CLIENT_ID}", ClientSecret: "{file./etc/caddy/kafka_client_secret}", Scope: "kafka:produce kafka:describe", Audience: "kafka"}}},
		},
		{name: "sasl oauthbearer on one line", input: block("sasl oauthbearer id secret"), wantErr: "sasl oauthbearer: takes its settings in a block"},
		{name: "unknown sasl oauthbearer option", input: "queue_publish {\nsasl oauthbearer {\ngrant password\n}\n}", wantErr: `sasl oauthbearer: unrecognized option "grant"`},
		{name: "sasl oauthbearer audience twice on a line", input: "queue_publish {\nsasl oauthbearer {\naudience a b\n}\n}", wantErr: "wrong argument count"},
		{name: "header without value", input: block("header source"), wantErr: "wrong argument count"},
		{name: "allow_topics without topic", input: block("allow_topics"), wantErr: "wrong argument count"},
		{name: "bad mode", input: block("mode lines"), wantErr: `mode: "lines" is not body, records or confluent`},
		{name: "bad max_records", input: block("max_records -5"), wantErr: `max_records: "-5" is not a positive number`},
		{name: "max_size in MiB", input: block("max_size 1MiB"), want: Handler{Requests: Requests{MaxSize: 1 << 20}}},
		{name: "timeout in days", input: block("timeout 1d"), want: Handler{Requests: Requests{Timeout: caddy.Duration(24 * time.Hour)}}},
		{name: "argument on the directive", input: `queue_publish my-queue`, wantErr: "wrong argument count"},
		{name: "brokers without address", input: block("brokers"), wantErr: "wrong argument count"},
		{name: "topic twice on a line", input: block("topic a b"), wantErr: "wrong argument count"},
		{name: "secret without value", input: block("secret"), wantErr: "wrong argument count"},
		{name: "bad size", input: block("max_size lots"), wantErr: `max_size: invalid size "lots"`},
		{name: "zero size", input: block("max_size 0"), wantErr: `max_size: invalid size "0"`},
		{name: "bad duration", input: block("timeout soon"), wantErr: `timeout: invalid duration "soon"`},
		{name: "negative duration", input: block("timeout -1s"), wantErr: `timeout: invalid duration "-1s"`},
		{name: "bad acks", input: block("acks some"), wantErr: `acks: "some" is not all, leader or none`},
		{name: "bad idempotent", input: block("idempotent maybe"), wantErr: `idempotent: "maybe" is not on or off`},
		{name: "zero linger", input: block("linger 0"), want: Handler{}},
		{name: "zero timeout", input: block("timeout 0s"), wantErr: `timeout: invalid duration "0s"`},
		{name: "negative linger", input: block("linger -1ms"), wantErr: `linger: invalid duration "-1ms"`},
		{name: "zero max_batch_records", input: block("max_batch_records 0"), wantErr: `max_batch_records: "0" is not a positive number`},
		{name: "bad max_in_flight", input: block("max_in_flight two"), wantErr: `max_in_flight: "two" is not a positive number`},
		{name: "bad max_batch_bytes", input: block("max_batch_bytes 2GB"), wantErr: `max_batch_bytes: invalid size "2GB"`},
		{name: "bad compression", input: block("compression brotli"), wantErr: `compression: "brotli" is not none, gzip, snappy, lz4 or zstd`},
		{name: "unknown subdirective", input: block("partitions 3"), wantErr: `unrecognized subdirective "partitions"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Handler
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equalConfig(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// block is a queue_publish directive with the given lines in its block.
func block(lines ...string) string {
	return "queue_publish {\n" + strings.Join(lines, "\n") + "\n}"
}

// equalConfig compares the settings a Caddyfile gives, every exported
// field.
func equalConfig(a, b Handler) bool {
	return reflect.DeepEqual(a, b)
}

// TestExamplesAdapt adapts every Caddyfile under examples/ and compares the
// result with the JSON config beside it, so the JSON examples cannot drift
// from the Caddyfiles.
func TestExamplesAdapt(t *testing.T) {
	pairs := map[string]string{
		"examples/Caddyfile":              "examples/caddy.json",
		"examples/production.Caddyfile":   "examples/production.json",
		"examples/tls-internal.Caddyfile": "examples/tls-internal.json",
		"examples/webhook.Caddyfile":      "examples/webhook.json",
		"examples/browser.Caddyfile":      "examples/browser.json",
		"examples/confluent.Caddyfile":    "examples/confluent.json",
	}
	for caddyfilePath, jsonPath := range pairs {
		t.Run(filepath.Base(caddyfilePath), func(t *testing.T) {
			cf, err := os.ReadFile(caddyfilePath)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(jsonPath)
			if err != nil {
				t.Fatal(err)
			}
			caddytest.AssertAdapt(t, string(cf), "caddyfile", strings.TrimSpace(string(want)))
		})
	}
}
