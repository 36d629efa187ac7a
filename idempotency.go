package queuepublish

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Idempotency is how requests that carry an Idempotency-Key are
// remembered, so that a repeat is answered from the first attempt instead
// of producing again: for how long, where (this instance's memory, or a
// Redis a fleet shares), and within which bounds.
type Idempotency struct {
	// How long an Idempotency-Key is remembered. A repeat of a request
	// with the same key and body within the window is answered from the
	// first (same partitions and offsets) without producing again; the
	// same key with another body is answered 422; a repeat while the
	// first is still being handled is answered 409. Zero (the default)
	// turns this off; the key is still stored as a record header.
	IdempotencyWindow caddy.Duration `json:"idempotency_window,omitempty"`

	// Where the Idempotency-Keys of idempotency_window are remembered:
	// unset, in this instance's memory; a redis:// or rediss:// (TLS) URL,
	// on that Redis or Valkey server, shared by every instance that names
	// it, so that a repeat reaching another instance of a fleet is still
	// answered from the first attempt. The URL holds the user and
	// password and should be a placeholder, {env.*} or {file.*}; it is
	// never logged. With ?master_name=<name> it names Sentinels, with
	// ?addr=<host:port> for each further node a Redis Cluster.
	IdempotencyRedis string `json:"idempotency_redis,omitempty"`

	// With a rediss:// idempotency_redis, how its TLS connections are
	// verified and authenticated, with the settings of the brokers' tls:
	// a CA instead of the system's roots, a client certificate and key,
	// the name the server's certificate must hold.
	IdempotencyRedisTLS *BrokerTLS `json:"idempotency_redis_tls,omitempty"`

	// With idempotency_redis, what the Redis keys start with.
	// Default: "queue_publish:".
	IdempotencyKeyPrefix string `json:"idempotency_key_prefix,omitempty"`

	// With idempotency_redis, what a request with an Idempotency-Key gets
	// when the store cannot be reached: "reject" (503 with Retry-After;
	// nothing is produced, a retry is safe) or "produce" (it is
	// published without the store, and a repeat may be stored twice).
	// Requests without a key are never affected. Default: "reject".
	OnStoreError string `json:"on_store_error,omitempty"`

	// The most Idempotency-Keys remembered at once; beyond it the oldest
	// are forgotten before their window ends. Default: 100000.
	IdempotencyMaxKeys int `json:"idempotency_max_keys,omitempty"`

	// The most memory, in bytes, the remembered Idempotency-Keys and the
	// outcomes of their records may hold; beyond it the oldest are
	// forgotten before their window ends. Default: 100000000 (100MB).
	IdempotencyMaxBytes int64 `json:"idempotency_max_bytes,omitempty"`

	store keyStore // nil: keys are stored with the records, not remembered
	scope string   // the brokers part of the scope of keys
}

// Defaults of Idempotency.
const (
	defaultIdempotencyMaxKeys  = 100000
	defaultIdempotencyMaxBytes = 100000000
	defaultKeyPrefix           = "queue_publish:"

	// lateAckWait is how long, past a request's timeout, the producer
	// still waits for the broker's answer on a record with an
	// Idempotency-Key, so that a repeat learns whether it landed.
	lateAckWait = 30 * time.Second
)

// check applies the defaults and checks the settings.
func (i *Idempotency) check() error {
	if err := checkLimits(
		limit{"idempotency_window", int64(i.IdempotencyWindow), false},
		limit{"idempotency_max_keys", int64(i.IdempotencyMaxKeys), false},
		limit{"idempotency_max_bytes", i.IdempotencyMaxBytes, false},
	); err != nil {
		return err
	}
	i.IdempotencyMaxKeys = cmp.Or(i.IdempotencyMaxKeys, defaultIdempotencyMaxKeys)
	i.IdempotencyMaxBytes = cmp.Or(i.IdempotencyMaxBytes, defaultIdempotencyMaxBytes)
	if i.IdempotencyRedis == "" {
		if i.IdempotencyKeyPrefix != "" || i.OnStoreError != "" || i.IdempotencyRedisTLS != nil {
			return errors.New("idempotency_key_prefix, on_store_error, the TLS settings of idempotency_store: apply to idempotency_store redis only")
		}
		return nil
	}
	if i.IdempotencyWindow == 0 {
		return errors.New("idempotency_store redis: needs an idempotency_window")
	}
	if strings.ContainsAny(i.IdempotencyKeyPrefix, "{}") {
		return errors.New("idempotency_key_prefix: must not hold '{' or '}', which would change the keys' Redis Cluster hash slot")
	}
	i.IdempotencyKeyPrefix = cmp.Or(i.IdempotencyKeyPrefix, defaultKeyPrefix)
	i.OnStoreError = cmp.Or(i.OnStoreError, storeErrorReject)
	return checkChoice("on_store_error", i.OnStoreError, storeErrorChoices)
}

// provision takes the store of the keys: on Redis, shared by the
// handlers that name the same server and settings; in memory, the one
// store of this instance. Its keys' scope is the brokers resolved.
func (i *Idempotency) provision(p *provisioning) error {
	i.store = nil
	i.scope = idemScope(p.h.brokers)
	switch {
	case i.IdempotencyRedis != "":
		s, err := i.redisStore(p.repl, time.Duration(p.h.Timeout), p.logger)
		if err != nil {
			return fmt.Errorf("idempotency_store: %v", err)
		}
		i.store = s
	case i.IdempotencyWindow > 0:
		topics := slices.Sorted(maps.Keys(p.h.allowTopics))
		if len(topics) == 0 && !strings.Contains(p.h.Topic, "{") {
			topics = []string{p.h.Topic}
		}
		settings := idemSettings{time.Duration(i.IdempotencyWindow), i.IdempotencyMaxKeys, i.IdempotencyMaxBytes,
			i.scope, strings.Join(topics, "\x00")}
		i.store = memoryKeys{acquireIdempotencyStore(settings), settings, p.logger}
	}
	return nil
}

// cleanup gives the store back; running requests keep using it.
func (i *Idempotency) cleanup() error {
	if i.store == nil {
		return nil
	}
	return i.store.release()
}

// A keyStore remembers the Idempotency-Keys of requests: in this
// instance's memory, or on a server a fleet shares.
type keyStore interface {
	// claim claims key, to topic, for a request of digest whose
	// records wait until deadline; an error says that the store could
	// not be reached.
	claim(ctx context.Context, topic, key string, digest [sha256.Size]byte, now, deadline time.Time) (idemClaim, idemStatus, error)
	// warn logs a failure of the store.
	warn(msg string, err error)
	// release ends the handler's use of the store.
	release() error
}

// Outcomes of a claim of an Idempotency-Key.
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

// idemScope is the first part of the scope of a handler's keys, the
// cluster its records go to (the brokers it bootstraps from); the topic
// follows. The same Idempotency-Key is one request within a scope,
// whichever handler or config it reaches, and independent requests in two
// scopes (a webhook's event ID fanned out to several topics is a normal
// use).
func idemScope(brokers []string) string {
	return strings.Join(cluster(brokers), ",") + "\x00"
}

// idemDigest identifies a request for its Idempotency-Key: everything
// that shapes its records. The same body means other records in another
// mode, so the mode (and what else its requests name) is part of it; so
// are the key and headers of recs, taken from the request (in body mode;
// records mode has them in the body).
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
	for _, rec := range recs {
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

// publishOnce publishes a request that carries an Idempotency-Key: the
// key goes in a header of each record and, with a store, a repeat within
// the window is answered as the first attempt was, producing again only
// the records that provably were not written.
func (h *Handler) publishOnce(x *exchange, recs []*record) error {
	key, start := x.req.key, x.req.start
	var digest [sha256.Size]byte
	if h.store != nil {
		digest = h.mode.digest(x, x.req.body, recs) // before the key joins the headers
	}
	addKeyHeader(recs, key)
	if h.store == nil {
		return h.publish(x, recs, recs)
	}
	for _, rec := range recs {
		rec.AckBy = rec.Deadline.Add(lateAckWait)
	}
	// The holders of a page's token get keys of their own: a visitor must
	// not claim a key that a client with the secret will use.
	scope := h.scope
	if x.req.identity.scheme == schemeToken {
		scope += "token\x00"
	}
	// Each named publisher has keys of its own, as Stripe scopes keys
	// by account: two clients may pick the same key.
	if name := x.req.identity.name; name != "" {
		scope += "identity\x00" + name + "\x00"
	}
	claim, st, err := h.store.claim(x.req.ctx, x.topic, scope+x.topic+"\x00"+key, digest, start, recs[0].Deadline)
	if err != nil {
		return h.storeFailed(x, recs, err)
	}
	switch st {
	case idemOtherBody:
		return x.reject(rejectedKeyReused)
	case idemInProgress:
		return x.reject(rejectedKeyInProgress)
	}
	if st == idemRepeat && !claim.matches(len(recs)) {
		// Not the same request after all (the digest covers the mode,
		// so this needs a hash collision); never pair records wrongly.
		claim.settle(nil)
		return x.reject(rejectedKeyReused)
	}
	final, send := recs, recs
	if st == idemRepeat {
		final, send = claim.reuse(x.req.ctx, recs, recs[0].Deadline, h.Delivery == deliverySync)
		if len(send) == 0 {
			x.w.Header()["Idempotent-Replayed"] = []string{"true"}
			metricReplays.Inc()
		}
	}
	var stored []*record
	defer func() { claim.settle(stored) }()
	err = h.publish(x, final, send)
	if send == nil || slices.ContainsFunc(send, queued) {
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
