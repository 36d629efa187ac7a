package queuepublish

import (
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
