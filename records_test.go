package queuepublish

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

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

func FuzzParseEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"records":[{"value":{"a":1}}]}`,
		`{"records":[{"value":"x","key":"k","headers":{"h":"v"},"partition":2}]}`,
		`{"records":[{"value":1},{"value":[1,{"b":null}]}]}`,
		`{"records":[]}`, `{}`, `[]`, `{"records":[{"key":"k"}]}`, `{"records":[{"value":1,"headers":{"h":1}}]}`,
		`{"records":[{"value":1,"partition":-1}]}`, `{"records":[{"value":1,"partition":1e3}]}`,
		`{"records":[{"value":1}]}x`, `{"records":[{"value":1}`, `{"records":[{"value":"\u00e9\ud83d\ude00"}]}`,
		`{"records":[{"value":1,"value":2}]}`, `{"records":[{"value":1}],"records":[{"value":2}]}`,
		`[] {}`, `{"records":[]} {}`, `{"records":[{"key":1,"value":1}]} 1`,
	} {
		f.Add([]byte(s))
	}
	h := &Handler{Requests: Requests{MaxRecords: 5, Mode: modeRecords}}
	f.Fuzz(func(t *testing.T, body []byte) {
		recs, cerr := h.parseEnvelope(body, time.Now())
		if cerr != nil {
			if cerr.status != 400 || !json.Valid(cerr.body) {
				t.Fatalf("%q: answer %d %s", body, cerr.status, cerr.body)
			}
			// A body that is not valid JSON is told so, whatever
			// else is wrong with it.
			if cerr != rejectedInvalidJSON && !validJSON(body) {
				t.Fatalf("%q is not valid JSON, answered %s", body, cerr.body)
			}
			return
		}
		if !validJSON(body) {
			t.Fatalf("accepted a body that is not valid JSON: %q", body)
		}
		if len(recs) == 0 || len(recs) > h.MaxRecords {
			t.Fatalf("%q: %d records", body, len(recs))
		}
		for _, rec := range recs {
			// Each value is valid JSON, taken verbatim from the body.
			if !validJSON(rec.Value) || !bytes.Contains(body, rec.Value) {
				t.Fatalf("%q: value %q is not a JSON value of the body", body, rec.Value)
			}
			if rec.Partition < -1 {
				t.Fatalf("%q: partition %d", body, rec.Partition)
			}
		}
	})
}
