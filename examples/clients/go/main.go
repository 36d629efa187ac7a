// Command go publishes one message to queue_publish with net/http.
//
//	QUEUE_AUTH_SECRET=... go run ./examples/clients/go '{"msg":"hello world"}'
//
// QUEUE_URL (default http://localhost:8080/), QUEUE_AUTH_SECRET, and
// QUEUE_IDEMPOTENT=1 if the server has idempotency_window (then an unknown
// outcome is retried too).
//
// Retried, up to 6 attempts: 503 (not written; waits Retry-After), 409 (the
// same Idempotency-Key is in progress) and a refused connection (nothing
// sent). A 504 or a connection lost before the answer leaves the outcome
// unknown: retried only with QUEUE_IDEMPOTENT=1. Any other answer is final.
// Exit status: 0 published, 1 not published, 2 outcome unknown.
package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	url := os.Getenv("QUEUE_URL")
	if url == "" {
		url = "http://localhost:8080/"
	}
	secret := os.Getenv("QUEUE_AUTH_SECRET")
	if secret == "" {
		fail(1, "set QUEUE_AUTH_SECRET")
	}
	body := `{"messages": [{"msg":"hello world"}]}`
	if len(os.Args) > 1 {
		body = os.Args[1]
	}
	key := rand.Text() // the same key on every attempt of this message
	retryUnknown := os.Getenv("QUEUE_IDEMPOTENT") == "1"
	// A new connection for each attempt: on a reused one, net/http would
	// resend a request with an Idempotency-Key by itself after some errors.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.DisableKeepAlives = true
	client := &http.Client{Timeout: 30 * time.Second, Transport: transport}

	delay, unknown := 200*time.Millisecond, false
	for attempt := 1; ; attempt++ {
		status, answer, retryAfter, err := send(client, url, secret, key, body)
		what, wait := fmt.Sprintf("%d %s", status, answer), delay
		switch {
		case errors.Is(err, syscall.ECONNREFUSED): // nothing was sent
			what = "connection refused"
		case err != nil || status == 504: // sent, but no answer or 504
			if err != nil {
				what = "no answer (" + err.Error() + ")"
			}
			unknown = true
			if !retryUnknown {
				fail(2, "outcome unknown, not retried (it could be stored twice): "+what)
			}
		case status == 200 || status == 202:
			fmt.Println(answer)
			return
		case status == 503 || status == 409: // not written, or the same key still in progress
			wait = max(delay, retryAfter)
		default:
			fail(1, "not published, final answer: "+what)
		}
		if attempt == 6 {
			code := 1
			if unknown {
				code = 2
			}
			fail(code, fmt.Sprintf("gave up after %d attempts: %s", attempt, what))
		}
		fmt.Fprintf(os.Stderr, "attempt %d: %s; retrying in %v\n", attempt, what, wait)
		time.Sleep(wait)
		delay *= 2
	}
}

// send posts body once and returns the answer; err is set if there was
// none (or it was cut short).
func send(client *http.Client, url, secret, key, body string) (status int, answer string, retryAfter time.Duration, err error) {
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		fail(1, err.Error())
	}
	req.Header.Set("Authorization", secret)
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("Content-Type", "application/json")
	res, err := client.Do(req)
	if err != nil {
		return 0, "", 0, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	seconds, _ := strconv.Atoi(res.Header.Get("Retry-After"))
	return res.StatusCode, string(b), time.Duration(seconds) * time.Second, err
}

func fail(code int, msg string) {
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(code)
}
