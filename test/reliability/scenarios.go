package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/harness"
)

func (e *env) load() error {
	l, wg := e.startLoad(loadOpts{path: "/t/load", clients: 64, total: int64(*requests)})
	start := time.Now()
	wg.Wait()
	took := time.Since(start)
	r, err := l.check()
	if err != nil {
		return err
	}
	fmt.Printf("  %d requests in %.1fs (%.0f/s): %v\n  %v\n", *requests, took.Seconds(), float64(*requests)/took.Seconds(), l, r)
	if l.acked() != *requests || r.missing > 0 || r.duplicates > 0 {
		return fmt.Errorf("want every request acknowledged and stored exactly once")
	}
	return nil
}

func (e *env) kill() error {
	stop := make(chan struct{})
	l, wg := e.startLoad(loadOpts{path: "/t/kill", clients: 32, stop: stop})
	time.Sleep(2 * time.Second) // load before the crash
	before := l.acked()
	killedAt, restartedAt, err := e.brokers.crash(2 * time.Second)
	if err != nil {
		return err
	}
	deadline := restartedAt.Add(15 * time.Second)
	for l.lastOK.Load() < restartedAt.UnixNano() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	firstOK := time.Duration(l.lastOK.Load() - restartedAt.UnixNano())
	recovered := firstOK > 0
	time.Sleep(2 * time.Second) // load after the restart
	close(stop)
	wg.Wait()
	r, err := l.check()
	if err != nil {
		return err
	}
	fmt.Printf("  %v\n  down for %.1fs; first 2xx %.2fs after the restart\n  %v\n",
		l, restartedAt.Sub(killedAt).Seconds(), firstOK.Seconds(), r)
	switch {
	case r.missing > 0:
		return fmt.Errorf("%d acknowledged records missing", r.missing)
	case r.notWrittenStored > 0:
		return fmt.Errorf("%d records answered not_written (503) are in the topic", r.notWrittenStored)
	case !recovered || firstOK > 10*time.Second:
		return fmt.Errorf("no recovery within 10s of the restart")
	case l.acked() <= before:
		return fmt.Errorf("nothing acknowledged after the crash")
	}
	return nil
}

// killRetry is kill with clients that retry each id with its
// Idempotency-Key until it is acknowledged: no id may be stored twice. The
// broker is killed again (up to 3 times) until some client retried after
// an unknown outcome (a 504, or no answer), the path this scenario is for.
func (e *env) killRetry() error {
	kills, l, r, err := e.retryUnderKills(loadOpts{path: "/t/kill"})
	if err != nil {
		return err
	}
	l.mu.Lock()
	unknown, failed, retriedUnknown, replayedUnknown := l.statuses[http.StatusGatewayTimeout], len(l.failures), l.retriedUnknown, l.replayedUnknown
	l.mu.Unlock()
	fmt.Printf("  %d kill(s); clients retrying with Idempotency-Key: %v\n  %v\n", kills, l, r)
	fmt.Printf("  the retry after an unknown outcome: %d answers 504 (%d of them repeats answered from the first attempt) and %d without an answer, on %d ids; %d retries of them; %d of these ids acknowledged later, %d never (%d of those in the topic)\n",
		unknown, replayedUnknown, failed, r.unknownIDs, retriedUnknown, r.unknownAcked, r.unknownIDs-r.unknownAcked, r.unknownStored)
	switch {
	case unknown+failed == 0 || retriedUnknown == 0:
		return fmt.Errorf("in %d kills no 504 nor transport error was retried (%d 504s, %d transport errors): the retry after an unknown outcome was not exercised", kills, unknown, failed)
	}
	// The client's Idempotency-Key keeps its own retries from
	// duplicating, and the idempotent producer its own.
	return r.storedOnce(e.brokers)
}

// storedOnce fails a load of retried ids unless every id acknowledged is
// stored, once, and none answered only not_written is. A batch the
// producer resent across a crash may be in the topic twice only on
// brokers that forget, when killed, which batches they appended.
func (r result) storedOnce(b brokers) error {
	switch {
	case r.missing > 0:
		return fmt.Errorf("%d acknowledged ids missing", r.missing)
	case r.duplicates > r.reappended:
		return fmt.Errorf("%d ids stored twice by two attempts", r.duplicates-r.reappended)
	case r.reappended > 0 && b.keepsProducerState():
		return fmt.Errorf("%d records of batches the producer resent appended twice by %v", r.reappended, b)
	case r.notWrittenStored > 0:
		return fmt.Errorf("%d ids answered only not_written are in the topic", r.notWrittenStored)
	}
	return nil
}

// retryUnderKills runs a load of 32 clients that retry each id with its
// Idempotency-Key (o says where to), kills the broker under it (see
// killUntilRetriedUnknown), and returns the kills, the load and what the
// topic holds.
func (e *env) retryUnderKills(o loadOpts) (int, *load, result, error) {
	stop := make(chan struct{})
	o.clients, o.idempotent, o.retry, o.stop = 32, true, true, stop
	l, wg := e.startLoad(o)
	time.Sleep(2 * time.Second) // load before the crash
	kills, err := e.killUntilRetriedUnknown(l)
	close(stop)
	wg.Wait()
	if err != nil {
		return kills, l, result{}, err
	}
	r, err := l.check()
	return kills, l, r, err
}

// killUntilRetriedUnknown kills the broker under l's load, up to 3 times,
// until some client retried after an unknown outcome (a 504, or no
// answer); it returns the kills.
func (e *env) killUntilRetriedUnknown(l *load) (int, error) {
	kills := 0
	for kills < 3 {
		kills++
		if _, _, err := e.brokers.crash(2 * time.Second); err != nil {
			return kills, err
		}
		time.Sleep(3 * time.Second) // load after the restart
		l.mu.Lock()
		n := l.retriedUnknown
		l.mu.Unlock()
		if n > 0 {
			break
		}
	}
	return kills, nil
}

// settledGoroutines waits until Caddy's log shows as many producers closed
// as started but one, and the module's goroutines stop changing, then
// returns them.
func (e *env) settledGoroutines(d time.Duration) (goroutines, error) {
	var g goroutines
	prev := -1
	var err error
	ok := waitFor(d, func() bool {
		if e.logCount(msgStarted)-e.logCount(msgClosed) != 1 {
			return false
		}
		if g, err = countGoroutines(); err != nil {
			return true
		}
		same := g.module == prev && g.etc == 0
		prev = g.module
		return same
	})
	if err != nil {
		return g, err
	}
	if !ok {
		return g, fmt.Errorf("not settled within %v: %d producers started, %d closed; goroutines: %v", d, e.logCount(msgStarted), e.logCount(msgClosed), g)
	}
	return g, nil
}

func (e *env) reload() error {
	// What one producer needs: a fresh producer, after traffic to one
	// topic of 3 partitions, as the last producer below will have.
	if err := reloadCaddy(e.caddyfile("reliability-base", "1MB")); err != nil {
		return err
	}
	warm, wg := e.startLoad(loadOpts{path: "/t/reload", clients: 8, total: 200})
	wg.Wait()
	warm.transport.CloseIdleConnections()
	if warm.acked() != 200 {
		return fmt.Errorf("warm-up: %v", warm)
	}
	one, err := e.settledGoroutines(10 * time.Second)
	if err != nil {
		return err
	}
	fmt.Printf("  one producer, after traffic to one topic: %v\n", one)
	started0, closed0, late0 := e.logCount(msgStarted), e.logCount(msgClosed), e.logCount(msgTakenAgain)

	clientID, maxSize, changes, kept := "reliability-base", "1MB", 0, 0
	variants := []struct {
		name string
		opts loadOpts
	}{
		{"with Idempotency-Key (Go's transport resends what a closed connection interrupted)", loadOpts{path: "/t/reload", idempotent: true}},
		{"that nothing resends (no Idempotency-Key, body not rewindable), kept-alive connections", loadOpts{path: "/t/reload-plain", plain: true}},
		{"that nothing resends, a new connection for every request", loadOpts{path: "/t/reload-plain", plain: true, noKeepAlive: true}},
	}
	if *h2c {
		variants = append(variants, struct {
			name string
			opts loadOpts
		}{"over HTTP/2 without TLS, body rewindable, no Idempotency-Key", loadOpts{path: "/t/reload-plain", h2c: true}})
	}
	for _, v := range variants {
		stop := make(chan struct{})
		v.opts.clients, v.opts.stop = 32, stop
		l, wg := e.startLoad(v.opts)
		for i := range 12 {
			time.Sleep(300 * time.Millisecond)
			if i%2 == 0 { // the same producer
				kept++
				maxSize = map[string]string{"1MB": "900KB", "900KB": "1MB"}[maxSize]
			} else { // another producer
				changes++
				clientID = fmt.Sprintf("reliability-%d", changes)
			}
			if err := reloadCaddy(e.caddyfile(clientID, maxSize)); err != nil {
				return err
			}
		}
		time.Sleep(300 * time.Millisecond)
		close(stop)
		wg.Wait()
		r, err := l.check()
		if err != nil {
			return err
		}
		fmt.Printf("  12 reloads (6 changing the producer), clients %s:\n    %v\n    %v\n", v.name, l, r)
		l.mu.Lock()
		for i, f := range l.failures {
			if i == 2 {
				break
			}
			fmt.Printf("    e.g. %v (kept-alive connection %v, request written %v)\n", f.err, f.reused, f.wrote)
		}
		l.mu.Unlock()
		// Requests without an answer are allowed, if they were not
		// handled: closing connections of the old server drops them
		// (see docs/reliability.md). Every request handled is answered 2xx, also
		// one that the unloaded config's server hands over after the
		// config's Cleanup.
		switch {
		case l.failedStatuses() > 0:
			return fmt.Errorf("clients %s: requests answered other than 2xx across the reloads", v.name)
		case r.failedStored > 0:
			return fmt.Errorf("clients %s: %d requests got no answer though they were handled (their ids are in the topic: %v)", v.name, r.failedStored, r.failedIDs)
		case r.notWrittenStored > 0:
			return fmt.Errorf("clients %s: %d records answered not_written are in the topic", v.name, r.notWrittenStored)
		case r.missing > 0 || r.duplicates > 0:
			return fmt.Errorf("clients %s: %d missing, %d duplicated", v.name, r.missing, r.duplicates)
		}
	}

	// The producers that no config uses are closed, and what runs is what
	// one producer needs.
	after, err := e.settledGoroutines(10 * time.Second)
	if err != nil {
		return err
	}
	// A request that reaches a config after its Cleanup takes its
	// producer again, starting one if the settings changed since.
	started, closed := e.logCount(msgStarted)-started0, e.logCount(msgClosed)-closed0
	late := e.logCount(msgTakenAgain) - late0
	fmt.Printf("  producers: %d started and %d closed for %d changes of their settings (and %d requests that reached a config after it was unloaded), none for the %d reloads that kept them\n  after the reloads: %v\n",
		started, closed, changes, late, kept, after)
	switch {
	case started != closed || started < changes || started > changes+late:
		return fmt.Errorf("%d producers started and %d closed, want as many, one per change of the producer settings (%d) and at most one per late request (%d)", started, closed, changes, late)
	case after.senders != one.senders || after.pools != one.pools || after.etc != 0 || after.conns > after.senders+2:
		return fmt.Errorf("after the reloads: %v; want what one producer needs: %d broker sinks, %d kafka-go metadata goroutine, at most one connection per request in flight (%d)",
			after, one.senders, one.pools, after.senders+2)
	}
	return nil
}

func (e *env) shutdown() error {
	for _, v := range []struct {
		name, path string
	}{
		{"delivery sync", "/t/shutdown"},
		{"delivery async", "/a/async"},
	} {
		fmt.Printf("  %s:\n", v.name)
		if err := e.shutdownOnce(v.path); err != nil {
			return fmt.Errorf("%s: %w", v.name, err)
		}
	}
	return nil
}

// shutdownOnce stops Caddy with SIGTERM under load on path, with clients
// that nothing resends for, then starts it again.
func (e *env) shutdownOnce(path string) error {
	stop := make(chan struct{})
	l, wg := e.startLoad(loadOpts{path: path, clients: 32, plain: true, stop: stop})
	time.Sleep(2 * time.Second)
	closed0 := e.logCount(msgClosed)
	sigAt := time.Now()
	if err := harness.Signal(e.caddy, syscall.SIGTERM); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- e.caddy.Wait() }()
	var exitErr error
	select {
	case exitErr = <-exited:
	case <-time.After(20 * time.Second):
		return fmt.Errorf("caddy did not exit within 20s of SIGTERM")
	}
	took := time.Since(sigAt)
	close(stop)
	wg.Wait()
	closed, asyncFailed := e.logCount(msgClosed)-closed0, e.logCount(msgAsyncFailed)
	r, err := l.check()
	if err != nil {
		return err
	}
	var before, after []failure
	l.mu.Lock()
	for _, f := range l.failures {
		if f.start.Before(sigAt) {
			before = append(before, f)
		} else {
			after = append(after, f)
		}
	}
	l.mu.Unlock()
	fmt.Printf("    %v\n    exited %.2fs after SIGTERM (%v); log: %d %q, %d %q\n    %v\n",
		l, took.Seconds(), exitErr, closed, msgClosed, asyncFailed, msgAsyncFailed, r)
	fmt.Printf("    started before SIGTERM and got no answer: %d", len(before))
	if len(before) > 0 {
		fmt.Printf(" (%s)", summarizeErrors(before))
	}
	fmt.Printf("; started after it: %d", len(after))
	if len(after) > 0 {
		fmt.Printf(" (%s)", summarizeErrors(after))
	}
	fmt.Println()
	switch {
	case exitErr != nil:
		return fmt.Errorf("caddy exited with %v", exitErr)
	case r.missing > 0:
		return fmt.Errorf("%d records answered 2xx before the shutdown are missing", r.missing)
	case r.notWrittenStored > 0:
		return fmt.Errorf("%d records answered not_written are in the topic", r.notWrittenStored)
	case r.failedStored > 0:
		return fmt.Errorf("%d requests got no answer though they were handled (their ids are in the topic: %v)", r.failedStored, r.failedIDs)
	case closed != 1:
		return fmt.Errorf("the log has %d %q, want 1: the producer was not flushed and closed", closed, msgClosed)
	case asyncFailed > 0:
		return fmt.Errorf("%d asynchronous records failed", asyncFailed)
	case l.acked() == 0:
		return fmt.Errorf("nothing acknowledged")
	}
	return e.startCaddy()
}

// memory samples Caddy's Go heap every second under sustained load: a
// phase of plain requests, then one with Idempotency-Keys on a route that
// remembers them for 2 s. In each, the live heap (after a forced
// collection) of the last third of the samples must not exceed that of
// the first third by more than 25% + 4 MiB.
func (e *env) memory() error {
	pid := e.caddy.Process.Pid
	rss0 := harness.RSS(pid)
	for _, phase := range []struct {
		name           string
		opts           loadOpts
		warmup, length time.Duration
	}{
		{"plain requests", loadOpts{path: "/i/memory"}, 3 * time.Second, 12 * time.Second},
		{"every request with an Idempotency-Key, idempotency_window 2s", loadOpts{path: "/i/memory", idempotent: true}, 5 * time.Second, 15 * time.Second},
	} {
		stop := make(chan struct{})
		phase.opts.clients, phase.opts.stop = 32, stop
		l, wg := e.startLoad(phase.opts)
		time.Sleep(phase.warmup) // to the steady state (for the keys: two windows)
		var samples []heap
		for end := time.Now().Add(phase.length); time.Now().Before(end); {
			time.Sleep(time.Second)
			h, err := sampleHeap()
			if err != nil {
				close(stop)
				wg.Wait()
				return err
			}
			samples = append(samples, h)
		}
		close(stop)
		wg.Wait()
		r, err := l.check()
		if err != nil {
			return err
		}
		third := len(samples) / 3
		first, last := meanLive(samples[:third]), meanLive(samples[len(samples)-third:])
		var lo, hi uint64 = ^uint64(0), 0
		for _, s := range samples {
			lo, hi = min(lo, s.inuse), max(hi, s.inuse)
		}
		fmt.Printf("  %s, %.0fs: %v; %v\n", phase.name, (phase.warmup + phase.length).Seconds(), l, r)
		fmt.Printf("    live heap (HeapAlloc after a forced GC), %d samples 1s apart: %s\n", len(samples), mib(samples))
		fmt.Printf("    mean of the first third %.1f MiB, of the last third %.1f MiB; HeapInuse %.1f..%.1f MiB; RSS %d MB\n",
			float64(first)/(1<<20), float64(last)/(1<<20), float64(lo)/(1<<20), float64(hi)/(1<<20), harness.RSS(pid)>>20)
		if l.failedStatuses() > 0 || l.errors() > 0 || r.missing > 0 || r.duplicates > 0 {
			return fmt.Errorf("%s: want every request answered 2xx and stored once", phase.name)
		}
		if float64(last) > 1.25*float64(first)+4<<20 {
			return fmt.Errorf("%s: the live heap grew from %.1f to %.1f MiB under steady load", phase.name, float64(first)/(1<<20), float64(last)/(1<<20))
		}
	}
	fmt.Printf("  RSS %d MB before the load, %d MB after\n", rss0>>20, harness.RSS(pid)>>20)

	for _, chunked := range []bool{false, true} {
		before, err := sampleHeap()
		if err != nil {
			return err
		}
		rss := harness.RSS(pid)
		status, written, took, err := hugeBody(e.secret, 200<<20, chunked)
		after, err2 := sampleHeap()
		if err2 != nil {
			return err2
		}
		fmt.Printf("  200 MB body (chunked %v) at a 1 MB limit: %d in %.1fms (%v); the client wrote %.1f MB before the server closed; live heap %.1f -> %.1f MiB, RSS %d -> %d MB\n",
			chunked, status, float64(took.Microseconds())/1000, err, float64(written)/1e6, float64(before.live)/(1<<20), float64(after.live)/(1<<20), rss>>20, harness.RSS(pid)>>20)
		if status != 413 || took > 2*time.Second || written > 50<<20 || after.live > before.live+50<<20 {
			return fmt.Errorf("want a 413 at once without reading the body")
		}
	}
	// What a client that writes its whole body before reading the answer
	// sees: Go's http.Client.
	status, err := goClientHugeBody(e.secret, 200<<20)
	fmt.Printf("  the same with Go's http.Client (Content-Length): status %d, error %v\n", status, err)
	return nil
}

func meanLive(hs []heap) uint64 {
	var sum uint64
	for _, h := range hs {
		sum += h.live
	}
	return sum / uint64(max(len(hs), 1))
}

func mib(hs []heap) string {
	var parts []string
	for _, h := range hs {
		parts = append(parts, fmt.Sprintf("%.1f", float64(h.live)/(1<<20)))
	}
	return strings.Join(parts, " ") + " MiB"
}

// hugeBody sends a POST of size bytes (generated, never in memory) over
// a raw connection, reading the answer while it writes, as a client must
// to see an answer given before the body is read: Caddy closes the
// connection right after answering, and the reset that follows a close
// with unread data may reach a client that is still writing before it
// reads the answer. It returns the status, the bytes written before the
// connection failed, and the time to the answer.
func hugeBody(secret string, size int64, chunked bool) (status int, written int64, took time.Duration, err error) {
	c, err := net.Dial("tcp", caddyAddr)
	if err != nil {
		return 0, 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	framing := fmt.Sprintf("Content-Length: %d", size)
	if chunked {
		framing = "Transfer-Encoding: chunked"
	}
	start := time.Now()
	fmt.Fprintf(c, "POST /i/memory HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nContent-Type: application/json\r\n%s\r\n\r\n", caddyAddr, secret, framing)
	wrote := make(chan int64, 1)
	go func() {
		chunk := []byte(strings.Repeat("0", 64<<10))
		var n int64
		for n < size {
			var err error
			if chunked {
				_, err = fmt.Fprintf(c, "%x\r\n%s\r\n", len(chunk), chunk)
			} else {
				_, err = c.Write(chunk)
			}
			if err != nil {
				break
			}
			n += int64(len(chunk))
		}
		wrote <- n
	}()
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	took = time.Since(start)
	if err == nil {
		status = res.StatusCode
		io.Copy(io.Discard, res.Body)
	}
	c.Close()
	return status, <-wrote, took, err
}

// goClientHugeBody posts size bytes with Go's http.Client.
func goClientHugeBody(secret string, size int64) (int, error) {
	req, _ := http.NewRequest("POST", "http://"+caddyAddr+"/i/memory", io.LimitReader(zeros{}, size))
	req.ContentLength = size
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
