package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// adminGet fetches path from Caddy's admin API.
func adminGet(path string) ([]byte, error) {
	res, err := http.Get("http://" + adminAddr + path)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err == nil && res.StatusCode != 200 {
		err = fmt.Errorf("GET %s: %d %.200s", path, res.StatusCode, b)
	}
	return b, err
}

// goroutines is what runs in Caddy: all its goroutines, and those of the
// module and of kafka-go (their stacks name caddy-queue-publish or
// segmentio/kafka-go, in a frame or in "created by"), counted by the
// function that created them. A producer runs a sender per partition of
// each topic it has sent to (times max_in_flight), its kafka-go
// transport a metadata goroutine, and a goroutine per open broker
// connection: one per request in flight at once, kept while used (idle
// ones close after 30 s).
type goroutines struct {
	total, module              int
	senders, pools, conns, etc int
	byCreator                  map[string]int
}

// Creators of the goroutines of a producer.
const (
	creatorSender = "producer.(*Producer).sink"
	creatorPool   = "kafka-go.(*Transport).grabPool"
	creatorConn   = "kafka-go.(*connGroup).connect"
)

func (g goroutines) String() string {
	var parts []string
	for c, n := range g.byCreator {
		parts = append(parts, fmt.Sprintf("%d %s", n, c))
	}
	sort.Strings(parts)
	return fmt.Sprintf("%d of the module and kafka-go (%s), %d in all", g.module, strings.Join(parts, ", "), g.total)
}

func countGoroutines() (goroutines, error) {
	b, err := adminGet("/debug/pprof/goroutine?debug=2")
	if err != nil {
		return goroutines{}, err
	}
	g := goroutines{byCreator: map[string]int{}}
	for _, stanza := range bytes.Split(b, []byte("\n\n")) {
		s := string(stanza)
		if !strings.HasPrefix(strings.TrimSpace(s), "goroutine ") {
			continue
		}
		g.total++
		if !strings.Contains(s, "caddy-queue-publish") && !strings.Contains(s, "segmentio/kafka-go") {
			continue
		}
		g.module++
		creator := "?"
		if i := strings.Index(s, "created by "); i >= 0 {
			creator = strings.Fields(s[i+len("created by "):])[0]
			creator = creator[strings.LastIndexByte(creator, '/')+1:]
		}
		g.byCreator[creator]++
		switch creator {
		case creatorSender:
			g.senders++
		case creatorPool:
			g.pools++
		case creatorConn:
			g.conns++
		default:
			g.etc++
		}
	}
	if g.total == 0 {
		return g, fmt.Errorf("no goroutine in %.100s", b)
	}
	return g, nil
}

// heap is one sample of Caddy's Go heap, from expvar's memstats.
type heap struct {
	alloc, inuse uint64 // HeapAlloc and HeapInuse as found
	live         uint64 // HeapAlloc right after a forced collection
	numGC        uint32
}

func memstats() (alloc, inuse uint64, numGC uint32, err error) {
	b, err := adminGet("/debug/vars")
	if err != nil {
		return 0, 0, 0, err
	}
	var v struct {
		Memstats struct {
			HeapAlloc, HeapInuse uint64
			NumGC                uint32
		}
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return 0, 0, 0, err
	}
	if v.Memstats.HeapInuse == 0 {
		return 0, 0, 0, fmt.Errorf("no memstats in /debug/vars")
	}
	return v.Memstats.HeapAlloc, v.Memstats.HeapInuse, v.Memstats.NumGC, nil
}

// sampleHeap reads memstats as they are, then forces a collection
// (pprof's heap profile with gc=1) and reads HeapAlloc again: what the
// heap holds alive, without the garbage of the moment.
func sampleHeap() (heap, error) {
	var h heap
	var err error
	if h.alloc, h.inuse, h.numGC, err = memstats(); err != nil {
		return h, err
	}
	if _, err := adminGet("/debug/pprof/heap?gc=1"); err != nil {
		return h, err
	}
	h.live, _, _, err = memstats()
	return h, err
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

// logCount counts the lines of Caddy's log (since its last start) that
// hold msg as their message.
func (e *env) logCount(msg string) int {
	b, _ := os.ReadFile(filepath.Join(e.tmp, "caddy.log"))
	return bytes.Count(b, []byte(`"msg":"`+msg+`"`))
}

// The module's log messages (kafka.go, module.go).
const (
	msgStarted     = "Kafka producer started"
	msgClosed      = "Kafka producer closed"
	msgAsyncFailed = "asynchronous publish failed"
	msgTakenAgain  = "a request reached a config already unloaded: taking its producer again"
)

// waitFor polls cond every 100 ms until it holds or d has passed.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}
