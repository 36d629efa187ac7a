package queuepublish

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// What a page of a listed origin may send and read, the same for every
// origin. Each answer gets fresh header values: Caddy's deferred header
// replacements write into them in place.
const (
	// The request headers a page may send, besides those that key and
	// header read ({http.request.header.*}).
	corsAllowHeaders  = "Authorization, Content-Type, Idempotency-Key, Traceparent, Tracestate"
	corsExposeHeaders = "Retry-After, Idempotent-Replayed"
	corsMaxAge        = "600" // seconds a browser may keep a preflight's answer
)

// CrossOrigin is which browser pages may publish: a page of a listed
// origin may send requests and read the answers.
type CrossOrigin struct {
	// The origins (scheme://host[:port]) whose pages may send requests
	// from a browser and read the answers: a CORS preflight from one of
	// them is answered 204, one from another origin 403, and the answers
	// to a listed origin's requests let its page read them. Empty: no
	// CORS, and a preflight is answered 405 as any method but POST.
	CORS []string `json:"cors,omitempty"`

	// allowHeaders: the request headers a page of a cors origin may send.
	allowHeaders string
}

// check checks the origins.
func (c *CrossOrigin) check() error {
	for _, origin := range c.CORS {
		if err := validOrigin(origin); err != nil {
			return fmt.Errorf("cors: %v", err)
		}
	}
	return nil
}

// provision lists the request headers a page may send: the fixed ones,
// and those that the key and headers of a record read.
func (c *CrossOrigin) provision(p *provisioning) error {
	c.allowHeaders = corsHeaders(p.h.Key, p.h.Headers)
	return nil
}

func (c *CrossOrigin) cleanup() error { return nil }

// corsOrigin is the request's Origin if cors lists it, else "".
func (c *CrossOrigin) corsOrigin(req *request) string {
	origin := req.origin
	if origin == "" || !slices.Contains(c.CORS, origin) {
		return ""
	}
	return origin
}

// allowOrigin lets a page of a listed origin read the answer. Another
// origin's page gets no CORS header, so its browser hides the answer;
// the request is still served (a browser sends a simple POST without
// asking), and its secret decides.
func (c *CrossOrigin) allowOrigin(x *exchange) {
	w := x.w
	if len(c.CORS) == 0 {
		return
	}
	// What another handler varies on stays; the values are a fresh slice.
	if vary := w.Header()["Vary"]; !slices.Contains(vary, "Origin") {
		w.Header()["Vary"] = append(vary[:len(vary):len(vary)], "Origin")
	}
	if origin := c.corsOrigin(&x.req); origin != "" {
		w.Header()["Access-Control-Allow-Origin"] = []string{origin}
		w.Header()["Access-Control-Expose-Headers"] = []string{corsExposeHeaders}
	}
}

// isPreflight reports whether the request is a browser's CORS preflight,
// which a handler with cors answers instead of refusing its method.
func (c *CrossOrigin) isPreflight(x *exchange) bool {
	return len(c.CORS) > 0 && x.req.method == http.MethodOptions && x.req.preflight != ""
}

// preflight answers a CORS preflight: 204 with what a listed origin may
// send, 403 without any CORS header for another origin or a method other
// than POST. The origin is named, never "*".
func (c *CrossOrigin) preflight(x *exchange) error {
	if c.corsOrigin(&x.req) == "" || x.req.preflight != http.MethodPost {
		x.w.Header().Del("Access-Control-Allow-Origin")
		x.w.Header().Del("Access-Control-Expose-Headers")
		return x.reject(rejectedOrigin)
	}
	header := x.w.Header()
	header["Access-Control-Allow-Methods"] = []string{http.MethodPost}
	header["Access-Control-Allow-Headers"] = []string{c.allowHeaders}
	header["Access-Control-Max-Age"] = []string{corsMaxAge}
	x.status = http.StatusNoContent
	x.w.WriteHeader(http.StatusNoContent)
	return nil
}

// validOrigin checks that an entry of cors is an origin as a browser
// sends it in Origin, which is compared byte for byte: scheme://host[:port]
// in lower case and ASCII (an international name as punycode), without
// the scheme's default port, a path or a wildcard.
func validOrigin(origin string) error {
	u, err := url.Parse(origin)
	bad := err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.Scheme+"://"+u.Host != origin || strings.ContainsAny(origin, "*") ||
		strings.ToLower(origin) != origin || strings.HasSuffix(u.Host, ":") ||
		u.Scheme == "http" && u.Port() == "80" || u.Scheme == "https" && u.Port() == "443"
	for _, c := range origin {
		bad = bad || c > 0x7e
	}
	if bad {
		return fmt.Errorf("%q is not an origin as a browser sends it: scheme://host[:port], in lower case, without the default port", origin)
	}
	return nil
}

// requestHeaderPlaceholder finds the request headers that key and header
// read.
var requestHeaderPlaceholder = regexp.MustCompile(`\{http\.request\.header\.([A-Za-z0-9_-]+)\}`)

// corsHeaders is what a page may send: the fixed headers and those that
// key and header take values from.
func corsHeaders(key string, headers map[string]string) string {
	list := corsAllowHeaders
	values := append([]string{key}, slices.Sorted(maps.Values(headers))...)
	seen := map[string]bool{}
	for _, v := range values {
		for _, m := range requestHeaderPlaceholder.FindAllStringSubmatch(v, -1) {
			name := http.CanonicalHeaderKey(m[1])
			if !seen[name] && !strings.Contains(", "+list+",", ", "+name+",") {
				seen[name] = true
				list += ", " + name
			}
		}
	}
	return list
}
