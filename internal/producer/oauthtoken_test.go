package producer

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"go.uber.org/zap"
)

// The client secret and the tokens never reach an error or the log, even
// from a token endpoint that echoes what it was sent, or a token it
// issued, in its error answers (oauth2's errors quote the answer). Its
// refusal is a rejection (500), its failure a fault retrying may fix
// (503), and either is logged with its cause.
func TestTokenErrorsHoldNoSecret(t *testing.T) {
	const clientID, secret = "producer", "s3cret/+ &value=" // escapes differently in a form and in Basic
	issued := "eyJhbGciOiJub25lIn0.eyJleHAiOjB9.issued-token-never-logged"
	var calls atomic.Int32
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		echo := string(body) + " " + r.Header.Get("Authorization")
		switch r.URL.Path {
		case "/refuses":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"error":"invalid_client","error_description":%q}`, echo)
		case "/fails":
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprint(w, echo)
		case "/issues-then-echoes":
			w.Header().Set("Content-Type", "application/json")
			if calls.Add(1) == 1 {
				fmt.Fprintf(w, `{"access_token":%q,"token_type":"bearer","expires_in":2}`, issued)
				return
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, `{"error":"temporarily_unavailable","error_description":"you sent %s, I issued %s"}`, echo, issued)
		}
	}))
	defer endpoint.Close()
	forbidden := []string{secret, url.QueryEscape(secret), issued,
		base64.StdEncoding.EncodeToString([]byte(clientID + ":" + url.QueryEscape(secret))),
		base64.StdEncoding.EncodeToString([]byte(clientID + ":" + secret))}
	check := func(t *testing.T, what, text string) {
		t.Helper()
		for _, f := range forbidden {
			if strings.Contains(text, f) {
				t.Errorf("%s holds a secret or token (%q): %s", what, f, text)
			}
		}
	}

	for _, tt := range []struct {
		path, want, logged string
		outcome            Outcome
	}{
		{"/refuses", "401 Unauthorized: invalid_client", "no OAuth token for Kafka", OutcomeRejected},
		{"/fails", "502 Bad Gateway", "no OAuth token for Kafka", OutcomeRetry},
		{"/issues-then-echoes", "503 Service Unavailable: temporarily_unavailable", "OAuth token for Kafka", OutcomeRetry},
	} {
		t.Run(strings.Trim(tt.path, "/"), func(t *testing.T) {
			kafkatest.NoLeaks(t)
			logger, logs := kafkatest.ObservedLogger()
			ctx, cancel := context.WithCancel(context.Background())
			s := newTokenSource(ctx, &OAuth{TokenURL: endpoint.URL + tt.path, ClientID: clientID, ClientSecret: secret}, logger)
			s.start()
			defer func() {
				cancel()
				s.close()
			}()
			// The refusal or failure the refresher logs first, and
			// for an exchange, the error of a fetch of its own.
			kafkatest.WaitFor(t, 5*time.Second, func() bool { return logs.FilterMessageSnippet(tt.logged).Len() > 0 })
			var err error
			kafkatest.WaitFor(t, 5*time.Second, func() bool {
				_, err = s.get(ctx)
				return err != nil // the issued token serves until it expires
			})
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			check(t, "the error", err.Error())
			perr := classify(err)
			if refused := refusedConnection(err); refused != nil {
				perr = refused
			}
			if perr.Outcome != tt.outcome {
				t.Errorf("classified %v (%s), want %v", perr.Outcome, perr.Reason, tt.outcome)
			}
			if mayBeWritten(err, AcksAll) {
				t.Error("a request that failed for want of a token may have been written, says the producer")
			}
			for _, e := range logs.All() {
				check(t, "the log", e.Message+" "+fmt.Sprint(e.ContextMap()))
			}
		})
	}
}

// The first message of OAUTHBEARER is RFC 7628's, with the token at
// hand; the broker's JSON refusal is a rejection that keeps its status and
// nothing else of it.
func TestOAuthBearerMessages(t *testing.T) {
	s := &tokenSource{token: &heldToken{access: "the-token", fetchedAt: time.Now(), expiry: time.Now().Add(time.Hour)}}
	sess, first, err := oauthBearer{tokens: s}.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := "n,,\x01auth=Bearer the-token\x01\x01"; string(first) != want {
		t.Errorf("first message %q, want %q", first, want)
	}
	if done, resp, err := sess.Next(context.Background(), nil); !done || resp != nil || err != nil {
		t.Errorf("an empty answer: done %v, %q, %v; want done", done, resp, err)
	}
	_, _, err = sess.Next(context.Background(), []byte(`{"status":"invalid_token","scope":"produce","openid-configuration":"https://issuer/.well-known/openid-configuration","echo":"the-token"}`))
	if err == nil || !strings.Contains(err.Error(), "status invalid_token, scope produce") || strings.Contains(err.Error(), "the-token") {
		t.Errorf("a refusal: %v", err)
	}
	if perr := refusedConnection(err); perr == nil || perr.Outcome != OutcomeRejected {
		t.Errorf("a refused token is classified %v, want a rejection", perr)
	}
}

// An issuer under a private CA: its token endpoint is trusted with the
// CA's certificates, and without them refused (retriably: the
// certificate's chain is not the token's fault).
func TestTokenEndpointPrivateCA(t *testing.T) {
	endpoint := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"from-the-private-issuer","token_type":"bearer","expires_in":3600}`)
	}))
	defer endpoint.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: endpoint.Certificate().Raw})
	for _, tt := range []struct {
		name string
		ca   []byte
		ok   bool
	}{{"with token_ca", ca, true}, {"with the system's roots", nil, false}} {
		t.Run(tt.name, func(t *testing.T) {
			kafkatest.NoLeaks(t)
			o := &OAuth{TokenURL: endpoint.URL, ClientID: "producer", ClientSecret: "secret", CA: tt.ca}
			if err := o.check(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			s := newTokenSource(ctx, o, zap.NewNop())
			s.start()
			defer func() {
				cancel()
				s.close()
			}()
			getCtx, stop := context.WithTimeout(ctx, 5*time.Second)
			defer stop()
			token, err := s.get(getCtx)
			if tt.ok && (err != nil || token != "from-the-private-issuer") {
				t.Fatalf("token %q, %v", token, err)
			}
			if !tt.ok && (err == nil || !strings.Contains(err.Error(), "certificate")) {
				t.Fatalf("token %q, %v; want the endpoint's certificate refused", token, err)
			}
		})
	}
	if err := (&OAuth{TokenURL: endpoint.URL, ClientID: "p", ClientSecret: "s", CA: []byte("not PEM")}).check(); err == nil {
		t.Error("a token_ca without a certificate was taken")
	}
}
