//go:build kafka

package queuepublish

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/test/apachekafka"
)

// answered is one request of a load: its id, when it was sent and
// answered, and the answer.
type answered struct {
	id         string
	start, end time.Time
	status     int // 0: no HTTP answer
	retryAfter string
	outcome    string
	body       string
}

// clientLoad is many concurrent clients, each sending records with ids of
// its own, once each (no client retries: a duplicate in the topic comes
// from the producer), until stopped.
type clientLoad struct {
	// idempotent: the handler's producer is idempotent (settle checks
	// that no id is stored twice).
	idempotent bool
	stop       chan struct{}
	wg         sync.WaitGroup
	next       atomic.Int64
	mu         sync.Mutex
	log        []answered
}

func startClientLoad(t *testing.T, path string, clients int) *clientLoad {
	l := &clientLoad{stop: make(chan struct{})}
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: clients},
		Timeout:   30 * time.Second,
	}
	for range clients {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				id := fmt.Sprintf("id-%d", l.next.Add(1))
				a := answered{id: id, start: time.Now()}
				req, _ := http.NewRequest("POST", baseURL+path, strings.NewReader(`{"id":"`+id+`"}`))
				req.Header.Set("Authorization", testSecret)
				res, err := client.Do(req)
				if err == nil {
					b, _ := io.ReadAll(res.Body)
					res.Body.Close()
					a.status, a.retryAfter, a.body = res.StatusCode, res.Header.Get("Retry-After"), string(b)
					var v struct{ Outcome string }
					json.Unmarshal(b, &v)
					a.outcome = v.Outcome
				} else {
					a.body = err.Error()
				}
				a.end = time.Now()
				l.mu.Lock()
				l.log = append(l.log, a)
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(l.finish)
	return l
}

// finish stops the clients and waits for their last answers.
func (l *clientLoad) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// answers is a copy of the answers so far.
func (l *clientLoad) answers() []answered {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.log)
}

// waitAcked waits until n requests sent after since are answered 2xx, and
// returns when the first of them was answered; it fails the test after
// limit.
func (l *clientLoad) waitAcked(t *testing.T, since time.Time, n int, limit time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		var first time.Time
		acked := 0
		for _, a := range l.answers() {
			if a.status/100 == 2 && !a.start.Before(since) {
				acked++
				if first.IsZero() || a.end.Before(first) {
					first = a.end
				}
			}
		}
		if acked >= n {
			return first
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests sent after %s answered 2xx within %v, want %d; answers by status: %v",
				acked, since.Format(time.TimeOnly+".000"), limit, n, statusCounts(l.answers()))
		}
		time.Sleep(20 * time.Millisecond) // polls the answers; nothing waits on this pace
	}
}

// tally is what the topic holds of a load's ids, against the answers.
type tally struct {
	requests, acknowledged, stored int
	lost                           int // answered 2xx, not in the topic
	duplicated                     int // extra copies of ids
	notWrittenStored               int // answered not_written, yet stored
	unknownStored                  int // answered 504 or not answered, stored
	statuses                       map[int]int
	failures                       map[string]int // answers but 2xx, by status and body
}

func (t tally) String() string {
	s := fmt.Sprintf("%d requests, %d acknowledged, %d ids stored: %d lost, %d duplicated, %d stored though answered not_written, %d stored after an unknown outcome; statuses %v",
		t.requests, t.acknowledged, t.stored, t.lost, t.duplicated, t.notWrittenStored, t.unknownStored, t.statuses)
	var fs []string
	for f, n := range t.failures {
		fs = append(fs, fmt.Sprintf("%d× %s", n, f))
	}
	slices.Sort(fs)
	if len(fs) > 0 {
		s += " (" + strings.Join(fs, "; ") + ")"
	}
	return s
}

// count reads topic back with franz-go and compares it with the answers.
func (l *clientLoad) count(t *testing.T, c *apachekafka.Cluster, topic string) tally {
	t.Helper()
	copies := map[string]int{}
	for _, r := range realRecords(t, c, topic) {
		var v struct{ ID string }
		if err := json.Unmarshal(r.Value, &v); err != nil {
			t.Fatalf("record %q: %v", r.Value, err)
		}
		copies[v.ID]++
	}
	answers := l.answers()
	tl := tally{requests: len(answers), stored: len(copies), statuses: map[int]int{}, failures: map[string]int{}}
	for _, a := range answers {
		tl.statuses[a.status]++
		if a.status/100 != 2 {
			tl.failures[fmt.Sprintf("%d %s", a.status, strings.TrimSpace(a.body))]++
		}
		n := copies[a.id]
		tl.duplicated += max(n-1, 0)
		switch {
		case a.status/100 == 2:
			tl.acknowledged++
			if n == 0 {
				tl.lost++
			}
		case a.outcome == "not_written" && n > 0:
			tl.notWrittenStored++
		case n > 0:
			tl.unknownStored++
		}
	}
	return tl
}

// statusCounts counts answers by status.
func statusCounts(as []answered) map[int]int {
	m := map[int]int{}
	for _, a := range as {
		m[a.status]++
	}
	return m
}
