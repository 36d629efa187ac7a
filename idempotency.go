package queuepublish

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// idempotencyStore remembers, for idempotency_window, what each request
// with an Idempotency-Key produced, so that a repeat of the request is
// answered from it instead of producing again. It lives in the memory of
// one Caddy instance, across config reloads: repeats sent to another
// instance produce again. Keys are scoped to where the records go (see
// idemScope), so that the same key sent to two topics or two clusters is
// two requests; within a scope every handler must find them, whatever its
// own window and bounds, so there is one store for all, which keeps its
// keys for the longest window and within the largest bounds of the
// handlers that use it.
type idempotencyStore struct {
	mu       sync.Mutex
	users    map[idemSettings]int // the settings of the handlers using the store, by number of handlers
	maxKeys  int                  // the largest of users
	maxBytes int64                // the largest of users
	entries  map[string]*idemEntry
	order    []*idemEntry // by creation, oldest first; may hold removed entries
	removed  int          // entries of order that are removed
	bytes    int64        // the cost of the entries held
	evicted  bool         // an entry was forgotten before its window ended
}

// idemSettings are a handler's settings of its store, and where its keys
// go: its cluster (idemScope of its brokers) and its topics, the sorted
// allow_topics or its fixed topic joined by NUL, "" for any.
type idemSettings struct {
	window          time.Duration
	maxKeys         int
	maxBytes        int64
	cluster, topics string
}

// covers reports whether the handler's keys may go to topic of cluster.
func (u idemSettings) covers(cluster, topic string) bool {
	return u.cluster == cluster && (u.topics == "" || slices.Contains(strings.Split(u.topics, "\x00"), topic))
}

// idemEntry is what one Idempotency-Key produced.
type idemEntry struct {
	key     string            // the scope and the client's key
	digest  [sha256.Size]byte // of what shapes the records
	created time.Time
	expires time.Time // created and the window of its scope
	cost    int64     // bytes, as counted against maxBytes
	removed bool
	busy    bool      // a request is using the entry
	recs    []*record // by position in the request; nil before the first
}

// Outcomes of idempotencyStore.claim.
type idemStatus int

const (
	idemNew        idemStatus = iota // first use of the key
	idemRepeat                       // the same request again
	idemOtherBody                    // the key was used for another body (422)
	idemInProgress                   // a request with the key is being handled (409)
)

// maxIdempotencyKey is the longest Idempotency-Key accepted, in bytes:
// keys are held in memory for the window and stored with every record.
const maxIdempotencyKey = 255

// Costs of an entry, in bytes of memory held: the entry itself and, for
// each record it keeps, the completed record (its bytes let go) with its
// done channel.
const (
	idemEntryCost  = int64(unsafe.Sizeof(idemEntry{})) + 64 // with its map slot
	idemRecordCost = int64(unsafe.Sizeof(record{})) + 96
)

// idempotencyStores holds the store while handlers use it.
var idempotencyStores = caddy.NewUsagePool()

const idempotencyStoreKey = "queue_publish.idempotency"

// acquireIdempotencyStore returns the store, shared by every handler and
// across config reloads, for a handler with settings; release gives it
// back.
func acquireIdempotencyStore(settings idemSettings) *idempotencyStore {
	s, loaded, _ := idempotencyStores.LoadOrNew(idempotencyStoreKey, func() (caddy.Destructor, error) {
		return newIdempotencyStore(settings), nil
	})
	store := s.(*idempotencyStore)
	if loaded {
		store.use(settings, 1)
	}
	return store
}

// release ends a handler's use of the store: its settings stop counting
// (running requests of the handler still use the store).
func (s *idempotencyStore) release(settings idemSettings) {
	s.use(settings, -1)
	idempotencyStores.Delete(idempotencyStoreKey)
}

func newIdempotencyStore(settings idemSettings) *idempotencyStore {
	s := &idempotencyStore{users: make(map[idemSettings]int), entries: make(map[string]*idemEntry)}
	s.use(settings, 1)
	return s
}

// use counts n more handlers with settings, and applies the largest
// bounds of the handlers left, which count the keys of all. Bounds that
// shrink apply from the next claim on.
func (s *idempotencyStore) use(settings idemSettings, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users[settings] += n
	if s.users[settings] <= 0 {
		delete(s.users, settings)
	}
	if len(s.users) == 0 {
		return // the last handler went: keep the settings for its running requests
	}
	s.maxKeys, s.maxBytes = 0, 0
	for u := range s.users {
		s.maxKeys, s.maxBytes = max(s.maxKeys, u.maxKeys), max(s.maxBytes, u.maxBytes)
	}
}

// windowFor is how long a key of topic of cluster is kept: the longest
// window of the handlers whose keys may go there, which share them (a
// key is one request within its scope, whichever handler it reaches), and
// at least the claiming handler's own, mine.
func (s *idempotencyStore) windowFor(cluster, topic string, mine time.Duration) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := mine
	for u := range s.users {
		if u.window > w && u.covers(cluster, topic) {
			w = u.window
		}
	}
	return w
}

// Destruct implements caddy.Destructor; the memory goes with the last use.
func (s *idempotencyStore) Destruct() error { return nil }

// idemScope is the first part of the scope of a handler's keys, the
// cluster its records go to (the brokers it bootstraps from); the topic
// follows. The same Idempotency-Key is one request within a scope,
// whichever handler or config it reaches, and independent requests in two
// scopes (a webhook's event ID fanned out to several topics is a normal
// use).
func idemScope(brokers []string) string {
	b := slices.Clone(brokers)
	slices.Sort(b)
	return strings.Join(slices.Compact(b), ",") + "\x00"
}

// digestMode is what, beside the body, makes a request's records: the
// mode and, in mode confluent, the API and format the request named.
func (h *Handler) digestMode(x *exchange) string {
	if x.api == nil {
		return h.Mode
	}
	return fmt.Sprintf("%s v3=%t binary=%t partition=%d", h.Mode, x.api.V3, x.api.Binary, x.api.Partition)
}

// idemDigest identifies a request for its Idempotency-Key: everything
// that shapes its records. The same body means other records in another
// mode, so the mode is part of it; in body mode, so are the key and
// headers taken from the request (records mode has them in the body).
func idemDigest(mode string, body []byte, recs []*record) [sha256.Size]byte {
	h := sha256.New()
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field([]byte(mode))
	field(body)
	if mode == modeBody {
		rec := recs[0]
		field([]byte{boolByte(rec.Key != nil)}) // no key, or an empty one
		field(rec.Key)
		for _, hd := range rec.Headers {
			field([]byte(hd.Key))
			field(hd.Value)
		}
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// claim looks the key up and, unless the status is idemOtherBody or
// idemInProgress, returns its entry marked busy; the caller must settle
// it. A new key is kept for window.
func (s *idempotencyStore) claim(key string, digest [sha256.Size]byte, now time.Time, window time.Duration) (*idemEntry, idemStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.compact()
	s.expire(now)
	if e := s.entries[key]; e != nil && !e.busy && !now.Before(e.expires) {
		s.remove(e) // its window ended; an entry of a longer one kept it in order
	}
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
	e := &idemEntry{key: key, digest: digest, created: now, expires: now.Add(window), busy: true, cost: idemEntryCost + int64(len(key))}
	s.makeRoom(nil, 1, e.cost)
	s.entries[key] = e
	s.order = append(s.order, e)
	s.bytes += e.cost
	return e, idemNew
}

// settle releases the entry with the records that now stand for the request;
// nil recs forgets it (the request produced nothing).
func (s *idempotencyStore) settle(e *idemEntry, recs []*record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.compact()
	e.busy = false
	if recs == nil && e.recs == nil {
		s.remove(e)
		return
	}
	if recs != nil && !e.removed {
		grown := int64(len(recs)-len(e.recs)) * idemRecordCost
		s.makeRoom(e, 0, grown)
		e.cost += grown
		s.bytes += grown
	}
	if recs != nil {
		e.recs = recs
	}
}

// expire drops the oldest entries whose window ended, up to the first
// that is still kept: one of a scope with a longer window keeps those of
// shorter ones behind it until it goes (claim checks each entry's own
// window; the bounds hold them all). s.mu is held.
func (s *idempotencyStore) expire(now time.Time) {
	n := 0
	for ; n < len(s.order); n++ {
		e := s.order[n]
		if !e.removed && (e.busy || now.Before(e.expires)) {
			break
		}
		s.remove(e)
		s.removed--
	}
	clear(s.order[:n])
	s.order = s.order[n:]
}

// makeRoom forgets the oldest entries not in use, other than keep, before
// their window ends, until keys more entries and bytes more bytes fit in
// the bounds: memory stays bounded at the price of the guarantee for those
// keys.
func (s *idempotencyStore) makeRoom(keep *idemEntry, keys int, bytes int64) {
	for _, e := range s.order {
		if len(s.entries)+keys <= s.maxKeys && s.bytes+bytes <= s.maxBytes {
			return
		}
		if !e.removed && !e.busy && e != keep {
			s.remove(e)
			s.evicted = true
		}
	}
}

// remove forgets e; compact drops it from order later.
func (s *idempotencyStore) remove(e *idemEntry) {
	if e.removed {
		return
	}
	e.removed = true
	delete(s.entries, e.key)
	s.bytes -= e.cost
	s.removed++
}

// compact drops the removed entries from order once they make up half of
// it, so that order stays within twice the entries held, however many
// requests produce nothing (an outage) within the window. s.mu is held.
func (s *idempotencyStore) compact() {
	if s.removed > len(s.order)/2 && len(s.order) >= 64 {
		s.order = slices.DeleteFunc(s.order, func(e *idemEntry) bool { return e.removed })
		s.removed = 0
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

// bounds are the bounds that apply now: the largest of the handlers'.
func (s *idempotencyStore) bounds() (maxKeys int, maxBytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxKeys, s.maxBytes
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
		if prev.Queued() && waiting {
			select {
			case <-prev.Done():
			case <-timer.C:
				waiting = false
			case <-ctx.Done():
				waiting = false
			}
		}
		if !prev.Queued() || prev.ProvenNotWritten() {
			final[i] = recs[i]
			send = append(send, recs[i])
			continue
		}
		prev.Answer = prev.OutcomeNow()
		final[i] = prev
	}
	return final, send
}

// provisionIdempotency takes the store of Idempotency-Keys in this
// instance's memory, if the window is set and the keys are not on Redis.
func (h *Handler) provisionIdempotency() {
	h.idem = nil
	if h.IdempotencyWindow > 0 && h.IdempotencyRedis == "" {
		topics := slices.Sorted(maps.Keys(h.allowTopics))
		if len(topics) == 0 && !strings.Contains(h.Topic, "{") {
			topics = []string{h.Topic}
		}
		h.idemSettings = idemSettings{time.Duration(h.IdempotencyWindow), h.IdempotencyMaxKeys, h.IdempotencyMaxBytes,
			h.idemScope, strings.Join(topics, "\x00")}
		h.idem = acquireIdempotencyStore(h.idemSettings)
	}
}

// publishOnce publishes a request that carries an Idempotency-Key: the
// key goes in a header of each record and, with a store, a repeat within
// the window is answered as the first attempt was, producing again only
// the records that provably were not written.
func (h *Handler) publishOnce(x *exchange, r *http.Request, key string, body []byte, recs []*record, start time.Time) error {
	var digest [sha256.Size]byte
	if h.idem != nil || h.shared != nil {
		digest = idemDigest(h.digestMode(x), body, recs) // before the key joins the headers
	}
	addKeyHeader(recs, key)
	if h.idem == nil && h.shared == nil {
		return h.publish(x, r, recs, recs, start)
	}
	for _, rec := range recs {
		rec.AckBy = rec.Deadline.Add(lateAckWait)
	}
	// The holders of a page's token get keys of their own: a visitor must
	// not claim a key that a client with the secret will use.
	scope := h.idemScope
	if x.byToken {
		scope += "token\x00"
	}
	claim, st, err := h.claimKey(r.Context(), x.topic, scope+x.topic+"\x00"+key, digest, start, recs)
	if err != nil {
		return h.storeFailed(x, r, recs, start, err)
	}
	switch st {
	case idemOtherBody:
		return x.refuse(refusedKeyReused)
	case idemInProgress:
		return x.refuse(refusedKeyInProgress)
	}
	if st == idemRepeat && !claim.matches(len(recs)) {
		// Not the same request after all (the digest covers the mode,
		// so this needs a hash collision); never pair records wrongly.
		claim.settle(nil)
		return x.refuse(refusedKeyReused)
	}
	final, send := recs, recs
	if st == idemRepeat {
		final, send = claim.reuse(r.Context(), recs, recs[0].Deadline, h.Delivery == deliverySync)
		if len(send) == 0 {
			x.w.Header()["Idempotent-Replayed"] = []string{"true"}
			metricReplays.Inc()
		}
	}
	var stored []*record
	defer func() { claim.settle(stored) }()
	err = h.publish(x, r, final, send, start)
	if send == nil || slices.ContainsFunc(send, (*record).Queued) {
		stored = final // records were queued: they may be written
	}
	return err
}

// An idemClaim is a request's hold on its Idempotency-Key, in the store
// of this instance's memory or in one a fleet shares, until it settles.
type idemClaim interface {
	// matches reports whether the first attempt had n records.
	matches(n int) bool
	// reuse is idemEntry.reuse: the records of the first attempt that
	// stand, and those of the repeat to send.
	reuse(ctx context.Context, recs []*record, deadline time.Time, wait bool) (final, send []*record)
	// settle releases the key with the records that now stand for the
	// request; nil: the request produced nothing.
	settle(recs []*record)
}

// claimKey claims a request's key in the handler's store; an error says
// that a shared store could not be reached.
func (h *Handler) claimKey(ctx context.Context, topic, key string, digest [sha256.Size]byte, now time.Time, recs []*record) (idemClaim, idemStatus, error) {
	if h.shared != nil {
		return h.shared.claim(ctx, key, digest, now, recs[0].Deadline)
	}
	window := h.idem.windowFor(h.idemScope, topic, time.Duration(h.IdempotencyWindow))
	entry, st := h.idem.claim(key, digest, now, window)
	if h.idem.evictedOnce() {
		maxKeys, maxBytes := h.idem.bounds()
		h.logger.Warn("more Idempotency-Keys than idempotency_max_keys or idempotency_max_bytes hold within idempotency_window: the oldest are forgotten early",
			zap.Int("idempotency_max_keys", maxKeys), zap.Int64("idempotency_max_bytes", maxBytes))
	}
	return memoryClaim{h.idem, entry}, st, nil
}

// memoryClaim is a claim in the store of this instance's memory.
type memoryClaim struct {
	s *idempotencyStore
	e *idemEntry
}

func (c memoryClaim) matches(n int) bool { return len(c.e.recs) == n }

func (c memoryClaim) reuse(ctx context.Context, recs []*record, deadline time.Time, wait bool) (final, send []*record) {
	return c.e.reuse(ctx, recs, deadline, wait)
}

func (c memoryClaim) settle(recs []*record) { c.s.settle(c.e, recs) }
