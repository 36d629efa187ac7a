// Command go publishes one message to queue_publish with net/http.
//
//	QUEUE_AUTH_SECRET=... go run ./examples/clients/go '{"msg":"hello world"}'
//
// QUEUE_URL (default http://localhost:8080/), QUEUE_AUTH_SECRET, and
// QUEUE_IDEMPOTENT=1 if the server has idempotency_window (a 504 is retried
// too). A 503 (not written) is retried with back-off; anything else but 2xx
// is final.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
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
	key := make([]byte, 16)
	rand.Read(key) // the same key on every attempt of this message
	retryUnknown := os.Getenv("QUEUE_IDEMPOTENT") == "1"
	client := &http.Client{Timeout: 30 * time.Second}

	delay := 200 * time.Millisecond
	for attempt := 1; attempt <= 6; attempt++ {
		req, _ := http.NewRequest("POST", url, strings.NewReader(body))
		req.Header.Set("Authorization", secret)
		req.Header.Set("Idempotency-Key", hex.EncodeToString(key))
		req.Header.Set("Content-Type", "application/json")
		status, answer, retryAfter := 0, "", 0
		if res, err := client.Do(req); err != nil {
			answer = err.Error() // not answered: nothing was acknowledged
		} else {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			status, answer = res.StatusCode, string(b)
			retryAfter, _ = strconv.Atoi(res.Header.Get("Retry-After"))
		}
		switch status {
		case 200, 202:
			fmt.Println(answer)
			return
		case 504:
			if !retryUnknown {
				fail(2, "outcome unknown, not retried (it could be stored twice): "+answer)
			}
		case 0, 409, 503:
		default:
			fail(1, fmt.Sprintf("refused (%d): %s", status, answer))
		}
		wait := max(delay, time.Duration(retryAfter)*time.Second)
		fmt.Fprintf(os.Stderr, "attempt %d: %d %s; retrying in %v\n", attempt, status, answer, wait)
		time.Sleep(wait)
		delay *= 2
	}
	fail(1, "gave up")
}

func fail(code int, msg string) {
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(code)
}
