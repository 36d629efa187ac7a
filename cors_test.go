package queuepublish

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// A page of a listed origin may ask and publish, and read every answer;
// another origin is refused its preflight and gets no CORS header.
func TestCORS(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	route := func(path, extra string) string { return queueRoute(path, c.ListenAddrs()[0], "events", extra) }
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"),
		route("/cors", "cors https://shop.example.com http://localhost:8080\n\t\t\ttoken_max_age 1m")+route("/plain", "")+
			`	handle /keyed {
		header Vary Accept-Encoding
		queue_publish {
			brokers `+c.ListenAddrs()[0]+`
			topic events
			secret {env.QP_TEST_SECRET}
			cors https://shop.example.com
			key {http.request.header.X-Message-Key}
			header source {http.request.header.x-source}
		}
	}
`)

	const listed, other = "https://shop.example.com", "https://evil.example.com"
	preflight := func(path, origin, method string) answerT {
		return do(t, "OPTIONS", path, map[string]string{
			"Origin": origin, "Access-Control-Request-Method": method,
			"Access-Control-Request-Headers": "authorization, content-type"}, nil)
	}
	corsHeaders := func(a answerT) map[string]string {
		got := map[string]string{}
		for name, v := range a.header {
			if strings.HasPrefix(name, "Access-Control-") || name == "Vary" {
				got[name] = strings.Join(v, ",")
			}
		}
		return got
	}
	check := func(what string, a answerT, status int, body string, want map[string]string) {
		t.Helper()
		if a.status != status || a.body != body {
			t.Errorf("%s: %d %s, want %d %s", what, a.status, a.body, status, body)
		}
		if got := corsHeaders(a); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: CORS headers %v, want %v", what, got, want)
		}
	}
	vary := map[string]string{"Vary": "Origin"}
	allowed := map[string]string{"Vary": "Origin", "Access-Control-Allow-Origin": listed,
		"Access-Control-Expose-Headers": "Retry-After, Idempotent-Replayed"}

	check("preflight of a listed origin", preflight("/cors", listed, "POST"), 204, "", map[string]string{
		"Vary": "Origin", "Access-Control-Allow-Origin": listed, "Access-Control-Expose-Headers": "Retry-After, Idempotent-Replayed",
		"Access-Control-Allow-Methods": "POST", "Access-Control-Max-Age": "600",
		"Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key, Traceparent, Tracestate"})
	check("preflight of another origin", preflight("/cors", other, "POST"), 403, `{"err":"origin not allowed"}`, vary)
	check("preflight for another method", preflight("/cors", listed, "PUT"), 403, `{"err":"origin not allowed"}`, vary)
	check("preflight without cors", preflight("/plain", listed, "POST"), 405, `{"err":"method not allowed"}`, map[string]string{})
	check("preflight of the null origin", preflight("/cors", "null", "POST"), 403, `{"err":"origin not allowed"}`, vary)
	check("OPTIONS that is no preflight", do(t, "OPTIONS", "/cors", map[string]string{"Origin": listed}, nil), 405,
		`{"err":"method not allowed"}`, allowed)
	check("preflight where key and header read request headers", preflight("/keyed", listed, "POST"), 204, "", map[string]string{
		"Vary": "Accept-Encoding,Origin", "Access-Control-Allow-Origin": listed, "Access-Control-Expose-Headers": "Retry-After, Idempotent-Replayed",
		"Access-Control-Allow-Methods": "POST", "Access-Control-Max-Age": "600",
		"Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key, Traceparent, Tracestate, X-Message-Key, X-Source"})

	beacon := map[string]string{"Origin": listed, "Content-Type": "text/plain;charset=UTF-8"}
	token := MintToken(testSecret, "events", time.Now().Add(time.Minute))
	check("a beacon of a listed origin", do(t, "POST", "/cors?token="+token, beacon, strings.NewReader(`{"beacon":1}`)), 200,
		`{"success":true,"partition":0,"offset":0}`, allowed)
	check("a refused request of a listed origin", do(t, "POST", "/cors", map[string]string{"Origin": listed}, strings.NewReader(`{}`)), 403,
		`{"err":"invalid auth token provided"}`, allowed)
	check("a request of another origin", do(t, "POST", "/cors", map[string]string{"Authorization": testSecret, "Origin": other}, strings.NewReader(`{"other":1}`)), 200,
		`{"success":true,"partition":0,"offset":1}`, vary)
	check("a request without cors", do(t, "POST", "/plain", map[string]string{"Authorization": testSecret, "Origin": listed}, strings.NewReader(`{"plain":1}`)), 200,
		`{"success":true,"partition":0,"offset":2}`, map[string]string{})
}

func TestCORSOriginsAreOrigins(t *testing.T) {
	for origin, ok := range map[string]bool{
		"https://shop.example.com":      true,
		"http://localhost:8080":         true,
		"*":                             false,
		"https://*.example.com":         false,
		"https://shop.example.com/":     false,
		"https://shop.example.com/path": false,
		"shop.example.com":              false,
		"ftp://shop.example.com":        false,
		"https://user@shop.example.com": false,
		"https://shop.example.com?q":    false,
		"https://Shop.example.com":      false,
		"https://shop.example.com:443":  false,
		"http://shop.example.com:80":    false,
		"https://shop.example.com:8443": true,
		"https://shop.example.com:":     false,
		"https://bücher.example":        false,
		"https://xn--bcher-kva.example": true,
	} {
		h := &Handler{Kafka: Kafka{Brokers: []string{"k:9092"}}, Requests: Requests{Topic: "t"}, Authentication: Authentication{Secrets: []string{"s"}}, CrossOrigin: CrossOrigin{CORS: []string{origin}}}
		err := h.CrossOrigin.check()
		if (err == nil) != ok {
			t.Errorf("cors %q: %v, want ok %v", origin, err, ok)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "cors: ") {
			t.Errorf("cors %q: %v, want an error naming cors", origin, err)
		}
	}
}
