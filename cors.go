package queuepublish

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// What a page of a listed origin may send and read, the same for every
// origin. Each answer gets fresh header values: Caddy's deferred header
// replacements write into them in place.
const (
	corsAllowHeaders  = "Authorization, Content-Type, Idempotency-Key, Traceparent, Tracestate"
	corsExposeHeaders = "Retry-After, Idempotent-Replayed"
	corsMaxAge        = "600" // seconds a browser may keep a preflight's answer
)

// corsOrigin is the request's Origin if cors lists it, else "".
func (h *Handler) corsOrigin(r *http.Request) string {
	origin := r.Header.Get("Origin")
	if origin == "" || !slices.Contains(h.CORS, origin) {
		return ""
	}
	return origin
}

// allowOrigin lets a page of a listed origin read the answer. Another
// origin's page gets no CORS header, so its browser hides the answer;
// the request is still served (a browser sends a simple POST without
// asking), and its secret decides.
func (h *Handler) allowOrigin(w http.ResponseWriter, r *http.Request) {
	if len(h.CORS) == 0 {
		return
	}
	w.Header()["Vary"] = []string{"Origin"}
	if origin := h.corsOrigin(r); origin != "" {
		w.Header()["Access-Control-Allow-Origin"] = []string{origin}
		w.Header()["Access-Control-Expose-Headers"] = []string{corsExposeHeaders}
	}
}

// isPreflight reports whether the request is a browser's CORS preflight,
// which a handler with cors answers instead of refusing its method.
func (h *Handler) isPreflight(r *http.Request) bool {
	return len(h.CORS) > 0 && r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
}

// preflight answers a CORS preflight: 204 with what a listed origin may
// send, 403 without any CORS header for another origin or a method other
// than POST. The origin is named, never "*".
func (h *Handler) preflight(x *exchange, r *http.Request) error {
	if h.corsOrigin(r) == "" || r.Header.Get("Access-Control-Request-Method") != http.MethodPost {
		x.w.Header().Del("Access-Control-Allow-Origin")
		x.w.Header().Del("Access-Control-Expose-Headers")
		return x.refuse(refusedOrigin)
	}
	header := x.w.Header()
	header["Access-Control-Allow-Methods"] = []string{http.MethodPost}
	header["Access-Control-Allow-Headers"] = []string{corsAllowHeaders}
	header["Access-Control-Max-Age"] = []string{corsMaxAge}
	x.status = http.StatusNoContent
	x.w.WriteHeader(http.StatusNoContent)
	return nil
}

// validOrigin checks that an entry of cors is an origin as a browser
// sends it: scheme://host[:port], no path, no wildcard.
func validOrigin(origin string) error {
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil || strings.Contains(origin, "*") ||
		u.Scheme+"://"+u.Host != origin {
		return fmt.Errorf("%q is not an origin: scheme://host[:port], as a browser sends it in Origin", origin)
	}
	return nil
}
