package queuepublish

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// redisStore is the store of Idempotency-Keys that a fleet of Caddy
// instances shares, on a Redis (or Valkey) server, so that a repeat that
// reaches another instance than the first attempt is still answered from
// it. Each key has two Redis keys, in one hash slot for Redis Cluster:
//
//	<prefix>{<hash>}        the digest of the request and, once settled,
//	                        its records' outcomes; it expires with the window
//	<prefix>{<hash>}:lease  the token of the instance handling the request;
//	                        it expires if that instance dies
//
// Claims and settlements are Lua scripts, atomic on the server.
type redisStore struct {
	client redis.UniversalClient
	prefix string
	window time.Duration
	// lease is how long a claim holds a key: the request's timeout and
	// the late acknowledgement waited for, with a margin.
	lease   time.Duration
	timeout time.Duration // the requests' timeout, which bounds every call to Redis
	logger  *zap.Logger
	warned  atomic.Int64 // when a failure was last warned of, in Unix seconds
	poolKey string       // its key among the shared values
}

// The outcome of a record as the store keeps it, one letter and its place:
// "a<partition>:<offset>:<unix ms>" acknowledged, "n" provably not written,
// "u" unknown. A claim never settled (its instance died) is unknown too.
const (
	storedAcked      = 'a'
	storedNotWritten = 'n'
	storedUnknown    = 'u'
)

// claimScript claims a key: 0 new, 1 a repeat (with what is stored), 2
// another body, 3 in progress. The lease holds the claim's token (ARGV[4])
// and whether the claim made the entry ("n") or found it ("r"), so that
// the script run again for the same claim (go-redis resends a command
// whose answer was lost) answers as it did the first time.
var claimScript = redis.NewScript(`
local e = redis.call('GET', KEYS[1])
if e and string.sub(e, 1, 64) ~= ARGV[1] then return {2} end
local held = redis.call('GET', KEYS[2])
if held then
	if string.sub(held, 1, 32) ~= ARGV[4] then return {3} end
	if string.sub(held, 33) == 'n' then return {0} end
	return {1, e}
end
if not e then
	redis.call('SET', KEYS[2], ARGV[4] .. 'n', 'PX', ARGV[3])
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
	return {0}
end
redis.call('SET', KEYS[2], ARGV[4] .. 'r', 'PX', ARGV[3])
return {1, e}
`)

// settleScript stores the outcomes (ARGV[2]; empty: forget the key) if
// the claim still holds the lease (token ARGV[1]), and keeps the lease
// for ARGV[3] ms more (0: releases it). The entry keeps the rest of its
// window; one whose window ended stays gone. 0 if the lease was lost.
var settleScript = redis.NewScript(`
local held = redis.call('GET', KEYS[2])
if not held or string.sub(held, 1, 32) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
	redis.call('DEL', KEYS[1])
else
	local ttl = redis.call('PTTL', KEYS[1])
	if ttl > 0 then redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl) end
end
if ARGV[3] == '0' then redis.call('DEL', KEYS[2]) else redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
return 1
`)

// abandonScript undoes a claim whose answer was lost (its call failed
// after the script may have run): the lease goes, and the entry too if
// the claim made it and nothing was stored since.
var abandonScript = redis.NewScript(`
local held = redis.call('GET', KEYS[2])
if not held or string.sub(held, 1, 32) ~= ARGV[1] then return 0 end
if string.sub(held, 33) == 'n' and redis.call('GET', KEYS[1]) == ARGV[2] then redis.call('DEL', KEYS[1]) end
redis.call('DEL', KEYS[2])
return 1
`)

// newRedisStore connects to the server of rawURL (newRedisClient).
func newRedisStore(rawURL string, tlsConfig *tls.Config, prefix string, window, timeout time.Duration, poolKey string, logger *zap.Logger) (*redisStore, error) {
	client, err := newRedisClient(rawURL, tlsConfig)
	if err != nil {
		return nil, err
	}
	useRedisLog(logger)
	return &redisStore{
		client: client, prefix: prefix, window: window,
		lease:   timeout + lateAckWait + 10*time.Second,
		timeout: timeout, logger: logger, poolKey: poolKey,
	}, nil
}

// keys are the Redis keys of an Idempotency-Key in its scope.
func (s *redisStore) keys(key string) []string {
	sum := sha256.Sum256([]byte(key))
	k := s.prefix + "{" + hex.EncodeToString(sum[:]) + "}"
	return []string{k, k + ":lease"}
}

// claim claims key for a request whose records wait until deadline; the
// call takes at most half of the time left, so that with on_store_error
// produce the producer still has the other half.
func (s *redisStore) claim(ctx context.Context, _, key string, digest [sha256.Size]byte, now, deadline time.Time) (idemClaim, idemStatus, error) {
	ctx, cancel := context.WithDeadline(ctx, now.Add(deadline.Sub(now)/2))
	defer cancel()
	var token [16]byte
	rand.Read(token[:])
	c := &redisClaim{s: s, keys: s.keys(key), digest: hex.EncodeToString(digest[:]), token: hex.EncodeToString(token[:])}
	res, err := claimScript.Run(ctx, s.client, c.keys, c.digest, s.window.Milliseconds(), s.lease.Milliseconds(), c.token).Slice()
	if err != nil {
		// The script may have run: undo it, so that the key is not
		// left claimed by a request that was answered 503.
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			defer cancel()
			abandonScript.Run(ctx, s.client, c.keys, c.token, c.digest)
		}()
		return nil, 0, err
	}
	code, _ := res[0].(int64)
	switch code {
	case 0:
		return c, idemNew, nil
	case 2:
		return nil, idemOtherBody, nil
	case 3:
		return nil, idemInProgress, nil
	}
	stored, _ := res[1].(string)
	c.repeat = true
	c.outcomes, c.settled = parseOutcomes(stored[min(len(stored), 64):])
	return c, idemRepeat, nil
}

// redisClaim is a claim on a key of the shared store.
type redisClaim struct {
	s      *redisStore
	keys   []string
	digest string
	token  string
	repeat bool
	// What the first attempt stored: settled, the outcome of each of its
	// records; not settled (its instance died), nothing is known.
	settled  bool
	outcomes []string
}

// matches: a claim never settled knows no number of records; each of the
// repeat's is unknown.
func (c *redisClaim) matches(n int) bool { return !c.settled || len(c.outcomes) == n }

// reuse answers a repeat from what the first attempt stored: a record
// acknowledged stands with its place, one provably not written is sent
// again, and one whose outcome is unknown stands unknown, for it may have
// been written. A repeat waits for nothing: while the instance of the
// first attempt still waits for the broker, it holds the lease, and the
// repeat is answered 409.
func (c *redisClaim) reuse(_ context.Context, recs []*record, _ time.Time, _ bool) (final, send []*record) {
	final = make([]*record, len(recs))
	for i := range recs {
		o := string(storedUnknown)
		if c.settled {
			o = c.outcomes[i]
		}
		switch o[0] {
		case storedNotWritten:
			final[i] = recs[i]
			send = append(send, recs[i])
		case storedAcked:
			final[i] = replayedRecord(o)
		default:
			final[i] = producer.Replayed(-1, -1, time.Time{}, &publishError{Outcome: outcomeUnknown, Reason: "the outcome of the first attempt is unknown; the record may have been written"})
		}
	}
	return final, send
}

// replayedRecord is the acknowledged record of a stored outcome.
func replayedRecord(o string) *record {
	parts := strings.SplitN(o[1:], ":", 3)
	var p, off, ms int64
	if len(parts) == 3 {
		p, _ = strconv.ParseInt(parts[0], 10, 32)
		off, _ = strconv.ParseInt(parts[1], 10, 64)
		ms, _ = strconv.ParseInt(parts[2], 10, 64)
	}
	return producer.Replayed(int(p), off, time.UnixMilli(ms), nil)
}

// parseOutcomes reads the outcomes stored after the digest: "|" and one
// outcome per record, separated by ";"; nothing if never settled.
func parseOutcomes(s string) ([]string, bool) {
	rest, ok := strings.CutPrefix(s, "|")
	if !ok {
		return nil, false
	}
	outcomes := strings.Split(rest, ";")
	for _, o := range outcomes {
		if o == "" {
			return nil, false
		}
	}
	return outcomes, true
}

// settle stores the outcomes of the records that stand for the request.
// The answer ends after it, so that a repeat sent once the answer is read
// finds it settled; it waits for Redis at most half the request's
// timeout, as the claim did. If some outcomes are still unknown while the
// producer waits for their late acknowledgement, the answer does not wait
// for Redis at all (a repeat is answered 409 meanwhile either way): the
// claim keeps the lease and settles again once they are done, so that a
// repeat then gets the real outcome.
func (c *redisClaim) settle(recs []*record) {
	answering := c.s.timeout / 2
	if recs == nil && !c.repeat {
		c.store("", 0, answering) // produced nothing: forget the key
		return
	}
	if recs == nil {
		c.store(c.stored(nil), 0, answering) // keep what the first attempt stored
		return
	}
	var pending []*record
	for _, rec := range recs {
		if f := rec.Outcome(); f != nil && f.Outcome == outcomeUnknown && queued(rec) {
			pending = append(pending, rec)
		}
	}
	if pending == nil {
		c.store(c.stored(recs), 0, answering)
		return
	}
	unknown := c.stored(recs)
	go func() {
		c.store(unknown, c.s.lease, c.s.timeout)
		for _, rec := range pending {
			timer := time.NewTimer(time.Until(rec.AckBy))
			select {
			case <-rec.Done():
			case <-timer.C:
			}
			timer.Stop()
		}
		c.store(c.stored(recs), 0, c.s.timeout)
	}()
}

// stored is the value that stands for recs: the digest and each record's
// outcome; nil recs: what the first attempt stored.
func (c *redisClaim) stored(recs []*record) string {
	var b strings.Builder
	b.WriteString(c.digest)
	if recs == nil {
		if c.settled {
			b.WriteString("|" + strings.Join(c.outcomes, ";"))
		}
		return b.String()
	}
	for i, rec := range recs {
		if i == 0 {
			b.WriteByte('|')
		} else {
			b.WriteByte(';')
		}
		switch f := rec.Outcome(); {
		case f == nil:
			partition, offset := rec.Placed()
			fmt.Fprintf(&b, "a%d:%d:%d", partition, offset, rec.Time.UnixMilli())
		case f.Outcome != outcomeUnknown:
			b.WriteByte(storedNotWritten)
		default:
			b.WriteByte(storedUnknown)
		}
	}
	return b.String()
}

// store runs a settlement, within limit: the request may be answered
// already, so its context is not the request's. A failure leaves the
// claim to its lease: a repeat is answered 409 until it expires, and then
// as unknown, never produced twice.
func (c *redisClaim) store(value string, keep, limit time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	n, err := settleScript.Run(ctx, c.s.client, c.keys, c.token, value, keep.Milliseconds()).Int()
	switch {
	case err != nil:
		metricStoreErrors.WithLabelValues("settle").Inc()
		c.s.warn("the idempotency store could not record an outcome: a repeat of the request is answered 409 until its lease ends, then as unknown", err)
	case n == 0:
		c.s.logger.Warn("an Idempotency-Key's lease ended before its request settled; its outcome is not stored", zap.Duration("lease", c.s.lease))
	}
}

// warn logs a failure of the store at most once a second.
func (s *redisStore) warn(msg string, err error) {
	now := time.Now().Unix()
	if last := s.warned.Load(); last != now && s.warned.CompareAndSwap(last, now) {
		s.logger.Warn(msg, zap.Error(err))
	}
}

// storeFailed handles a request whose Idempotency-Key the shared store
// could not claim: on_store_error reject answers 503 (nothing was
// produced; a retry is safe), produce publishes without the store's
// guarantee.
func (h *Handler) storeFailed(x *exchange, recs []*record, err error) error {
	metricStoreErrors.WithLabelValues("claim").Inc()
	if h.OnStoreError == storeErrorProduce {
		h.store.warn("the idempotency store cannot be reached: requests with an Idempotency-Key are produced without it (on_store_error produce), and a repeat may be stored twice", err)
		return h.publish(x, recs, recs)
	}
	h.store.warn("the idempotency store cannot be reached: requests with an Idempotency-Key are answered 503 (on_store_error reject)", err)
	x.reason = rejectStore
	return x.fail(errStoreUnavailable)
}

// errStoreUnavailable answers a request whose Idempotency-Key could not
// be claimed: nothing of it was produced.
var errStoreUnavailable = &publishError{Outcome: outcomeRetry, Reason: "idempotency store unavailable"}

// Destruct implements caddy.Destructor: the connections go with the last
// config that uses them, once a lease later, for requests that reached
// that config still run (Caddy does not wait for them), and the claims
// whose late outcome is awaited settle within a lease.
func (s *redisStore) Destruct() error {
	time.AfterFunc(s.lease, func() { s.client.Close() })
	return nil
}

// redisStore connects to the shared store of Idempotency-Keys, its URL's
// placeholders resolved first; handlers with the same URL and settings
// share one client, across config reloads.
func (i *Idempotency) redisStore(repl *caddy.Replacer, timeout time.Duration, logger *zap.Logger) (*redisStore, error) {
	rawURL, err := resolveSecret(repl, i.IdempotencyRedis)
	if err != nil {
		return nil, err
	}
	identity := struct {
		URL     string        `json:"url"` // part of the digest of the key, never the key
		TLS     *tlsMaterial  `json:"tls,omitempty"`
		Prefix  string        `json:"prefix"`
		Window  time.Duration `json:"window"`
		Timeout time.Duration `json:"timeout"`
	}{URL: rawURL, Prefix: i.IdempotencyKeyPrefix, Window: time.Duration(i.IdempotencyWindow), Timeout: timeout}
	var tlsConfig *tls.Config
	if i.IdempotencyRedisTLS != nil {
		if identity.TLS, err = i.IdempotencyRedisTLS.material(repl); err != nil {
			return nil, err
		}
		tlsConfig, _ = identity.TLS.config() // material built it once already
	}
	key := sharedKey("redis", identity)
	s, _, err := loadShared(key, func() (*redisStore, error) {
		return newRedisStore(rawURL, tlsConfig, i.IdempotencyKeyPrefix, time.Duration(i.IdempotencyWindow), timeout, key, logger)
	})
	return s, err
}

// release ends a handler's use of the client.
func (s *redisStore) release() error { return releaseShared(s.poolKey) }
