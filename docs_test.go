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
// missing from a place of the README: the Caddyfile syntax block, the
// options table, an example other than the syntax block, the JSON
// reference; or from the adapt golden files.
func TestEveryOptionIsDocumentedAndAdapted(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	section := func(heading string) string {
		_, rest, ok := strings.Cut(readme, "\n"+heading+"\n")
		if !ok {
			t.Fatalf("README.md has no %q", heading)
		}
		if end := regexp.MustCompile(`(?m)^#{2,3} `).FindStringIndex(rest); end != nil {
			rest = rest[:end[0]]
		}
		return rest
	}
	blocks := func(text, lang string) []string {
		var found []string
		for _, m := range regexp.MustCompile("(?s)```"+lang+"\n(.*?)```").FindAllStringSubmatch(text, -1) {
			found = append(found, m[1])
		}
		return found
	}
	optionLine := func(name string) *regexp.Regexp {
		return regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(name) + `(\s|$)`)
	}
	caddyfileSection := section("### Caddyfile")
	caddyfileBlocks := blocks(caddyfileSection, "caddyfile")
	syntax, examples := caddyfileBlocks[0], strings.Join(caddyfileBlocks[1:], "\n")
	examples += strings.Join(blocks(section("### In a site"), "caddyfile"), "\n")
	jsonRef := strings.Join(blocks(section("### JSON"), "json"), "\n")
	devSection := section("### Development broker")

	files, _ := filepath.Glob("testdata/caddyfile_adapt/*.txt")
	var golden strings.Builder
	for _, f := range files {
		cf, _ := goldenParts(t, f)
		golden.WriteString(cf)
	}
	check := func(where string, opts []option, caddyfile bool) {
		for _, o := range opts {
			if caddyfile {
				line := optionLine(o.caddyfile)
				if !line.MatchString(syntax) {
					t.Errorf("%s option %q is not in the README's Caddyfile syntax block", where, o.caddyfile)
				}
				if !strings.Contains(caddyfileSection, "| `"+o.caddyfile+"` |") {
					t.Errorf("%s option %q has no row in the README's option tables", where, o.caddyfile)
				}
				if !line.MatchString(examples) {
					t.Errorf("%s option %q has no example in the README", where, o.caddyfile)
				}
				if !line.MatchString(golden.String()) {
					t.Errorf("%s option %q is in no testdata/caddyfile_adapt file", where, o.caddyfile)
				}
			}
			if !strings.Contains(jsonRef, `"`+o.json+`"`) {
				t.Errorf("%s JSON field %q is not in the README's JSON reference", where, o.json)
			}
		}
	}
	check("queue_publish", options(Handler{}, map[string]string{"secrets": "secret", "headers": "header"}), true)
	check("queue_publish tls", options(BrokerTLS{}, nil), true)
	check("queue_publish sasl", options(BrokerSASL{}, nil), false) // positional in the Caddyfile
	for _, o := range options(devbroker.App{}, map[string]string{"topics": "topic"}) {
		if !optionLine(o.caddyfile).MatchString(strings.Join(blocks(devSection, "caddyfile"), "")) ||
			!strings.Contains(devSection, "| `"+o.caddyfile+"` |") || !strings.Contains(devSection, `"`+o.json+`"`) {
			t.Errorf("dev broker option %q / %q is not documented in the README's Development broker section", o.caddyfile, o.json)
		}
		if !optionLine(o.caddyfile).MatchString(golden.String()) {
			t.Errorf("dev broker option %q is in no testdata/caddyfile_adapt file", o.caddyfile)
		}
	}
}
