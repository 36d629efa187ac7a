package queuepublish

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

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
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	rest, _ := io.ReadAll(br)
	return res.StatusCode, string(rest)
}
