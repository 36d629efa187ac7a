package queuepublish

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/queuepublish/caddy-queue-publish/devbroker"
)

// TestCaddyfileAdaptGolden adapts each file of testdata/caddyfile_adapt
// (a Caddyfile, a line of dashes, the JSON it must become), as Caddy's own
// caddyfile_adapt tests do.
func TestCaddyfileAdaptGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			caddyfile, json := goldenParts(t, f)
			caddytest.AssertAdapt(t, caddyfile, "caddyfile", json)
		})
	}
}

func goldenParts(t *testing.T, file string) (caddyfile, json string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(string(b), "----------")
	if len(parts) != 2 {
		t.Fatalf("%s: want a Caddyfile and JSON separated by a line of dashes", file)
	}
	return strings.TrimSpace(parts[0]) + "\n", strings.TrimSpace(parts[1])
}

// option is a config field: its JSON name and its Caddyfile name.
type option struct{ json, caddyfile string }

// options lists the JSON fields of a config struct; caddyfileNames maps
// the JSON names whose Caddyfile name differs.
func options(v any, caddyfileNames map[string]string) []option {
	var opts []option
	typ := reflect.TypeOf(v)
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		cf := name
		if n, ok := caddyfileNames[name]; ok {
			cf = n
		}
		opts = append(opts, option{name, cf})
	}
	return opts
}

// TestEveryOptionIsDocumentedAndAdapted fails when a config field is
// missing from the README (as a Caddyfile option and in the JSON
// reference) or from the adapt golden files.
func TestEveryOptionIsDocumentedAndAdapted(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("testdata/caddyfile_adapt/*.txt")
	var golden strings.Builder
	for _, f := range files {
		cf, _ := goldenParts(t, f)
		golden.WriteString(cf)
	}
	inGolden := func(name string) bool {
		return regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(name) + `(\s|$)`).MatchString(golden.String())
	}
	check := func(where string, opts []option, caddyfile bool) {
		for _, o := range opts {
			if caddyfile && !strings.Contains(string(readme), "`"+o.caddyfile+"`") {
				t.Errorf("%s option %q is not documented in README.md", where, o.caddyfile)
			}
			if !strings.Contains(string(readme), `"`+o.json+`"`) {
				t.Errorf("%s JSON field %q is not in README.md's JSON reference", where, o.json)
			}
			if caddyfile && !inGolden(o.caddyfile) {
				t.Errorf("%s option %q is in no testdata/caddyfile_adapt file", where, o.caddyfile)
			}
		}
	}
	check("queue_publish", options(Handler{}, map[string]string{"secrets": "secret", "headers": "header"}), true)
	check("queue_publish tls", options(BrokerTLS{}, nil), true)
	check("queue_publish sasl", options(BrokerSASL{}, nil), false) // positional in the Caddyfile
	check("queue_publish_dev_broker", options(devbroker.App{}, map[string]string{"topics": "topic"}), true)
}
