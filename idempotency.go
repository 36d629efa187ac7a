package queuepublish

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// idempotencyStore remembers, for idempotency_window, what each request
// with an Idempotency-Key produced, so that a repeat of the request is
// answered from it instead of producing again. It lives in the memory of
// one Caddy instance, shared by the handlers with the same window and
// bound, across config reloads: repeats sent to another instance produce
// again.
type idempotencyStore struct {
	window  time.Duration
	maxKeys int

	mu      sync.Mutex
	entries map[string]*idemEntry
	order   []*idemEntry // by creation, oldest first; may hold removed entries
	evicted bool         // an entry was forgotten before its window ended
}

// idemEntry is what one Idempotency-Key produced.
type idemEntry struct {
	key     string
	digest  [sha256.Size]byte // of the topic and body
	created time.Time
	removed bool
	busy    bool      // a request is using the entry
	recs    []*record // by position in the request; nil before the first
}

// Outcomes of idempotencyStore.begin.
type idemStatus int

const (
	idemNew        idemStatus = iota // first use of the key
	idemRepeat                       // the same request again
	idemOtherBody                    // the key was used for another body (422)
	idemInProgress                   // a request with the key is being handled (409)
)

// idempotencyStores holds the stores in use, by window and bound.
var idempotencyStores = caddy.NewUsagePool()

// acquireIdempotencyStore returns the store for these settings, shared
// across config reloads; releaseIdempotencyStore gives it back.
func acquireIdempotencyStore(window time.Duration, maxKeys int) (*idempotencyStore, string) {
	key := fmt.Sprintf("queue_publish.idempotency.%d.%d", window, maxKeys)
	s, _, _ := idempotencyStores.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newIdempotencyStore(window, maxKeys), nil
	})
	return s.(*idempotencyStore), key
}

func releaseIdempotencyStore(key string) {
	idempotencyStores.Delete(key)
}

func newIdempotencyStore(window time.Duration, maxKeys int) *idempotencyStore {
	return &idempotencyStore{window: window, maxKeys: maxKeys, entries: make(map[string]*idemEntry)}
}

// Destruct implements caddy.Destructor; the memory goes with the last use.
func (s *idempotencyStore) Destruct() error { return nil }

// idemDigest identifies a request for its Idempotency-Key: the same body
// means other records in another mode, so the mode is part of it.
func idemDigest(mode, topic string, body []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(mode))
	h.Write([]byte{0})
	h.Write([]byte(topic))
	h.Write([]byte{0})
	h.Write(body)
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// begin looks the key up and, unless the status is idemOtherBody or
// idemInProgress, returns its entry marked busy; the caller must end it.
func (s *idempotencyStore) begin(key string, digest [sha256.Size]byte, now time.Time) (*idemEntry, idemStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)
	if e := s.entries[key]; e != nil {
		switch {
		case e.digest != digest:
			return nil, idemOtherBody
		case e.busy:
			return nil, idemInProgress
		}
		e.busy = true
		return e, idemRepeat
	}
	if len(s.entries) >= s.maxKeys {
		s.evictOldest()
	}
	e := &idemEntry{key: key, digest: digest, created: now, busy: true}
	s.entries[key] = e
	s.order = append(s.order, e)
	return e, idemNew
}

// end releases the entry with the records that now stand for the request;
// nil recs forgets it (the request produced nothing).
func (s *idempotencyStore) end(e *idemEntry, recs []*record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.busy = false
	if recs == nil && e.recs == nil {
		s.remove(e)
		return
	}
	if recs != nil {
		e.recs = recs
	}
}

// expire drops the entries older than the window. s.mu is held.
func (s *idempotencyStore) expire(now time.Time) {
	n := 0
	for ; n < len(s.order); n++ {
		e := s.order[n]
		if !e.removed && (e.busy || now.Sub(e.created) < s.window) {
			break
		}
		s.remove(e)
	}
	s.order = s.order[n:]
}

// evictOldest forgets the oldest entry not in use, before its window ends:
// memory stays bounded at the price of the guarantee for that key.
func (s *idempotencyStore) evictOldest() {
	for _, e := range s.order {
		if !e.removed && !e.busy {
			s.remove(e)
			s.evicted = true
			return
		}
	}
}

func (s *idempotencyStore) remove(e *idemEntry) {
	if !e.removed {
		e.removed = true
		delete(s.entries, e.key)
	}
}

// evictedOnce reports, once, that an entry was forgotten early.
func (s *idempotencyStore) evictedOnce() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ev := s.evicted
	s.evicted = false
	return ev
}

// reuse decides, for a repeated request, which records of the previous
// attempt stand and which must be produced again. For a record still under
// way it waits (if wait is set), until the deadline, for the outcome. A
// record stands if it was acknowledged, or if its outcome is still unknown
// (it may have been written: producing it again could make a duplicate);
// one that provably was not written is produced again. recs are the
// records of the repeat, by position; reuse returns the records that
// answer the request and those of them to send.
func (e *idemEntry) reuse(ctx context.Context, recs []*record, deadline time.Time, wait bool) (final, send []*record) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	waiting := wait
	final = make([]*record, len(recs))
	for i, prev := range e.recs {
		if prev.q != nil && waiting {
			select {
			case <-prev.done:
			case <-timer.C:
				waiting = false
			case <-ctx.Done():
				waiting = false
			}
		}
		if prev.q == nil || prev.provenNotWritten() {
			final[i] = recs[i]
			send = append(send, recs[i])
			continue
		}
		prev.failure = prev.outcomeNow()
		final[i] = prev
	}
	return final, send
}

// provenNotWritten reports whether rec provably was not written and never
// will be: it completed without an acknowledgement, and not as "outcome
// unknown" (taken back before any request carried it, or refused by a
// broker answer given before appending).
func (r *record) provenNotWritten() bool {
	r.q.mu.Lock()
	defer r.q.mu.Unlock()
	return r.completed && r.err != nil && r.err.outcome != outcomeUnknown
}

// outcomeNow is rec's outcome as known now: nil if acknowledged, "unknown"
// if it may have been written and is not acknowledged.
func (r *record) outcomeNow() *publishError {
	r.q.mu.Lock()
	defer r.q.mu.Unlock()
	if r.completed {
		return r.err
	}
	return &publishError{outcome: outcomeUnknown, reason: reasonUnknown, err: r.lastErr}
}
