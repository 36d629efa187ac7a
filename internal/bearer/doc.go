// Package bearer verifies JWT access tokens against an OAuth/OIDC
// issuer's keys: New takes the issuer (or its key set's URL), the
// audiences and the algorithms allowed, and Verify returns a token's
// claims, or an error that is either ErrInvalid (answer 401) or
// ErrUnavailable (answer 503).
//
// # What is a library's and what is ours
//
// The JOSE work is go-jose (github.com/go-jose/go-jose/v4): parsing a
// compact JWS with the allowed algorithms given up front, so that "none",
// HMAC and any algorithm not listed are refused before a key is looked
// up; verifying the signature; reading JWKs; and checking exp, nbf, iat,
// iss and any-of-several audiences with a leeway (jwt.Claims). Caddy's
// standard modules already compile it (its ACME server imports go-oidc,
// which imports it), so it adds no module. golang-jwt/jwt/v5 would do as
// well for this part, but none of this module's builds compiles it;
// go-jose is already there.
//
// The key set (discovery, fetching, refreshing, refetching for an unknown
// key ID) is written here, in keys.go, because the libraries checked do
// not meet the goals, as measured against a local JWKS server (go-oidc
// v3.21.0, jwkset v0.12.0):
//
//   - go-oidc's RemoteKeySet refetches the key set for every token whose
//     key ID it does not know; only refetches at the same moment are
//     merged. 50 tokens with made-up key IDs, one after another, made 46
//     fetches: anyone can make the server hammer its issuer. It refreshes
//     nothing in the background, and its verifier takes one audience
//     (ClientID) and no leeway for exp. Its NewProvider, the discovery,
//     fails when the issuer is down at start and reads only OpenID
//     Connect discovery.
//   - jwkset (with keyfunc, for golang-jwt) rate-limits those refetches
//     and refreshes in the background, but NewStorageFromHTTP waits for
//     its first fetch: against an issuer that accepts connections and
//     never answers, it returned after its whole HTTP timeout (a minute by
//     default), holding up the server's start. A key ID read while the
//     refetch fails returns ErrKeyNotFound, the very error of a key ID the
//     issuer does not publish: a token of a key the issuer just added
//     would be answered 401, not 503, while the issuer is down. It has no
//     discovery and honours no Cache-Control.
//
// What keys.go does instead: the first fetch starts in New and is not
// waited for; a token with a key ID not in the set waits for the fetch in
// flight, or starts one if none started in the refetch interval, and
// otherwise is answered from the last fetch (ErrInvalid if it succeeded,
// ErrUnavailable if it failed); the set is refreshed in the background,
// sooner after a failure or for a short max-age; a refresh that fails
// keeps the keys held.
//
// The cache of verified tokens (cache.go) is ours too, a map behind a
// lock per shard, after measuring the two caches of the module graph on
// this project's 2-core machines, 64 entries read from one caller and
// from two (ns per read, wall time):
//
//   - hashicorp/golang-lru/v2's expirable LRU: 71, then 79 from two
//     callers. Every Get takes its one lock exclusively, to move the
//     entry to the front: the global contention point to avoid.
//   - dgraph-io/ristretto v0.2.0 (compiled into Caddy through badger):
//     155, then 100. Its reads scale, but it keeps no key, only two 64-bit
//     hashes of it, so a hit is a match of hashes rather than of the
//     token's SHA-256; and its sets are applied later, through an
//     admission policy that may drop them.
//   - a map per shard (what cache.go does): 16, then 14.
//
// Verify's hit, SHA-256 of the token included, costs about 0.5 us of CPU
// (BenchmarkVerify), against the 55-75 us of CPU that Caddy spends on a
// request authenticated with a shared secret.
package bearer
