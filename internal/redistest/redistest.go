// Package redistest runs real Redis servers (Debian's redis-server, from
// PATH or $REDIS_SERVER) for the tests that need them: on loopback ports
// of their own, without persistence, stopped when the test ends. A single
// server, one with TLS (and client certificates), replicas, a Sentinel in front of them, or a Redis
// Cluster.
package redistest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server process.
type Server struct {
	t    testing.TB
	Addr string // host:port
	args []string
	cmd  *exec.Cmd
	// Client talks to the server, for the test's own checks.
	Client *redis.Client
}

// Start starts a server on a free loopback port.
func Start(t testing.TB) *Server { return StartWith(t, "") }

// StartWith starts a server whose default user needs password (none if
// empty).
func StartWith(t testing.TB, password string) *Server {
	t.Helper()
	addr, port := freeAddr(t)
	// A master waits 5 s (repl-diskless-sync-delay) for more replicas
	// before it syncs the first.
	args := []string{"--port", port, "--repl-diskless-sync-delay", "0"}
	if password != "" {
		args = append(args, "--requirepass", password)
	}
	return start(t, addr, args, &redis.Options{Addr: addr, Password: password, MaxRetries: -1})
}

// StartTLS starts a server that speaks TLS only, with the certificate and
// key of certFile and keyFile, issued by caFile's CA, which its client
// trusts.
func StartTLS(t testing.TB, certFile, keyFile, caFile string) *Server {
	t.Helper()
	return startTLS(t, certFile, keyFile, caFile, nil)
}

// StartMutualTLS is StartTLS for a server that also wants a client
// certificate issued by caFile's CA; its own client presents client.
func StartMutualTLS(t testing.TB, certFile, keyFile, caFile string, client tls.Certificate) *Server {
	t.Helper()
	return startTLS(t, certFile, keyFile, caFile, &client)
}

func startTLS(t testing.TB, certFile, keyFile, caFile string, client *tls.Certificate) *Server {
	t.Helper()
	addr, port := freeAddr(t)
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	authClients := "no"
	if client != nil {
		authClients = "yes"
		cfg.Certificates = []tls.Certificate{*client}
	}
	args := []string{"--port", "0", "--tls-port", port, "--tls-cert-file", certFile, "--tls-key-file", keyFile,
		"--tls-ca-cert-file", caFile, "--tls-auth-clients", authClients}
	return start(t, addr, args, &redis.Options{Addr: addr, MaxRetries: -1, TLSConfig: cfg})
}

// StartReplica starts a server that replicates master, and returns once
// it holds master's data.
func StartReplica(t testing.TB, master *Server) *Server {
	t.Helper()
	addr, port := freeAddr(t)
	host, masterPort, _ := net.SplitHostPort(master.Addr)
	s := start(t, addr, []string{"--port", port, "--replicaof", host, masterPort}, &redis.Options{Addr: addr, MaxRetries: -1})
	waitFor(t, func() error {
		info, err := s.Client.Info(context.Background(), "replication").Result()
		if err == nil && !strings.Contains(info, "master_link_status:up") {
			err = fmt.Errorf("not in sync with %s yet", master.Addr)
		}
		return err
	})
	return s
}

// StartSentinel starts a Sentinel that monitors master as "mymaster" and
// returns once it knows master's replicas. It fails over half a second
// after it lost the master (the default is 30 s).
func StartSentinel(t testing.TB, master *Server, replicas ...*Server) *Server {
	t.Helper()
	addr, port := freeAddr(t)
	host, masterPort, _ := net.SplitHostPort(master.Addr)
	conf := filepath.Join(t.TempDir(), "sentinel.conf") // Sentinel rewrites it
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`port %s
bind 127.0.0.1
sentinel monitor mymaster %s %s 1
sentinel down-after-milliseconds mymaster 500
sentinel failover-timeout mymaster 5000
`, port, host, masterPort)), 0o600); err != nil {
		t.Fatal(err)
	}
	s := start(t, addr, []string{conf, "--sentinel"}, &redis.Options{Addr: addr, MaxRetries: -1})
	waitFor(t, func() error {
		known, err := s.Client.Do(context.Background(), "SENTINEL", "REPLICAS", "mymaster").Slice()
		if err == nil && len(known) < len(replicas) {
			err = fmt.Errorf("knows %d of %d replicas", len(known), len(replicas))
		}
		return err
	})
	return s
}

// Master is the address of the master the Sentinel names now.
func (s *Server) Master() (string, error) {
	hp, err := s.Client.Do(context.Background(), "SENTINEL", "get-master-addr-by-name", "mymaster").StringSlice()
	if err != nil {
		return "", err
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("the Sentinel names %v", hp)
	}
	return net.JoinHostPort(hp[0], hp[1]), nil
}

// StartCluster starts a Redis Cluster of n masters (at least 3) and
// returns its nodes once every slot is served.
func StartCluster(t testing.TB, n int) []*Server {
	t.Helper()
	dir := t.TempDir()
	var nodes []*Server
	var addrs []string
	for range n {
		addr, port := freeAddr(t)
		args := []string{"--port", port, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes-"+port+".conf")}
		nodes = append(nodes, start(t, addr, args, &redis.Options{Addr: addr, MaxRetries: -1}))
		addrs = append(addrs, addr)
	}
	cli := exec.Command("redis-cli", append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")...)
	if out, err := cli.CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, node := range nodes {
		waitFor(t, func() error {
			info, err := node.Client.ClusterInfo(context.Background()).Result()
			if err == nil && !strings.Contains(info, "cluster_state:ok") {
				err = fmt.Errorf("not ok yet")
			}
			return err
		})
	}
	return nodes
}

func freeAddr(t testing.TB) (addr, port string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = ln.Addr().String()
	ln.Close()
	_, port, _ = net.SplitHostPort(addr)
	return addr, port
}

func start(t testing.TB, addr string, args []string, opts *redis.Options) *Server {
	t.Helper()
	// --dir: a replica's full sync still writes an RDB file, there.
	s := &Server{t: t, Addr: addr, args: append(args, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--logfile", "", "--dir", t.TempDir())}
	s.Client = redis.NewClient(opts)
	t.Cleanup(func() {
		s.Stop()
		s.Client.Close()
	})
	s.Restart()
	return s
}

// URL is the server's redis:// URL.
func (s *Server) URL() string { return "redis://" + s.Addr }

// Stop kills the server, as a crash would.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

// Pause makes the server stop answering without closing anything, as a
// host that hangs or a process that stalls would (SIGSTOP): its port still
// accepts connections, and commands wait unanswered. Resume, or the end of
// the test, lets it go on.
func (s *Server) Pause() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		s.t.Fatalf("pausing redis-server: %v", err)
	}
	s.t.Cleanup(s.Resume)
}

// Resume lets a paused server go on (SIGCONT).
func (s *Server) Resume() {
	if s.cmd != nil {
		s.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// Restart starts the server again on its port (empty: it keeps nothing)
// and waits until it answers.
func (s *Server) Restart() {
	s.t.Helper()
	bin := os.Getenv("REDIS_SERVER")
	if bin == "" {
		bin = "redis-server"
	}
	s.cmd = exec.Command(bin, s.args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server (Debian's package redis-server): %v", err)
	}
	waitFor(s.t, func() error { return s.Client.Ping(context.Background()).Err() })
}

// waitFor waits until ready returns nil, for at most 10 s.
func waitFor(t testing.TB, ready func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ready()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server does not get ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
