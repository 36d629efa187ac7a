package bearer

import (
	"strings"
	"time"
)

// Token is a verified token's claims. The same Token is returned for every
// request that carries the same token, to any goroutine: it must not be
// changed.
type Token struct {
	Subject  string    // sub; for Hydra's client credentials, the client's ID
	Issuer   string    // iss
	Audience []string  // aud
	Expiry   time.Time // exp
	// Claims holds every claim as encoding/json decodes it into an any:
	// numbers are float64, arrays []any, objects map[string]any.
	Claims map[string]any
}

// String returns the claim name if it is a JSON string.
func (t *Token) String(name string) (string, bool) {
	s, ok := t.Claims[name].(string)
	return s, ok
}

// Strings returns the claim name if it is a JSON string, as one value, or
// an array of strings; false for anything else, an array with a value
// that is not a string included.
func (t *Token) Strings(name string) ([]string, bool) {
	return t.list(name, false)
}

// Scopes returns the claim name as a list of scopes: an array of strings,
// as Hydra's scp, or one string of scopes separated by spaces, as RFC
// 9068's scope; false for anything else.
func (t *Token) Scopes(name string) ([]string, bool) {
	return t.list(name, true)
}

func (t *Token) list(name string, split bool) ([]string, bool) {
	switch c := t.Claims[name].(type) {
	case string:
		if split {
			return strings.Fields(c), true
		}
		return []string{c}, true
	case []any:
		l := make([]string, len(c))
		for i, e := range c {
			s, ok := e.(string)
			if !ok {
				return nil, false
			}
			l[i] = s
		}
		return l, true
	}
	return nil, false
}
