package queuepublish

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Delivery async answers 202 once a request's records are queued, before
// the broker has them: queue_size bounds the records waiting, and
// queue_timeout how long each may wait.

// publishAsync queues the records, reserved in queue_size, and answers 202
// without waiting for the broker.
func (h *Handler) publishAsync(x *exchange, recs []*record) error {
	start := x.req.start
	if len(recs) == 0 {
		return x.answer(http.StatusAccepted, bodyAccepted)
	}
	if !h.reserveQueue(len(recs)) {
		h.refund(x, len(recs), int64(len(x.req.body)))
		x.reason = rejectQueueFull
		return x.fail(errQueueFull)
	}
	for _, rec := range recs {
		rec.OnDone = h.asyncDone
		// The request waited for its topic within timeout; its records
		// wait for a broker within queue_timeout from the request's
		// arrival (a record's timestamp is data, never a clock), which
		// the producer keeps them (and retries them) until, then takes
		// them back.
		rec.Deadline = start.Add(time.Duration(h.QueueTimeout))
	}
	// The topic is looked up within the request's timeout.
	ctx, cancel := context.WithDeadline(x.req.ctx, start.Add(time.Duration(h.Timeout)))
	defer cancel()
	queued, err := x.producer.Enqueue(ctx, recs)
	if err == nil {
		return x.answer(http.StatusAccepted, bodyAccepted)
	}
	h.asyncPending.Add(-int64(len(recs) - queued))
	if ref := partitionRejection(err); ref != nil {
		h.refund(x, len(recs), int64(len(x.req.body)))
		return x.reject(ref)
	}
	f := recs[len(recs)-1].Outcome() // the topic could not be had, or the producer closed
	if queued == 0 {
		out := outcomesOf(recs)
		h.countSent(x.topic, recs, recs, out, start)
	}
	return x.fail(f)
}

// reserveQueue counts n records of delivery async against queue_size;
// false if they do not fit.
func (h *Handler) reserveQueue(n int) bool {
	if h.asyncPending.Add(int64(n)) > int64(h.QueueSize) {
		h.asyncPending.Add(-int64(n))
		return false
	}
	return true
}

// onAsyncDone accounts for a record of delivery async that is done, and
// logs and counts it as dropped if it failed. The record's queue is
// locked.
func (h *Handler) onAsyncDone(rec *record, f *publishError) {
	h.asyncPending.Add(-1)
	countOutcome(rec.Topic, f, rec.ValueLen())
	if f != nil {
		reason := asyncDropReason(f.Outcome)
		metricAsyncDropped.WithLabelValues(reason).Inc()
		partition, attempts := rec.Progress()
		h.logger.Error("asynchronous publish failed",
			zap.String("topic", rec.Topic),
			zap.Int("partition", partition),
			zap.String("kind", f.Outcome.String()),
			zap.String("reason", reason),
			zap.Int("attempts", attempts),
			zap.Duration("duration", time.Since(rec.Deadline.Add(-time.Duration(h.QueueTimeout)))), // since its request
			zap.Error(f))
	}
}
