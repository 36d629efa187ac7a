package bearer

import (
	"crypto/sha256"
	"sync"
)

// The cache of verified tokens: a client sends the same token with every
// request until it expires, and verifying a signature costs tens of
// microseconds where a hit costs well under one. It is keyed by the
// token's SHA-256, so that a hit stands for the very token verified, and
// split into shards, each with its own lock, so that the requests of many
// connections do not queue on one lock or bounce one cache line between
// cores.

const cacheShards = 64 // a power of two

type digest = [sha256.Size]byte

type cacheEntry struct {
	token      *Token
	expiry     int64  // the token's exp, Unix seconds: a hit needs now < exp
	generation uint64 // the key set's generation when it was verified
}

type cacheShard struct {
	mu      sync.RWMutex
	entries map[digest]cacheEntry
	// Pads a shard to its own cache lines, so that one shard's lock
	// taken does not slow its neighbours'.
	_ [64]byte
}

type cache struct {
	perShard int
	shards   [cacheShards]cacheShard
}

func newCache(size int) *cache {
	c := &cache{perShard: max(1, (size+cacheShards-1)/cacheShards)}
	for i := range c.shards {
		c.shards[i].entries = make(map[digest]cacheEntry)
	}
	return c
}

func (c *cache) shard(d *digest) *cacheShard {
	return &c.shards[d[0]&(cacheShards-1)]
}

// get returns the token verified as d if it is still before its exp at
// now (Unix seconds) and was verified with the current generation of keys.
func (c *cache) get(d *digest, now int64, generation uint64) (*Token, bool) {
	s := c.shard(d)
	s.mu.RLock()
	e, ok := s.entries[*d]
	s.mu.RUnlock()
	if !ok || now >= e.expiry || e.generation != generation {
		return nil, false
	}
	return e.token, true
}

// put keeps t as verified. A full shard first drops its expired entries,
// then, if it is still full, an arbitrary one: clients that reuse their
// tokens put them back after one more verification.
func (c *cache) put(d *digest, e cacheEntry, now int64) {
	s := c.shard(d)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.entries[*d]; !ok && len(s.entries) >= c.perShard {
		for k, old := range s.entries {
			if now >= old.expiry {
				delete(s.entries, k)
			}
		}
		if len(s.entries) >= c.perShard {
			for k := range s.entries {
				delete(s.entries, k)
				break
			}
		}
	}
	s.entries[*d] = e
}

// len counts the entries, for the tests.
func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.entries)
		s.mu.RUnlock()
	}
	return n
}
