package queuepublish

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

	"github.com/caddyserver/caddy/v2"
)

// shared holds what handlers share across configs and reloads: the
// producers, the store of Idempotency-Keys in memory, the clients of
// shared stores. Each is under one key scheme, "queue_publish.<kind>."
// and a digest of what identifies it, so that no credential (a SASL
// password, a Redis URL) ever sits in a key; the last user to release a
// key destroys its value.
var shared = caddy.NewUsagePool()

// sharedKey is the key of the value of kind that identity identifies:
// equal identities, one key.
func sharedKey(kind string, identity any) string {
	b, err := json.Marshal(identity)
	if err != nil {
		panic(err) // plain data; cannot fail
	}
	sum := sha256.Sum256(b)
	return "queue_publish." + kind + "." + hex.EncodeToString(sum[:])
}

// loadShared returns the value under key, made by create if no one holds
// it yet, and whether it was there; every successful call must be matched
// by one releaseShared(key).
func loadShared[T caddy.Destructor](key string, create func() (T, error)) (T, bool, error) {
	v, loaded, err := shared.LoadOrNew(key, func() (caddy.Destructor, error) { return create() })
	if err != nil {
		var zero T
		return zero, false, err
	}
	return v.(T), loaded, nil
}

// releaseShared gives back one use of the value under key; the last
// release destroys it.
func releaseShared(key string) error {
	_, err := shared.Delete(key)
	return err
}

// eachShared calls f with every shared value of type T.
func eachShared[T any](f func(T)) {
	shared.Range(func(_, v any) bool {
		if t, ok := v.(T); ok {
			f(t)
		}
		return true
	})
}
