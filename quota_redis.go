package queuepublish

import (
	"context"
	"crypto/tls"
	"fmt"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// redisLimiter keeps the buckets of quotas on a Redis that a fleet
// shares: each identity's pair of buckets is one hash, taken from by a
// Lua script, atomic on the server, on the server's clock (TIME), so
// that the instances' clocks do not matter. A quota then holds exactly
// across the fleet, at the cost of one round trip a request.
type redisLimiter struct {
	client  redis.UniversalClient
	prefix  string
	wait    time.Duration // the longest a take waits for Redis
	poolKey string
}

// takeScript takes ARGV[5] records and ARGV[6] bytes from the buckets of
// KEYS[1], whose rates and sizes are ARGV[1..4] (a zero rate: no
// limit), if both hold them; negative amounts give back, up to the
// sizes. It answers whether it took, the seconds to
// wait otherwise, and what the buckets hold, as strings (Redis would
// truncate Lua's numbers to integers). The hash expires once both
// buckets would be full again.
var takeScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rr, rb, br, bb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local rc, bc = tonumber(ARGV[5]), tonumber(ARGV[6])
local s = redis.call('HMGET', KEYS[1], 'r', 'b', 't')
local r, b, at = tonumber(s[1]) or rb, tonumber(s[2]) or bb, tonumber(s[3]) or now
local dt = math.max(0, now - at)
if rr > 0 then r = math.min(rb, r + dt * rr) end
if br > 0 then b = math.min(bb, b + dt * br) end
local wait = 0
if rr > 0 and r < rc then wait = math.max(wait, (rc - r) / rr) end
if br > 0 and b < bc then wait = math.max(wait, (bc - b) / br) end
if wait == 0 then
	if rr > 0 then r = math.min(rb, r - rc) end
	if br > 0 then b = math.min(bb, b - bc) end
end
redis.call('HSET', KEYS[1], 'r', string.format('%.17g', r), 'b', string.format('%.17g', b), 't', string.format('%.17g', now))
local full = 0
if rr > 0 then full = math.max(full, (rb - r) / rr) end
if br > 0 then full = math.max(full, (bb - b) / br) end
redis.call('PEXPIRE', KEYS[1], math.ceil(full * 1000) + 1000)
if wait == 0 then return {'1', '0', string.format('%.17g', r), string.format('%.17g', b)} end
return {'0', string.format('%.17g', wait), string.format('%.17g', r), string.format('%.17g', b)}
`)

// redisLimiter connects to quota_redis, its placeholders resolved;
// handlers with the same URL, TLS and quotas share one client, across
// reloads.
func (q *Quotas) redisLimiter(repl *caddy.Replacer, timeout time.Duration, logger *zap.Logger) (limiter, error) {
	rawURL, err := resolveSecret(repl, q.QuotaRedis)
	if err != nil {
		return nil, err
	}
	var material *tlsMaterial
	var tlsConfig *tls.Config
	if q.QuotaRedisTLS != nil {
		if material, err = q.QuotaRedisTLS.material(repl); err != nil {
			return nil, err
		}
		tlsConfig, _ = material.config() // material built it once already
	}
	// A take waits for Redis at most half the request's timeout, as the
	// store of Idempotency-Keys: the rest is the broker's.
	wait := timeout / 2
	key := sharedKey("quota_redis", struct {
		URL  string        `json:"url"` // part of the digest of the key, never the key
		TLS  *tlsMaterial  `json:"tls,omitempty"`
		Wait time.Duration `json:"wait"`
	}{rawURL, material, wait})
	l, _, err := loadShared(key, func() (*redisLimiter, error) {
		client, err := newRedisClient(rawURL, tlsConfig)
		if err != nil {
			return nil, err
		}
		useRedisLog(logger)
		return &redisLimiter{client: client, prefix: defaultKeyPrefix + "quota:", wait: wait, poolKey: key}, nil
	})
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return l, nil
}

func (l *redisLimiter) take(ctx context.Context, q *quota, name string, records, bytes int64) (buckets, error) {
	key := l.prefix + q.id + ":" + name
	ctx, cancel := context.WithTimeout(ctx, l.wait)
	defer cancel()
	res, err := takeScript.Run(ctx, l.client, []string{key},
		q.records.rate, q.records.burst, q.bytes.rate, q.bytes.burst, records, bytes).StringSlice()
	if err != nil {
		return buckets{}, err
	}
	if len(res) != 4 {
		return buckets{}, fmt.Errorf("the quota script answered %d values", len(res))
	}
	var b buckets
	b.taken = res[0] == "1"
	wait, err1 := strconv.ParseFloat(res[1], 64)
	r, err2 := strconv.ParseFloat(res[2], 64)
	by, err3 := strconv.ParseFloat(res[3], 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return buckets{}, fmt.Errorf("the quota script answered %q", res)
	}
	b.wait, b.records, b.bytes = time.Duration(wait*float64(time.Second)), r, by
	return b, nil
}

func (l *redisLimiter) release() error { return releaseShared(l.poolKey) }

// Destruct closes the client when the last handler releases it.
func (l *redisLimiter) Destruct() error { return l.client.Close() }
