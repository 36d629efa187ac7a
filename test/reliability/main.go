// Command reliability runs the reliability tests that take longer than a
// unit test: a Caddy built with xcaddy in front of the development broker
// in a process of its own, under load from concurrent clients that send
// records with unique ids. After each scenario every id that was answered
// 2xx is looked for in the topic with franz-go, a Kafka client independent
// of the producer's.
//
//	go run ./test/reliability            # from the repository root
//	go run ./test/reliability -requests 1000000
//
// Scenarios:
//   - load: many requests from 64 clients; every 2xx id stored exactly once.
//   - kill: the broker is killed (SIGKILL) and restarted on its data under
//     load; every 2xx id stored, recovery within seconds, duplicates counted.
//   - reload: the config is reloaded through the admin API under load, with
//     unchanged and changed producer settings; no request fails, and no
//     goroutine is left behind by the producers that went away.
//   - shutdown: Caddy is stopped (SIGTERM) under load; every request
//     answered 2xx before it exited is stored.
//   - memory: memory stays flat under sustained load, and a 200 MB body
//     aimed at a 1 MB limit is refused at once without being read.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuepublish/caddy-queue-publish/internal/harness"
)

const (
	brokerAddr = "127.0.0.1:19093"
	caddyAddr  = "127.0.0.1:18090"
	adminAddr  = "localhost:2031"
)

var (
	requests = flag.Int("requests", 100000, "requests of the load scenario")
	caddyBin = flag.String("caddy", "", "a Caddy binary with queue_publish and the dev broker; built with xcaddy if empty")
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
	broker, caddy    *exec.Cmd
}

func run() error {
	if err := harness.PortsFree(brokerAddr, caddyAddr); err != nil {
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
	defer func() { harness.Stop(e.caddy, e.broker) }()
	if err := e.startBroker(); err != nil {
		return err
	}
	if err := e.startCaddy(); err != nil {
		return err
	}
	fmt.Println("machine:", harness.Machine())
	for _, s := range []struct {
		name string
		run  func(*env) error
	}{
		{"load", (*env).load},
		{"kill", (*env).kill},
		{"kill-retry", (*env).killRetry},
		{"reload", (*env).reload},
		{"shutdown", (*env).shutdown},
		{"memory", (*env).memory},
	} {
		start := time.Now()
		if err := s.run(e); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		fmt.Printf("%s: ok (%.1fs)\n", s.name, time.Since(start).Seconds())
	}
	return nil
}

func (e *env) startBroker() error {
	var err error
	if e.broker, err = harness.StartCaddy(e.bin, "test/reliability/broker.Caddyfile", filepath.Join(e.tmp, "broker.log"), e.vars); err != nil {
		return err
	}
	return harness.WaitPort(brokerAddr)
}

func (e *env) startCaddy() error {
	config := filepath.Join(e.tmp, "Caddyfile")
	if err := os.WriteFile(config, []byte(caddyfile("reliability", "1MB")), 0o600); err != nil {
		return err
	}
	var err error
	if e.caddy, err = harness.StartCaddy(e.bin, config, filepath.Join(e.tmp, "caddy.log"), e.vars); err != nil {
		return err
	}
	return harness.WaitPort(caddyAddr)
}

// caddyfile is the config under test; the topic is the first path
// segment.
func caddyfile(clientID, maxSize string) string {
	return fmt.Sprintf(`{
	admin %s
	grace_period 10s
}

http://%s {
	queue_publish /t/* {
		brokers %s
		topic {http.request.uri.path.1}
		allow_topics load kill reload shutdown memory
		secret {env.QUEUE_AUTH_SECRET}
		client_id %s
		max_size %s
		timeout 2s
		idempotency_window 1m
	}
}
`, adminAddr, caddyAddr, brokerAddr, clientID, maxSize)
}

// load is the load of one scenario: clients sending records with unique
// ids until stop is closed or total requests are sent.
type load struct {
	topic     string
	prefix    string
	next      atomic.Int64
	mu        sync.Mutex
	acked     map[string]bool
	statuses  map[int]int
	errors    int
	firstErr  error
	lastOK    atomic.Int64 // UnixNano of the latest 2xx
	transport *http.Transport
}

// startLoad starts clients sending to topic; with idempotent, each request
// carries its id as Idempotency-Key, and with retry a client sends each id
// again (same key) until it is answered 2xx, up to 40 times.
func (e *env) startLoad(topic string, clients int, total int64, keepAlive, idempotent bool, stop <-chan struct{}) (*load, *sync.WaitGroup) {
	return e.startLoadRetrying(topic, clients, total, keepAlive, idempotent, false, stop)
}

func (e *env) startLoadRetrying(topic string, clients int, total int64, keepAlive, idempotent, retry bool, stop <-chan struct{}) (*load, *sync.WaitGroup) {
	l := &load{topic: topic, prefix: fmt.Sprintf("%s-%d", topic, loadSeq.Add(1)), acked: map[string]bool{}, statuses: map[int]int{},
		transport: &http.Transport{MaxIdleConnsPerHost: clients, DisableKeepAlives: !keepAlive}}
	client := &http.Client{Transport: l.transport, Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := l.next.Add(1)
				if total > 0 && n > total {
					return
				}
				id := fmt.Sprintf("%s-%d", l.prefix, n)
				for attempt := 0; ; attempt++ {
					ok := l.send(client, e.secret, id, idempotent)
					if ok || !retry || attempt == 39 || stopped(stop) {
						break
					}
					time.Sleep(100 * time.Millisecond) // the client's back-off
				}
			}
		}()
	}
	return l, &wg
}

func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// send sends one request for id and records its answer.
func (l *load) send(client *http.Client, secret, id string, idempotent bool) bool {
	req, _ := http.NewRequest("POST", "http://"+caddyAddr+"/t/"+l.topic, strings.NewReader(`{"id":"`+id+`"}`))
	req.Header.Set("Authorization", secret)
	if idempotent {
		// A request interrupted by a reload is safe to retry with it;
		// Go's client then retries by itself.
		req.Header.Set("Idempotency-Key", id)
	}
	res, err := client.Do(req)
	if err == nil {
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err != nil:
		l.errors++
		if l.firstErr == nil {
			l.firstErr = err
		}
	case res.StatusCode/100 == 2:
		l.acked[id] = true
		l.lastOK.Store(time.Now().UnixNano())
		l.statuses[res.StatusCode]++
		return true
	default:
		l.statuses[res.StatusCode]++
	}
	return false
}

// check reads the topic and reports the acknowledged ids that are missing
// and the ids stored more than once.
func (l *load) check() (missing, duplicates int, err error) {
	counts, err := readIDs(l.topic, len(l.acked))
	if err != nil {
		return 0, 0, err
	}
	for id := range l.acked {
		if counts[id] == 0 {
			missing++
		}
	}
	for _, n := range counts {
		duplicates += n - 1
	}
	return missing, duplicates, nil
}

func (l *load) String() string {
	return fmt.Sprintf("%d acknowledged, statuses %v, %d transport errors (first: %v)", len(l.acked), l.statuses, l.errors, l.firstErr)
}

// readIDs counts the ids in topic with franz-go, until it has read at least
// want records and nothing more arrives.
func readIDs(topic string, want int) (map[string]int, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokerAddr), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	counts := map[string]int{}
	total := 0
	deadline := time.Now().Add(60 * time.Second)
	idle := 0
	for time.Now().Before(deadline) && (total < want || idle < 3) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fetches := cl.PollFetches(ctx)
		cancel()
		if errs := fetches.Errors(); len(errs) > 0 && !errors.Is(errs[0].Err, context.DeadlineExceeded) {
			return nil, errs[0].Err
		}
		recs := fetches.Records()
		if len(recs) == 0 {
			idle++
		} else {
			idle = 0
		}
		for _, r := range recs {
			var v struct{ ID string }
			if err := json.Unmarshal(r.Value, &v); err != nil {
				return nil, fmt.Errorf("record %q: %v", r.Value, err)
			}
			counts[v.ID]++
			total++
		}
	}
	return counts, nil
}

func (e *env) load() error {
	l, wg := e.startLoad("load", 64, int64(*requests), true, false, nil)
	start := time.Now()
	wg.Wait()
	took := time.Since(start)
	missing, dups, err := l.check()
	if err != nil {
		return err
	}
	fmt.Printf("  %d requests in %.1fs (%.0f/s): %v; %d missing, %d duplicates\n",
		*requests, took.Seconds(), float64(*requests)/took.Seconds(), l, missing, dups)
	if len(l.acked) != *requests || missing > 0 || dups > 0 {
		return fmt.Errorf("want every request acknowledged and stored exactly once")
	}
	return nil
}

func (e *env) kill() error {
	stop := make(chan struct{})
	l, wg := e.startLoad("kill", 32, 0, true, false, stop)
	time.Sleep(2 * time.Second) // load before the crash
	if err := harness.Signal(e.broker, syscall.SIGKILL); err != nil {
		return err
	}
	e.broker.Wait()
	killedAt := time.Now()
	before := len(l.acked)
	time.Sleep(2 * time.Second) // load while the broker is down
	if err := e.startBroker(); err != nil {
		return err
	}
	restartedAt := time.Now()
	deadline := time.Now().Add(15 * time.Second)
	for l.lastOK.Load() < restartedAt.UnixNano() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	recovered := time.Duration(l.lastOK.Load() - restartedAt.UnixNano())
	time.Sleep(2 * time.Second) // load after the restart
	close(stop)
	wg.Wait()
	missing, dups, err := l.check()
	if err != nil {
		return err
	}
	fmt.Printf("  %v; down for %.1fs; first 2xx %.2fs after the restart; %d missing, %d duplicates\n",
		l, restartedAt.Sub(killedAt).Seconds(), recovered.Seconds(), missing, dups)
	switch {
	case missing > 0:
		return fmt.Errorf("%d acknowledged records missing", missing)
	case recovered <= 0 || recovered > 10*time.Second:
		return fmt.Errorf("no recovery within 10s of the restart")
	case len(l.acked) <= before:
		return fmt.Errorf("nothing acknowledged after the crash")
	}
	return nil
}

// killRetry is kill with clients that retry each id with its
// Idempotency-Key until it is acknowledged: no id may be stored twice.
func (e *env) killRetry() error {
	stop := make(chan struct{})
	l, wg := e.startLoadRetrying("kill", 32, 0, true, true, true, stop)
	time.Sleep(2 * time.Second)
	if err := harness.Signal(e.broker, syscall.SIGKILL); err != nil {
		return err
	}
	e.broker.Wait()
	time.Sleep(2 * time.Second)
	if err := e.startBroker(); err != nil {
		return err
	}
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	counts, err := readIDs("kill", len(l.acked))
	if err != nil {
		return err
	}
	twice, unacked := 0, 0
	for id, n := range counts {
		if !strings.HasPrefix(id, l.prefix+"-") {
			continue // the kill scenario's records
		}
		if n > 1 {
			twice++
		}
		if !l.acked[id] {
			unacked++
		}
	}
	missing := 0
	for id := range l.acked {
		if counts[id] == 0 {
			missing++
		}
	}
	fmt.Printf("  retrying with Idempotency-Key: %v; %d ids stored twice, %d missing, %d stored but never acknowledged (their outcome stayed unknown)\n",
		l, twice, missing, unacked)
	if twice > 0 || missing > 0 {
		return fmt.Errorf("%d ids stored twice, %d acknowledged ids missing", twice, missing)
	}
	return nil
}

var loadSeq atomic.Int64

var goroutineTotal = regexp.MustCompile(`goroutine profile: total (\d+)`)

// goroutines is the number of goroutines in Caddy, from its admin API.
func goroutines() (int, error) {
	res, err := http.Get("http://" + adminAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	m := goroutineTotal.FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("no goroutine count in %.100s", b)
	}
	return strconv.Atoi(string(m[1]))
}

func reloadCaddy(config string) error {
	res, err := http.Post("http://"+adminAddr+"/load", "text/caddyfile", strings.NewReader(config))
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		b, _ := io.ReadAll(res.Body)
		return fmt.Errorf("reload: %d %s", res.StatusCode, b)
	}
	return nil
}

func (e *env) reload() error {
	warm, wg := e.startLoad("reload", 8, 200, true, true, nil)
	wg.Wait()
	before, err := goroutines()
	if err != nil {
		return err
	}
	stop := make(chan struct{})
	l, wg := e.startLoad("reload", 32, 0, true, true, stop)
	for id := range warm.acked {
		l.acked[id] = true
	}
	configs := []string{
		caddyfile("reliability", "900KB"),   // the same producer
		caddyfile("reliability-b", "900KB"), // another producer
		caddyfile("reliability-b", "1MB"),   // the same
		caddyfile("reliability", "1MB"),     // another
	}
	for i := range 12 {
		time.Sleep(300 * time.Millisecond)
		if err := reloadCaddy(configs[i%len(configs)]); err != nil {
			return err
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	// Let the producers that no config uses finish closing.
	var after int
	deadline := time.Now().Add(10 * time.Second)
	for {
		if after, err = goroutines(); err != nil {
			return err
		}
		if after <= before+10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	missing, dups, err := l.check()
	if err != nil {
		return err
	}
	fmt.Printf("  12 reloads (6 changing the producer): %v; %d missing, %d duplicates; goroutines %d before, %d after\n",
		l, missing, dups, before, after)
	failed := l.errors
	for status, n := range l.statuses {
		if status/100 != 2 {
			failed += n
		}
	}
	switch {
	case failed > 0:
		return fmt.Errorf("%d requests failed across the reloads", failed)
	case missing > 0 || dups > 0:
		return fmt.Errorf("%d missing, %d duplicated", missing, dups)
	case after > before+10:
		return fmt.Errorf("goroutines went from %d to %d: producers leaked", before, after)
	}
	return nil
}

func (e *env) shutdown() error {
	stop := make(chan struct{})
	l, wg := e.startLoad("shutdown", 32, 0, true, false, stop)
	time.Sleep(2 * time.Second)
	if err := harness.Signal(e.caddy, syscall.SIGTERM); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- e.caddy.Wait() }()
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		return fmt.Errorf("caddy did not exit within 20s of SIGTERM")
	}
	close(stop)
	wg.Wait()
	missing, dups, err := l.check()
	if err != nil {
		return err
	}
	fmt.Printf("  %v; %d missing, %d duplicates\n", l, missing, dups)
	if missing > 0 {
		return fmt.Errorf("%d records answered 2xx before the shutdown are missing", missing)
	}
	return e.startCaddy()
}

func (e *env) memory() error {
	pid := e.caddy.Process.Pid
	stop := make(chan struct{})
	l, wg := e.startLoad("memory", 32, 0, true, false, stop)
	time.Sleep(3 * time.Second)
	early := harness.RSS(pid)
	time.Sleep(7 * time.Second)
	late := harness.RSS(pid)
	close(stop)
	wg.Wait()
	fmt.Printf("  sustained load: %v; RSS %d MB after 3s, %d MB after 10s\n", l, early>>20, late>>20)
	if late > early+50<<20 {
		return fmt.Errorf("RSS grew from %d to %d MB under steady load", early>>20, late>>20)
	}

	for _, chunked := range []bool{false, true} {
		before := harness.RSS(pid)
		start := time.Now()
		status, err := hugeBody(e.secret, 200<<20, chunked)
		took := time.Since(start)
		after := harness.RSS(pid)
		fmt.Printf("  200 MB body (chunked %v) at a 1 MB limit: %d in %.2fs (%v); RSS %d -> %d MB\n",
			chunked, status, took.Seconds(), err, before>>20, after>>20)
		if status != 413 || took > 5*time.Second || after > before+50<<20 {
			return fmt.Errorf("want a 413 at once without buffering the body")
		}
	}
	return nil
}

// hugeBody posts size bytes (generated, never in memory) and returns the
// status of the answer; the server may answer before the body is sent.
func hugeBody(secret string, size int64, chunked bool) (int, error) {
	body := io.LimitReader(zeros{}, size)
	req, _ := http.NewRequest("POST", "http://"+caddyAddr+"/t/memory", body)
	if chunked {
		req.ContentLength = -1
	} else {
		req.ContentLength = size
	}
	req.Header.Set("Authorization", secret)
	res, err := (&http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	io.Copy(io.Discard, res.Body)
	return res.StatusCode, nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = '0'
	}
	return len(p), nil
}
