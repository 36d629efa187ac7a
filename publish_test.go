package queuepublish

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// A record the broker refuses (INVALID_RECORD naming it) gets 500 in its
// result; the records beside it in the request, sent in the same produce
// request, are stored, and the answer says so record by record.
func TestRefusedRecordThroughCaddy(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	kafkatest.RefuseBadRecords(t, c, true, 0)
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish {
		brokers %s
		topic events
		secret {env.QP_TEST_SECRET}
		mode records
	}`, c.ListenAddrs()[0]))
	got := do(t, "POST", "/", auth(testSecret), strings.NewReader(`{"records":[{"value":"a"},{"value":"bad"},{"value":"b"}]}`))
	want := `{"success":false,"error":"Kafka broker refused the record: Compacted topic cannot accept message without key in topic partition events","results":[` +
		`{"partition":0,"offset":0},` +
		`{"error":"Kafka broker refused the record: Compacted topic cannot accept message without key in topic partition events","outcome":"not_written","status":500},` +
		`{"partition":0,"offset":1}]}`
	if got.status != 500 || got.body != want {
		t.Errorf("got %d %s, want 500 %s", got.status, got.body, want)
	}
	if values := recordsByValue(t, c, "events"); len(values) != 2 || values[`"a"`] == nil || values[`"b"`] == nil {
		t.Errorf("the topic holds %v, want a and b", slices.Collect(maps.Keys(values)))
	}
	unloadChecksLeaks(t)
}

// createdWhileRunning starts Caddy with a route to the topics events and
// later (the directive's extra option besides), sends one record to
// events so that the producer has read the cluster's metadata, then
// creates later; it returns the cluster and the request headers.
func createdWhileRunning(t *testing.T, extra string) (*kfake.Cluster, map[string]string) {
	t.Helper()
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish /topics/* {
		brokers %s
		topic {http.request.uri.path.1}
		allow_topics events later
		secret {env.QP_TEST_SECRET}
		%s
	}`, c.ListenAddrs()[0], extra))
	ok := map[string]string{"Authorization": testSecret}
	if got := do(t, "POST", "/topics/events", ok, strings.NewReader(`{"records":[{"value":1,"partition":0}]}`)); got.status != 200 {
		t.Fatalf("events: %d %s", got.status, got.body)
	}
	create := kmsg.NewPtrCreateTopicsRequest()
	topic := kmsg.NewCreateTopicsRequestTopic()
	topic.Topic, topic.NumPartitions, topic.ReplicationFactor = "later", 1, 1
	create.Topics = append(create.Topics, topic)
	if resp := adminRequest(t, c, create).(*kmsg.CreateTopicsResponse); resp.Topics[0].ErrorCode != 0 {
		t.Fatalf("creating the topic: error %d", resp.Topics[0].ErrorCode)
	}
	return c, ok
}

// The first requests for a topic created while Caddy runs, arriving at
// once, are all produced: those that see the topic missing from the
// transport's cached metadata wait for the one that reads it afresh,
// instead of answering 500 unknown topic.
func TestBurstForATopicCreatedWhileRunning(t *testing.T) {
	c, ok := createdWhileRunning(t, "")
	const burst = 32
	start := make(chan struct{})
	answers := make(chan answerT, burst)
	var wg sync.WaitGroup
	for i := range burst {
		wg.Go(func() {
			<-start
			answers <- do(t, "POST", "/topics/later", ok, strings.NewReader(fmt.Sprintf(`{"n":%d}`, i)))
		})
	}
	close(start)
	wg.Wait()
	close(answers)
	for a := range answers {
		if a.status != 200 {
			t.Errorf("%d %s, want 200", a.status, a.body)
		}
	}
	if got := stored(t, c, "later"); len(got) != burst {
		t.Errorf("later holds %d records, want %d", len(got), burst)
	}
	unloadChecksLeaks(t)
}

// A topic created, or a partition added, while Caddy runs is written to
// at once: a miss reads the metadata afresh instead of answering from a
// cache that predates it.
func TestTopicsAndPartitionsCreatedWhileRunning(t *testing.T) {
	c, ok := createdWhileRunning(t, "mode records")
	if got := do(t, "POST", "/topics/later", ok, strings.NewReader(`{"records":[{"value":"new topic"}]}`)); got.status != 200 {
		t.Errorf("a topic created while Caddy runs: %d %s, want 200", got.status, got.body)
	}

	grow := kmsg.NewPtrCreatePartitionsRequest()
	more := kmsg.NewCreatePartitionsRequestTopic()
	more.Topic, more.Count = "events", 2
	grow.Topics = append(grow.Topics, more)
	if resp := adminRequest(t, c, grow).(*kmsg.CreatePartitionsResponse); resp.Topics[0].ErrorCode != 0 {
		t.Fatalf("adding a partition: error %d", resp.Topics[0].ErrorCode)
	}
	if got := do(t, "POST", "/topics/events", ok, strings.NewReader(`{"records":[{"value":"new partition","partition":1}]}`)); got.status != 200 {
		t.Errorf("a partition added while Caddy runs: %d %s, want 200", got.status, got.body)
	}
	if got := stored(t, c, "later"); len(got) != 1 {
		t.Errorf("later holds %d records, want 1", len(got))
	}
	if hw := c.PartitionInfo("events", 1).HighWatermark; hw != 1 {
		t.Errorf("the new partition holds %d records, want 1", hw)
	}
	unloadChecksLeaks(t)
}

// Through a real Caddy server and a real (in-process) Kafka-protocol
// broker: each way a publish fails, answered with the status that says
// whether retrying is safe, on time, and logged once with its details.
func TestFailedPublishes(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "my-queue", "slow", "flaky", "forbidden"))
	if err := c.CreateTopic("tiny", 1, map[string]string{"max.message.bytes": "100"}); err != nil {
		t.Fatal(err)
	}
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "flaky", Err: kerr.NotEnoughReplicas, Count: -1})
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "forbidden", Err: kerr.TopicAuthorizationFailed, Count: -1})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		if req.(*kmsg.ProduceRequest).Topics[0].Topic == "slow" {
			c.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})

	t.Setenv("QP_TEST_SECRET", testSecret)
	broker := c.ListenAddrs()[0]
	route := func(path, topic, brokers, extra string) string { return queueRoute(path, brokers, topic, extra) }
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, logFile,
		route("/slow", "slow", broker, "timeout 300ms")+
			route("/flaky", "flaky", broker, "timeout 300ms")+
			route("/down", "my-queue", closedPort(t), "timeout 300ms")+
			route("/tiny", "tiny", broker, "")+
			route("/forbidden", "forbidden", broker, "")+
			route("/unknown", "no-such-topic", broker, ""))

	ok := auth(testSecret)
	expectAnswers(t, []answerCase{
		{"broker unreachable", "POST", "/down", ok, strings.NewReader(`{}`), 503, `{"error":"no Kafka broker reachable","outcome":"not_written"}`, map[string]string{"Retry-After": "1"}, 300 * time.Millisecond},
		{"retriable broker error", "POST", "/flaky", ok, strings.NewReader(`{}`), 503, `{"error":"Kafka broker not ready: Not Enough Replicas","outcome":"not_written"}`, map[string]string{"Retry-After": "1"}, 300 * time.Millisecond},
		{"no acknowledgement", "POST", "/slow", ok, strings.NewReader(`{}`), 504, `{"error":"no acknowledgement from Kafka within the timeout; the record may or may not have been written","outcome":"unknown"}`, nil, 300 * time.Millisecond},
		{"record too large for the broker", "POST", "/tiny", ok, strings.NewReader(`"` + strings.Repeat("a", 200) + `"`), 413, `{"error":"record too large for the Kafka broker","outcome":"not_written"}`, nil, 0},
		{"not authorized", "POST", "/forbidden", ok, strings.NewReader(`{}`), 500, `{"error":"not authorized to write to the topic","outcome":"not_written"}`, nil, 0},
		{"unknown topic", "POST", "/unknown", ok, strings.NewReader(`{}`), 500, `{"error":"unknown topic","outcome":"not_written"}`, nil, 0},
	})

	// Each failed publish is one error line with its details: topic,
	// error kind, the partition if the record was queued on one, the
	// produce requests that carried it, how long it took, the cause.
	logged, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	type failure struct {
		Topic     string
		Kind      string
		Partition *int
		Attempts  *int
		Duration  *float64
		Error     string
	}
	lines := map[string][]failure{}
	for line := range bytes.Lines(logged) {
		var e struct {
			Level, Msg string
			failure
		}
		if json.Unmarshal(line, &e) == nil && e.Msg == "publish failed" {
			if e.Level != "error" {
				t.Errorf("logged at %s: %s", e.Level, line)
			}
			lines[e.Topic] = append(lines[e.Topic], e.failure)
		}
	}
	zero := 0
	for topic, want := range map[string]struct {
		kind      string
		partition *int
		attempts  func(int) bool
		err       string
	}{
		"my-queue":      {"retriable", nil, func(n int) bool { return n == 0 }, "connection refused"}, // /down
		"flaky":         {"retriable", &zero, func(n int) bool { return n >= 2 }, "Not Enough Replicas"},
		"slow":          {"timeout", &zero, func(n int) bool { return n == 1 }, "no acknowledgement"},
		"tiny":          {"too_large", &zero, func(n int) bool { return n == 1 }, "Message Size Too Large"},
		"forbidden":     {"permanent", &zero, func(n int) bool { return n == 1 }, "Topic Authorization Failed"},
		"no-such-topic": {"permanent", nil, func(n int) bool { return n == 0 }, `topic "no-such-topic" does not exist`},
	} {
		got := lines[topic]
		if len(got) != 1 {
			t.Errorf("%s: %d error lines, want 1", topic, len(got))
			continue
		}
		f := got[0]
		switch {
		case f.Kind != want.kind, !strings.Contains(f.Error, want.err),
			f.Attempts == nil || !want.attempts(*f.Attempts), f.Duration == nil,
			(f.Partition == nil) != (want.partition == nil),
			f.Partition != nil && *f.Partition != *want.partition:
			t.Errorf("%s: logged %+v (attempts %v, partition %v), want kind %s, error with %q", topic, f,
				deref(f.Attempts), deref(f.Partition), want.kind, want.err)
		}
	}
	if len(lines) != 6 {
		t.Errorf("error lines for topics %v, want only the 6 failed requests", slices.Collect(maps.Keys(lines)))
	}
	unloadChecksLeaks(t)
}

// A record of delivery async answered 202 while the broker refuses every
// produce request (retriable: NOT_ENOUGH_REPLICAS) is kept and retried
// past the request's timeout, and stored once the broker takes records
// again; one that no broker takes within queue_timeout is dropped, logged
// and counted with its reason.
func TestAsyncRecordsWaitForTheBrokerWithinQueueTimeout(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "kept", "dropped"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	const timeout = 300 * time.Millisecond
	startCaddy(t, logFile,
		queueRoute("/kept", c.ListenAddrs()[0], "kept", "delivery async\n\t\t\ttimeout 300ms\n\t\t\tqueue_timeout 1m")+
			queueRoute("/dropped", c.ListenAddrs()[0], "dropped", "delivery async\n\t\t\ttimeout 300ms\n\t\t\tqueue_timeout 1s"))
	down := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "kept", Err: kerr.NotEnoughReplicas, Count: -1})
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "dropped", Err: kerr.NotEnoughReplicas, Count: -1})
	before := scrape(t)

	accepted := time.Now()
	if got := do(t, "POST", "/kept", auth(testSecret), strings.NewReader(`{"kept":1}`)); got.status != 202 {
		t.Fatalf("/kept: %d %s, want 202", got.status, got.body)
	}
	// The broker still gets the record, refused, well past the request's
	// timeout: the producer kept it.
	rejectedBefore := 0
	waitFor(t, 10*time.Second, func() bool {
		if time.Since(accepted) < 3*timeout {
			rejectedBefore = down.Hits()
			return false
		}
		return down.Hits() > rejectedBefore
	})
	down.Remove()
	waitFor(t, 10*time.Second, func() bool { return c.PartitionInfo("kept", 0).HighWatermark == 1 })
	if got := stored(t, c, "kept"); len(got) != 1 || string(got[0].Value) != `{"kept":1}` {
		t.Errorf("kept holds %v, want the record answered 202", got)
	}

	if got := do(t, "POST", "/dropped", auth(testSecret), strings.NewReader(`{"dropped":1}`)); got.status != 202 {
		t.Fatalf("/dropped: %d %s, want 202", got.status, got.body)
	}
	const expired = `caddy_queue_publish_async_dropped_records_total{reason=expired}`
	waitFor(t, 10*time.Second, func() bool { return scrape(t)[expired]-before[expired] == 1 })
	logs, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if !hasLogLine(logs, "error", "asynchronous publish failed", `"reason":"expired"`) {
		t.Errorf("no error line for the dropped record with its reason:\n%s", logs)
	}
	if hasLogLine(logs, "error", "asynchronous publish failed", `"topic":"kept"`) {
		t.Error("the record kept until the broker took it was logged as failed")
	}
	if got := scrape(t)[expired] - before[expired]; got != 1 {
		t.Errorf("%s went up by %v, want 1: only the record of /dropped", expired, got)
	}
	unloadChecksLeaks(t)
}
