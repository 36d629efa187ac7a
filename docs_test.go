package queuepublish

import (
	"encoding/json"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
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
	for _, f := range reflect.VisibleFields(typ) {
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

// configurationPage is the configuration reference, which
// TestEveryOptionIsDocumentedAndAdapted holds to the config structs.
const configurationPage = "docs/configuration.md"

// heading is a Markdown heading: its level (the number of '#') and its
// text; at is where its line starts, end where the next line starts.
type heading struct {
	level   int
	text    string
	at, end int
}

var atxHeading = regexp.MustCompile(`^(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$`)

// headings lists the headings of a Markdown text, leaving out the lines of
// fenced code blocks (where a line such as "# a comment" is code).
func headings(text string) []heading {
	var found []heading
	fence := ""
	for at := 0; at < len(text); {
		end := len(text)
		if i := strings.IndexByte(text[at:], '\n'); i >= 0 {
			end = at + i + 1
		}
		line := strings.TrimRight(text[at:end], "\r\n")
		trimmed := strings.TrimLeft(line, " ")
		switch {
		case fence != "":
			if strings.HasPrefix(trimmed, fence) && strings.Trim(trimmed, fence[:1]) == "" {
				fence = ""
			}
		case strings.HasPrefix(trimmed, "```"), strings.HasPrefix(trimmed, "~~~"):
			fence = trimmed[:3]
		default:
			if m := atxHeading.FindStringSubmatch(line); m != nil {
				found = append(found, heading{len(m[1]), m[2], at, end})
			}
		}
		at = end
	}
	return found
}

// mdSection is the text under the heading "## title" (level 2 here) of
// page, up to the next heading of the same level or higher; its
// subsections belong to it.
func mdSection(t *testing.T, page, text string, level int, title string) string {
	t.Helper()
	hs := headings(text)
	for i, h := range hs {
		if h.level != level || h.text != title {
			continue
		}
		end := len(text)
		for _, next := range hs[i+1:] {
			if next.level <= level {
				end = next.at
				break
			}
		}
		return text[h.end:end]
	}
	t.Fatalf("%s has no %s %s", page, strings.Repeat("#", level), title)
	return ""
}

// TestEveryOptionIsDocumentedAndAdapted fails when a config field is
// missing from a place of docs/configuration.md: the Caddyfile syntax
// block, the option tables, an example other than the syntax block, the
// JSON reference, the development broker's section; or from the adapt
// golden files.
func TestEveryOptionIsDocumentedAndAdapted(t *testing.T) {
	b, err := os.ReadFile(configurationPage)
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	section := func(title string) string {
		return mdSection(t, configurationPage, page, 2, title)
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
	caddyfileSection := section("Caddyfile")
	caddyfileBlocks := blocks(caddyfileSection, "caddyfile")
	if len(caddyfileBlocks) < 2 {
		t.Fatalf("%s: the Caddyfile section wants the syntax block and examples, has %d caddyfile blocks", configurationPage, len(caddyfileBlocks))
	}
	syntax, examples := caddyfileBlocks[0], strings.Join(caddyfileBlocks[1:], "\n")
	examples += strings.Join(blocks(section("In a site"), "caddyfile"), "\n")
	jsonRef := strings.Join(blocks(section("JSON"), "json"), "\n")
	devSection := section("Development broker")

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
					t.Errorf("%s option %q is not in the Caddyfile syntax block of %s", where, o.caddyfile, configurationPage)
				}
				if !strings.Contains(caddyfileSection, "| `"+o.caddyfile+"` |") {
					t.Errorf("%s option %q has no row in the option tables of %s", where, o.caddyfile, configurationPage)
				}
				if !line.MatchString(examples) {
					t.Errorf("%s option %q has no example in %s", where, o.caddyfile, configurationPage)
				}
				if !line.MatchString(golden.String()) {
					t.Errorf("%s option %q is in no testdata/caddyfile_adapt file", where, o.caddyfile)
				}
			}
			if !strings.Contains(jsonRef, `"`+o.json+`"`) {
				t.Errorf("%s JSON field %q is not in the JSON reference of %s", where, o.json, configurationPage)
			}
		}
	}
	check("queue_publish", options(Handler{}, map[string]string{"secrets": "secret", "named_secrets": "secret", "headers": "header",
		"idempotency_redis": "idempotency_store", "idempotency_redis_tls": "idempotency_store",
		"quotas": "quota", "quota_redis": "quota_store", "quota_redis_tls": "quota_store"}), true)
	check("queue_publish jwt", options(JWTAuth{}, map[string]string{"issuer": "jwt", "audiences": "audience"}), true)
	check("queue_publish allow", options(Permission{}, map[string]string{"identity": "allow", "topics": "allow", "claim": "allow_claim", "value": "allow_claim"}), true)
	check("queue_publish quota", options(Quota{}, map[string]string{"identity": "quota", "records_per_second": "records", "records_burst": "records",
		"bytes_per_second": "bytes", "bytes_burst": "bytes"}), true)
	check("queue_publish tls", options(BrokerTLS{}, nil), true)
	check("queue_publish sasl", options(BrokerSASL{}, nil), false) // plain and SCRAM's are positional in the Caddyfile
	var oauthbearer []option
	for _, o := range options(BrokerSASL{}, nil) {
		if !slices.Contains([]string{"mechanism", "username", "password"}, o.json) {
			oauthbearer = append(oauthbearer, o)
		}
	}
	check("queue_publish sasl oauthbearer", oauthbearer, true)
	for _, o := range options(devbroker.App{}, map[string]string{"topics": "topic"}) {
		if !optionLine(o.caddyfile).MatchString(strings.Join(blocks(devSection, "caddyfile"), "")) ||
			!strings.Contains(devSection, "| `"+o.caddyfile+"` |") || !strings.Contains(devSection, `"`+o.json+`"`) {
			t.Errorf("dev broker option %q / %q is not documented in the Development broker section of %s", o.caddyfile, o.json, configurationPage)
		}
		if !optionLine(o.caddyfile).MatchString(golden.String()) {
			t.Errorf("dev broker option %q is in no testdata/caddyfile_adapt file", o.caddyfile)
		}
	}
}

// docPages are the Markdown pages whose links TestDocsLinksResolve checks.
func docPages(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob("docs/*.md")
	if err != nil || len(pages) == 0 {
		t.Fatalf("no docs/*.md: %v", err)
	}
	return append([]string{"README.md", "CONTRIBUTING.md"}, pages...)
}

var (
	fencedBlock = regexp.MustCompile("(?ms)^[ ]{0,3}(```|~~~).*?^[ ]{0,3}(```|~~~)[ \t]*$")
	codeSpan    = regexp.MustCompile("`[^`]*`")
	mdLink      = regexp.MustCompile(`\]\(\s*<?([^()\s<>]+)>?(?:\s+"[^"]*")?\s*\)`)
	urlScheme   = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
	inlineLink  = regexp.MustCompile(`!?\[([^\]]*)\]\([^)]*\)`)
)

// links lists the link targets of a Markdown text, outside code blocks and
// code spans (where "[x](y)" is code, not a link).
func links(text string) []string {
	text = fencedBlock.ReplaceAllString(text, "")
	text = codeSpan.ReplaceAllString(text, "")
	var found []string
	for _, m := range mdLink.FindAllStringSubmatch(text, -1) {
		found = append(found, m[1])
	}
	return found
}

// anchor is the anchor GitHub gives a heading: the heading's text (of a
// link, its text) lowercased, spaces made '-', punctuation other than '-'
// and '_' removed.
func anchor(title string) string {
	title = inlineLink.ReplaceAllString(title, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(title) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-', r == '_', unicode.IsLetter(r), unicode.IsDigit(r), unicode.IsMark(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// anchors lists the anchors of a Markdown text's headings; a repeated one
// gets "-1", "-2"... as on GitHub.
func anchors(text string) map[string]bool {
	found := map[string]bool{}
	seen := map[string]int{}
	for _, h := range headings(text) {
		a := anchor(h.text)
		if n := seen[a]; n > 0 {
			seen[a]++
			a = a + "-" + strconv.Itoa(n)
		} else {
			seen[a] = 1
		}
		found[a] = true
	}
	return found
}

// TestDocsAnchor holds anchor and anchors to GitHub's rules, on which
// TestDocsLinksResolve relies.
func TestDocsAnchor(t *testing.T) {
	for title, want := range map[string]string{
		"How it works, and how it scales":       "how-it-works-and-how-it-scales",
		"Tested against Apache Kafka":           "tested-against-apache-kafka",
		"The `queue_publish` directive":         "the-queue_publish-directive",
		"HTTP answers: 503 and 504":             "http-answers-503-and-504",
		"[Linked](https://example.com) heading": "linked-heading",
	} {
		if got := anchor(title); got != want {
			t.Errorf("anchor(%q) = %q, want %q", title, got, want)
		}
	}
	got := anchors("# A\n\n```sh\n# not a heading\n```\n\n## A\n### B #\n")
	if want := map[string]bool{"a": true, "a-1": true, "b": true}; !reflect.DeepEqual(got, want) {
		t.Errorf("anchors = %v, want %v", got, want)
	}
}

// TestDocsLinksResolve fails when a relative link of README.md,
// CONTRIBUTING.md or docs/*.md names a file that does not exist, or a
// "#anchor" that no heading of the Markdown page it names has.
func TestDocsLinksResolve(t *testing.T) {
	pageAnchors := map[string]map[string]bool{}
	anchorsOf := func(file string) map[string]bool {
		if a, ok := pageAnchors[file]; ok {
			return a
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		pageAnchors[file] = anchors(string(b))
		return pageAnchors[file]
	}
	for _, page := range docPages(t) {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, target := range links(string(b)) {
			if urlScheme.MatchString(target) || strings.HasPrefix(target, "//") {
				continue // not a file of the repository
			}
			path, frag, _ := strings.Cut(target, "#")
			file := page
			if path != "" {
				p, err := url.PathUnescape(path)
				if err != nil {
					t.Errorf("%s: link %q: %v", page, target, err)
					continue
				}
				if strings.HasPrefix(p, "/") {
					t.Errorf("%s: link %q: want a path relative to the page", page, target)
					continue
				}
				file = filepath.Join(filepath.Dir(page), filepath.FromSlash(p))
				if file == ".." || strings.HasPrefix(file, ".."+string(filepath.Separator)) {
					t.Errorf("%s: link %q leaves the repository", page, target)
					continue
				}
			}
			info, err := os.Stat(file)
			if err != nil {
				t.Errorf("%s: link %q: no such file %s", page, target, file)
				continue
			}
			if frag == "" || info.IsDir() || !strings.HasSuffix(file, ".md") {
				continue
			}
			if !anchorsOf(file)[frag] {
				t.Errorf("%s: link %q: %s has no heading with the anchor #%s", page, target, file, frag)
			}
		}
	}
}

// TestDocsReadmeLinksEveryPage fails when a page of docs/, or
// CONTRIBUTING.md, is not linked from the README.
func TestDocsReadmeLinksEveryPage(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	linked := map[string]bool{}
	for _, target := range links(string(b)) {
		path, _, _ := strings.Cut(target, "#")
		linked[filepath.Clean(filepath.FromSlash(path))] = true
	}
	for _, page := range docPages(t)[1:] {
		if !linked[page] {
			t.Errorf("README.md links no %s", page)
		}
	}
}

// TestDocsReadmeInlinesTheExamples fails when the Caddyfiles the README
// shows differ from the example files they are.
func TestDocsReadmeInlinesTheExamples(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"examples/Caddyfile", "examples/production.Caddyfile"} {
		example, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "```caddyfile\n"+string(example)+"```\n") {
			t.Errorf("README.md does not show %s as it is", f)
		}
	}
}

// TestExampleQuickStartListensOnLoopback fails when the quick start's
// Caddyfile listens on an address reachable from other machines: it is a
// development setup. (The development broker binds 127.0.0.1 itself.)
func TestExampleQuickStartListensOnLoopback(t *testing.T) {
	cf, err := os.ReadFile("examples/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(cf, map[string]any{"filename": "examples/Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string `json:"listen"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Apps.HTTP.Servers) == 0 {
		t.Fatal("examples/Caddyfile has no server")
	}
	for name, srv := range cfg.Apps.HTTP.Servers {
		if len(srv.Listen) == 0 {
			t.Errorf("server %s listens on Caddy's default, every interface", name)
		}
		for _, l := range srv.Listen {
			addr, err := caddy.ParseNetworkAddress(l)
			if err != nil {
				t.Fatal(err)
			}
			if ip := net.ParseIP(addr.Host); ip == nil || !ip.IsLoopback() {
				t.Errorf("server %s listens on %q, not on a loopback address", name, l)
			}
		}
	}
}

// xcaddyCommand is an xcaddy build command, in a code span or on a line of
// a code block (with its continuation lines).
var xcaddyCommand = regexp.MustCompile("(?m)`[^`\n]*xcaddy build[^`]*`|^[^`\n]*xcaddy build(?:[^\n]*\\\\\n)*[^\n]*$")

// TestDocsXcaddyBuildsFromTheWorkingTree fails when a page tells to build
// Caddy with this module by its name: it is not published, so xcaddy must
// take it from the working tree, and the development broker (a package of
// it, which the module proxy refuses) only with the proxy off.
func TestDocsXcaddyBuildsFromTheWorkingTree(t *testing.T) {
	const module = "github.com/queuepublish/caddy-queue-publish"
	found := 0
	for _, page := range docPages(t) {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, cmd := range xcaddyCommand.FindAllString(string(b), -1) {
			if !strings.Contains(cmd, module) {
				continue
			}
			found++
			if !strings.Contains(cmd, "--with "+module+"@v0.0.0=.") {
				t.Errorf("%s: %s\ndoes not take the module from the working tree (--with %s@v0.0.0=.)", page, cmd, module)
			}
			if strings.Contains(cmd, module+"/devbroker") && !strings.Contains(cmd, "GOPROXY=off") {
				t.Errorf("%s: %s\nadds the development broker with the module proxy on, which refuses it", page, cmd)
			}
		}
	}
	if found == 0 {
		t.Fatal("no page shows how to build Caddy with the module")
	}
}
