package bearer

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"
)

// Config is what a Verifier checks tokens against. Zero durations and
// sizes take the defaults below.
type Config struct {
	// Issuer is the OAuth/OIDC issuer's URL. Its keys are found through
	// discovery (<issuer>/.well-known/openid-configuration, else the
	// OAuth authorization server metadata), and a token's iss must equal
	// the issuer exactly as the discovery document spells it, trailing
	// slash included. With JWKSURL, discovery is skipped and iss must
	// equal Issuer as written here.
	Issuer string

	// JWKSURL names the key set directly, for issuers without discovery.
	// Without Issuer, iss is not checked: the audience and the keys alone
	// then decide.
	JWKSURL string

	// Audiences: a token's aud must hold at least one of them. Required,
	// so that a token minted for another service of the same issuer is
	// refused here.
	Audiences []string

	// Algorithms allowed in a token's header; by default every asymmetric
	// one (DefaultAlgorithms). "none" and the HMAC algorithms are refused:
	// a verifier that holds only public keys must never accept a MAC,
	// since a public key is no secret. Whatever the algorithms, the key
	// set's symmetric keys, keys for encryption and RSA keys under 2048
	// bits are not used.
	Algorithms []string

	// Leeway for exp, nbf and iat, for clocks that differ: DefaultLeeway
	// if zero, at most MaxLeeway.
	Leeway time.Duration

	// RefetchInterval: a token whose key ID is unknown refetches the key
	// set at most once in this interval (DefaultRefetchInterval if zero),
	// so that tokens with made-up key IDs cannot make this server hammer
	// the issuer.
	RefetchInterval time.Duration

	// RefreshInterval: the key set is fetched again this often in the
	// background (DefaultRefreshInterval if zero), sooner if the key set's
	// Cache-Control max-age says so, but never sooner than
	// RefetchInterval, so that a key the issuer withdraws stops being
	// trusted.
	RefreshInterval time.Duration

	// CacheSize bounds the number of verified tokens kept, so that a
	// token a client reuses is verified once: DefaultCacheSize if zero,
	// none if negative. An entry is never used at or past its token's exp.
	CacheSize int

	// HTTPClient fetches discovery and the key set; by default one of the
	// verifier's own, with a timeout of 30 s, whose idle connections Close
	// closes. Each fetch is also bounded by 10 s.
	HTTPClient *http.Client

	// Logger gets the fetches that fail and the key sets that load; it is
	// never given a token. No logging if nil.
	Logger *zap.Logger

	// clock is the time the verifier reads and waits on; the tests set a
	// clock they move, so that nothing waits on real time.
	clock clock
}

// The defaults and limits of Config.
const (
	DefaultLeeway          = 30 * time.Second
	MaxLeeway              = 5 * time.Minute
	DefaultRefetchInterval = time.Minute
	DefaultRefreshInterval = time.Hour
	DefaultCacheSize       = 10000

	// MaxTokenSize: a longer token is refused before it is parsed, so
	// that a request cannot make the verifier decode megabytes. Access
	// tokens from Hydra and most issuers are well under 2 KiB.
	MaxTokenSize = 8 << 10
)

// DefaultAlgorithms are the asymmetric JWS algorithms, which the
// verifier takes unless Config.Algorithms narrows them.
var DefaultAlgorithms = []string{
	"RS256", "RS384", "RS512",
	"PS256", "PS384", "PS512",
	"ES256", "ES384", "ES512",
	"EdDSA",
}

// asymmetric is the closed set of algorithms a Config may name.
var asymmetric = map[string]jose.SignatureAlgorithm{
	"RS256": jose.RS256, "RS384": jose.RS384, "RS512": jose.RS512,
	"PS256": jose.PS256, "PS384": jose.PS384, "PS512": jose.PS512,
	"ES256": jose.ES256, "ES384": jose.ES384, "ES512": jose.ES512,
	"EdDSA": jose.EdDSA,
}

// settings is a Config checked and with its defaults.
type settings struct {
	issuer          string
	jwksURL         string
	discovery       bool
	audiences       []string
	algorithms      []jose.SignatureAlgorithm
	allowed         algSet
	leeway          time.Duration
	refetchInterval time.Duration
	refreshInterval time.Duration
	cacheSize       int
	client          *http.Client
	ownClient       bool // made here, so closed at Close
	log             *zap.Logger
	clock           clock
}

// check checks c and fills in its defaults.
func (c Config) check() (settings, error) {
	s := settings{
		issuer:          c.Issuer,
		jwksURL:         c.JWKSURL,
		discovery:       c.JWKSURL == "",
		leeway:          orDefault(c.Leeway, DefaultLeeway),
		refetchInterval: orDefault(c.RefetchInterval, DefaultRefetchInterval),
		refreshInterval: orDefault(c.RefreshInterval, DefaultRefreshInterval),
		cacheSize:       c.CacheSize,
		client:          c.HTTPClient,
		log:             c.Logger,
		clock:           c.clock,
	}
	if c.Issuer == "" && c.JWKSURL == "" {
		return s, errors.New("issuer or jwks_url: one is required")
	}
	if c.Issuer != "" {
		if err := checkURL(c.Issuer); err != nil {
			return s, fmt.Errorf("issuer: %v", err)
		}
	}
	if c.JWKSURL != "" {
		if err := checkURL(c.JWKSURL); err != nil {
			return s, fmt.Errorf("jwks_url: %v", err)
		}
	}
	if len(c.Audiences) == 0 {
		return s, errors.New("audiences: at least one is required")
	}
	for _, a := range c.Audiences {
		if a == "" {
			return s, errors.New("audiences: an audience is empty")
		}
	}
	s.audiences = append([]string(nil), c.Audiences...)
	names := c.Algorithms
	if len(names) == 0 {
		names = DefaultAlgorithms
	}
	for _, name := range names {
		alg, ok := asymmetric[name]
		switch {
		case ok:
		case strings.EqualFold(name, "none"):
			return s, errors.New(`algorithms: "none" is never accepted: an unsigned token proves nothing`)
		case strings.HasPrefix(strings.ToUpper(name), "HS"):
			return s, fmt.Errorf("algorithms: %q is never accepted: the verifier holds public keys, and a MAC keyed with a public key proves nothing", name)
		default:
			return s, fmt.Errorf("algorithms: %q is not one of %s", name, strings.Join(DefaultAlgorithms, ", "))
		}
		if !s.allowed.has(alg) {
			s.allowed = s.allowed.with(alg)
			s.algorithms = append(s.algorithms, alg)
		}
	}
	switch {
	case c.Leeway < 0 || c.Leeway > MaxLeeway:
		return s, fmt.Errorf("leeway: %v is not within 0 and %v", c.Leeway, MaxLeeway)
	case c.RefetchInterval < 0:
		return s, fmt.Errorf("refetch_interval: %v is negative", c.RefetchInterval)
	case c.RefreshInterval < 0:
		return s, fmt.Errorf("refresh_interval: %v is negative", c.RefreshInterval)
	case s.refreshInterval < s.refetchInterval:
		return s, fmt.Errorf("refresh_interval: %v is shorter than refetch_interval, %v", s.refreshInterval, s.refetchInterval)
	}
	if s.cacheSize == 0 {
		s.cacheSize = DefaultCacheSize
	}
	if s.client == nil {
		// A transport of its own, not net/http's default, so that Close
		// can close its idle connections and the goroutines that serve
		// them, without touching other users' connections.
		transport := http.DefaultTransport.(*http.Transport).Clone()
		s.client = &http.Client{Transport: transport, Timeout: 30 * time.Second}
		s.ownClient = true
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.clock == nil {
		s.clock = realClock{}
	}
	return s, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http or https URL", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%q has a query or a fragment", raw)
	}
	return nil
}

// algSet is a set of the asymmetric algorithms, as bits.
type algSet uint16

var algBits = map[jose.SignatureAlgorithm]algSet{
	jose.RS256: 1 << 0, jose.RS384: 1 << 1, jose.RS512: 1 << 2,
	jose.PS256: 1 << 3, jose.PS384: 1 << 4, jose.PS512: 1 << 5,
	jose.ES256: 1 << 6, jose.ES384: 1 << 7, jose.ES512: 1 << 8,
	jose.EdDSA: 1 << 9,
}

func (s algSet) has(a jose.SignatureAlgorithm) bool    { return s&algBits[a] != 0 }
func (s algSet) with(a jose.SignatureAlgorithm) algSet { return s | algBits[a] }
func setOf(algs ...jose.SignatureAlgorithm) (s algSet) {
	for _, a := range algs {
		s = s.with(a)
	}
	return s
}

// clock is the time as the verifier reads it and waits on it.
type clock interface {
	Now() time.Time
	// After returns a channel that receives once d has passed, and a
	// function that stops it.
	After(d time.Duration) (<-chan time.Time, func())
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) After(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}
