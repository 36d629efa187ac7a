package queuepublish

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/queuepublish/caddy-queue-publish/internal/confluent"
)

// Quotas is how much each publisher may publish: records and bytes a
// second, each a token bucket with a burst, kept in this instance's
// memory or, for a fleet, on a Redis all its instances share.
type Quotas struct {
	// The quotas, the first whose identity matches a request's
	// applying: each identity it matches has buckets of its own. A
	// request is charged its records and its body's bytes once it is
	// accepted (a request refused for any other reason costs nothing);
	// one that the buckets cannot pay now is answered 429 with
	// Retry-After, and one larger than a burst, which could never be
	// paid, 413. Answers carry the RateLimit-Policy and RateLimit
	// headers (draft-ietf-httpapi-ratelimit-headers).
	Quotas []Quota `json:"quotas,omitempty"`

	// Where the buckets are kept: unset, in this instance's memory; a
	// redis:// or rediss:// URL (as idempotency_redis), on that server,
	// shared by every instance that names it, so that a quota holds for
	// the fleet. A request whose quota cannot be checked there is
	// answered 503 (nothing was produced; retrying is safe).
	QuotaRedis string `json:"quota_redis,omitempty"`

	// With a rediss:// quota_redis, its TLS settings, as
	// idempotency_redis_tls.
	QuotaRedisTLS *BrokerTLS `json:"quota_redis_tls,omitempty"`

	quotas  []quota
	limiter limiter // nil: no quotas
}

// A Quota limits the identities it matches.
type Quota struct {
	// The identities: a name or a pattern (as in allow, where "*" does
	// not cross a "/"). Unset: every identity, whatever its name (the
	// holders of an unnamed secret share one pair of buckets).
	Identity string `json:"identity,omitempty"`

	// Records a second, on average; zero: not limited.
	RecordsPerSecond float64 `json:"records_per_second,omitempty"`
	// The most records at once, and in one request. Default: the
	// records of one second (at least 1).
	RecordsBurst int64 `json:"records_burst,omitempty"`
	// Bytes of request bodies a second, on average; zero: not limited.
	BytesPerSecond int64 `json:"bytes_per_second,omitempty"`
	// The most bytes at once, and in one request. Default: the bytes of
	// one second.
	BytesBurst int64 `json:"bytes_burst,omitempty"`
}

// quota is a Quota resolved: its buckets, and the RateLimit-Policy it
// answers.
type quota struct {
	// id names the quota's buckets: a digest of its definition, so that
	// handlers with the same quota share its buckets (in memory and on
	// Redis alike), and a changed quota starts afresh.
	id       string
	all      bool // no identity: every one, whatever its name holds
	identity pattern
	records  bucketRate
	bytes    bucketRate
	policy   []string // the RateLimit-Policy header
	kinds    []bucketKind
}

// bucketRate is one token bucket's refill rate a second and size; a
// zero rate is no limit.
type bucketRate struct {
	rate  float64
	burst float64
}

func (b bucketRate) limited() bool { return b.rate > 0 }

// check checks the quotas and applies their defaults.
func (q *Quotas) check() error {
	for i := range q.Quotas {
		quota := &q.Quotas[i]
		if err := pattern(quota.Identity).check(); err != nil {
			return fmt.Errorf("quota %d: %v", i+1, err)
		}
		if quota.RecordsPerSecond < 0 || math.IsNaN(quota.RecordsPerSecond) || math.IsInf(quota.RecordsPerSecond, 0) {
			return fmt.Errorf("quota %d: records_per_second: must be a positive number", i+1)
		}
		if err := checkLimits(
			limit{"records_per_second", int64(math.Ceil(quota.RecordsPerSecond)), true},
			limit{"records_burst", quota.RecordsBurst, true},
			limit{"bytes_per_second", quota.BytesPerSecond, true},
			limit{"bytes_burst", quota.BytesBurst, true},
		); err != nil {
			return fmt.Errorf("quota %d: %v", i+1, err)
		}
		if quota.RecordsPerSecond == 0 && quota.BytesPerSecond == 0 {
			return fmt.Errorf("quota %d: limits neither records nor bytes", i+1)
		}
		if quota.RecordsBurst > 0 && quota.RecordsPerSecond == 0 || quota.BytesBurst > 0 && quota.BytesPerSecond == 0 {
			return fmt.Errorf("quota %d: a burst without its rate", i+1)
		}
		if quota.RecordsPerSecond > 0 && quota.RecordsBurst == 0 {
			quota.RecordsBurst = max(1, int64(math.Ceil(quota.RecordsPerSecond)))
		}
		if quota.BytesPerSecond > 0 && quota.BytesBurst == 0 {
			quota.BytesBurst = quota.BytesPerSecond
		}
	}
	if q.QuotaRedisTLS != nil && q.QuotaRedis == "" {
		return errors.New("quota_redis_tls: needs quota_redis")
	}
	return nil
}

// provision resolves the quotas and takes the store of their buckets.
func (q *Quotas) provision(p *provisioning) error {
	q.quotas, q.limiter = nil, nil
	if len(q.Quotas) == 0 {
		return nil
	}
	for _, c := range q.Quotas {
		r := quota{
			id:       sharedKey("quota", c)[len("queue_publish.quota."):][:16],
			all:      c.Identity == "",
			identity: pattern(c.Identity),
			records:  bucketRate{c.RecordsPerSecond, float64(c.RecordsBurst)},
			bytes:    bucketRate{float64(c.BytesPerSecond), float64(c.BytesBurst)},
		}
		r.kinds = r.limitedKinds()
		r.policy = []string{r.policyHeader()}
		q.quotas = append(q.quotas, r)
	}
	var l limiter
	var err error
	if q.QuotaRedis == "" {
		l, err = memoryLimiterShared()
	} else {
		l, err = q.redisLimiter(p.repl, time.Duration(p.h.Timeout), p.logger)
	}
	if err != nil {
		return fmt.Errorf("quota_redis: %v", err)
	}
	q.limiter = l // only once taken: cleanup releases it
	return nil
}

func (q *Quotas) cleanup() error {
	if q.limiter == nil {
		return nil
	}
	err := q.limiter.release()
	q.limiter = nil
	return err
}

// quotaOf is the quota of an identity; nil if none applies.
func (q *Quotas) quotaOf(name string) *quota {
	for i := range q.quotas {
		if q.quotas[i].all || q.quotas[i].identity.matches(name) {
			return &q.quotas[i]
		}
	}
	return nil
}

// A limiter keeps the buckets.
type limiter interface {
	// take takes records and bytes from the buckets of the identity
	// name under quota q, if both have them; otherwise it takes
	// nothing and says how long until they would. Negative amounts give
	// back, up to the bursts. A store across the network bounds its wait
	// itself.
	take(ctx context.Context, q *quota, name string, records, bytes int64) (buckets, error)
	// release ends a handler's use of the store.
	release() error
}

// buckets is what a take found: whether it took, how long until it
// could, and what the buckets hold after it.
type buckets struct {
	taken          bool
	wait           time.Duration
	records, bytes float64
}

// The rejections of quotas.
var (
	rejectedQuota      = confluentRejection(reject(rejectQuota, http.StatusTooManyRequests, "quota exceeded"), http.StatusTooManyRequests, confluent.CodeTooManyRequests, "Too many requests.")
	rejectedOverBurst  = confluentRejection(reject(rejectQuota, http.StatusRequestEntityTooLarge, "request larger than the quota's burst"), http.StatusRequestEntityTooLarge, confluent.CodeTooManyRequests, "Request larger than the quota's burst.")
	rejectedQuotaStore = confluentRejection(reject(rejectQuotaStore, http.StatusServiceUnavailable, "quota store unavailable"), http.StatusServiceUnavailable, confluent.CodeNotWritten, "Quota store unavailable.")
)

// charge charges a request's records and bytes to its publisher's quota,
// and says so in the RateLimit headers; a rejection if it cannot pay.
// It is called once nothing else can refuse the request but the broker:
// a request refused for another reason, or a repeat answered from the
// first attempt, costs nothing.
func (h *Handler) charge(x *exchange, records int, bytes int64) *rejection {
	q, b, ref := h.take(x, records, bytes)
	if q == nil {
		return ref
	}
	hdr := x.w.Header()
	hdr["Ratelimit-Policy"] = q.policy
	if ref == rejectedOverBurst || ref == rejectedQuotaStore {
		return ref
	}
	hdr["Ratelimit"] = []string{q.state(b)}
	if ref != nil {
		hdr["Retry-After"] = []string{strconv.FormatInt(int64(math.Ceil(b.wait.Seconds())), 10)}
	}
	return ref
}

// take is charge without the headers, for a stream's records, whose
// status went before them: the quota that applies (nil: none), what its
// buckets hold, and a rejection if they cannot pay.
func (h *Handler) take(x *exchange, records int, bytes int64) (*quota, buckets, *rejection) {
	if h.limiter == nil {
		return nil, buckets{}, nil
	}
	q := h.quotaOf(x.req.identity.name)
	if q == nil {
		return nil, buckets{}, nil
	}
	if q.records.limited() && float64(records) > q.records.burst || q.bytes.limited() && float64(bytes) > q.bytes.burst {
		return q, buckets{}, rejectedOverBurst
	}
	b, err := h.limiter.take(x.req.ctx, q, x.req.identity.name, int64(records), bytes)
	if err != nil {
		h.logger.Warn("quota store unavailable; request answered 503", zap.Error(err))
		return q, buckets{}, rejectedQuotaStore
	}
	if !b.taken {
		return q, b, rejectedQuota
	}
	return q, b, nil
}

// refund gives back what charge took for a request the broker was never
// asked to write (a partition it does not have, a full queue).
func (h *Handler) refund(x *exchange, records int, bytes int64) {
	if h.limiter == nil {
		return
	}
	if q := h.quotaOf(x.req.identity.name); q != nil {
		if _, err := h.limiter.take(x.req.ctx, q, x.req.identity.name, -int64(records), -bytes); err != nil {
			h.logger.Warn("quota store unavailable; a refund is lost", zap.Error(err))
		}
	}
}

// policyHeader is the quota as RateLimit-Policy says it: for each
// bucket, its size (q) and the seconds it takes to fill (w). Records are
// not one of the draft's quota units; "records" names them as one.
func (q *quota) policyHeader() string {
	var b []byte
	for _, k := range q.kinds {
		b = appendItem(b, k.name)
		b = append(b, ";q="...)
		b = strconv.AppendInt(b, int64(k.rate.burst), 10)
		b = append(b, ";w="...)
		b = strconv.AppendInt(b, max(1, int64(math.Ceil(k.rate.burst/k.rate.rate))), 10)
		b = append(b, `;qu="`...)
		b = append(b, k.unit...)
		b = append(b, '"')
	}
	return string(b)
}

// state is the RateLimit header: for each bucket, what it holds (r) and
// the seconds until it is full again (t).
func (q *quota) state(bk buckets) string {
	b := make([]byte, 0, 64)
	for _, k := range q.kinds {
		held := bk.records
		if k.name == "bytes" {
			held = bk.bytes
		}
		b = appendItem(b, k.name)
		b = append(b, ";r="...)
		b = strconv.AppendInt(b, int64(max(0, math.Floor(held))), 10)
		b = append(b, ";t="...)
		b = strconv.AppendInt(b, int64(math.Ceil(max(0, k.rate.burst-held)/k.rate.rate)), 10)
	}
	return string(b)
}

// bucketKind is one of a quota's buckets as the RateLimit headers name it.
type bucketKind struct {
	name, unit string
	rate       bucketRate
}

// limitedKinds are the quota's limited buckets, records first: kept in
// kinds at provision, not made on every request.
func (q *quota) limitedKinds() []bucketKind {
	kinds := make([]bucketKind, 0, 2)
	if q.records.limited() {
		kinds = append(kinds, bucketKind{"records", "records", q.records})
	}
	if q.bytes.limited() {
		kinds = append(kinds, bucketKind{"bytes", "content-bytes", q.bytes})
	}
	return kinds
}

// appendItem starts a structured-field list item: a separator after the
// first, and the quoted name.
func appendItem(b []byte, name string) []byte {
	if len(b) > 0 {
		b = append(b, ", "...)
	}
	b = append(b, '"')
	b = append(b, name...)
	return append(b, '"')
}

// refill is a bucket holding held tokens after elapsed, and take takes
// cost of it: the token bucket both stores compute (the Redis script in
// Lua).
func (r bucketRate) refill(held float64, elapsed time.Duration) float64 {
	if !r.limited() {
		return 0
	}
	return min(r.burst, held+elapsed.Seconds()*r.rate)
}

// wait is how long until a bucket holding held has cost.
func (r bucketRate) wait(held, cost float64) time.Duration {
	if !r.limited() || held >= cost {
		return 0
	}
	return time.Duration((cost - held) / r.rate * float64(time.Second))
}
