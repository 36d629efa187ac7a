package queuepublish

import (
	"fmt"
	"github.com/queuepublish/caddy-queue-publish/internal/confluent"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"
)

// The hot path without the network: each stage on its own, then the
// producer and the whole handler against an in-process broker. Run with
//
//	go test -run '^$' -bench . -benchmem
//
// allocs/op of the producer and handler benchmarks must not grow with the
// number of concurrent callers.

func BenchmarkAuthorized(b *testing.B) {
	h := handlerForUnitTest(1000)
	header := "Bearer " + testSecret
	for b.Loop() {
		if !h.authorized(header) {
			b.Fatal("refused")
		}
	}
}

func BenchmarkReadBodyAndValidate(b *testing.B) {
	h := handlerForUnitTest(1000000)
	body := []byte(seedBody)
	req := httptest.NewRequest("POST", "/", nil)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		req.Body = bodyReader(body)
		req.ContentLength = int64(len(body))
		var rq request
		h.readRequest(req, &rq)
		got, status := h.readBody(&rq)
		if status != 200 || !validJSON(got) {
			b.Fatal("rejected")
		}
	}
}

func BenchmarkNewRecord(b *testing.B) {
	body := []byte(seedBody)
	for b.Loop() {
		_ = newRecord(body, time.Now(), time.Second)
	}
}

// BenchmarkHandler runs the handler's ServeHTTP, from the method check to
// the answer, against the in-process broker (without Caddy's server and
// without the network on the HTTP side): in body mode, in records mode
// with 100 records a request, and in mode confluent: one v3 record, and
// a v2 request of 100 records.
func BenchmarkHandler(b *testing.B) {
	v2Records := recordsBody(100, func(int) string { return "" }) // the same envelope as records mode
	for _, bc := range []benchCase{
		{name: "mode=body", mode: modeBody, path: "/", body: seedBody},
		{name: "mode=records", mode: modeRecords, path: "/", body: recordsBody(100, func(int) string { return "" })},
		{name: "mode=confluent/v3", mode: modeConfluent, path: "/v3/clusters/c/topics/bench/records", contentType: confluent.MediaV3,
			body: `{"value":{"type":"JSON","data":` + seedBody + `}}`},
		{name: "mode=confluent/v2", mode: modeConfluent, path: "/topics/bench", contentType: confluent.MediaV2JSON, body: v2Records},
	} {
		for _, callers := range []int{1, 64} {
			b.Run(bc.name+"/callers="+strconv.Itoa(callers), func(b *testing.B) {
				benchmarkHandler(b, bc, callers)
			})
		}
	}
}

// benchCase is a request of BenchmarkHandler.
type benchCase struct {
	name, mode, path, contentType, body string
}

func benchmarkHandler(b *testing.B, bc benchCase, callers int) {
	c := newCluster(b, kfake.NumBrokers(1), kfake.SeedTopics(1, "bench"))
	h := handlerForUnitTest(1000000)
	h.Topic, h.Mode, h.MaxRecords = "bench", bc.mode, 1000
	h.mode, _ = modeOf(bc.mode)
	if bc.mode == modeConfluent {
		h.Topic, h.allowTopics = "", map[string]bool{"bench": true}
	}
	h.producer = mustProducer(b, connection{Kafka: Kafka{Brokers: c.ListenAddrs(), Acks: "all"}}, zap.NewNop())
	h.logger = zap.NewNop()
	defer closeProducer(h.producer)
	body := []byte(bc.body)
	serve := func() {
		req := httptest.NewRequest("POST", bc.path, bodyReader(body))
		req.Header.Set("Authorization", testSecret)
		if bc.contentType != "" {
			// Of known length: a v3 body of unknown length is a stream.
			req.Header.Set("Content-Type", bc.contentType)
			req.ContentLength = int64(len(body))
		}
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, req, nil); err != nil || w.Code != 200 {
			b.Errorf("%d %s %v", w.Code, w.Body, err)
		}
	}
	serve() // warm up
	b.ReportAllocs()
	b.SetParallelism((callers + 1) / 2)
	if callers == 1 {
		b.SetParallelism(1)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			serve()
		}
	})
}

// recordsBody is a records-mode body of n seed payloads, each record with
// the fields that extra(i) adds (a leading comma each).
func recordsBody(n int, extra func(i int) string) string {
	var sb strings.Builder
	sb.WriteString(`{"records":[`)
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"value":%s%s}`, seedBody, extra(i))
	}
	sb.WriteString(`]}`)
	return sb.String()
}

// BenchmarkParseEnvelope parses a records-mode body of 100 seed payloads.
func BenchmarkParseEnvelope(b *testing.B) {
	h := &Handler{Requests: Requests{MaxRecords: 500, Mode: modeRecords}}
	body := []byte(recordsBody(100, func(i int) string {
		return fmt.Sprintf(`,"key":"k%d","headers":{"source":"bench"}`, i)
	}))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, cerr := h.parseEnvelope(body, time.Now()); cerr != nil {
			b.Fatal(string(cerr.body))
		}
	}
}
