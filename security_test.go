package queuepublish

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files.
type testPKI struct {
	dir                   string
	caPool                *x509.CertPool
	server, client        tls.Certificate
	caFile                string
	clientCert, clientKey string
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	p := &testPKI{dir: dir, caPool: x509.NewCertPool()}
	p.caPool.AddCert(caCert)
	p.caFile = writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER)

	issue := func(serial int64, name string, usage x509.ExtKeyUsage, ips []net.IP) (tls.Certificate, string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips, KeyUsage: x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		certFile := writePEM(t, dir, name+".pem", "CERTIFICATE", der)
		// Not ".key": caddytest rewrites paths ending so in configs.
		keyFile := writePEM(t, dir, name+"-key.pem", "EC PRIVATE KEY", keyDER)
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		return pair, certFile, keyFile
	}
	p.server, _, _ = issue(2, "broker", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	p.client, p.clientCert, p.clientKey = issue(3, "client", x509.ExtKeyUsageClientAuth, nil)
	return p
}

func writePEM(t *testing.T, dir, name, kind string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// readWith reads a topic with kgo and extra client options (TLS, SASL).
func readWith(t *testing.T, c *kfake.Cluster, topic string, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	fetches := cl.PollFetches(ctx)
	if errs := fetches.Errors(); len(errs) > 0 {
		t.Fatalf("reading %s: %v", topic, errs)
	}
	return fetches.Records()
}

// readTLS reads a topic of a TLS cluster.
func readTLS(t *testing.T, c *kfake.Cluster, pki *testPKI, topic string, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	tlsOpt := kgo.DialTLSConfig(&tls.Config{RootCAs: pki.caPool, Certificates: []tls.Certificate{pki.client}})
	return readWith(t, c, topic, append(opts, tlsOpt)...)
}

func TestTLSBrokers(t *testing.T) {
	pki := newTestPKI(t)
	read := func(file string) []byte {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tt := range []struct {
		name       string
		tls        *tlsMaterial
		clientAuth tls.ClientAuthType
		want       string // "" for success, else the failure reason
	}{
		{"our CA", &tlsMaterial{CA: read(pki.caFile)}, tls.NoClientCert, ""},
		{"system roots do not know the CA", &tlsMaterial{}, tls.NoClientCert, "TLS with the Kafka broker failed"},
		{"another server name", &tlsMaterial{CA: read(pki.caFile), ServerName: "kafka.example"}, tls.NoClientCert, "TLS with the Kafka broker failed"},
		{"insecure skip verify", &tlsMaterial{InsecureSkipVerify: true}, tls.NoClientCert, ""},
		{"client certificate", &tlsMaterial{CA: read(pki.caFile), Cert: read(pki.clientCert), Key: read(pki.clientKey)}, tls.RequireAndVerifyClientCert, ""},
		{"client certificate missing", &tlsMaterial{CA: read(pki.caFile)}, tls.RequireAndVerifyClientCert, "TLS with the Kafka broker failed"},
		{"plaintext to a TLS broker", nil, tls.NoClientCert, "no Kafka broker reachable"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			serverTLS := &tls.Config{Certificates: []tls.Certificate{pki.server}, ClientCAs: pki.caPool, ClientAuth: tt.clientAuth}
			c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"), kfake.TLS(serverTLS))
			logger, logs := observedLogger()
			p := mustProducer(t, producerConfig{Brokers: c.ListenAddrs(), Acks: kafka.RequireAll, TLS: tt.tls}, logger)
			defer p.Destruct()
			_, perr := sendOne(p, "events", []byte(`{"tls":true}`), 2*time.Second)
			if tt.want == "" {
				if perr != nil {
					t.Fatal(perr)
				}
				if got := readTLS(t, c, pki, "events"); len(got) != 1 {
					t.Errorf("the topic holds %d records, want 1", len(got))
				}
				return
			}
			if perr == nil || perr.reason != tt.want {
				t.Fatalf("got %v, want %q", perr, tt.want)
			}
			if tt.want != "no Kafka broker reachable" {
				if perr.outcome != outcomeRejected {
					t.Errorf("outcome %v, want permanent: retrying does not fix a TLS setting", perr.outcome)
				}
				waitFor(t, 5*time.Second, func() bool {
					return logs.FilterMessage("the Kafka brokers refuse the connection: TLS with the Kafka broker failed; check the settings").Len() == 1
				})
			}
		})
	}
}

func TestSASLBrokers(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"), kfake.EnableSASL(),
		kfake.Superuser("PLAIN", "plain-user", "plain-pass"),
		kfake.Superuser("SCRAM-SHA-256", "scram256-user", "scram256-pass"),
		kfake.Superuser("SCRAM-SHA-512", "scram512-user", "scram512-pass"))
	for _, tt := range []struct {
		mechanism, user, password string
		ok                        bool
	}{
		{"plain", "plain-user", "plain-pass", true},
		{"scram-sha-256", "scram256-user", "scram256-pass", true},
		{"scram-sha-512", "scram512-user", "scram512-pass", true},
		{"plain", "plain-user", "wrong", false},
		{"scram-sha-256", "scram256-user", "wrong", false},
		{"scram-sha-512", "nobody", "scram512-pass", false},
	} {
		t.Run(fmt.Sprintf("%s %s/%s", tt.mechanism, tt.user, tt.password), func(t *testing.T) {
			logger, logs := observedLogger()
			p := mustProducer(t, producerConfig{Brokers: c.ListenAddrs(), Acks: kafka.RequireAll,
				SASL: &saslCredentials{Mechanism: tt.mechanism, Username: tt.user, Password: tt.password}}, logger)
			defer p.Destruct()
			_, perr := sendOne(p, "events", []byte(`{"sasl":"`+tt.mechanism+`"}`), 2*time.Second)
			if tt.ok {
				if perr != nil {
					t.Fatal(perr)
				}
				return
			}
			if perr == nil || perr.outcome != outcomeRejected || perr.reason != "Kafka authentication failed" {
				t.Fatalf("got %v, want a permanent 'Kafka authentication failed'", perr)
			}
			waitFor(t, 5*time.Second, func() bool {
				return logs.FilterMessage("the Kafka brokers refuse the connection: Kafka authentication failed; check the settings").Len() == 1
			})
			if n := logs.FilterMessageSnippet("no Kafka broker reachable").Len(); n > 0 {
				t.Errorf("a wrong password was logged as an unreachable broker")
			}
			for _, e := range logs.All() {
				if strings.Contains(fmt.Sprint(e.ContextMap()), tt.password) {
					t.Errorf("the SASL password is in the log: %v", e.ContextMap())
				}
			}
		})
	}
	admin := scram.Auth{User: "scram512-user", Pass: "scram512-pass"}
	if got := readWith(t, c, "events", kgo.SASL(admin.AsSha512Mechanism())); len(got) != 3 {
		t.Errorf("the topic holds %d records, want the 3 authenticated ones", len(got))
	}
}

// TestSecureBrokersThroughCaddy configures TLS with a client certificate,
// SASL with the password from the environment, a client ID and compression
// in the Caddyfile.
func TestSecureBrokersThroughCaddy(t *testing.T) {
	pki := newTestPKI(t)
	serverTLS := &tls.Config{Certificates: []tls.Certificate{pki.server}, ClientCAs: pki.caPool, ClientAuth: tls.RequireAndVerifyClientCert}
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"), kfake.TLS(serverTLS), kfake.EnableSASL(),
		kfake.Superuser("SCRAM-SHA-512", "producer", "s3cret-kafka-pass"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	t.Setenv("QP_KAFKA_PASSWORD", "s3cret-kafka-pass")
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile, fmt.Sprintf(`	queue_publish {
		brokers %s
		topic events
		secret {env.QP_TEST_SECRET}
		client_id checkout-api
		compression zstd
		sasl scram-sha-512 producer {env.QP_KAFKA_PASSWORD}
		tls {
			ca %s
			cert %s
			key %s
		}
	}`, c.ListenAddrs()[0], pki.caFile, pki.clientCert, pki.clientKey))
	if got := do(t, "POST", "/", auth(testSecret), strings.NewReader(seedBody)); got.status != 200 {
		t.Fatalf("%d %s", got.status, got.body)
	}
	admin := scram.Auth{User: "producer", Pass: "s3cret-kafka-pass"}
	if got := readTLS(t, c, pki, "events", kgo.SASL(admin.AsSha512Mechanism())); len(got) != 1 || string(got[0].Value) != seedBody {
		t.Errorf("read back %v", got)
	}
	running := adminConfig(t)
	if strings.Contains(running, "s3cret-kafka-pass") {
		t.Error("the SASL password is in the running config")
	}
	if logs, _ := os.ReadFile(logFile); strings.Contains(string(logs), "s3cret-kafka-pass") {
		t.Error("the SASL password is in Caddy's log")
	}
}
