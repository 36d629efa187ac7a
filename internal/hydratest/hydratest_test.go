//go:build oidc

package hydratest

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHydra checks what the suites rely on: tokens from the
// client-credentials grant, for the asked audience and scope, issued by
// Issuer exactly, signed by a key JWKSURL publishes, living as long as
// SetTokenLifetime says; and that RotateKeys makes later tokens carry a
// new kid while earlier ones still verify. Verifiers that fetch the keys
// together as soon as Start returns (the nodes of a Kafka cluster) each
// get the key that then signs the tokens.
func TestHydra(t *testing.T) {
	s := Start(t)
	var wg sync.WaitGroup
	sets := make([][]string, 3)
	for i := range sets {
		wg.Go(func() { sets[i] = kids(t, s) })
	}
	wg.Wait()
	s.CreateClient(t, "producer", "producer-secret-0123456789", []string{"kafka"}, "produce", "other")
	s.SetTokenLifetime(t, "producer", 17*time.Second)

	first := s.Token(t, "producer", "producer-secret-0123456789", "kafka", "produce")
	header, claims := verify(t, s, first)
	for i, set := range sets {
		if !slices.Contains(set, header.KID) {
			t.Errorf("verifier %d fetched the keys %q, not the signing key %q", i, set, header.KID)
		}
	}
	if claims.Issuer != s.Issuer {
		t.Errorf("iss = %q, Issuer = %q", claims.Issuer, s.Issuer)
	}
	if !slices.Equal(claims.Audience, []string{"kafka"}) {
		t.Errorf("aud = %q, want [kafka]", claims.Audience)
	}
	if claims.ClientID != "producer" || claims.Subject != "producer" {
		t.Errorf("client_id = %q, sub = %q, want producer", claims.ClientID, claims.Subject)
	}
	if !slices.Equal(claims.Scopes, []string{"produce"}) {
		t.Errorf("scp = %q, want [produce]", claims.Scopes)
	}
	// Hydra stamps iat and exp from two readings of its clock, each
	// truncated to the second.
	if life := claims.Expiry - claims.IssuedAt; life < 16 || life > 17 {
		t.Errorf("the token lives %d s, want 17", life)
	}

	kid := s.RotateKeys(t)
	if kid == header.KID {
		t.Fatalf("the new key has the old key's kid %q", kid)
	}
	rotated := s.Token(t, "producer", "producer-secret-0123456789", "kafka", "produce")
	if h, _ := verify(t, s, rotated); h.KID != kid {
		t.Errorf("a token after the rotation carries kid %q, want %q", h.KID, kid)
	}
	verify(t, s, first) // the old key is still published

	// A client authenticating with HTTP Basic gets its token too.
	s.CreateBasicClient(t, "basic", "basic-secret-0123456789", []string{"kafka"})
	if _, c := verify(t, s, s.Token(t, "basic", "basic-secret-0123456789", "kafka", "")); c.ClientID != "basic" {
		t.Errorf("client_id = %q, want basic", c.ClientID)
	}
}

type jwtHeader struct {
	Alg string `json:"alg"`
	KID string `json:"kid"`
}

type jwtClaims struct {
	Issuer   string   `json:"iss"`
	Subject  string   `json:"sub"`
	Audience []string `json:"aud"`
	ClientID string   `json:"client_id"`
	Scopes   []string `json:"scp"`
	IssuedAt int64    `json:"iat"`
	Expiry   int64    `json:"exp"`
}

// verify checks token's RS256 signature against the key of its kid among
// those JWKSURL serves now, and returns its header and claims.
func verify(t *testing.T, s *Server, token string) (jwtHeader, jwtClaims) {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %d parts", len(parts))
	}
	var header jwtHeader
	var claims jwtClaims
	decodePart(t, parts[0], &header)
	decodePart(t, parts[1], &claims)
	if header.Alg != "RS256" {
		t.Fatalf("alg = %q, want RS256", header.Alg)
	}
	resp, err := http.Get(s.JWKSURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct {
		Keys []struct{ KID, N, E string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	for _, k := range set.Keys {
		if k.KID != header.KID {
			continue
		}
		n, e := decodeInt(t, k.N), decodeInt(t, k.E)
		key := &rsa.PublicKey{N: n, E: int(e.Int64())}
		sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		sig, err := base64.RawURLEncoding.DecodeString(parts[2])
		if err != nil {
			t.Fatal(err)
		}
		if err := rsa.VerifyPKCS1v15(key, crypto.SHA256, sum[:], sig); err != nil {
			t.Fatalf("the signature does not verify with key %q: %v", k.KID, err)
		}
		return header, claims
	}
	t.Fatalf("%s publishes no key %q", s.JWKSURL, header.KID)
	return header, claims
}

// kids are the key IDs JWKSURL publishes.
func kids(t *testing.T, s *Server) []string {
	resp, err := http.Get(s.JWKSURL)
	if err != nil {
		t.Error(err)
		return nil
	}
	defer resp.Body.Close()
	var set struct{ Keys []struct{ KID string } }
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Error(err)
	}
	var ids []string
	for _, k := range set.Keys {
		ids = append(ids, k.KID)
	}
	return ids
}

func decodePart(t *testing.T, part string, v any) {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func decodeInt(t *testing.T, s string) *big.Int {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return new(big.Int).SetBytes(b)
}
