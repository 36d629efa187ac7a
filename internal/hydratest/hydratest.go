// Package hydratest runs a real Ory Hydra (an OAuth 2.0 and OpenID Connect
// issuer) for the tests that need tokens from one: in memory, on loopback
// ports of its own, issuing JWT access tokens, stopped when the test ends.
// The program is built once from the Go module proxy (see Binary).
package hydratest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// AccessTokenKeySet is the key set Hydra signs JWT access tokens with.
const AccessTokenKeySet = "hydra.jwt.access-token"

// Server is a running hydra process.
type Server struct {
	// Issuer is the issuer exactly as the tokens' iss claim carries it,
	// which is what a verifier is told to expect.
	Issuer string
	// JWKSURL serves the public keys that verify the tokens.
	JWKSURL string
	// TokenURL is the OAuth 2.0 token endpoint.
	TokenURL string
	// AdminURL is the root of the admin API, on its own port.
	AdminURL string

	cmd      *exec.Cmd
	dir      string
	done     chan struct{}
	stopOnce sync.Once
	log      string

	mu sync.Mutex
	// basic holds the clients that authenticate with HTTP Basic
	// authentication, so that Token presents their secret as Hydra wants.
	basic map[string]bool
}

// Start starts Hydra and returns once both its public and its admin API
// answer ready; it is stopped when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := launch(Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Launch is Start for a Hydra that outlives a test, such as one a suite's
// shared Kafka cluster validates tokens with: the caller stops it.
func Launch() (*Server, error) {
	bin, err := FindBinary(func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) })
	if err != nil {
		return nil, err
	}
	return launch(bin)
}

func launch(bin string) (*Server, error) {
	dir, err := os.MkdirTemp("", "hydra-")
	if err != nil {
		return nil, err
	}
	public, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	base := "http://127.0.0.1:" + strconv.Itoa(public)
	secret := make([]byte, 24)
	rand.Read(secret)
	config := fmt.Sprintf(`dsn: memory
serve:
  public:
    host: 127.0.0.1
    port: %d
  admin:
    host: 127.0.0.1
    port: %d
urls:
  self:
    issuer: %s/
strategies:
  access_token: jwt
secrets:
  system:
    - %s
log:
  level: warn
`, public, admin, base, hex.EncodeToString(secret))
	configFile := filepath.Join(dir, "hydra.yml")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		return nil, err
	}
	s := &Server{
		JWKSURL:  base + "/.well-known/jwks.json",
		TokenURL: base + "/oauth2/token",
		AdminURL: "http://127.0.0.1:" + strconv.Itoa(admin),
		dir:      dir,
		done:     make(chan struct{}),
		log:      filepath.Join(dir, "hydra.log"),
		basic:    map[string]bool{},
	}
	logFile, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	s.cmd = exec.Command(bin, "serve", "all", "-c", configFile, "--dev", "--sqa-opt-out")
	s.cmd.Dir = dir
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	// Killed with the process that started it: a test binary that
	// panicked or timed out leaves no issuer behind.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		s.cmd.Wait()
		close(s.done)
	}()
	if err := s.waitReady(base+"/health/ready", s.AdminURL+"/health/ready"); err != nil {
		s.Stop()
		return nil, err
	}
	if s.Issuer, err = discoveredIssuer(base); err != nil {
		s.Stop()
		return nil, err
	}
	// Hydra makes its signing keys at the first request that needs them,
	// and requests that come together each make their own: three Kafka
	// nodes fetching the keys at once each saw a key set of their own,
	// while tokens were signed with yet another key. So they are made
	// now, before anyone else asks.
	if err := getOK(s.JWKSURL); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// getOK gets u and fails unless it answers 200.
func getOK(u string) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return nil
}

// Stop ends Hydra as a service manager would, and kills it if it does not
// end in time; the tokens it issued stay valid where their keys are known.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
		os.RemoveAll(s.dir)
	})
}

// waitReady polls the health endpoints until they answer 200; Hydra's log
// is in the error if it exits or is not ready within a minute.
func (s *Server) waitReady(urls ...string) error {
	deadline := time.Now().Add(time.Minute)
	for _, u := range urls {
		for {
			resp, err := http.Get(u)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
				err = fmt.Errorf("%s", resp.Status)
			}
			select {
			case <-s.done:
				return fmt.Errorf("hydra exited before it was ready (%v):\n%s", s.cmd.ProcessState, s.Log())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("hydra is not ready at %s: %v\n%s", u, err, s.Log())
			}
		}
	}
	return nil
}

// discoveredIssuer is the issuer the discovery document names, the one
// Hydra puts in its tokens (the test beside this package checks that).
func discoveredIssuer(base string) (string, error) {
	resp, err := http.Get(base + "/.well-known/openid-configuration")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || doc.Issuer == "" {
		return "", fmt.Errorf("hydra's discovery document (%s) names no issuer: %v", resp.Status, err)
	}
	return doc.Issuer, nil
}

// Log is what Hydra has written so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.log)
	return string(b)
}

// CreateClient registers a client of the client-credentials grant that
// may ask for audiences and scopes, authenticating at the token endpoint
// with its secret in the form (client_secret_post).
func (s *Server) CreateClient(t testing.TB, id, secret string, audiences []string, scopes ...string) {
	t.Helper()
	s.createClient(t, id, secret, "client_secret_post", audiences, scopes)
}

// CreateBasicClient is CreateClient for a client that authenticates with
// HTTP Basic authentication (client_secret_basic).
func (s *Server) CreateBasicClient(t testing.TB, id, secret string, audiences []string, scopes ...string) {
	t.Helper()
	s.createClient(t, id, secret, "client_secret_basic", audiences, scopes)
}

func (s *Server) createClient(t testing.TB, id, secret, method string, audiences, scopes []string) {
	t.Helper()
	if audiences == nil {
		audiences = []string{}
	}
	body := map[string]any{
		"client_id":                  id,
		"client_secret":              secret,
		"grant_types":                []string{"client_credentials"},
		"token_endpoint_auth_method": method,
		"audience":                   audiences,
		"scope":                      strings.Join(scopes, " "),
		"access_token_strategy":      "jwt",
	}
	s.call(t, http.MethodPost, s.AdminURL+"/admin/clients", body, http.StatusCreated, nil)
	s.mu.Lock()
	s.basic[id] = method == "client_secret_basic"
	s.mu.Unlock()
}

// SetTokenLifetime sets how long the access tokens of clientID's
// client-credentials grant live.
func (s *Server) SetTokenLifetime(t testing.TB, clientID string, d time.Duration) {
	t.Helper()
	body := map[string]any{"client_credentials_grant_access_token_lifespan": d.Round(time.Second).String()}
	s.call(t, http.MethodPut, s.AdminURL+"/admin/clients/"+url.PathEscape(clientID)+"/lifespans", body, http.StatusOK, nil)
}

// Token is an access token for the client-credentials grant, for audience
// and scope (either may be empty), as the token endpoint issues it.
func (s *Server) Token(t testing.TB, clientID, secret, audience, scope string) string {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}}
	if audience != "" {
		form.Set("audience", audience)
	}
	if scope != "" {
		form.Set("scope", scope)
	}
	s.mu.Lock()
	basic := s.basic[clientID]
	s.mu.Unlock()
	if !basic {
		form.Set("client_id", clientID)
		form.Set("client_secret", secret)
	}
	req, err := http.NewRequest(http.MethodPost, s.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basic {
		// RFC 6749 2.3.1: both form-encoded before Basic's own encoding.
		req.SetBasicAuth(url.QueryEscape(clientID), url.QueryEscape(secret))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var answer struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		t.Fatalf("the token endpoint answered %s: %v", resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK || answer.AccessToken == "" {
		// The answer carries no secret: only the error's code and text.
		t.Fatalf("the token endpoint answered %s: %s: %s", resp.Status, answer.Error, answer.Description)
	}
	return answer.AccessToken
}

// RotateKeys adds a new key to the access tokens' key set and returns its
// key ID: Hydra signs with the newest key, so tokens issued from now on
// carry that kid, while the older keys stay published so that the tokens
// already issued still verify.
func (s *Server) RotateKeys(t testing.TB) string {
	t.Helper()
	kid := make([]byte, 8)
	rand.Read(kid)
	body := map[string]any{"alg": "RS256", "use": "sig", "kid": "rotated-" + hex.EncodeToString(kid)}
	var set struct {
		Keys []struct {
			KID string `json:"kid"`
		} `json:"keys"`
	}
	s.call(t, http.MethodPost, s.AdminURL+"/admin/keys/"+AccessTokenKeySet, body, http.StatusCreated, &set)
	if len(set.Keys) == 0 {
		t.Fatal("hydra created no key")
	}
	return set.Keys[0].KID
}

// call sends a JSON request and decodes the JSON answer into out (unless
// nil), failing the test unless it is answered want.
func (s *Server) call(t testing.TB, method, u string, body any, want int, out any) {
	t.Helper()
	var reader io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		reader = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, reader)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != want {
		t.Fatalf("%s %s: hydra answered %s: %s", method, u, resp.Status, answer)
	}
	if out != nil {
		if err := json.Unmarshal(answer, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, u, err, answer)
		}
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
