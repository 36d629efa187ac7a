package queuepublish

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func headerMap(r *kgo.Record) map[string]string {
	m := map[string]string{}
	for _, h := range r.Headers {
		m[h.Key] = string(h.Value)
	}
	return m
}

func TestRecordsMode(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(2), kfake.SeedTopics(3, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	handle /nowhere {
		queue_publish {
			brokers %[1]s
			topic no-such-topic
			secret {env.QP_TEST_SECRET}
			mode records
		}
	}
	handle {
		queue_publish {
			brokers %[1]s
			topic events
			secret {env.QP_TEST_SECRET}
			mode records
			max_records 6
			timeout 1s
		}
	}`, c.ListenAddrs()[0]))
	postTo := func(path, body string, header map[string]string) answerT {
		h := map[string]string{"Authorization": testSecret}
		for k, v := range header {
			h[k] = v
		}
		return do(t, "POST", path, h, strings.NewReader(body))
	}
	post := func(body string, header map[string]string) answerT { return postTo("/", body, header) }

	t.Run("accepted", func(t *testing.T) {
		body := `{"records":[
			{"value": { "spaced" : [1, 2] ,"k":"v"}},
			{"value":"text","key":"foobar"},
			{"value":42,"key":"abc","headers":{"source":"test","trace":"t-1"}},
			{"value":null,"partition":2},
			{"value":[],"key":""}
		]}`
		got := post(body, map[string]string{"Idempotency-Key": "req-1"})
		if got.status != 200 {
			t.Fatalf("%d %s", got.status, got.body)
		}
		var ans struct {
			Success bool
			Offsets []struct{ Partition, Offset int64 }
		}
		if err := json.Unmarshal([]byte(got.body), &ans); err != nil || !ans.Success || len(ans.Offsets) != 5 {
			t.Fatalf("answer %s", got.body)
		}
		stored := recordsByValue(t, c, "events")
		values := []string{`{ "spaced" : [1, 2] ,"k":"v"}`, `"text"`, `42`, `null`, `[]`}
		for i, v := range values {
			r := stored[v]
			if r == nil {
				t.Fatalf("value %s not stored as sent; the topic holds %v", v, slices.Collect(func(yield func(string) bool) {
					for k := range stored {
						if !yield(k) {
							return
						}
					}
				}))
			}
			if int64(r.Partition) != ans.Offsets[i].Partition || r.Offset != ans.Offsets[i].Offset {
				t.Errorf("record %d: answer says %d/%d, stored at %d/%d", i, ans.Offsets[i].Partition, ans.Offsets[i].Offset, r.Partition, r.Offset)
			}
			if headerMap(r)["idempotency-key"] != "req-1" {
				t.Errorf("record %d: headers %v lack the idempotency key", i, headerMap(r))
			}
		}
		if r := stored[`"text"`]; string(r.Key) != "foobar" || r.Partition != kafkatest.JavaPartition("foobar", 3) {
			t.Errorf("keyed record: key %q on partition %d, want foobar on %d", r.Key, r.Partition, kafkatest.JavaPartition("foobar", 3))
		}
		if r := stored[`42`]; r.Partition != kafkatest.JavaPartition("abc", 3) || headerMap(r)["source"] != "test" || headerMap(r)["trace"] != "t-1" {
			t.Errorf("record with headers: partition %d, headers %v", r.Partition, headerMap(r))
		}
		if r := stored[`null`]; r.Partition != 2 || r.Key != nil {
			t.Errorf("record for partition 2 is on %d with key %q", r.Partition, r.Key)
		}
		if r := stored[`[]`]; r.Key == nil || len(r.Key) != 0 {
			t.Errorf("an empty key should be stored as an empty key, got %v", r.Key)
		}
		if r := stored[`{ "spaced" : [1, 2] ,"k":"v"}`]; r.Key != nil {
			t.Errorf("record without key has key %q", r.Key)
		}
	})

	t.Run("malformed", func(t *testing.T) {
		before := len(stored(t, c, "events"))
		for _, tt := range []struct{ body, want string }{
			{`[1,2]`, `body must be an object {\"records\":[...]}: not a JSON object`},
			{`{}`, `body has no \"records\" list`},
			{`{"records":[]}`, `\"records\" is empty`},
			{`{"records":{}}`, `body must be an object {\"records\":[...]}: \"records\" has the wrong type (object)`},
			{`{"records":[{"value":1}],"extra":1}`, `body must be an object {\"records\":[...]}: unknown field \"extra\"`},
			{`{"records":[{"value":1},{"key":"k"}]}`, `record 1: no \"value\"`},
			{`{"records":[{"value":1},{"value":2,"headers":{"a":1}}]}`, `record 1: header \"a\" is not a string`},
			{`{"records":[{"value":1,"key":5}]}`, `record 0: \"key\" has the wrong type (number)`},
			{`{"records":[{"value":1,"partition":-1}]}`, `record 0: \"partition\" must not be negative`},
			{`{"records":[{"value":1,"partition":3}]}`, `record 0: partition 3 does not exist (the topic has 3)`},
			{`{"records":[{"value":1,"valeu":2}]}`, `record 0: unknown field \"valeu\"`},
			{`{"records":[1]}`, `record 0: not a JSON object`},
			{`{"records":[{"value":1,"partition":1.5}]}`, `record 0: \"partition\" must be a whole number`},
			{`{"records":[{"value":1,"headers":[]}]}`, `record 0: \"headers\" has the wrong type (array)`},
			{`{"records":[{"value":1},{"value":1},{"value":1},{"value":1},{"value":1},{"value":1},{"value":1}]}`, `\"records\" holds more than max_records (6) records`},
		} {
			got := post(tt.body, nil)
			if want := `{"err":"` + tt.want + `"}`; got.status != 400 || got.body != want {
				t.Errorf("%s: got %d %s, want 400 %s", tt.body, got.status, got.body, want)
			}
		}
		for _, body := range []string{
			`{"records":[{"value":1}`, `{"records":[{"value":1}]} x`, `{"records":[{"value":"\xff"}]}`,
			`{"records":[{"value":1,}]}`, `{"records":[{"value":1},{"key":"k"}] `, `{"records":[{"value":{"a":}}]}`, ``,
		} {
			if got := post(body, nil); got.status != 400 || got.body != `{"err":"payload not valid JSON"}` {
				t.Errorf("%q: got %d %s, want 400 payload not valid JSON", body, got.status, got.body)
			}
		}
		if after := len(stored(t, c, "events")); after != before {
			t.Errorf("malformed requests produced %d records", after-before)
		}
	})

	t.Run("partial failure", func(t *testing.T) {
		retry := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Partitions: []int32{1}, Err: kerr.NotEnoughReplicas, Count: -1})
		got := post(`{"records":[{"value":"ok","partition":0},{"value":"no","partition":1}]}`, map[string]string{})
		retry.Remove()
		if got.status != 503 || got.header.Get("Retry-After") == "" {
			t.Fatalf("got %d %s, want 503 with Retry-After", got.status, got.body)
		}
		var ans struct {
			Success bool
			Error   string
			Results []struct {
				Partition *int
				Offset    *int64
				Error     string
				Outcome   string
			}
		}
		if err := json.Unmarshal([]byte(got.body), &ans); err != nil || ans.Success || len(ans.Results) != 2 {
			t.Fatalf("answer %s", got.body)
		}
		if ans.Results[0].Partition == nil || *ans.Results[0].Partition != 0 || ans.Results[0].Offset == nil {
			t.Errorf("the acknowledged record's result: %s", got.body)
		}
		if ans.Results[1].Outcome != "not_written" || ans.Results[1].Error == "" {
			t.Errorf("the failed record's result: %s", got.body)
		}
		stored := recordsByValue(t, c, "events")
		if stored[`"ok"`] == nil || stored[`"no"`] != nil {
			t.Errorf("want the acknowledged record stored and the failed one not")
		}

		// A retriable failure and a permanent one: 500 overall, and each
		// record's own status says which one a retry can fix.
		faults := c.Fault(
			kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Partitions: []int32{1}, Err: kerr.NotEnoughReplicas, Count: -1},
			kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Partitions: []int32{2}, Err: kerr.TopicAuthorizationFailed, Count: -1})
		got = post(`{"records":[{"value":"fine","partition":0},{"value":"later","partition":1},{"value":"never","partition":2}]}`, nil)
		faults.Remove()
		want := `{"success":false,"error":"not authorized to write to the topic","results":[` +
			`{"partition":0,"offset":%d},` +
			`{"error":"Kafka broker not ready: Not Enough Replicas","outcome":"not_written","status":503},` +
			`{"error":"not authorized to write to the topic","outcome":"not_written","status":500}]}`
		if got.status != 500 || got.body != fmt.Sprintf(want, c.PartitionInfo("events", 0).HighWatermark-1) {
			t.Errorf("a retriable and a permanent failure: got %d %s, want 500 %s", got.status, got.body, want)
		}
	})

	t.Run("whole request fails", func(t *testing.T) {
		got := postTo("/nowhere", `{"records":[{"value":1},{"value":2}]}`, nil)
		want := `{"success":false,"error":"unknown topic","results":[` +
			`{"error":"unknown topic","outcome":"not_written","status":500},` +
			`{"error":"unknown topic","outcome":"not_written","status":500}]}`
		if got.status != 500 || got.body != want {
			t.Errorf("got %d %s, want 500 %s", got.status, got.body, want)
		}
	})

	t.Run("no acknowledgement", func(t *testing.T) {
		release := make(chan struct{})
		holdProduce(c, release)
		got := post(`{"records":[{"value":"held-0","partition":0},{"value":"held-1","partition":1}]}`, nil)
		close(release)
		if got.status != 504 {
			t.Fatalf("got %d %s, want 504", got.status, got.body)
		}
		var ans struct {
			Results []struct {
				Offset  *int64
				Outcome string
				Status  int
			}
		}
		if err := json.Unmarshal([]byte(got.body), &ans); err != nil || len(ans.Results) != 2 {
			t.Fatalf("answer %s", got.body)
		}
		// When both partitions have one leader, a record that missed the
		// held request waits behind it, and is not sent.
		unknown := 0
		for _, r := range ans.Results {
			switch {
			case r.Outcome == "unknown" && r.Status == 504:
				unknown++
			case r.Outcome == "not_written" && r.Status == 503:
			case r.Offset == nil:
				t.Errorf("a result neither acknowledged, nor unknown, nor not written: %s", got.body)
			}
		}
		if unknown == 0 {
			t.Errorf("no record's producer.Outcome is unknown: %s", got.body)
		}
	})
	unloadChecksLeaks(t)
}

// TestAnswerRecordsStatus checks the status of a records-mode answer for
// every mix of results: the worst failure decides, from "retry is safe"
// (503) through "unknown" (504) to "never works" (413, 500), and each
// failed record carries its own status.
func TestAnswerRecordsStatus(t *testing.T) {
	ok := func() *record { r := newRecord(nil, time.Now(), time.Second); r.Partition, r.Offset = 1, 7; return r }
	failed := func(o producer.Outcome) *record {
		r := newRecord(nil, time.Now(), time.Second)
		r.Answer = &publishError{Outcome: o, Reason: o.String()}
		return r
	}
	for _, tt := range []struct {
		recs []*record
		want int
	}{
		{[]*record{ok(), ok()}, 200},
		{[]*record{ok(), failed(outcomeRetry)}, 503},
		{[]*record{failed(outcomeRetry), failed(outcomeUnknown), ok()}, 504},
		{[]*record{failed(outcomeUnknown), failed(outcomeTooLarge), failed(outcomeRetry)}, 413},
		{[]*record{failed(outcomeRetry), failed(outcomeRejected), failed(outcomeUnknown)}, 500},
	} {
		w := httptest.NewRecorder()
		x := exchange{w: w}
		if err := x.answerRecords(tt.recs); err != nil {
			t.Fatal(err)
		}
		var ans struct {
			Success bool
			Offsets []struct{ Partition, Offset int }
			Results []struct {
				Partition, Offset int
				Outcome           string
				Status            int
			}
		}
		if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
			t.Fatalf("%s: %v", w.Body, err)
		}
		if w.Code != tt.want || ans.Success != (tt.want == 200) {
			t.Errorf("%s: status %d, want %d", w.Body, w.Code, tt.want)
		}
		if tt.want == 200 {
			if len(ans.Offsets) != len(tt.recs) || ans.Offsets[1] != (struct{ Partition, Offset int }{1, 7}) {
				t.Errorf("offsets %s", w.Body)
			}
			continue
		}
		for i, rec := range tt.recs {
			res := ans.Results[i]
			if rec.Answer == nil {
				if res.Status != 0 || res.Partition != 1 || res.Offset != 7 {
					t.Errorf("record %d, acknowledged: %+v", i, res)
				}
				continue
			}
			wantOutcome := "not_written"
			if rec.Answer.Outcome == outcomeUnknown {
				wantOutcome = "unknown"
			}
			if res.Status != statusOf(rec.Answer.Outcome) || res.Outcome != wantOutcome {
				t.Errorf("record %d, %v: %+v", i, rec.Answer.Outcome, res)
			}
		}
	}
}

func TestBodyModeKeyAndHeadersFromRequest(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(4, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish {
		brokers %s
		topic events
		secret {env.QP_TEST_SECRET}
		key {http.request.header.X-Message-Key}
		header source {http.request.header.X-Source}
		header route {http.request.uri.path}
	}`, c.ListenAddrs()[0]))

	got := do(t, "POST", "/in", map[string]string{"Authorization": testSecret, "X-Message-Key": "foobar", "X-Source": "billing", "Idempotency-Key": "k-7"}, strings.NewReader(`{"n":1}`))
	if got.status != 200 || got.body != fmt.Sprintf(`{"success":true,"partition":%d,"offset":0}`, kafkatest.JavaPartition("foobar", 4)) {
		t.Fatalf("keyed request: %d %s", got.status, got.body)
	}
	got = do(t, "POST", "/in", map[string]string{"Authorization": testSecret}, strings.NewReader(`{"n":2}`))
	if got.status != 200 {
		t.Fatalf("plain request: %d %s", got.status, got.body)
	}

	stored := recordsByValue(t, c, "events")
	keyed, plain := stored[`{"n":1}`], stored[`{"n":2}`]
	if string(keyed.Key) != "foobar" || keyed.Partition != kafkatest.JavaPartition("foobar", 4) {
		t.Errorf("keyed record: key %q partition %d", keyed.Key, keyed.Partition)
	}
	if h := headerMap(keyed); h["source"] != "billing" || h["route"] != "/in" || h["idempotency-key"] != "k-7" || len(h) != 3 {
		t.Errorf("keyed record headers: %v", h)
	}
	if plain.Key != nil {
		t.Errorf("an empty key placeholder should give no key, got %q", plain.Key)
	}
	if h := headerMap(plain); h["route"] != "/in" || len(h) != 1 {
		t.Errorf("an empty header placeholder should leave the header out: %v", h)
	}
}

func TestTopicFromRequest(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "clicks", "secret-stuff"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish /topics/* {
		brokers %s
		topic {http.request.uri.path.1}
		allow_topics orders clicks
		secret {env.QP_TEST_SECRET}
	}`, c.ListenAddrs()[0]))
	ok := map[string]string{"Authorization": testSecret}
	for _, topic := range []string{"orders", "clicks"} {
		if got := do(t, "POST", "/topics/"+topic, ok, strings.NewReader(`"to `+topic+`"`)); got.status != 200 {
			t.Errorf("%s: %d %s", topic, got.status, got.body)
		}
		if got := stored(t, c, topic); len(got) != 1 || string(got[0].Value) != `"to `+topic+`"` {
			t.Errorf("%s holds %v", topic, got)
		}
	}
	// Refused topics never reach Kafka: no metadata or produce request
	// names them.
	var requests atomic.Int32
	refused := func(topic *string) bool {
		return topic != nil && (*topic == "secret-stuff" || *topic == "nope" || *topic == "")
	}
	c.Control(func(req kmsg.Request) (kmsg.Response, error, bool) {
		switch req := req.(type) {
		case *kmsg.MetadataRequest:
			for _, tp := range req.Topics {
				if refused(tp.Topic) {
					requests.Add(1)
				}
			}
		case *kmsg.ProduceRequest:
			for _, tp := range req.Topics {
				if refused(&tp.Topic) {
					requests.Add(1)
				}
			}
		}
		return nil, nil, false
	})
	for _, path := range []string{"/topics/secret-stuff", "/topics/nope", "/topics/"} {
		if got := do(t, "POST", path, ok, strings.NewReader(`{}`)); got.status != 404 || got.body != `{"err":"unknown topic"}` {
			t.Errorf("%s: got %d %s, want 404", path, got.status, got.body)
		}
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("%d Kafka requests name a refused topic, want none", n)
	}
	if got := stored(t, c, "secret-stuff"); len(got) != 0 {
		t.Error("a topic outside allow_topics was written")
	}
	// Authentication comes first: no topic is revealed to a stranger.
	if got := do(t, "POST", "/topics/nope", nil, strings.NewReader(`{}`)); got.status != 403 {
		t.Errorf("without the secret: %d, want 403", got.status)
	}
}

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

// adminRequest sends req to c with franz-go's client and fails the test on
// an error code in the answer.
func adminRequest(t *testing.T, c *kfake.Cluster, req kmsg.Request) kmsg.Response {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	resp, err := cl.Request(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
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
