//go:build kafka

package queuepublish

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// A record above the topic's max.message.bytes is MESSAGE_TOO_LARGE: 413
// after one attempt; a record below it, beside it, is stored.
func TestApacheKafkaRecordAboveMaxMessageBytes(t *testing.T) {
	c := realKafka(t)
	limit := "1024"
	topic := realTopic(t, c, 1, map[string]*string{"max.message.bytes": &limit})
	logFile := publishTo(t, c, topic, "timeout 10s")
	big := `{"text":"` + strings.Repeat("x", 2000) + `"}`
	start := time.Now()
	a := do(t, "POST", "/", auth(testSecret), strings.NewReader(big))
	if want := `{"error":"record too large for the Kafka broker","outcome":"not_written"}`; a.status != 413 || a.body != want {
		t.Errorf("%d %s, want 413 %s", a.status, a.body, want)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("answered after %v: retried toward the 10 s timeout", took)
	}
	if a := do(t, "POST", "/", auth(testSecret), strings.NewReader(`{"small":true}`)); a.status != 200 {
		t.Errorf("a small record: %d %s", a.status, a.body)
	}
	if recs := realRecords(t, c, topic); len(recs) != 1 || string(recs[0].Value) != `{"small":true}` {
		t.Errorf("the topic holds %d records, want the small one", len(recs))
	}
	log, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if !hasLogLine(log, "error", "publish failed", `"attempts":1`) || !hasLogLine(log, "error", "publish failed", "Message Size Too Large") {
		t.Errorf("Caddy's log does not show MESSAGE_TOO_LARGE after one attempt:\n%s", log)
	}
}

// A topic that does not exist is 500 unknown topic; once it is created,
// and once a partition is added, while Caddy runs, records go there
// without a reload.
func TestApacheKafkaTopicAndPartitionAddedWhileRunning(t *testing.T) {
	c := realKafka(t)
	topic := strings.ReplaceAll(t.Name(), "/", ".")
	publishTo(t, c, topic, "mode records")
	post := func(body string) answerT {
		return do(t, "POST", "/", auth(testSecret), strings.NewReader(body))
	}
	unknown := `{"success":false,"error":"unknown topic","results":[{"error":"unknown topic","outcome":"not_written","status":500}]}`
	if a := post(`{"records":[{"value":"before"}]}`); a.status != 500 || a.body != unknown {
		t.Fatalf("a topic that does not exist: %d %s, want 500 %s", a.status, a.body, unknown)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.CreateTopic(ctx, topic, 1, nil); err != nil {
		t.Fatal(err)
	}
	// The producer reads the topic afresh at most every 200 ms: the
	// first requests after the creation may still be told it is unknown.
	untilAnswered(t, 5*time.Second, func() (bool, string) {
		a := post(`{"records":[{"value":"created"}]}`)
		return a.status == 200, fmt.Sprintf("%d %s", a.status, a.body)
	}, "500 "+unknown)

	beyond := `{"records":[{"value":"on partition 2","partition":2}]}`
	if a := post(beyond); a.status != 400 {
		t.Fatalf("a partition that does not exist yet: %d %s, want 400", a.status, a.body)
	}
	resp, err := c.Admin().CreatePartitions(ctx, 3, topic)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitInSync(ctx, topic); err != nil {
		t.Fatal(err)
	}
	var placed struct {
		Offsets []where `json:"offsets"`
	}
	untilAnswered(t, 5*time.Second, func() (bool, string) {
		a := post(beyond)
		json.Unmarshal([]byte(a.body), &placed)
		return a.status == 200, fmt.Sprintf("%d %s", a.status, a.body)
	}, `400 {"err":"record 0: partition 2 does not exist (the topic has 1)"}`)
	if len(placed.Offsets) != 1 || placed.Offsets[0].Partition != 2 {
		t.Errorf("the record went to %+v, want partition 2", placed.Offsets)
	}
	values := map[string]int{}
	for _, r := range realRecords(t, c, topic) {
		values[fmt.Sprintf("%s@%d", r.Value, r.Partition)]++
	}
	if values[`"created"@0`] != 1 || values[`"on partition 2"@2`] != 1 || len(values) != 2 {
		t.Errorf("the topic holds %v", values)
	}
}

// untilAnswered repeats try until it succeeds, for up to limit; each
// answer before that must be before, "status body" (the answer the
// cluster's previous state gets).
func untilAnswered(t *testing.T, limit time.Duration, try func() (bool, string), before string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, got := try()
		if ok {
			return
		}
		if got != before {
			t.Fatalf("answered %s, want 200 or %s", got, before)
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %s after %v", got, limit)
		}
		time.Sleep(20 * time.Millisecond) // a client's pace, not a synchronisation
	}
}
