package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/harness"
)

// startRedis starts the fleet's Redis (Debian's redis-server) on a free
// loopback port, without persistence, and returns its address.
func (e *env) startRedis() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	e.redis = exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := e.redis.Start(); err != nil {
		return "", fmt.Errorf("starting redis-server (apt-get install redis-server) for the fleet scenario: %w", err)
	}
	return addr, harness.WaitPort(addr)
}

// fleetCaddyfile is the second instance's config: the /f/ route alone,
// with a producer of its own, on the same Redis and brokers.
func (e *env) fleetCaddyfile() string {
	return fmt.Sprintf(`{
	admin %s
	grace_period 10s
}

http://%s {
	queue_publish /f/* {
		brokers %s
		topic {http.request.uri.path.1}
		allow_topics fleet
		secret {env.QUEUE_AUTH_SECRET}
		client_id reliability-b
		timeout 2s
		idempotency_window 1m
		idempotency_store redis {env.RELIABILITY_REDIS}
	}
}
`, adminAddr2, caddyAddr2, strings.Join(e.brokers.addrs(), " "))
}

// fleet runs two instances on one Redis, with clients that retry each id
// on the other instance, with its Idempotency-Key, after any answer but
// 2xx or none, and kills the broker under that load (up to 3 times,
// until some retry followed an unknown outcome): no id may be stored
// twice, whichever instance each attempt reached.
func (e *env) fleet() error {
	config := filepath.Join(e.tmp, "fleet.Caddyfile")
	if err := os.WriteFile(config, []byte(e.fleetCaddyfile()), 0o600); err != nil {
		return err
	}
	second, err := harness.StartCaddy(e.bin, config, filepath.Join(e.tmp, "caddy-b.log"), e.vars)
	if err != nil {
		return err
	}
	defer harness.Stop(second)
	if err := harness.WaitPort(caddyAddr2); err != nil {
		return err
	}
	if err := waitAnswers(caddyAddr2, e.secret); err != nil {
		return err
	}
	kills, l, r, err := e.retryUnderKills(loadOpts{path: "/f/fleet", addrs: []string{caddyAddr, caddyAddr2}})
	if err != nil {
		return err
	}
	l.mu.Lock()
	retriedUnknown, replayed, ackedAfterUnknown, replayedAfterUnknown := l.retriedUnknown, l.replayed, l.ackedAfterUnknown, l.replayedAfterUnknown
	l.mu.Unlock()
	fmt.Printf("  %d kill(s); two instances on one Redis, each retry on the other instance: %v\n  %v\n", kills, l, r)
	fmt.Printf("  %d ids acknowledged after an unknown outcome, %d of them answered from the first attempt (Idempotent-Replayed); %d 2xx replays in all\n",
		ackedAfterUnknown, replayedAfterUnknown, replayed)
	if retriedUnknown == 0 {
		return fmt.Errorf("in %d kills no retry followed an unknown outcome: the scenario's path was not exercised", kills)
	}
	return r.storedOnce(e.brokers)
}

// waitAnswers waits until the instance at addr answers a request (a GET:
// 405, nothing produced).
func waitAnswers(addr, secret string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/f/fleet", nil)
		req.Header.Set("Authorization", secret)
		res, err := http.DefaultClient.Do(req)
		cancel()
		if err == nil {
			res.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the second instance does not answer on %s", addr)
}
