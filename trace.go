package queuepublish

import (
	"context"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"strings"

	"go.opentelemetry.io/otel/propagation"
)

// The record headers that carry a request's W3C trace context, named as
// the HTTP headers and as OpenTelemetry's Kafka instrumentation reads
// them.
const (
	headerTraceparent = "traceparent"
	headerTracestate  = "tracestate"
)

// traceContext reads and writes W3C trace context headers, checking
// them: a malformed traceparent is no trace context at all.
var traceContext = propagation.TraceContext{}

// addTraceHeaders gives each record the request's trace context, unless
// the record has a trace context of its own. Caddy's tracing directive,
// when it runs first, has put the span it made for the request in the
// request's headers. The headers are added as the records are published,
// not before: they differ between a request and its repeat, and are no
// part of what an Idempotency-Key stands for.
func addTraceHeaders(req *request, recs []*record) {
	if req.traceparent == "" {
		return
	}
	ctx := traceContext.Extract(context.Background(), propagation.MapCarrier{headerTraceparent: req.traceparent, headerTracestate: req.tracestate})
	carrier := propagation.MapCarrier{}
	traceContext.Inject(ctx, carrier)
	parent, state := carrier[headerTraceparent], carrier[headerTracestate]
	if parent == "" {
		return // not a valid traceparent
	}
	if len(state) > maxTracestate {
		state = "" // W3C lets a tracestate this long be left out
	}
	headers := []producer.Header{{Key: headerTraceparent, Value: []byte(parent)}}
	if state != "" {
		headers = append(headers, producer.Header{Key: headerTracestate, Value: []byte(state)})
	}
	for _, rec := range recs {
		if !hasTraceContext(rec) {
			rec.Headers = append(rec.Headers, headers...)
		}
	}
}

// maxTracestate bounds the tracestate copied into every record of a
// request: 512 characters is what W3C asks vendors to propagate, and a
// request of many records must not multiply a long one.
const maxTracestate = 512

// hasTraceContext reports whether a record carries a trace context of its
// own, in either header, whatever the case of its name.
func hasTraceContext(rec *record) bool {
	for _, h := range rec.Headers {
		if strings.EqualFold(h.Key, headerTraceparent) || strings.EqualFold(h.Key, headerTracestate) {
			return true
		}
	}
	return false
}
