package queuepublish

import (
	"errors"
	"math"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// The module's Prometheus metrics, on Caddy's admin /metrics. They live
// for the whole process, so that counts go on across config reloads, and
// are registered in the registry of each config that loads.
var (
	metricRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_queue_publish_requests_total",
		Help: "Requests answered by queue_publish, by topic and status code.",
	}, []string{"topic", "code"})
	metricRecords = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_queue_publish_records_total",
		Help: "Records acknowledged by Kafka, by topic.",
	}, []string{"topic"})
	metricBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_queue_publish_record_bytes_total",
		Help: "Bytes of the values of the records acknowledged by Kafka, by topic.",
	}, []string{"topic"})
	metricLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "caddy_queue_publish_produce_duration_seconds",
		Help:    "Time from a request's arrival to the broker's acknowledgement of all its records, by topic.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15), // 0.5 ms to 8 s
	}, []string{"topic"})
	metricBatch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "caddy_queue_publish_batch_records",
		Help:    "Records in each batch Kafka acknowledged (a produce request carries a batch per partition).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 11), // 1 to 1024
	})
	metricWaiting = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "caddy_queue_publish_records_waiting",
		Help: "Records queued or in flight, waiting for a broker's answer.",
	}, recordsWaiting)
	metricAsyncQueued = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "caddy_queue_publish_async_queued_records",
		Help: "Records of delivery async answered 202 and not yet settled by a broker, over the loaded handlers.",
	}, func() float64 { return asyncQueues.sum(func(q *Requests) int64 { return q.asyncPending.Load() }) })
	metricAsyncSize = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "caddy_queue_publish_async_queue_size",
		Help: "The queue_size of the loaded handlers with delivery async, summed: where requests start to be answered 503.",
	}, func() float64 { return asyncQueues.sum(func(q *Requests) int64 { return int64(q.QueueSize) }) })
	metricAsyncFill = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "caddy_queue_publish_async_queue_fill",
		Help: "The fill of the fullest delivery async queue, from 0 to 1: each handler's queued records over its queue_size.",
	}, func() float64 {
		return asyncQueues.max(func(q *Requests) float64 { return float64(q.asyncPending.Load()) / float64(q.QueueSize) })
	})
	metricAsyncDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_queue_publish_async_dropped_records_total",
		Help: "Records of delivery async answered 202 that no broker acknowledged, by reason: expired (not written within queue_timeout), unknown (sent, not acknowledged: it may or may not be written), too_large or refused (the broker refused it for good).",
	}, []string{"reason"})
	metricProducerErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_queue_publish_producer_errors_total",
		Help: "Records not acknowledged, by kind: retriable (503), timeout (504), too_large (413), permanent (500).",
	}, []string{"kind"})
	metricRejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_queue_publish_rejections_total",
		Help: "Requests refused before reaching Kafka, by reason.",
	}, []string{"reason"})
	metricStoreErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_queue_publish_idempotency_store_errors_total",
		Help: "Failures to reach the shared store of Idempotency-Keys, by operation: claim (the request was answered 503, or produced with on_store_error produce) or settle (an outcome not stored).",
	}, []string{"op"})
	metricIdentityRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_queue_publish_identity_requests_total",
		Help: "Requests answered by handlers that tell publishers apart, by identity and status code. The identity is one the config names (a named secret, an identity in allow or quota); any other is \"other\", an unnamed secret's holder \"anonymous\", a request not authenticated \"none\".",
	}, []string{"identity", "code"})
	metricReplays = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "caddy_queue_publish_idempotent_replays_total",
		Help: "Repeated requests answered from an earlier one by Idempotency-Key, without producing again.",
	})
)

// Reasons for metricRejections.
const (
	rejectMethod      = "method"
	rejectAuth        = "auth"
	rejectTooLarge    = "too_large"
	rejectInvalidJSON = "invalid_json"
	rejectRecords     = "invalid_records"
	rejectSchema      = "schema"
	rejectTopic       = "unknown_topic"
	rejectIdempotency = "idempotency_key"
	rejectQueueFull   = "queue_full"
	rejectOrigin      = "origin"
	rejectStore       = "idempotency_store" // the shared store could not be reached
	rejectPath        = "path"              // mode confluent: no produce API there
	rejectContentType = "content_type"      // mode confluent: a format it does not take
	rejectIssuer      = "issuer"            // a JWT's issuer could not be reached
	rejectPermission  = "permission"        // the publisher may not publish to the topic
	rejectQuota       = "quota"             // the publisher's quota is spent
	rejectQuotaStore  = "quota_store"       // the shared store of quotas could not be reached
)

// The identities of metricIdentityRequests that the config does not name.
const (
	identityOther     = "other"
	identityAnonymous = "anonymous"
	identityNone      = "none"
)

// identityLabels are the identities a config names, which the metrics
// count apart: a bounded set, however many publishers a JWT issuer or a
// certificate authority knows.
type identityLabels map[string]bool

// label is the metrics' label of an identity.
func (l identityLabels) label(id *identity) string {
	switch {
	case id.scheme == "":
		return identityNone
	case id.name == "":
		return identityAnonymous
	case l[id.name]:
		return id.name
	}
	return identityOther
}

// Reasons for metricAsyncDropped.
const (
	dropExpired  = "expired"
	dropUnknown  = "unknown"
	dropTooLarge = "too_large"
	dropRefused  = "refused"
)

// asyncDropReason is why a record of delivery async was dropped, from its
// outcome. A record that could still be written (outcome retriable) is
// given up only when queue_timeout has passed.
func asyncDropReason(o producer.Outcome) string {
	switch o {
	case outcomeRetry:
		return dropExpired
	case outcomeUnknown:
		return dropUnknown
	case outcomeTooLarge:
		return dropTooLarge
	}
	return dropRefused
}

// registerMetrics adds the module's metrics to a config's registry; they
// may be there already (another handler of the same config).
func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{metricRequests, metricRecords, metricBytes, metricLatency,
		metricBatch, metricWaiting, metricProducerErrors, metricRejections, metricReplays, metricStoreErrors, metricIdentityRequests,
		metricAsyncQueued, metricAsyncSize, metricAsyncFill, metricAsyncDropped} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// topicMetrics are the per-topic series a request updates, looked up once.
type topicMetrics struct {
	ok      prometheus.Counter // requests answered 200
	records prometheus.Counter
	bytes   prometheus.Counter
	latency prometheus.Observer
}

var topicSeries sync.Map // topic -> *topicMetrics

func metricsFor(topic string) *topicMetrics {
	if m, ok := topicSeries.Load(topic); ok {
		return m.(*topicMetrics)
	}
	m, _ := topicSeries.LoadOrStore(topic, &topicMetrics{
		ok:      metricRequests.WithLabelValues(topic, "200"),
		records: metricRecords.WithLabelValues(topic),
		bytes:   metricBytes.WithLabelValues(topic),
		latency: metricLatency.WithLabelValues(topic),
	})
	return m.(*topicMetrics)
}

// countRequest counts an answered request.
func countRequest(topic string, status int) {
	if status == 200 {
		metricsFor(topic).ok.Inc()
		return
	}
	metricRequests.WithLabelValues(topic, strconv.Itoa(status)).Inc()
}

// countRecord counts a record's outcome, f, as its request is answered.
func countRecord(topic string, rec *record, f *publishError) {
	if f != nil {
		// The producer may still be completing it: read nothing else.
		countOutcome(topic, f, 0)
		return
	}
	countOutcome(topic, nil, rec.ValueLen())
}

// countOutcome counts one record's outcome: failure nil if acknowledged.
func countOutcome(topic string, failure *publishError, valueLen int) {
	if failure != nil {
		metricProducerErrors.WithLabelValues(failure.Outcome.String()).Inc()
		return
	}
	m := metricsFor(topic)
	m.records.Inc()
	m.bytes.Add(float64(valueLen))
}

// recordsWaiting counts, at scrape time, the records that every producer
// holds in its queues or in flight.
func recordsWaiting() float64 {
	n := 0
	eachShared(func(p pooledProducer) { n += p.Waiting() })
	return float64(n)
}

// producerMetrics is told of the producers' batches.
type producerMetrics struct{}

func (producerMetrics) Batch(_ string, records int) { metricBatch.Observe(float64(records)) }

// handlerSet is the loaded handlers of delivery async, for the gauges of
// their queues.
type handlerSet struct{ m sync.Map }

var asyncQueues handlerSet

func (s *handlerSet) add(q *Requests)    { s.m.Store(q, struct{}{}) }
func (s *handlerSet) remove(q *Requests) { s.m.Delete(q) }

// sum adds up f over the handlers.
func (s *handlerSet) sum(f func(*Requests) int64) float64 {
	var n int64
	s.m.Range(func(k, _ any) bool {
		n += f(k.(*Requests))
		return true
	})
	return float64(n)
}

// max is the largest f over the handlers, 0 without any.
func (s *handlerSet) max(f func(*Requests) float64) float64 {
	m := 0.0
	s.m.Range(func(k, _ any) bool {
		m = math.Max(m, f(k.(*Requests)))
		return true
	})
	return m
}
