package queuepublish

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// memoryLimiter keeps the buckets of quotas in this instance's memory:
// one pair (records, bytes) for each identity under each quota, each pair
// under its own lock, so that publishers never wait for one another;
// only requests of the same identity serialize, for the few nanoseconds
// of a take. There is one, which every handler shares across reloads:
// a reload does not refill the buckets, and handlers with the same quota
// share its buckets, as they do on Redis.
type memoryLimiter struct {
	pairs   sync.Map     // quota index and identity -> *bucketPair
	swept   atomic.Int64 // when the pairs were last swept, in Unix nanoseconds
	now     func() time.Time
	poolKey string
}

// bucketPair is one identity's buckets under one quota.
type bucketPair struct {
	mu             sync.Mutex
	records, bytes float64
	at             time.Time // when they held that
	q              *quota
	dead           bool // swept: a take finding it takes a new pair
}

// sweepEvery is how often full buckets are forgotten: a full bucket is
// what a new one is, so the memory held is that of the identities that
// published within a bucket's fill time, however many publish over time.
const sweepEvery = time.Minute

func memoryLimiterShared() (limiter, error) {
	key := sharedKey("quota_memory", nil)
	l, _, err := loadShared(key, func() (*memoryLimiter, error) {
		return &memoryLimiter{now: time.Now, poolKey: key}, nil
	})
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return l, nil
}

func (l *memoryLimiter) take(_ context.Context, q *quota, name string, records, bytes int64) (buckets, error) {
	now := l.now()
	if last := l.swept.Load(); now.UnixNano()-last > int64(sweepEvery) && l.swept.CompareAndSwap(last, now.UnixNano()) {
		go l.sweep(now)
	}
	key := q.id + "\x00" + name
	p := l.pair(key, q, now)
	defer p.mu.Unlock()
	elapsed := now.Sub(p.at)
	if elapsed > 0 {
		p.records, p.bytes, p.at = q.records.refill(p.records, elapsed), q.bytes.refill(p.bytes, elapsed), now
	}
	wait := max(q.records.wait(p.records, float64(records)), q.bytes.wait(p.bytes, float64(bytes)))
	if wait > 0 {
		return buckets{wait: wait, records: p.records, bytes: p.bytes}, nil
	}
	if q.records.limited() {
		p.records = min(q.records.burst, p.records-float64(records))
	}
	if q.bytes.limited() {
		p.bytes = min(q.bytes.burst, p.bytes-float64(bytes))
	}
	return buckets{taken: true, records: p.records, bytes: p.bytes}, nil
}

// pair is the identity's pair under key, locked.
func (l *memoryLimiter) pair(key string, q *quota, now time.Time) *bucketPair {
	for {
		v, ok := l.pairs.Load(key)
		if !ok {
			v, _ = l.pairs.LoadOrStore(key, &bucketPair{records: q.records.burst, bytes: q.bytes.burst, at: now, q: q})
		}
		p := v.(*bucketPair)
		p.mu.Lock()
		if !p.dead {
			return p
		}
		p.mu.Unlock()
	}
}

// sweep forgets the pairs that are full by now.
func (l *memoryLimiter) sweep(now time.Time) {
	l.pairs.Range(func(k, v any) bool {
		p := v.(*bucketPair)
		p.mu.Lock()
		elapsed := now.Sub(p.at)
		if p.q.records.refill(p.records, elapsed) >= p.q.records.burst && p.q.bytes.refill(p.bytes, elapsed) >= p.q.bytes.burst {
			p.dead = true
			l.pairs.CompareAndDelete(k, v)
		}
		p.mu.Unlock()
		return true
	})
}

func (l *memoryLimiter) release() error { return releaseShared(l.poolKey) }

// Destruct is called when the last handler releases it.
func (l *memoryLimiter) Destruct() error { return nil }
