package queuepublish

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"go.uber.org/zap"
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
			p := mustProducer(t, connection{Kafka: Kafka{Brokers: c.ListenAddrs(), Acks: "all"}, TLS: tt.tls}, logger)
			defer closeProducer(p)
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
			if perr == nil || perr.Reason != tt.want {
				t.Fatalf("got %v, want %q", perr, tt.want)
			}
			if tt.want != "no Kafka broker reachable" {
				if perr.Outcome != outcomeRejected {
					t.Errorf("outcome %v, want permanent: retrying does not fix a TLS setting", perr.Outcome)
				}
				waitFor(t, 5*time.Second, func() bool {
					return logs.FilterMessage("the Kafka brokers refuse the connection: TLS with the Kafka broker failed; check the settings").Len() == 1
				})
			}
		})
	}
}

// saslUsers are the credentials of the SASL test clusters.
var saslUsers = map[string]string{"plain-user": "plain-pass", "scram256-user": "scram256-pass", "scram512-user": "scram512-pass"}

// saslCluster is a kfake cluster with SASL and a user per mechanism.
func saslCluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	return newCluster(t, append(opts, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"), kfake.EnableSASL(),
		kfake.Superuser("PLAIN", "plain-user", saslUsers["plain-user"]),
		kfake.Superuser("SCRAM-SHA-256", "scram256-user", saslUsers["scram256-user"]),
		kfake.Superuser("SCRAM-SHA-512", "scram512-user", saslUsers["scram512-user"]))...)
}

// refuseLikeKafka makes c answer SASL_AUTHENTICATION_FAILED, as Apache
// Kafka does, to a PLAIN exchange with a wrong password and to a SCRAM
// exchange naming an unknown user; kfake itself closes the connection.
// (A wrong SCRAM password shows only in the last step, which kfake still
// answers by closing.)
func refuseLikeKafka(c *kfake.Cluster) {
	c.ControlKey(int16(kmsg.SASLAuthenticate), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		auth := req.(*kmsg.SASLAuthenticateRequest)
		refuse := false
		if parts := bytes.Split(auth.SASLAuthBytes, []byte{0}); len(parts) == 3 { // PLAIN
			pass, ok := saslUsers[string(parts[1])]
			refuse = !ok || pass != string(parts[2])
		} else if rest, ok := bytes.CutPrefix(auth.SASLAuthBytes, []byte("n,,n=")); ok { // SCRAM's first message
			user, _, _ := bytes.Cut(rest, []byte(","))
			_, known := saslUsers[string(user)]
			refuse = !known
		}
		if !refuse {
			return nil, nil, false
		}
		resp := auth.ResponseKind().(*kmsg.SASLAuthenticateResponse)
		resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
		msg := "Authentication failed: Invalid username or password"
		resp.ErrorMessage = &msg
		return resp, nil, true
	})
}

// Credentials the broker refuses with an answer are a permanent 500,
// logged as a refused connection; a broker that closes the connection
// during the exchange instead is a retriable 503, logged as such.
func TestSASLBrokers(t *testing.T) {
	c := saslCluster(t)
	refuseLikeKafka(c)
	// With several bootstrap brokers, the producer picks one for the
	// transport's control connection (bootstrap.go): the same answers.
	t.Run("one broker", func(t *testing.T) { saslAnswers(t, c, c.ListenAddrs()) })
	t.Run("two brokers, one down", func(t *testing.T) { saslAnswers(t, c, append(c.ListenAddrs(), closedPort(t))) })
	admin := scram.Auth{User: "scram512-user", Pass: "scram512-pass"}
	if got := readWith(t, c, "events", kgo.SASL(admin.AsSha512Mechanism())); len(got) != 6 {
		t.Errorf("the topic holds %d records, want the 6 authenticated ones", len(got))
	}
}

// saslAnswers checks each mechanism's answer, with right and wrong
// credentials, from brokers.
func saslAnswers(t *testing.T, c *kfake.Cluster, brokers []string) {
	for _, tt := range []struct {
		mechanism, user, password string
		want                      producer.Outcome // 0: acknowledged
	}{
		{"plain", "plain-user", "plain-pass", 0},
		{"scram-sha-256", "scram256-user", "scram256-pass", 0},
		{"scram-sha-512", "scram512-user", "scram512-pass", 0},
		{"plain", "plain-user", "wrong", outcomeRejected},
		{"scram-sha-512", "nobody", "scram512-pass", outcomeRejected},
		{"scram-sha-256", "scram256-user", "wrong", outcomeRetry}, // kfake closes the connection
	} {
		t.Run(fmt.Sprintf("%s %s/%s", tt.mechanism, tt.user, tt.password), func(t *testing.T) {
			logger, logs := observedLogger()
			p := mustProducer(t, connection{Kafka: Kafka{Brokers: brokers, Acks: "all"},
				SASL: &producer.SASL{Mechanism: tt.mechanism, Username: tt.user, Password: tt.password}}, logger)
			defer closeProducer(p)
			_, perr := sendOne(p, "events", []byte(`{"sasl":"`+tt.mechanism+`"}`), 2*time.Second)
			switch tt.want {
			case 0:
				if perr != nil {
					t.Fatal(perr)
				}
				return
			case outcomeRejected:
				if perr == nil || perr.Outcome != outcomeRejected || perr.Reason != "Kafka authentication failed" {
					t.Fatalf("got %v, want a permanent 'Kafka authentication failed'", perr)
				}
				waitFor(t, 5*time.Second, func() bool {
					return logs.FilterMessage("the Kafka brokers refuse the connection: Kafka authentication failed; check the settings").Len() == 1
				})
			case outcomeRetry:
				if perr == nil || perr.Outcome != outcomeRetry || perr.Reason != "Kafka connection lost during authentication" {
					t.Fatalf("got %v, want a retriable 'Kafka connection lost during authentication'", perr)
				}
				waitFor(t, 5*time.Second, func() bool {
					return logs.FilterMessageSnippet("closed the connection during SASL authentication").Len() == 1
				})
			}
			if n := logs.FilterMessageSnippet("no Kafka broker reachable").Len(); n > 0 {
				t.Errorf("a refused connection was logged as an unreachable broker")
			}
			for _, e := range logs.All() {
				if strings.Contains(fmt.Sprint(e.ContextMap()), tt.password) {
					t.Errorf("the SASL password is in the log: %v", e.ContextMap())
				}
			}
		})
	}
}

// resetConn resets the connection, once armed, at the first read after the
// client sent its PLAIN credentials: a broker restarting in the middle of
// the SASL exchange.
type resetConn struct {
	net.Conn
	armed *atomic.Bool
	sent  bool
}

func (c *resetConn) Write(b []byte) (int, error) {
	if bytes.Contains(b, []byte("\x00plain-user\x00plain-pass")) && c.armed.CompareAndSwap(true, false) {
		c.sent = true
	}
	return c.Conn.Write(b)
}

func (c *resetConn) Read(b []byte) (int, error) {
	if c.sent {
		c.Conn.Close()
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	}
	return c.Conn.Read(b)
}

// A connection reset during the SASL exchange is a fault that retrying
// fixes (503), never taken for refused credentials (500), and the next
// connection authenticates.
func TestSASLConnectionResetIsRetriable(t *testing.T) {
	c := saslCluster(t)
	var armed atomic.Bool
	armed.Store(true)
	var dialer net.Dialer
	p := mustProducer(t, connection{Kafka: Kafka{Brokers: c.ListenAddrs(), Acks: "all"},
		SASL: &producer.SASL{Mechanism: "plain", Username: "plain-user", Password: "plain-pass"}}, zap.NewNop(),
		func(ctx context.Context, network, address string) (net.Conn, error) {
			conn, err := dialer.DialContext(ctx, network, address)
			if err != nil {
				return nil, err
			}
			return &resetConn{Conn: conn, armed: &armed}, nil
		})
	defer closeProducer(p)
	_, perr := sendOne(p, "events", []byte(`{"reset":1}`), 2*time.Second)
	if armed.Load() {
		t.Fatal("the connection was never reset during SASL")
	}
	if perr == nil || perr.Outcome != outcomeRetry {
		t.Fatalf("a reset during SASL: %v, want a retriable failure", perr)
	}
	waitFor(t, 5*time.Second, func() bool {
		_, perr := sendOne(p, "events", []byte(`{"reset":2}`), 2*time.Second)
		if perr != nil && perr.Outcome != outcomeRetry {
			t.Fatalf("after a reset during SASL: %v, want 503s until the next connection authenticates", perr)
		}
		return perr == nil
	})
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

// TestBrokerOptionsThroughCaddy sets every TLS and SASL form, acks,
// compression and client_id in a Caddyfile, and checks what reaches the
// brokers: the acks of the produce requests, the compression of the
// stored batches, the client ID on the wire, and the answers and log
// lines when a setting is wrong.
func TestBrokerOptionsThroughCaddy(t *testing.T) {
	pki := newTestPKI(t)
	secure := saslCluster(t, kfake.TLS(&tls.Config{Certificates: []tls.Certificate{pki.server}}))
	refuseLikeKafka(secure)
	plain := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "leader", "none", "lz4"))
	proxy, clientIDs := clientIDProxy(t, plain.ListenAddrs()[0])
	var mu sync.Mutex
	acks := map[string]int16{}
	plain.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		plain.KeepControl()
		mu.Lock()
		defer mu.Unlock()
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			acks[tp.Topic] = req.(*kmsg.ProduceRequest).Acks
		}
		return nil, nil, false
	})

	t.Setenv("QP_TEST_SECRET", testSecret)
	t.Setenv("QP_PLAIN_PASSWORD", "plain-pass")
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	route := func(path, options string) string {
		return fmt.Sprintf(`	handle %s {
		queue_publish {
			secret {env.QP_TEST_SECRET}
			timeout 2s
			%s
		}
	}
`, path, options)
	}
	s := secure.ListenAddrs()[0]
	startCaddy(t, logFile,
		route("/plain", "brokers "+s+"\n topic events\n sasl plain plain-user {env.QP_PLAIN_PASSWORD}\n tls {\n ca "+pki.caFile+"\n }")+
			route("/scram256", "brokers "+s+"\n topic events\n sasl scram-sha-256 scram256-user scram256-pass\n tls {\n insecure_skip_verify\n }")+
			route("/wrong-password", "brokers "+s+"\n topic events\n sasl plain plain-user not-the-password\n tls {\n ca "+pki.caFile+"\n }")+
			route("/other-name", "brokers "+s+"\n topic events\n sasl plain plain-user plain-pass\n tls {\n ca "+pki.caFile+"\n server_name kafka.example\n }")+
			route("/system-roots", "brokers "+s+"\n topic events\n sasl plain plain-user plain-pass\n tls")+
			route("/leader", "brokers "+proxy+"\n topic leader\n acks leader\n compression gzip\n client_id billing-api")+
			route("/none", "brokers "+proxy+"\n topic none\n acks none\n compression snappy")+
			route("/lz4", "brokers "+proxy+"\n topic lz4\n compression lz4"))

	for _, tt := range []struct {
		path, want string
	}{
		{"/plain", ""},
		{"/scram256", ""},
		{"/wrong-password", `{"error":"Kafka authentication failed","outcome":"not_written"}`},
		{"/other-name", `{"error":"TLS with the Kafka broker failed","outcome":"not_written"}`},
		{"/system-roots", `{"error":"TLS with the Kafka broker failed","outcome":"not_written"}`},
		{"/leader", ""},
		{"/none", ""},
		{"/lz4", ""},
	} {
		got := do(t, "POST", tt.path, auth(testSecret), strings.NewReader(`{"route":"`+tt.path+`"}`))
		switch {
		case tt.want == "" && got.status != 200:
			t.Errorf("%s: %d %s, want 200", tt.path, got.status, got.body)
		case tt.want != "" && (got.status != 500 || got.body != tt.want):
			t.Errorf("%s: %d %s, want 500 %s", tt.path, got.status, got.body, tt.want)
		}
	}
	if hw := secure.PartitionInfo("events", 0).HighWatermark; hw != 2 {
		t.Errorf("the secure cluster holds %d records, want the 2 of /plain and /scram256", hw)
	}

	logs, _ := os.ReadFile(logFile)
	for _, want := range []string{"Kafka authentication failed", "TLS with the Kafka broker failed"} {
		if !hasLogLine(logs, "error", "the Kafka brokers refuse the connection: "+want+"; check the settings", "") {
			t.Errorf("no error line says %q", want)
		}
	}
	if strings.Contains(string(logs), "no Kafka broker reachable") {
		t.Error("a refused connection was logged as an unreachable broker")
	}
	if strings.Contains(string(logs), "not-the-password") {
		t.Error("the SASL password is in Caddy's log")
	}

	mu.Lock()
	gotAcks := maps.Clone(acks)
	mu.Unlock()
	if want := map[string]int16{"leader": 1, "none": 0, "lz4": -1}; !maps.Equal(gotAcks, want) {
		t.Errorf("acks of the produce requests %v, want %v", gotAcks, want)
	}
	for topic, codec := range map[string]uint8{"leader": 1, "none": 2, "lz4": 3} {
		waitFor(t, 5*time.Second, func() bool { return plain.PartitionInfo(topic, 0).HighWatermark == 1 })
		if got := stored(t, plain, topic); len(got) != 1 || got[0].Attrs.CompressionType() != codec {
			t.Errorf("%s: %d records, want 1 compressed with codec %d", topic, len(got), codec)
		}
	}
	seen := map[string]bool{}
	for len(clientIDs) > 0 {
		seen[<-clientIDs] = true
	}
	if !seen["billing-api"] || !seen["caddy-queue-publish"] {
		t.Errorf("client IDs on the wire %v, want billing-api (set) and caddy-queue-publish (the default)", seen)
	}
	unloadChecksLeaks(t)
}

// clientIDProxy relays TCP connections to target and reports the client
// ID in the header of each connection's first Kafka request: the bytes a
// broker logs and applies quotas to.
func clientIDProxy(t *testing.T, target string) (string, <-chan string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ids := make(chan string, 100)
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			track(in)
			wg.Go(func() {
				out, err := net.Dial("tcp", target)
				if err != nil {
					in.Close()
					return
				}
				track(out)
				// Request header: size, api_key, api_version,
				// correlation_id, then client_id as int16 length + bytes.
				head := make([]byte, 14)
				if _, err := io.ReadFull(in, head); err != nil {
					return
				}
				id := make([]byte, max(int16(binary.BigEndian.Uint16(head[12:])), 0))
				if _, err := io.ReadFull(in, id); err != nil {
					return
				}
				select {
				case ids <- string(id):
				default:
				}
				out.Write(head)
				out.Write(id)
				wg.Go(func() { io.Copy(in, out); in.Close() })
				io.Copy(out, in)
				out.Close()
			})
		}
	})
	return ln.Addr().String(), ids
}

// sasl oauthbearer through Caddy, toward a token endpoint that refuses
// the client or fails, and echoes what it was sent in its answers: the
// client ID and secret are resolved from the environment when the config
// loads; a refusal is answered 500 at once, a failure 503, each logged
// with the endpoint's status; the client secret is in no answer, no log
// line and not in the running config. (The success path needs a broker
// that validates tokens: the suite on Apache Kafka, with Hydra.)
func TestOAuthBearerTokenEndpointThroughCaddy(t *testing.T) {
	const clientSecret = "oauth-client-s3cret-value"
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		echo := string(body) + " " + r.Header.Get("Authorization")
		if r.URL.Path == "/refuses" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"error":"invalid_client","error_description":%q}`, echo)
			return
		}
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprint(w, echo)
	}))
	defer endpoint.Close()
	c := saslCluster(t)
	t.Setenv("QP_TEST_SECRET", testSecret)
	t.Setenv("QP_OAUTH_CLIENT_ID", "producer")
	t.Setenv("QP_OAUTH_CLIENT_SECRET", clientSecret)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	route := func(path string) string {
		return fmt.Sprintf(`	handle %s {
		queue_publish {
			brokers %s
			topic events
			secret {env.QP_TEST_SECRET}
			timeout 3s
			sasl oauthbearer {
				token_url %s%s
				client_id {env.QP_OAUTH_CLIENT_ID}
				client_secret {env.QP_OAUTH_CLIENT_SECRET}
				scope produce
				audience kafka
			}
		}
	}
`, path, c.ListenAddrs()[0], endpoint.URL, path)
	}
	startCaddy(t, logFile, route("/refuses")+route("/fails"))
	for _, tt := range []struct {
		path   string
		status int
		body   string
		logged string
	}{
		{"/refuses", 500, `{"error":"Kafka authentication failed","outcome":"not_written"}`, "401 Unauthorized: invalid_client"},
		{"/fails", 503, `{"error":"no OAuth token for Kafka: the token endpoint failed","outcome":"not_written"}`, "502 Bad Gateway"},
	} {
		start := time.Now()
		got := do(t, "POST", tt.path, auth(testSecret), strings.NewReader(`{}`))
		if got.status != tt.status || got.body != tt.body {
			t.Errorf("%s: %d %s, want %d %s", tt.path, got.status, got.body, tt.status, tt.body)
		}
		if tt.status == 500 && time.Since(start) > 2*time.Second {
			t.Errorf("%s: a refusal was answered after %v, retried toward the timeout", tt.path, time.Since(start))
		}
		if strings.Contains(got.body, clientSecret) {
			t.Errorf("%s: the answer holds the client secret", tt.path)
		}
		logs, _ := os.ReadFile(logFile)
		if !hasLogLine(logs, "error", "no OAuth token for Kafka: connections to the brokers fail until the token endpoint answers", tt.logged) {
			t.Errorf("%s: no error line gives the token endpoint's answer %q", tt.path, tt.logged)
		}
	}
	logs, _ := os.ReadFile(logFile)
	for _, f := range []string{clientSecret, url.QueryEscape(clientSecret), base64.StdEncoding.EncodeToString([]byte("producer:" + clientSecret))} {
		if strings.Contains(string(logs), f) {
			t.Errorf("Caddy's log holds the client secret (%q)", f)
		}
	}
	if strings.Contains(adminConfig(t), clientSecret) {
		t.Error("the running config holds the client secret")
	}
	if c.PartitionInfo("events", 0).HighWatermark != 0 {
		t.Error("a record reached the broker without a token")
	}
	unloadChecksLeaks(t)
}
