package main

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net"
	"net/http"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// startIssuer serves a key set on jwksAddr, as an OAuth issuer publishes
// its keys, and returns a token it signs (RS256, 2048 bits, the audience
// bench/caddy.Caddyfile's JWT handler takes, valid for a day): the
// benchmark's JWT client reuses one token, as real clients do until it
// expires.
func startIssuer() (token string, stop func(), err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", nil, err
	}
	set, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "bench", Algorithm: "RS256", Use: "sig"}}})
	if err != nil {
		return "", nil, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "bench").WithType("JWT"))
	if err != nil {
		return "", nil, err
	}
	claims, _ := json.Marshal(map[string]any{"sub": "bench-client", "aud": "bench", "exp": time.Now().Add(24 * time.Hour).Unix()})
	jws, err := signer.Sign(claims)
	if err != nil {
		return "", nil, err
	}
	if token, err = jws.CompactSerialize(); err != nil {
		return "", nil, err
	}
	l, err := net.Listen("tcp", jwksAddr)
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(set)
	})}
	go srv.Serve(l)
	return token, func() { srv.Close() }, nil
}
