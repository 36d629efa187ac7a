package producer

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// tokenSource keeps an access token from the client-credentials grant
// for OAUTHBEARER. It fetches one when the producer starts, and a new one
// in the background at 80% of the current one's lifetime, so that a SASL
// exchange takes the token at hand and never waits for the issuer while
// a valid token is cached. A refresh that fails is retried, with a
// growing pause, while the current token serves until it expires; only an
// exchange that finds no valid token waits for a fetch, and fails if that
// fails.
type tokenSource struct {
	cfg    clientcredentials.Config
	client *http.Client
	logger *zap.Logger
	// secrets are the strings that must never reach an error or the
	// log: the client secret as sent in a form and in a Basic header.
	secrets []string

	ctx    context.Context // the producer's: ends the fetches
	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool       // guarded by mu
	token  *heldToken // guarded by mu; nil until the first fetch
	call   *tokenCall // guarded by mu; the fetch under way, if any
}

// heldToken is a token and when it was fetched.
type heldToken struct {
	access    string
	fetchedAt time.Time
	expiry    time.Time
}

// tokenCall is a fetch; done is closed when its token or err is set.
type tokenCall struct {
	done  chan struct{}
	token *heldToken
	err   error
}

// Token timing.
const (
	// tokenTimeout bounds one request to the token endpoint.
	tokenTimeout = 10 * time.Second
	// refreshAtPercent of a token's lifetime, its refresh starts.
	refreshAtPercent = 80
	// tokenMargin: a token is not presented in its last second (or
	// last tenth of a shorter life), which it could spend in transit.
	tokenMargin = time.Second
	// unknownLifetime is assumed for a token whose issuer says nothing
	// of its expiry (no expires_in, and not a JWT with exp).
	unknownLifetime = 5 * time.Minute
	// A failed refresh is retried after tokenRetryMin, doubling up to
	// tokenRetryMax.
	tokenRetryMin = 250 * time.Millisecond
	tokenRetryMax = 30 * time.Second
)

func newTokenSource(ctx context.Context, o *OAuth, logger *zap.Logger) *tokenSource {
	s := &tokenSource{
		cfg: clientcredentials.Config{
			ClientID:     o.ClientID,
			ClientSecret: o.ClientSecret,
			TokenURL:     o.TokenURL,
			Scopes:       strings.Fields(o.Scope),
		},
		// A transport of its own, whose connections close with it.
		client: &http.Client{Timeout: tokenTimeout, Transport: tokenTransport(o)},
		logger: logger,
		ctx:    ctx,
	}
	if o.Audience != "" {
		s.cfg.EndpointParams = url.Values{"audience": {o.Audience}}
	}
	escaped := url.QueryEscape(o.ClientSecret)
	s.secrets = []string{
		o.ClientSecret, escaped,
		base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(o.ClientID) + ":" + escaped)),
		base64.StdEncoding.EncodeToString([]byte(o.ClientID + ":" + o.ClientSecret)),
	}
	return s
}

// tokenTransport is the token endpoint's transport: Go's default, with
// the roots of o.CA if given (Check refused a CA without a certificate).
func tokenTransport(o *OAuth) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if roots, _ := o.roots(); roots != nil {
		t.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	return t
}

// start fetches the first token and keeps it fresh until the producer's
// context ends.
func (s *tokenSource) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.wg.Add(1)
	go s.refresh()
}

// close waits for the fetches, which the producer's context ended, and
// closes the connections to the token endpoint.
func (s *tokenSource) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	s.client.CloseIdleConnections()
}

// get is a token to present now: the one at hand if it is still valid,
// else a new one, fetched within ctx.
func (s *tokenSource) get(ctx context.Context) (string, error) {
	s.mu.Lock()
	if t := s.token; t != nil && t.usable(time.Now()) {
		s.mu.Unlock()
		return t.access, nil
	}
	call := s.fetchLocked()
	s.mu.Unlock()
	select {
	case <-call.done:
	case <-ctx.Done():
		return "", &tokenError{retriable: true, msg: "the token endpoint did not answer in time"}
	}
	if call.err != nil {
		return "", call.err
	}
	return call.token.access, nil
}

// usable reports whether t may be presented at now.
func (t *heldToken) usable(now time.Time) bool {
	margin := min(tokenMargin, t.expiry.Sub(t.fetchedAt)/10)
	return now.Before(t.expiry.Add(-margin))
}

// refreshAt is when t's successor is fetched.
func (t *heldToken) refreshAt() time.Time {
	return t.fetchedAt.Add(t.expiry.Sub(t.fetchedAt) * refreshAtPercent / 100)
}

// refresh fetches a token, then each next one at refreshAt, retrying a
// failed fetch with a growing pause.
func (s *tokenSource) refresh() {
	defer s.wg.Done()
	retry := tokenRetryMin
	for {
		s.mu.Lock()
		call := s.fetchLocked()
		s.mu.Unlock()
		select {
		case <-call.done:
		case <-s.ctx.Done():
			return
		}
		wait := retry
		if call.err == nil {
			retry = tokenRetryMin
			wait = time.Until(call.token.refreshAt())
		} else {
			retry = min(2*retry, tokenRetryMax)
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-s.ctx.Done():
			timer.Stop()
			return
		}
	}
}

// fetchLocked starts a fetch, or joins the one under way; s.mu is held.
func (s *tokenSource) fetchLocked() *tokenCall {
	if s.call != nil {
		return s.call
	}
	call := &tokenCall{done: make(chan struct{})}
	if s.closed {
		call.err = &tokenError{retriable: true, msg: "the producer is closed"}
		close(call.done)
		return call
	}
	s.call = call
	s.wg.Add(1)
	go s.fetch(call)
	return call
}

// fetch asks the token endpoint for a token, keeps it, and logs the
// outcome; never the token, nor the secret.
func (s *tokenSource) fetch(call *tokenCall) {
	defer s.wg.Done()
	ctx, cancel := context.WithTimeout(context.WithValue(s.ctx, oauth2.HTTPClient, s.client), tokenTimeout)
	defer cancel()
	start := time.Now()
	tok, err := s.cfg.Token(ctx)
	s.mu.Lock()
	defer func() {
		s.call = nil
		s.mu.Unlock()
		close(call.done)
	}()
	if err != nil {
		call.err = s.safe(err)
		if s.ctx.Err() != nil {
			return // closing
		}
		if t := s.token; t != nil && t.usable(time.Now()) {
			s.logger.Warn("refreshing the OAuth token for Kafka failed; the current one serves until it expires",
				zap.Time("expires", t.expiry), zap.Error(call.err))
		} else {
			s.logger.Error("no OAuth token for Kafka: connections to the brokers fail until the token endpoint answers",
				zap.String("token_url", s.safeURL()), zap.Error(call.err))
		}
		return
	}
	held := &heldToken{access: tok.AccessToken, fetchedAt: start, expiry: tok.Expiry}
	if held.expiry.IsZero() {
		held.expiry = jwtExpiry(tok.AccessToken)
	}
	if held.expiry.IsZero() || !held.expiry.After(start) {
		held.expiry = start.Add(unknownLifetime)
	}
	s.token, call.token = held, held
	s.logger.Debug("OAuth token for Kafka fetched", zap.Time("expires", held.expiry),
		zap.Duration("lifetime", held.expiry.Sub(start).Round(time.Millisecond)))
}

// jwtExpiry is the exp claim of token if it is a JWT, else zero. Its
// signature is the brokers' to check: this only schedules the refresh.
func jwtExpiry(token string) time.Time {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return time.Time{}
	}
	exp, err := claims.Exp.Int64()
	if err != nil || exp <= 0 {
		return time.Time{}
	}
	return time.Unix(exp, 0)
}

// tokenError is why no token could be had: the token endpoint refused
// the client (not retriable: the settings are wrong) or failed.
type tokenError struct {
	retriable bool
	msg       string
}

func (e *tokenError) Error() string { return "no OAuth token for Kafka: " + e.msg }

// safe is err as a tokenError whose text holds neither the client secret
// nor a token: oauth2's errors may quote the endpoint's answer, which a
// misconfigured or hostile endpoint can fill with what it was sent.
func (s *tokenSource) safe(err error) error {
	retriable := true
	msg := err.Error()
	var rerr *oauth2.RetrieveError
	if errors.As(err, &rerr) {
		status := 0
		msg = "the token endpoint answered"
		if rerr.Response != nil {
			status = rerr.Response.StatusCode
			msg += " " + rerr.Response.Status
		}
		if rerr.ErrorCode != "" {
			msg += ": " + rerr.ErrorCode
			if rerr.ErrorDescription != "" {
				msg += ": " + rerr.ErrorDescription
			}
		}
		// An answer of the endpoint is final unless it says it is busy
		// or broken, or it answered 2xx with an error code.
		retriable = status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout
	}
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	return &tokenError{retriable: retriable, msg: s.redact(msg)}
}

// redact removes the secrets and any token held from text; s.mu is held.
func (s *tokenSource) redact(text string) string {
	secrets := s.secrets
	if s.token != nil {
		secrets = append(secrets[:len(secrets):len(secrets)], s.token.access)
	}
	for _, secret := range secrets {
		if secret != "" {
			text = strings.ReplaceAll(text, secret, "[redacted]")
		}
	}
	return text
}

// safeURL is the token URL without what it could hold of credentials.
func (s *tokenSource) safeURL() string {
	u, err := url.Parse(s.cfg.TokenURL)
	if err != nil {
		return ""
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}
