package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// loadOpts says how the clients of one load send.
type loadOpts struct {
	// path is the URL path; its second segment (after /t/, /a/ or
	// /i/) is the topic.
	path    string
	clients int
	// total bounds the ids sent (0: until stop is closed).
	total int64
	// idempotent sends each id as its Idempotency-Key. Go's
	// http.Transport then resends by itself a request whose kept-alive
	// connection was closed under it, which hides such failures; the
	// load counts these resends (resent).
	idempotent bool
	// plain makes requests that no layer can resend: no
	// Idempotency-Key and a body that cannot be rewound (no GetBody),
	// so that every connection failure reaches the load as an error.
	plain bool
	// retry sends an id again (same Idempotency-Key) until it is
	// answered 2xx, up to 40 times, 100 ms apart.
	retry bool
	// noKeepAlive opens a connection for every request.
	noKeepAlive bool
	// h2c speaks HTTP/2 without TLS (prior knowledge).
	h2c bool
	// addrs are the Caddy instances to send to (empty: the one under
	// test); an id's attempts go to each in turn, starting with a
	// different one for each id.
	addrs []string
	stop  <-chan struct{}
}

// Flags of an id, over all its attempts.
const (
	idAcked      = 1 << iota // answered 2xx
	idNotWritten             // answered with "outcome":"not_written"
	idUnknown                // answered 504 ("outcome":"unknown")
	idFailed                 // a transport error: no HTTP answer
	idOther                  // any other answer
)

// failure is a request that got no HTTP answer.
type failure struct {
	id         string
	start, end time.Time
	err        error
	// connected: the transport got a connection; reused: the last one
	// was a kept-alive one; wrote: the request was written to it
	// entirely.
	connected, reused, wrote bool
}

// load is the load of one scenario: clients sending records with unique
// ids until stop is closed or total ids are sent.
type load struct {
	opts      loadOpts
	brokers   []string // to read the topic back from
	topic     string
	prefix    string
	next      atomic.Int64
	lastOK    atomic.Int64 // UnixNano of the latest 2xx
	transport *http.Transport

	mu       sync.Mutex
	ids      map[string]uint8 // flags, by id
	statuses map[int]int
	answers  map[string]int // answers but 2xx, by status and body
	failures []failure
	// resent: requests that Go's transport sent more than once by
	// itself (its trace saw more than one connection).
	resent int
	// replayed: 2xx answers with Idempotent-Replayed: true;
	// replayedUnknown: 504 answers with it (a repeat standing on an
	// earlier attempt whose outcome is still unknown).
	replayed, replayedUnknown int
	// retried: ids sent again by the client (opts.retry), and of them
	// those whose previous attempt had an unknown outcome (504 or no
	// answer): the retry-after-unknown-outcome path.
	retried, retriedUnknown int
	// ackedAfterUnknown: ids answered 2xx after an earlier attempt's
	// outcome was unknown, and of them those answered from the first
	// attempt's record (Idempotent-Replayed).
	ackedAfterUnknown, replayedAfterUnknown int
	requests                                int
}

var loadSeq atomic.Int64

// startLoad starts the clients of a load; wait for the WaitGroup before
// reading the load's results.
func (e *env) startLoad(o loadOpts) (*load, *sync.WaitGroup) {
	topic := strings.Split(strings.TrimPrefix(o.path, "/"), "/")[1]
	l := &load{opts: o, brokers: e.brokers.addrs(), topic: topic, prefix: fmt.Sprintf("%s-%d", topic, loadSeq.Add(1)),
		ids: map[string]uint8{}, statuses: map[int]int{}, answers: map[string]int{},
		transport: &http.Transport{MaxIdleConnsPerHost: o.clients, DisableKeepAlives: o.noKeepAlive}}
	if o.h2c {
		l.transport.Protocols = new(http.Protocols)
		l.transport.Protocols.SetUnencryptedHTTP2(true)
	}
	client := &http.Client{Transport: l.transport, Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for range o.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stopped(o.stop) {
				n := l.next.Add(1)
				if o.total > 0 && n > o.total {
					return
				}
				id := fmt.Sprintf("%s-%d", l.prefix, n)
				for attempt := 0; ; attempt++ {
					addr := caddyAddr
					if len(o.addrs) > 0 {
						addr = o.addrs[(int(n)+attempt)%len(o.addrs)]
					}
					ok, unknown := l.send(e, client, addr, id)
					if ok || !o.retry || attempt == 39 || stopped(o.stop) {
						if !ok && !o.retry && unknown {
							// No answer: the server may be going
							// away; do not spin on refused dials.
							time.Sleep(10 * time.Millisecond)
						}
						break
					}
					time.Sleep(100 * time.Millisecond) // the client's back-off
					l.mu.Lock()
					l.retried++
					if unknown {
						l.retriedUnknown++
					}
					l.mu.Unlock()
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

// send sends one request for id and records its answer; ok if it was
// answered 2xx, unknown if its outcome is unknown (504 or no answer).
func (l *load) send(e *env, client *http.Client, addr, id string) (ok, unknown bool) {
	body := `{"id":"` + id + `"}`
	req, _ := http.NewRequest("POST", "http://"+addr+l.opts.path, nil)
	req.Body = io.NopCloser(strings.NewReader(body))
	req.ContentLength = int64(len(body))
	if !l.opts.plain {
		// As http.NewRequest does for a strings.Reader: the transport
		// may then resend the request on a new connection.
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(body)), nil }
	}
	req.Header.Set("Authorization", e.secret)
	if l.opts.idempotent {
		req.Header.Set("Idempotency-Key", id)
	}
	// The callbacks run on the transport's goroutines.
	var conns atomic.Int32
	var reused, wrote atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			conns.Add(1)
			reused.Store(info.Reused)
			wrote.Store(false)
		},
		WroteRequest: func(info httptrace.WroteRequestInfo) { wrote.Store(info.Err == nil) },
	}))
	start := time.Now()
	res, err := client.Do(req)
	var answer struct{ Outcome string }
	var b []byte
	if err == nil {
		b, _ = io.ReadAll(res.Body)
		res.Body.Close()
		json.Unmarshal(b, &answer)
	}
	end := time.Now()

	l.mu.Lock()
	defer l.mu.Unlock()
	l.requests++
	if conns.Load() > 1 {
		l.resent++
	}
	var flag uint8
	switch {
	case err != nil:
		flag = idFailed
		l.failures = append(l.failures, failure{id: id, start: start, end: end, err: err, connected: conns.Load() > 0, reused: reused.Load(), wrote: wrote.Load()})
	case res.StatusCode/100 == 2:
		flag = idAcked
		l.lastOK.Store(end.UnixNano())
		replayed := res.Header.Get("Idempotent-Replayed") == "true"
		if replayed {
			l.replayed++
		}
		if l.ids[id]&(idUnknown|idFailed) != 0 {
			l.ackedAfterUnknown++
			if replayed {
				l.replayedAfterUnknown++
			}
		}
	case answer.Outcome == "not_written":
		flag = idNotWritten
	case res.StatusCode == http.StatusGatewayTimeout || answer.Outcome == "unknown":
		flag = idUnknown
		if res.Header.Get("Idempotent-Replayed") == "true" {
			l.replayedUnknown++
		}
	default:
		flag = idOther
	}
	if err == nil {
		l.statuses[res.StatusCode]++
		if res.StatusCode/100 != 2 {
			l.answers[fmt.Sprintf("%d %s", res.StatusCode, bytes.TrimSpace(b))]++
		}
	}
	l.ids[id] |= flag
	return flag == idAcked, flag == idFailed || flag == idUnknown
}

// acked is the number of ids answered 2xx so far.
func (l *load) acked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ackedLocked()
}

func (l *load) ackedLocked() int {
	n := 0
	for _, f := range l.ids {
		if f&idAcked != 0 {
			n++
		}
	}
	return n
}

// errors is the number of requests that got no HTTP answer.
func (l *load) errors() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.failures)
}

// failedStatuses is the number of answers that were not 2xx.
func (l *load) failedStatuses() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for status, k := range l.statuses {
		if status/100 != 2 {
			n += k
		}
	}
	return n
}

func (l *load) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := fmt.Sprintf("%d requests, %d ids acknowledged, statuses %v", l.requests, l.ackedLocked(), l.statuses)
	var answers []string
	for a, n := range l.answers {
		answers = append(answers, fmt.Sprintf("%d: %s", n, a))
	}
	sort.Strings(answers)
	if len(answers) > 0 {
		s += " (" + strings.Join(answers, "; ") + ")"
	}
	s += fmt.Sprintf(", %d transport errors", len(l.failures))
	if len(l.failures) > 0 {
		s += fmt.Sprintf(" (%s)", summarizeErrors(l.failures))
	}
	s += fmt.Sprintf(", %d resent by Go's transport", l.resent)
	if l.opts.retry {
		s += fmt.Sprintf(", %d client retries (%d after an unknown outcome), %d 2xx and %d 504 answers replayed",
			l.retried, l.retriedUnknown, l.replayed, l.replayedUnknown)
	}
	return s
}

// summarizeErrors groups transport errors by their cause.
func summarizeErrors(fs []failure) string {
	kinds := map[string]int{}
	for _, f := range fs {
		kinds[errorKind(f)]++
	}
	var parts []string
	for k, n := range kinds {
		parts = append(parts, fmt.Sprintf("%d %s", n, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// errorKind names a transport error: the syscall error or net/http's
// message, and the connection it happened on.
func errorKind(f failure) string {
	msg := f.err.Error()
	kind := "other: " + msg
	for _, k := range []string{"connection refused", "connection reset by peer", "broken pipe", "server closed idle connection", "EOF", "Client.Timeout"} {
		if strings.Contains(msg, k) {
			kind = k
			break
		}
	}
	switch {
	case !f.connected:
		kind += " when connecting"
	case f.reused && f.wrote:
		kind += " on a kept-alive connection, request written"
	case f.reused:
		kind += " on a kept-alive connection, request not written"
	case f.wrote:
		kind += " on a new connection, request written"
	default:
		kind += " on a new connection, request not written"
	}
	return kind
}

// result is what the topic holds of a load's ids.
type result struct {
	stored     int // distinct ids of the load in the topic
	missing    int // ids answered 2xx, not in the topic
	duplicates int // extra copies of ids
	// reappended: of the duplicates, the copies that are the very
	// record again (same partition, producer ID and timestamp): a
	// batch the producer resent, which the broker appended twice.
	reappended int
	// ids that were never answered 2xx, found in the topic anyway:
	notWrittenStored int // every answer said "not_written"
	unknownStored    int // some answer was 504 or missing, none 2xx
	failedStored     int // some request got no answer, none 2xx
	failedIDs        []string
	// ids with an unknown outcome (504 or no answer) at some attempt,
	// and of them those acknowledged at a later attempt.
	unknownIDs, unknownAcked int
}

func (r result) String() string {
	dups := fmt.Sprintf("%d duplicates", r.duplicates)
	if r.duplicates > 0 {
		dups += fmt.Sprintf(" (%d of them records of a batch the producer resent, appended again)", r.reappended)
	}
	return fmt.Sprintf("%d ids stored, %d missing, %s, %d stored though answered not_written, %d stored after an unknown outcome, %d stored though their request got no answer",
		r.stored, r.missing, dups, r.notWrittenStored, r.unknownStored, r.failedStored)
}

// check reads the load's topic and compares it with the answers.
func (l *load) check() (result, error) {
	copies, err := readIDs(l.brokers, l.topic, l.prefix+"-")
	if err != nil {
		return result{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return tally(copies, l.ids), nil
}

// tally compares the copies of ids found in the topic with the flags of
// the answers each id got.
func tally(copies map[string][]storedCopy, ids map[string]uint8) result {
	var r result
	r.stored = len(copies)
	for id, cs := range copies {
		r.duplicates += len(cs) - 1
		for _, c := range cs[1:] {
			if c == cs[0] {
				r.reappended++
			}
		}
		f := ids[id]
		switch {
		case f&idAcked != 0:
		case f == idNotWritten:
			r.notWrittenStored++
		case f&(idUnknown|idFailed) != 0:
			r.unknownStored++
			if f&idFailed != 0 {
				r.failedStored++
				r.failedIDs = append(r.failedIDs, id)
			}
		}
	}
	for id, f := range ids {
		if f&idAcked != 0 && len(copies[id]) == 0 {
			r.missing++
		}
		if f&(idUnknown|idFailed) != 0 {
			r.unknownIDs++
			if f&idAcked != 0 {
				r.unknownAcked++
			}
		}
	}
	return r
}

// storedCopy is what tells the copies of an id apart: a client's second
// attempt is another record, made later, while a batch the producer
// resent holds the same record, timestamp and producer ID included.
type storedCopy struct {
	partition  int32
	producerID int64
	timestamp  int64 // Unix milliseconds, as Kafka keeps it
}

// readIDs finds the copies of the ids with prefix in topic, reading with
// franz-go up to the partitions' end offsets as of the call.
func readIDs(brokers []string, topic, prefix string) (map[string][]storedCopy, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ends, err := endOffsets(cl, topic)
	if err != nil {
		return nil, err
	}
	next := map[int32]int64{} // the next offset to read, by partition
	done := func() bool {
		for p, end := range ends {
			if next[p] < end {
				return false
			}
		}
		return true
	}
	copies := map[string][]storedCopy{}
	deadline := time.Now().Add(60 * time.Second)
	for !done() {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("topic %s: not read up to its end offsets %v within 60s (at %v)", topic, ends, next)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fetches := cl.PollFetches(ctx)
		cancel()
		if errs := fetches.Errors(); len(errs) > 0 && !errors.Is(errs[0].Err, context.DeadlineExceeded) {
			return nil, errs[0].Err
		}
		for _, r := range fetches.Records() {
			next[r.Partition] = r.Offset + 1
			var v struct{ ID string }
			if err := json.Unmarshal(r.Value, &v); err != nil {
				return nil, fmt.Errorf("record %q: %v", r.Value, err)
			}
			if strings.HasPrefix(v.ID, prefix) {
				copies[v.ID] = append(copies[v.ID], storedCopy{r.Partition, r.ProducerID, r.Timestamp.UnixMilli()})
			}
		}
	}
	return copies, nil
}

// endOffsets is the high watermark of every partition of topic.
func endOffsets(cl *kgo.Client, topic string) (map[int32]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	meta := kmsg.NewPtrMetadataRequest()
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = kmsg.StringPtr(topic)
	meta.Topics = append(meta.Topics, mt)
	mres, err := meta.RequestWith(ctx, cl)
	if err != nil {
		return nil, err
	}
	if len(mres.Topics) != 1 || len(mres.Topics[0].Partitions) == 0 {
		return nil, fmt.Errorf("no partitions for topic %s", topic)
	}
	req := kmsg.NewPtrListOffsetsRequest()
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = topic
	for _, p := range mres.Topics[0].Partitions {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition = p.Partition
		rp.Timestamp = -1 // the end
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	res, err := req.RequestWith(ctx, cl)
	if err != nil {
		return nil, err
	}
	ends := map[int32]int64{}
	for _, t := range res.Topics {
		for _, p := range t.Partitions {
			if p.ErrorCode != 0 {
				return nil, fmt.Errorf("end offset of %s/%d: error code %d", topic, p.Partition, p.ErrorCode)
			}
			ends[p.Partition] = p.Offset
		}
	}
	if len(ends) != len(mres.Topics[0].Partitions) {
		return nil, fmt.Errorf("end offsets of %d partitions of %s, want %d", len(ends), topic, len(mres.Topics[0].Partitions))
	}
	return ends, nil
}
