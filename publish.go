package queuepublish

import (
	"errors"
	"net/http"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/confluent"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"go.uber.org/zap"
)

// publish produces the records of send and answers with final, the
// records that stand for the request: send and, for a repeated request,
// those of the first attempt that stand. Delivery async only queues them.
func (h *Handler) publish(x *exchange, final, send []*record) error {
	// The quota is charged here, past every other refusal and only for
	// what is sent: a repeat answered from its first attempt is free.
	if len(send) > 0 {
		if ref := h.charge(x, len(send), int64(len(x.req.body))); ref != nil {
			return x.reject(ref)
		}
	}
	if len(send) > 0 && h.traceHeaders {
		addTraceHeaders(&x.req, send)
	}
	for _, rec := range send {
		rec.Topic = x.topic
	}
	if h.Delivery == deliveryAsync {
		return h.publishAsync(x, send)
	}
	return h.publishSync(x, final, send)
}

// publishSync produces the records of send, waits for them within the
// request's timeout, and answers with final.
func (h *Handler) publishSync(x *exchange, final, send []*record) error {
	if len(send) > 0 {
		if ref := partitionRejection(x.producer.Produce(x.req.ctx, send)); ref != nil {
			h.refund(x, len(send), int64(len(x.req.body)))
			return x.reject(ref)
		}
	}
	out := outcomesOf(final)
	h.countSent(x.topic, final, send, out, x.req.start)
	return h.mode.answer(h, x, final, out)
}

// partitionRejection is the rejection of a call that queued nothing because a record
// asks for a partition the topic does not have; nil for any other
// outcome, which the records' own outcomes tell.
func partitionRejection(err error) *rejection {
	var perr *producer.PartitionError
	if !errors.As(err, &perr) {
		return nil
	}
	return confluentRejection(badRequest(rejectRecords, "%s", perr.Error()), http.StatusNotFound, confluent.CodePartitionNotFound, "")
}

// countSent counts and logs the records of send, which final holds in
// order, with the outcomes of final: the records of a first attempt that
// stand for a repeat were counted by their own request.
func (h *Handler) countSent(topic string, final, send []*record, out outcomes, start time.Time) {
	var sent outcomes // of send, if one failed
	j := 0
	for i, rec := range final {
		if j < len(send) && send[j] == rec {
			if f := out.of(i); f != nil {
				if sent == nil {
					sent = make(outcomes, len(send))
				}
				sent[j] = f
			}
			countRecord(topic, rec, out.of(i))
			j++
		}
	}
	if sent != nil {
		h.logFailure(topic, send, sent, start)
	} else if len(send) > 0 {
		metricsFor(topic).latency.Observe(time.Since(start).Seconds())
	}
}

// logFailure logs a request whose records were not all acknowledged: one
// line at error level, about the first record that failed: its partition
// if it was queued on one, and the produce requests that carried it (0 if
// it failed before any did).
func (h *Handler) logFailure(topic string, recs []*record, out outcomes, start time.Time) {
	var first *record
	var firstErr *publishError
	failed := 0
	for i, rec := range recs {
		if f := out.of(i); f != nil {
			if first == nil {
				first, firstErr = rec, f
			}
			failed++
		}
	}
	if first == nil {
		return
	}
	fields := []zap.Field{
		zap.String("topic", topic),
		zap.String("kind", firstErr.Outcome.String()),
		zap.Int("records", len(recs)),
		zap.Int("failed", failed),
		zap.Duration("duration", time.Since(start)),
		zap.Error(firstErr),
	}
	partition, attempts := first.Progress()
	if partition >= 0 {
		fields = append(fields, zap.Int("partition", partition))
	}
	fields = append(fields, zap.Int("attempts", attempts))
	h.logger.Error("publish failed", fields...)
}

// outcomes are what a request's records are answered with, read once from
// the producer when the request stops waiting (a record still in flight
// may be acknowledged later; its answer stays "outcome unknown"): nil for
// a record acknowledged, and a nil slice when every record was.
type outcomes []*publishError

// outcomesOf reads the outcome of each record.
func outcomesOf(recs []*record) outcomes {
	var out outcomes
	for i, rec := range recs {
		if f := rec.Outcome(); f != nil {
			if out == nil {
				out = make(outcomes, len(recs))
			}
			out[i] = f
		}
	}
	return out
}

// of is the outcome of the i-th record.
func (o outcomes) of(i int) *publishError {
	if o == nil {
		return nil
	}
	return o[i]
}

// worst is the failure whose status tells the most: nil if every record
// was acknowledged.
func (o outcomes) worst() *publishError {
	var worst *publishError
	for _, f := range o {
		if f != nil && (worst == nil || severity(f.Outcome) > severity(worst.Outcome)) {
			worst = f
		}
	}
	return worst
}

// provenNotWritten reports whether a record provably was not written and
// never will be: it was never queued, or it completed without an
// acknowledgement, and not as "outcome unknown".
func provenNotWritten(rec *record) bool {
	f := rec.Outcome()
	return !queued(rec) || f != nil && f.Outcome != outcomeUnknown
}

// queued reports whether a record was queued on a partition, so that it
// may have been written or its outcome is known.
func queued(rec *record) bool {
	partition, _ := rec.Progress()
	return partition >= 0
}
