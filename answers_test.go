package queuepublish

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"
)

// Caddy's deferred header replacements write into the header values of an
// answer: each answer has its own, so the replacement applies once to
// each, even to concurrent answers.
func TestHeaderReplacementsApplyOncePerAnswer(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	header >Content-Type application/json "application/json; charset=utf-8"
	header >Retry-After 1 2
	handle /down {
		queue_publish {
			brokers %s
			topic events
			secret {env.QP_TEST_SECRET}
		}
	}
	queue_publish {
		brokers %s
		topic events
		secret {env.QP_TEST_SECRET}
	}`, closedPort(t), c.ListenAddrs()[0]))
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path, status := "/", 200
			if i%2 == 1 {
				path, status = "/down", 503
			}
			got := do(t, "POST", path, auth(testSecret), strings.NewReader(`{}`))
			if got.status != status || got.header.Get("Content-Type") != "application/json; charset=utf-8" {
				t.Errorf("%s: %d with Content-Type %q, want %d with application/json; charset=utf-8", path, got.status, got.header.Get("Content-Type"), status)
			}
			if status == 503 && got.header.Get("Retry-After") != "2" {
				t.Errorf("%s: Retry-After %q, want 2", path, got.header.Get("Retry-After"))
			}
		}()
	}
	wg.Wait()
	unloadChecksLeaks(t)
}

// TestAnswerRecordsStatus checks the status of a records-mode answer for
// every mix of results: the worst failure decides, from "retry is safe"
// (503) through "unknown" (504) to "never works" (413, 500), and each
// failed record carries its own status.
func TestAnswerRecordsStatus(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "events"))
	p := mustProducer(t, connection{Kafka: Kafka{Brokers: c.ListenAddrs(), Acks: "all"}}, zap.NewNop())
	t.Cleanup(func() { closeProducer(p) })
	ok := func() *record { // acknowledged on partition 1
		r := newRecord([]byte(`{}`), time.Now(), 5*time.Second)
		r.Partition, r.Topic = 1, "events"
		if err := p.Produce(context.Background(), []*record{r}); err != nil || r.Outcome() != nil {
			t.Fatal(err, r.Outcome())
		}
		return r
	}
	failed := func(o producer.Outcome) *record {
		return producer.Replayed(-1, -1, time.Time{}, &publishError{Outcome: o, Reason: o.String()})
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
		out := outcomesOf(tt.recs)
		if err := x.answerRecords(tt.recs, out); err != nil {
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
			partition, offset := tt.recs[1].Placed()
			if len(ans.Offsets) != len(tt.recs) || partition != 1 || ans.Offsets[1] != (struct{ Partition, Offset int }{partition, int(offset)}) {
				t.Errorf("offsets %s, want the second at %d/%d", w.Body, partition, offset)
			}
			continue
		}
		for i, rec := range tt.recs {
			res := ans.Results[i]
			f := out.of(i)
			if f == nil {
				partition, offset := rec.Placed()
				if res.Status != 0 || res.Partition != partition || res.Offset != int(offset) || partition != 1 {
					t.Errorf("record %d, acknowledged at %d/%d: %+v", i, partition, offset, res)
				}
				continue
			}
			wantOutcome := "not_written"
			if f.Outcome == outcomeUnknown {
				wantOutcome = "unknown"
			}
			if res.Status != statusOf(f.Outcome) || res.Outcome != wantOutcome {
				t.Errorf("record %d, %v: %+v", i, f.Outcome, res)
			}
		}
	}
}
