package queuepublish

import (
	"cmp"
	"net/http"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/confluent"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"go.uber.org/zap"
)

// publish produces the records of send and answers with final, the
// records that stand for the request: send and, for a repeated request,
// those of the first attempt that stand.
func (h *Handler) publish(x *exchange, r *http.Request, final, send []*record, start time.Time) error {
	async := h.Delivery == deliveryAsync
	if len(send) > 0 {
		if h.traceHeaders {
			addTraceHeaders(r, send)
		}
		if async && !h.reserveQueue(len(send)) {
			x.reason = rejectQueueFull
			return x.answerFailure(errQueueFull)
		}
		set, ref := h.place(x, r, send, start)
		if set == nil || ref != nil {
			if async {
				h.asyncPending.Add(-int64(len(send)))
			}
			switch {
			case ref != nil:
				return x.refuse(ref)
			case async || h.Mode == modeBody:
				return x.answerFailure(send[0].Answer)
			}
			return h.answerPublished(x, final)
		}
		if async {
			return h.enqueue(x, set, send, start)
		}
		h.sendAndWait(x, r, set, send, start)
	} else if async {
		return x.answer(http.StatusAccepted, bodyAccepted)
	}
	return h.answerPublished(x, final)
}

// answerPublished answers a request whose records were sent: the records
// that stand for it, in the shape of the mode.
func (h *Handler) answerPublished(x *exchange, final []*record) error {
	switch {
	case x.api != nil:
		return h.answerConfluent(x, final)
	case h.Mode == modeRecords:
		return x.answerRecords(final)
	}
	return x.answerBody(final[0])
}

// place finds the topic of the records and checks the partitions they ask
// for: the step that sync and async delivery share. If the producer cannot
// have the topic, every record fails alike before any is queued: each is
// answered, counted and logged, and the topic is nil.
func (h *Handler) place(x *exchange, r *http.Request, recs []*record, start time.Time) (*producer.Topic, *refusal) {
	set, perr := x.producer.Topic(r.Context(), x.topic, recs)
	if perr != nil {
		for _, rec := range recs {
			rec.Answer = perr
			countRecord(x.topic, rec)
		}
		h.logFailure(x.topic, recs, start)
		return nil, nil
	}
	return set, checkPartitions(recs, set.Partitions())
}

// sendAndWait sends the records and waits for their outcomes, within the
// request's timeout.
func (h *Handler) sendAndWait(x *exchange, r *http.Request, set *producer.Topic, recs []*record, start time.Time) {
	x.producer.Send(r.Context(), set, recs)
	failed := false
	for _, rec := range recs {
		countRecord(x.topic, rec)
		failed = failed || rec.Answer != nil
	}
	if failed {
		h.logFailure(x.topic, recs, start)
	} else {
		metricsFor(x.topic).latency.Observe(time.Since(start).Seconds())
	}
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

// enqueue queues the records of delivery async, reserved in queue_size,
// and answers 202 without waiting for the broker.
func (h *Handler) enqueue(x *exchange, set *producer.Topic, recs []*record, start time.Time) error {
	for _, rec := range recs {
		rec.OnDone = h.asyncDone
		// The request waited for its topic within timeout; its records
		// wait for a broker within queue_timeout from the request's
		// arrival (a record's timestamp is data, never a clock), which
		// the producer keeps them (and retries them) until, then takes
		// them back.
		rec.Deadline = start.Add(time.Duration(h.QueueTimeout))
	}
	if queued, perr := x.producer.Enqueue(set, recs); perr != nil {
		// Shutting down: the records before were queued.
		h.asyncPending.Add(-int64(len(recs) - queued))
		return x.answerFailure(perr)
	}
	return x.answer(http.StatusAccepted, bodyAccepted)
}

// onAsyncDone accounts for a record of delivery async that is done, and
// logs and counts it as dropped if it failed. The record's queue is
// locked.
func (h *Handler) onAsyncDone(rec *record) {
	h.asyncPending.Add(-1)
	// rec.Answer is its waiter's; a record of delivery async has none,
	// but a repeat of its request may read it.
	countOutcome(rec.Topic(), rec.Err(), rec.ValueLen())
	if rec.Err() != nil {
		reason := asyncDropReason(rec.Err().Outcome)
		metricAsyncDropped.WithLabelValues(reason).Inc()
		h.logger.Error("asynchronous publish failed",
			zap.String("topic", rec.Topic()),
			zap.Int("partition", placedPartition(rec)),
			zap.String("kind", rec.Err().Outcome.String()),
			zap.String("reason", reason),
			zap.Int("attempts", rec.Attempts()),
			zap.Duration("duration", time.Since(rec.Deadline.Add(-time.Duration(h.QueueTimeout)))), // since its request
			zap.Error(rec.Err()))
	}
}

// logFailure logs a request whose records were not all acknowledged: one
// line at error level, about the first record that failed: its partition
// if it was queued on one, and the produce requests that carried it (0 if
// it failed before any did).
func (h *Handler) logFailure(topic string, recs []*record, start time.Time) {
	var first *record
	failed := 0
	for _, rec := range recs {
		if rec.Answer != nil {
			first = cmp.Or(first, rec)
			failed++
		}
	}
	if first == nil {
		return
	}
	fields := []zap.Field{
		zap.String("topic", topic),
		zap.String("kind", first.Answer.Outcome.String()),
		zap.Int("records", len(recs)),
		zap.Int("failed", failed),
		zap.Duration("duration", time.Since(start)),
		zap.Error(first.Answer),
	}
	attempts := 0
	if first.Queued() {
		var partition int
		partition, attempts = first.Progress()
		fields = append(fields, zap.Int("partition", partition))
	}
	fields = append(fields, zap.Int("attempts", attempts))
	h.logger.Error("publish failed", fields...)
}

// checkPartitions rejects records that ask for a partition the topic does
// not have.
func checkPartitions(recs []*record, count int) *refusal {
	for i, rec := range recs {
		if rec.Partition >= count {
			return confluentRefusal(badRequest(rejectRecords, "record %d: partition %d does not exist (the topic has %d)", i, rec.Partition, count),
				http.StatusNotFound, confluent.CodePartitionNotFound, "")
		}
	}
	return nil
}

// placedPartition is the partition a record was queued on.
func placedPartition(rec *record) int {
	partition, _ := rec.Placed()
	return partition
}
