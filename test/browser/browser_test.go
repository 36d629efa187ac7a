//go:build browser

// Package browser tests publishing from a page in a real headless
// Chromium: the page of examples/browser/, served by the Caddy of
// examples/browser.Caddyfile with the module and the development broker,
// sends a beacon and a CORS fetch with a token instead of the secret.
//
//	go test -tags browser ./test/browser
//
// Chromium is /usr/bin/chromium (Debian's chromium package) unless
// CHROMIUM names another.
package browser

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/chromedp/chromedp"
	"github.com/twmb/franz-go/pkg/kgo"

	queuepublish "github.com/queuepublish/caddy-queue-publish"
	_ "github.com/queuepublish/caddy-queue-publish/devbroker"
)

const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestBeaconAndFetchFromAPage(t *testing.T) {
	secret := make([]byte, 32)
	rand.Read(secret)
	t.Setenv("QUEUE_AUTH_SECRET", hex.EncodeToString(secret))
	startExample(t)

	token := queuepublish.MintToken(hex.EncodeToString(secret), "my-queue", time.Now().Add(time.Minute))
	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate("http://localhost:8080/?token="+token)); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("answer").textContent !== "sending..."`,
		chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatal(err)
	}
	answer, err := chromedp.Run(ctx, chromedp.Text("#answer"))
	if err != nil {
		t.Fatal(err)
	}
	// The page read the answer: the CORS headers let it.
	if !strings.HasPrefix(answer, `200 {"success":true,"partition":0,"offset":`) {
		t.Errorf("the page's fetch was answered %q, want a 200 it could read", answer)
	}

	records := readRecords(t, 2)
	byValue := map[string]*kgo.Record{}
	for _, r := range records {
		byValue[string(r.Value)] = r
	}
	if _, ok := byValue[`{"sent":"beacon","page":"/"}`]; !ok {
		t.Errorf("no record of the beacon in %q", values(records))
	}
	fetched, ok := byValue[`{"sent":"fetch","beacon_queued":true}`]
	if !ok {
		t.Fatalf("no record of the fetch in %q", values(records))
	}
	var stored string
	for _, h := range fetched.Headers {
		if h.Key == "traceparent" {
			stored = string(h.Value)
		}
	}
	if stored != traceparent {
		t.Errorf("the fetch's record has traceparent %q, want the page's %q", stored, traceparent)
	}
}

// startExample runs examples/browser.Caddyfile in this process, from the
// repository's root so that its file_server finds the page.
func startExample(t *testing.T) {
	t.Helper()
	wd, _ := os.Getwd()
	root := filepath.Join(wd, "..", "..")
	if err := os.Chdir(root); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chdir(wd) })
	body, err := os.ReadFile("examples/browser.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { caddy.Stop() })
}

// browser is a headless Chromium, started with the flags that keep it
// off the network it does not need.
func browser(t *testing.T) context.Context {
	t.Helper()
	exec := os.Getenv("CHROMIUM")
	if exec == "" {
		exec = "/usr/bin/chromium"
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exec),
		chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	return ctx
}

// readRecords reads the topic from the start until it holds n records.
func readRecords(t *testing.T, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers("127.0.0.1:9092"), kgo.ConsumeTopics("my-queue"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var got []*kgo.Record
	for len(got) < n {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("the topic holds %d records, want %d: %q", len(got), n, values(got))
		}
		got = append(got, fetches.Records()...)
	}
	return got
}

func values(recs []*kgo.Record) []string {
	var v []string
	for _, r := range recs {
		v = append(v, string(r.Value))
	}
	return v
}
