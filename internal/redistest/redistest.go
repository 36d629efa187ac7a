// Package redistest runs a real Redis server (Debian's redis-server, from
// PATH or $REDIS_SERVER) for the tests that need one: on a loopback port
// of its own, without persistence, stopped when the test ends.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server process.
type Server struct {
	t    testing.TB
	Addr string // host:port
	cmd  *exec.Cmd
	// password is required of clients, if set.
	password string
	// Client talks to the server, for the test's own checks.
	Client *redis.Client
}

// Start starts a server on a free loopback port.
func Start(t testing.TB) *Server { return StartWith(t, "") }

// StartWith starts a server whose default user needs password (none if
// empty).
func StartWith(t testing.TB, password string) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &Server{t: t, Addr: addr, password: password}
	s.Client = redis.NewClient(&redis.Options{Addr: addr, Password: password, MaxRetries: -1})
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

// Restart starts the server again on its port (empty: it keeps nothing)
// and waits until it answers.
func (s *Server) Restart() {
	s.t.Helper()
	bin := os.Getenv("REDIS_SERVER")
	if bin == "" {
		bin = "redis-server"
	}
	_, port, _ := net.SplitHostPort(s.Addr)
	args := []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--logfile", ""}
	if s.password != "" {
		args = append(args, "--requirepass", s.password)
	}
	s.cmd = exec.Command(bin, args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server (Debian's package redis-server): %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := s.Client.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatal(fmt.Errorf("redis-server on %s does not answer: %v", s.Addr, err))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
