package queuepublish

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/caddyserver/caddy/v2"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Through a real Caddy server and a real (in-process) Kafka-protocol
// broker: the requests of the answers table that reach Kafka, and those
// refused before it, each with its status, body and headers; exactly the
// acknowledged bodies are stored, byte for byte.
func TestAcceptedAndRefusedRequests(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "my-queue"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	handle /q {
		queue_publish {
			brokers %s
			topic my-queue
			secret {env.QP_TEST_SECRET}
			max_size 64
		}
	}
`, c.ListenAddrs()[0]))

	ok := auth(testSecret)
	expectAnswers(t, []answerCase{
		{"seed request", "POST", "/q", ok, strings.NewReader(seedBody), 200, `{"success":true,"partition":0,"offset":0}`, nil, 0},
		{"bearer token", "POST", "/q", auth("Bearer " + testSecret), strings.NewReader(`[1,2,3]`), 200, `{"success":true,"partition":0,"offset":1}`, nil, 0},
		{"bearer scheme in lower case", "POST", "/q", auth("bearer " + testSecret), strings.NewReader(`"text"`), 200, `{"success":true,"partition":0,"offset":2}`, nil, 0},
		{"chunked body", "POST", "/q", ok, onlyBody{strings.NewReader(`{"chunked":true}`)}, 200, `{"success":true,"partition":0,"offset":3}`, nil, 0},
		{"no authorization", "POST", "/q", nil, strings.NewReader(`{}`), 403, `{"err":"invalid auth token provided"}`, nil, 0},
		{"wrong secret", "POST", "/q", auth(strings.Repeat("0", 64)), strings.NewReader(`{}`), 403, `{"err":"invalid auth token provided"}`, nil, 0},
		{"prefix of the secret", "POST", "/q", auth(testSecret[:63]), strings.NewReader(`{}`), 403, `{"err":"invalid auth token provided"}`, nil, 0},
		{"secret plus more", "POST", "/q", auth(testSecret + "0"), strings.NewReader(`{}`), 403, `{"err":"invalid auth token provided"}`, nil, 0},
		{"bearer prefix of the secret", "POST", "/q", auth("Bearer " + testSecret[:10]), strings.NewReader(`{}`), 403, `{"err":"invalid auth token provided"}`, nil, 0},
		{"empty bearer", "POST", "/q", auth("Bearer "), strings.NewReader(`{}`), 403, `{"err":"invalid auth token provided"}`, nil, 0},
		{"empty body", "POST", "/q", ok, strings.NewReader(``), 400, `{"err":"payload not valid JSON"}`, nil, 0},
		{"not JSON", "POST", "/q", ok, strings.NewReader(`hello`), 400, `{"err":"payload not valid JSON"}`, nil, 0},
		{"truncated JSON", "POST", "/q", ok, strings.NewReader(`{"a":`), 400, `{"err":"payload not valid JSON"}`, nil, 0},
		{"two JSON values", "POST", "/q", ok, strings.NewReader(`{}{}`), 400, `{"err":"payload not valid JSON"}`, nil, 0},
		{"invalid UTF-8 in a string", "POST", "/q", ok, strings.NewReader("\"\xff\""), 400, `{"err":"payload not valid JSON"}`, nil, 0},
		{"over max_size", "POST", "/q", ok, strings.NewReader(`"` + strings.Repeat("a", 63) + `"`), 413, `{"err":"payload too large"}`, nil, 0},
		{"chunked over max_size", "POST", "/q", ok, onlyBody{strings.NewReader(`"` + strings.Repeat("a", 100) + `"`)}, 413, `{"err":"payload too large"}`, nil, 0},
		{"GET", "GET", "/q", ok, nil, 405, `{"err":"method not allowed"}`, map[string]string{"Allow": "POST"}, 0},
		{"PUT", "PUT", "/q", ok, strings.NewReader(`{}`), 405, `{"err":"method not allowed"}`, map[string]string{"Allow": "POST"}, 0},
	})

	var values []string
	for _, r := range stored(t, c, "my-queue") {
		values = append(values, string(r.Value))
		if r.Key != nil || len(r.Headers) != 0 {
			t.Errorf("record %q has a key or headers", r.Value)
		}
	}
	want := []string{seedBody, `[1,2,3]`, `"text"`, `{"chunked":true}`}
	if strings.Join(values, "\n") != strings.Join(want, "\n") {
		t.Errorf("my-queue holds %q, want %q", values, want)
	}
	unloadChecksLeaks(t)
}

func TestOversizedBodyIsNotRead(t *testing.T) {
	const maxSize = 1000
	h := handlerForUnitTest(maxSize)
	for _, length := range []int64{-1, maxSize + 1, 50 * maxSize} {
		body := &countingReader{r: bytes.NewReader(bytes.Repeat([]byte("1"), 50*maxSize))}
		req := httptest.NewRequest("POST", "/", body)
		req.ContentLength = length
		req.Header.Set("Authorization", testSecret)
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, req, nil); err != nil {
			t.Fatal(err)
		}
		if w.Code != 413 || w.Body.String() != `{"err":"payload too large"}` {
			t.Errorf("Content-Length %d: got %d %s, want 413", length, w.Code, w.Body)
		}
		if body.n > maxSize+1 {
			t.Errorf("Content-Length %d: read %d bytes, want at most max_size+1 = %d", length, body.n, maxSize+1)
		}
	}
}

func TestUnauthorizedBodyIsNotRead(t *testing.T) {
	h := handlerForUnitTest(1000)
	body := &countingReader{r: strings.NewReader(`{}`)}
	req := httptest.NewRequest("POST", "/", body)
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, req, nil); err != nil {
		t.Fatal(err)
	}
	if w.Code != 403 || body.n != 0 {
		t.Errorf("got %d after reading %d bytes, want 403 without reading", w.Code, body.n)
	}
}

func TestValidJSON(t *testing.T) {
	for body, want := range map[string]bool{
		`{}`: true, ` [1, 2] `: true, `"é"`: true, `0`: true, `null`: true, "{\n}\n": true,
		``: false, ` `: false, `{`: false, `{}}`: false, `{} {}`: false, `01`: false,
		`{"a":1,}`: false, "\"\xc3\x28\"": false, `'a'`: false, `NaN`: false,
		`"\ud83d\ude00"`: true, `{"a":1,"a":2}`: true, `"\ud800"`: false, `"\udc00"`: false, `"\ud800x"`: false,
		`"\ude00\ud83d"`: false, `{"\ud800":1}`: false,
		strings.Repeat("[", 100000) + strings.Repeat("]", 100000): false,
	} {
		if got := validJSON([]byte(body)); got != want {
			t.Errorf("validJSON(%.40q) = %v, want %v", body, got, want)
		}
	}
}

// An escaped lone surrogate ("\ud800" without its pair) is one rule in
// both modes: the same body is refused as invalid JSON whether it is a
// record (mode body) or an envelope (mode records), wherever the escape
// is; an escaped pair is a character, accepted and stored as sent.
func TestLoneSurrogateEscapesAreRefusedInEveryMode(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), queueRoute("/body", c.ListenAddrs()[0], "events", "mode body")+
		queueRoute("/records", c.ListenAddrs()[0], "events", "mode records"))
	ok := auth(testSecret)
	invalid := `{"err":"payload not valid JSON"}`
	var cases []answerCase
	for _, body := range []string{
		`{"records":[{"value":"\ud800"}]}`,
		`{"records":[{"value":{"text":"a\udc00b"}}]}`,
		`{"records":[{"value":"\ude00\ud83d"}]}`,
		`{"records":[{"value":1,"key":"\ud800"}]}`,
		`{"records":[{"value":1,"headers":{"h":"\udbff"}}]}`,
	} {
		for _, path := range []string{"/body", "/records"} {
			cases = append(cases, answerCase{path + " " + body, "POST", path, ok, strings.NewReader(body), 400, invalid, nil, 0})
		}
	}
	pair := `{"records":[{"value":"\ud83d\ude00"}]}`
	cases = append(cases,
		answerCase{"/body, a pair", "POST", "/body", ok, strings.NewReader(pair), 200, `{"success":true,"partition":0,"offset":0}`, nil, 0},
		answerCase{"/records, a pair", "POST", "/records", ok, strings.NewReader(pair), 200, `{"success":true,"offsets":[{"partition":0,"offset":1}]}`, nil, 0})
	expectAnswers(t, cases)
	var values []string
	for _, r := range stored(t, c, "events") {
		values = append(values, string(r.Value))
	}
	if want := []string{pair, `"\ud83d\ude00"`}; !slices.Equal(values, want) {
		t.Errorf("events holds %q, want %q", values, want)
	}
	unloadChecksLeaks(t)
}

// A body is read into a buffer that grows as its bytes arrive, never
// more than readStep ahead of them, whatever Content-Length claims; and a
// signed request without a well-formed signature is refused before any
// of its body is read.
func TestBodyMemoryFollowsTheBytesReceived(t *testing.T) {
	h := handlerForUnitTest(1000000)
	const sent = 100
	body := &offeredReader{r: strings.NewReader(strings.Repeat("1", sent))}
	req := httptest.NewRequest("POST", "/", body)
	req.ContentLength = 1000000
	if _, status := h.readBody(readOf(h, req)); status != 400 {
		t.Errorf("a body shorter than its Content-Length: %d, want 400", status)
	}
	allocated := 0
	for _, n := range body.offered {
		allocated = max(allocated, n)
	}
	if allocated > readStep {
		t.Errorf("with %d bytes received, a read was offered a buffer of %d, want at most %d", sent, allocated, readStep)
	}

	// Of unknown length, the body starts in a small buffer too.
	body = &offeredReader{r: strings.NewReader(strings.Repeat("1", sent))}
	req = httptest.NewRequest("POST", "/", body)
	req.ContentLength = -1
	if got, status := h.readBody(readOf(h, req)); status != 200 || len(got) != sent {
		t.Errorf("a chunked body: %d, %d bytes, want 200 and %d", status, len(got), sent)
	}
	if body.offered[0] > minReadChunk {
		t.Errorf("a chunked body: the first read was offered %d bytes, want at most %d", body.offered[0], minReadChunk)
	}

	h.SignatureHeader = "X-Hub-Signature-256"
	h.Authentication.provision(&provisioning{repl: caddy.NewReplacer(), h: h})
	for _, header := range []string{"", "sha256=", "sha1=" + strings.Repeat("0", 40), "sha256=" + strings.Repeat("z", 64)} {
		body := &countingReader{r: strings.NewReader(`{}`)}
		req := httptest.NewRequest("POST", "/", body)
		req.ContentLength = 1000000
		if header != "" {
			req.Header.Set(h.SignatureHeader, header)
		}
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, req, nil); err != nil {
			t.Fatal(err)
		}
		if w.Code != 403 || body.n != 0 || w.Header().Get("Connection") != "close" {
			t.Errorf("signature %q: %d after reading %d bytes (Connection %q), want 403 without reading, closing", header, w.Code, body.n, w.Header().Get("Connection"))
		}
	}
}

func TestTopicFromRequest(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "clicks", "secret-stuff"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	queue_publish /topics/* {
		brokers %s
		topic {http.request.uri.path.1}
		allow_topics orders clicks
		secret {env.QP_TEST_SECRET}
	}`, c.ListenAddrs()[0]))
	ok := map[string]string{"Authorization": testSecret}
	for _, topic := range []string{"orders", "clicks"} {
		if got := do(t, "POST", "/topics/"+topic, ok, strings.NewReader(`"to `+topic+`"`)); got.status != 200 {
			t.Errorf("%s: %d %s", topic, got.status, got.body)
		}
		if got := stored(t, c, topic); len(got) != 1 || string(got[0].Value) != `"to `+topic+`"` {
			t.Errorf("%s holds %v", topic, got)
		}
	}
	// Refused topics never reach Kafka: no metadata or produce request
	// names them.
	var requests atomic.Int32
	refused := func(topic *string) bool {
		return topic != nil && (*topic == "secret-stuff" || *topic == "nope" || *topic == "")
	}
	c.Control(func(req kmsg.Request) (kmsg.Response, error, bool) {
		switch req := req.(type) {
		case *kmsg.MetadataRequest:
			for _, tp := range req.Topics {
				if refused(tp.Topic) {
					requests.Add(1)
				}
			}
		case *kmsg.ProduceRequest:
			for _, tp := range req.Topics {
				if refused(&tp.Topic) {
					requests.Add(1)
				}
			}
		}
		return nil, nil, false
	})
	for _, path := range []string{"/topics/secret-stuff", "/topics/nope", "/topics/"} {
		if got := do(t, "POST", path, ok, strings.NewReader(`{}`)); got.status != 404 || got.body != `{"err":"unknown topic"}` {
			t.Errorf("%s: got %d %s, want 404", path, got.status, got.body)
		}
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("%d Kafka requests name a refused topic, want none", n)
	}
	if got := stored(t, c, "secret-stuff"); len(got) != 0 {
		t.Error("a topic outside allow_topics was written")
	}
	// Authentication comes first: no topic is revealed to a stranger.
	if got := do(t, "POST", "/topics/nope", nil, strings.NewReader(`{}`)); got.status != 403 {
		t.Errorf("without the secret: %d, want 403", got.status)
	}
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// offeredReader records how many bytes each Read may fill: what the
// reader of the body has allocated ahead of the bytes received.
type offeredReader struct {
	r       io.Reader
	offered []int
}

func (o *offeredReader) Read(p []byte) (int, error) {
	o.offered = append(o.offered, len(p))
	if len(p) > 1 {
		p = p[:1] // a client sending a byte now and then
	}
	return o.r.Read(p)
}

// TestHostileRequests sends what a careless or hostile client might, and
// checks each answer and what reached the topic.
func TestHostileRequests(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events", "batches"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), fmt.Sprintf(`	handle /one {
		queue_publish {
			brokers %[1]s
			topic events
			secret {env.QP_TEST_SECRET}
			max_size 300KB
		}
	}
	handle /many {
		queue_publish {
			brokers %[1]s
			topic batches
			secret {env.QP_TEST_SECRET}
			mode records
			max_size 300KB
		}
	}
	handle /small {
		queue_publish {
			brokers %[1]s
			topic events
			secret {env.QP_TEST_SECRET}
			max_size 1KB
		}
	}`, c.ListenAddrs()[0]))
	ok := auth(testSecret)
	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	huge := `{"n":1e999999,"m":-123456789012345678901234567890.5e-99999}`
	for _, tt := range []struct {
		name, path, body string
		want             int
		stored           string // the exact value stored, if any
	}{
		{"invalid UTF-8 in a string", "/one", "{\"s\":\"\xc3\x28\"}", 400, ""},
		{"invalid UTF-8 in a record", "/many", "{\"records\":[{\"value\":\"\xff\"}]}", 400, ""},
		{"100,000 levels of nesting", "/one", deep, 400, ""},
		{"100,000 levels in a record", "/many", `{"records":[{"value":` + deep + `}]}`, 400, ""},
		{"huge numbers are JSON, stored as sent", "/one", huge, 200, huge},
		{"duplicate keys are JSON, stored as sent", "/one", `{"a":1,"a":2}`, 200, `{"a":1,"a":2}`},
		{"a raw NUL byte", "/one", "{\"s\":\"a\x00b\"}", 400, ""},
		{"an escaped NUL", "/one", `{"s":"a\u0000b"}`, 200, `{"s":"a\u0000b"}`},
		{"a byte order mark", "/one", "\xef\xbb\xbf{}", 400, ""},
		{"only whitespace", "/one", " \r\n\t", 400, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(stored(t, c, "events"))
			got := do(t, "POST", tt.path, ok, strings.NewReader(tt.body))
			if got.status != tt.want {
				t.Fatalf("%d %.200s, want %d", got.status, got.body, tt.want)
			}
			if tt.stored != "" && recordsByValue(t, c, "events")[tt.stored] == nil {
				t.Errorf("%.60q is not stored byte for byte", tt.stored)
			}
			if added := len(stored(t, c, "events")) - before; (tt.stored != "") != (added == 1) || added > 1 {
				t.Errorf("%d records added to events", added)
			}
		})
	}
	if got := stored(t, c, "batches"); len(got) != 0 {
		t.Errorf("refused batches produced %d records", len(got))
	}

	t.Run("Content-Length larger than the body", func(t *testing.T) {
		status, _ := rawRequest(t, "POST /one HTTP/1.1\r\nHost: x\r\nAuthorization: "+testSecret+
			"\r\nContent-Length: 100\r\n\r\n{\"short\":1}", true)
		if status != 400 {
			t.Errorf("a body shorter than announced: %d, want 400", status)
		}
		if recordsByValue(t, c, "events")[`{"short":1}`] != nil {
			t.Error("a truncated body was produced")
		}
	})
	t.Run("Content-Length smaller than the body", func(t *testing.T) {
		status, rest := rawRequest(t, "POST /one HTTP/1.1\r\nHost: x\r\nAuthorization: "+testSecret+
			"\r\nContent-Length: 2\r\n\r\n{}{\"smuggled\":1}\r\n\r\n", false)
		if status != 200 {
			t.Errorf("the announced body: %d, want 200", status)
		}
		if !strings.HasPrefix(rest, "HTTP/1.1 400") {
			t.Errorf("the bytes after the body are a bad request, got %.60q", rest)
		}
		for v := range recordsByValue(t, c, "events") {
			if strings.Contains(v, "smuggled") {
				t.Errorf("bytes past Content-Length were produced: %s", v)
			}
		}
	})
	t.Run("refused unread bodies are not drained", func(t *testing.T) {
		// Answered before the body is read, the connection closes:
		// net/http would otherwise read (up to 256 KiB of) the unwanted
		// body to keep the connection, and then serve the next request.
		next := "POST /one HTTP/1.1\r\nHost: x\r\nAuthorization: " + testSecret + "\r\nContent-Length: 2\r\n\r\n{}"
		for _, tt := range []struct {
			name, path, header string
			body               int
			want               int
		}{
			{"over max_size", "/small", "Authorization: " + testSecret, 2000, 413},
			{"wrong secret", "/one", "Authorization: guess", 1000, 403},
		} {
			status, rest := rawRequest(t, fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\n%s\r\nContent-Length: %d\r\n\r\n%s",
				tt.path, tt.header, tt.body, strings.Repeat("a", tt.body))+next, false)
			if status != tt.want || rest != "" {
				t.Errorf("%s: %d, then %.40q; want %d and the connection closed", tt.name, status, rest, tt.want)
			}
		}
	})
	t.Run("chunked body over max_size", func(t *testing.T) {
		got := do(t, "POST", "/one", ok, onlyBody{strings.NewReader(`"` + strings.Repeat("a", 400000) + `"`)})
		if got.status != 413 {
			t.Errorf("%d, want 413", got.status)
		}
	})
	t.Run("headers over Caddy's limit", func(t *testing.T) {
		// Caddy reads at most 16KiB of headers by default (max_header_size).
		for _, h := range []map[string]string{
			{"Authorization": testSecret, "X-Junk": strings.Repeat("j", 2<<20)},
			{"Authorization": strings.Repeat("s", 100000)},
			{"Authorization": testSecret, strings.Repeat("N", 30000): "v"},
		} {
			if got := do(t, "POST", "/one", h, strings.NewReader(`{}`)); got.status != http.StatusRequestHeaderFieldsTooLarge {
				t.Errorf("%d, want 431 from the HTTP server", got.status)
			}
		}
	})
	t.Run("long Authorization within the limit", func(t *testing.T) {
		got := do(t, "POST", "/one", auth(strings.Repeat("s", 12000)), strings.NewReader(`{}`))
		if got.status != 403 {
			t.Errorf("%d, want 403", got.status)
		}
	})
	t.Run("wrong secrets among good requests", func(t *testing.T) {
		before := len(stored(t, c, "events"))
		var wg sync.WaitGroup
		var mu sync.Mutex
		bad := map[int]int{}
		good := map[int]int{}
		for i := range 300 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i%5 == 0 {
					got := do(t, "POST", "/one", ok, strings.NewReader(fmt.Sprintf(`{"good":%d}`, i)))
					mu.Lock()
					good[got.status]++
					mu.Unlock()
					return
				}
				got := do(t, "POST", "/one", auth(fmt.Sprintf("guess-%d", i)), strings.NewReader(`{"bad":1}`))
				mu.Lock()
				bad[got.status]++
				mu.Unlock()
			}()
		}
		wg.Wait()
		if good[200] != 60 || bad[403] != 240 {
			t.Errorf("good requests %v, bad ones %v; want 60 x 200 and 240 x 403", good, bad)
		}
		if after := len(stored(t, c, "events")); after-before != 60 {
			t.Errorf("%d records produced, want the 60 good ones", after-before)
		}
	})
	unloadChecksLeaks(t)
}

// rawRequest writes raw bytes to the test server and returns the status
// of the first answer and what followed it. With halfClose, it closes its
// sending side after writing, as a client that sent less than announced.
func rawRequest(t *testing.T, raw string, halfClose bool) (int, string) {
	t.Helper()
	a := rawExchange(t, raw, halfClose)
	return a.status, a.rest
}

// rawAnswer is the first answer to raw bytes written to the test server,
// and what came after it on the connection.
type rawAnswer struct {
	answerT
	// connectionClose: the answer said Connection: close (which
	// net/http takes out of the header).
	connectionClose bool
	rest            string
	closed          bool // the server closed the connection within the deadline
}

// rawExchange is rawRequest with the whole answer, and whether the server
// closed the connection after it.
func rawExchange(t *testing.T, raw string, halfClose bool) rawAnswer {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(baseURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	if halfClose {
		conn.(*net.TCPConn).CloseWrite()
	}
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	rest, err := io.ReadAll(br)
	return rawAnswer{answerT{res.StatusCode, res.Header, string(body)}, res.Close, string(rest), err == nil}
}

func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{}`, `[1,2]`, `"\u0000"`, "\"\xff\"", "\xef\xbb\xbf{}", `{"a":1,"a":2}`, `1e400`,
		`{}{}`, `{`, ` `, strings.Repeat("[", 10001) + strings.Repeat("]", 10001), "\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if !validJSON(body) {
			return
		}
		// What we accept, a JSON decoder reads as exactly one value.
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber() // numbers beyond float64 are valid JSON
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("accepted %q, which does not decode: %v", body, err)
		}
		if dec.More() {
			t.Fatalf("accepted %q, which holds more than one value", body)
		}
		if !utf8.Valid(body) {
			t.Fatalf("accepted invalid UTF-8 %q", body)
		}
	})
}
