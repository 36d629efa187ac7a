// Command reliability runs the reliability tests that take longer than a
// unit test: a Caddy built with xcaddy in front of the development broker
// in a process of its own, under load from concurrent clients that send
// records with unique ids. After each scenario the ids are looked for in
// the topic with franz-go, a Kafka client independent of the producer's:
// every id answered 2xx must be there, and no id answered "not_written".
//
//	go run ./test/reliability            # from the repository root
//	go run ./test/reliability -requests 1000000
//	go run ./test/reliability -run reload,shutdown
//	go run ./test/reliability -kafka   # on three Apache Kafka nodes
//
// With -kafka the brokers are a three-node Apache Kafka cluster
// (test/apachekafka; Java 17 and Maven fetch and run it) instead of the
// development broker: topics of three partitions, replication factor 3,
// min.insync.replicas 2; kill kills the node leading kill/0. There too
// an id stored twice fails the run: the producer is idempotent.
//
// Scenarios:
//   - load: many requests from 64 clients; every 2xx id stored exactly once.
//   - kill: the broker is killed (SIGKILL) and restarted on its data under
//     load; every 2xx id stored, no 503 id stored, recovery within seconds.
//   - kill-retry: the same with clients retrying each id with its
//     Idempotency-Key until it is answered 2xx; no id stored twice. The
//     broker is killed again (up to 3 times) until some client retried
//     after an unknown outcome (a 504 or no answer); how those retries
//     were answered is reported.
//   - reload: the config is reloaded through the admin API under load, with
//     unchanged and changed producer settings, with clients that Go's
//     transport may resend for (Idempotency-Key), then with clients that
//     nothing resends for, on kept-alive and on new connections; every
//     request without an answer is counted and must not have been
//     handled. Afterwards exactly one producer's goroutines run, and
//     Caddy's log shows one producer started and one closed per change of
//     its settings, none otherwise. -h2c adds clients speaking HTTP/2.
//   - shutdown: Caddy is stopped (SIGTERM) under load, on a route with
//     delivery sync and on one with delivery async; every 2xx (202) id is
//     stored, and every request without an answer is counted (by whether
//     it started before the signal) and must not have been handled.
//   - fleet: a second Caddy instance beside the first, both keeping
//     Idempotency-Keys on one Redis (redis-server, Debian's package, run
//     on a loopback port), and clients that send each id to one instance
//     and retry it, with its key, on the other after any answer but 2xx
//     or none; the broker is killed and restarted under this load (up to
//     3 times, until some retry followed an unknown outcome): every id
//     acknowledged is stored exactly once.
//   - memory: Caddy's live Go heap (expvar memstats after a forced
//     collection), sampled every second under sustained load, also with
//     Idempotency-Keys remembered for a window, does not trend up; a
//     200 MB body aimed at a 1 MB limit is refused at once, unread.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/harness"
)

const (
	caddyAddr = "127.0.0.1:18090"
	adminAddr = "localhost:2031"
	// The second instance of the fleet scenario.
	caddyAddr2 = "127.0.0.1:18091"
	adminAddr2 = "localhost:2032"
)

var (
	requests  = flag.Int("requests", 100000, "requests of the load scenario")
	caddyBin  = flag.String("caddy", "", "a Caddy binary with queue_publish and the dev broker; built with xcaddy if empty")
	h2c       = flag.Bool("h2c", true, "also run the reload scenario with HTTP/2 clients (h2c)")
	realKafka = flag.Bool("kafka", false, "run against a three-node Apache Kafka cluster (Java 17, Maven) instead of the development broker")
	scenarios = flag.String("run", "", "comma-separated scenarios to run (default all): "+strings.Join(scenarioNames(), ","))
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "reliability:", err)
		os.Exit(1)
	}
	fmt.Println("all reliability scenarios passed")
}

// env is the test's world: the binary, the processes, the secret.
type env struct {
	bin, tmp, secret string
	vars             []string
	caddy            *exec.Cmd
	brokers          brokers
	redis            *exec.Cmd // the fleet scenario's store
}

var allScenarios = []struct {
	name string
	run  func(*env) error
}{
	{"load", (*env).load},
	{"kill", (*env).kill},
	{"kill-retry", (*env).killRetry},
	{"reload", (*env).reload},
	{"shutdown", (*env).shutdown},
	{"fleet", (*env).fleet},
	{"memory", (*env).memory},
}

func scenarioNames() []string {
	var names []string
	for _, s := range allScenarios {
		names = append(names, s.name)
	}
	return names
}

func run() error {
	var selected []string
	if *scenarios != "" {
		selected = strings.Split(*scenarios, ",")
		for _, name := range selected {
			if !slices.Contains(scenarioNames(), name) {
				return fmt.Errorf("unknown scenario %q", name)
			}
		}
	}
	if err := harness.PortsFree(caddyAddr, adminAddr, caddyAddr2, adminAddr2); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "reliability")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	e := &env{bin: *caddyBin, tmp: tmp}
	if e.bin == "" {
		e.bin = filepath.Join(tmp, "caddy")
		if err := harness.BuildCaddy(e.bin); err != nil {
			return err
		}
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	e.secret = hex.EncodeToString(secret)
	e.vars = append(os.Environ(),
		"QUEUE_AUTH_SECRET="+e.secret,
		"RELIABILITY_DATA="+filepath.Join(tmp, "kafka"),
		"XDG_DATA_HOME="+filepath.Join(tmp, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(tmp, "config"))
	if selected == nil || slices.Contains(selected, "fleet") {
		redisAddr, err := e.startRedis()
		if err != nil {
			return err
		}
		e.vars = append(e.vars, "RELIABILITY_REDIS=redis://"+redisAddr)
		defer harness.Stop(e.redis)
	} else {
		e.vars = append(e.vars, "RELIABILITY_REDIS=redis://127.0.0.1:1") // unused
	}
	if *realKafka {
		e.brokers, err = startKafka(e)
	} else {
		e.brokers, err = startDevBroker(e)
	}
	if err != nil {
		return err
	}
	defer func() {
		harness.Stop(e.caddy)
		e.brokers.close()
	}()
	if err := e.startCaddy(); err != nil {
		return err
	}
	fmt.Println("machine:", harness.Machine())
	fmt.Println("brokers:", e.brokers)
	start := time.Now()
	for _, s := range allScenarios {
		if selected != nil && !slices.Contains(selected, s.name) {
			continue
		}
		fmt.Printf("%s:\n", s.name)
		begin := time.Now()
		err := s.run(e)
		if err == nil && e.caddy.ProcessState == nil && e.caddy.Process.Signal(syscall.Signal(0)) != nil {
			err = fmt.Errorf("caddy is not running any more")
		}
		if err != nil {
			e.printLogTail()
			if k, ok := e.brokers.(*kafkaCluster); ok {
				fmt.Fprint(os.Stderr, k.c.LogTails(20))
			}
			return fmt.Errorf("%s: %w", s.name, err)
		}
		fmt.Printf("%s: ok (%.1fs)\n", s.name, time.Since(begin).Seconds())
	}
	fmt.Printf("total %.0fs\n", time.Since(start).Seconds())
	return nil
}

// printLogTail prints the end of Caddy's log, for a scenario that failed.
func (e *env) printLogTail() {
	b, _ := os.ReadFile(filepath.Join(e.tmp, "caddy.log"))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	fmt.Fprintf(os.Stderr, "the last lines of Caddy's log:\n%s\n", strings.Join(lines[max(0, len(lines)-40):], "\n"))
}

// startCaddy starts the Caddy under test on e.caddyfile("reliability",
// "1MB"); its log starts afresh.
func (e *env) startCaddy() error {
	config := filepath.Join(e.tmp, "Caddyfile")
	if err := os.WriteFile(config, []byte(e.caddyfile("reliability", "1MB")), 0o600); err != nil {
		return err
	}
	var err error
	if e.caddy, err = harness.StartCaddy(e.bin, config, filepath.Join(e.tmp, "caddy.log"), e.vars); err != nil {
		return err
	}
	return harness.WaitPort(caddyAddr)
}

// caddyfile is the config under test; the topic is the second path
// segment. The routes share one producer (their producer settings are
// the same): /t/ answers once the broker has the record, /a/ with
// delivery async, /f/ keeps Idempotency-Keys on the fleet's Redis, /i/
// remembers them for 2 s only, so that the memory scenario reaches the
// store's steady state quickly; /i/ alone serves its topic, memory, since
// handlers of one topic keep its keys for the longest of their windows.
func (e *env) caddyfile(clientID, maxSize string) string {
	protocols := ""
	if *h2c {
		protocols = "\n\tservers {\n\t\tprotocols h1 h2 h2c\n\t}"
	}
	return fmt.Sprintf(`{
	admin %[1]s
	grace_period 10s%[6]s
}

http://%[2]s {
	queue_publish /t/* {
		brokers %[3]s
		topic {http.request.uri.path.1}
		allow_topics load kill reload reload-plain shutdown
		secret {env.QUEUE_AUTH_SECRET}
		client_id %[4]s
		max_size %[5]s
		timeout 2s
		idempotency_window 1m
	}
	queue_publish /a/* {
		brokers %[3]s
		topic {http.request.uri.path.1}
		allow_topics async
		secret {env.QUEUE_AUTH_SECRET}
		client_id %[4]s
		timeout 2s
		delivery async
	}
	queue_publish /f/* {
		brokers %[3]s
		topic {http.request.uri.path.1}
		allow_topics fleet
		secret {env.QUEUE_AUTH_SECRET}
		client_id %[4]s
		timeout 2s
		idempotency_window 1m
		idempotency_store redis {env.RELIABILITY_REDIS}
	}
	queue_publish /i/* {
		brokers %[3]s
		topic {http.request.uri.path.1}
		allow_topics memory
		secret {env.QUEUE_AUTH_SECRET}
		client_id %[4]s
		timeout 2s
		idempotency_window 2s
	}
}
`, adminAddr, caddyAddr, strings.Join(e.brokers.addrs(), " "), clientID, maxSize, protocols)
}
