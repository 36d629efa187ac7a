package queuepublish

import (
	"crypto/x509"
	"errors"
	"fmt"
	"path"
)

// An identity is who a request was authenticated as: the scheme of its
// credentials and the name they carry. The name is what permissions,
// quotas, the identity header, the metrics and Caddy's access log know a
// publisher by: a named secret's name, a JWT's claim, a client
// certificate's name, or the user an earlier Caddy handler authenticated.
// A secret without a name gives no name: its holders are anonymous.
type identity struct {
	scheme string // one of the scheme* constants
	secret int    // which secret, from 1; 0 for other schemes, or before the body is verified
	name   string
	// claims are a JWT's claims, for permissions by claim; nil for other
	// schemes.
	claims claims
}

// Schemes of identity.
const (
	schemeSecret      = "secret"
	schemeToken       = "token" // a page's token, minted with a secret
	schemeSignature   = "signature"
	schemeJWT         = "jwt"
	schemeCertificate = "certificate"
	schemeCaddy       = "caddy" // an earlier Caddy handler authenticated the user
)

// claims are what a verified token says of its holder.
type claims interface {
	// values is a claim's value as strings: a string, each string of an
	// array, or a space-separated list for the scope claims.
	values(name string) []string
}

// userIDPlaceholder is the placeholder Caddy's authentication handlers
// set to the user they authenticated, and that its access log reports as
// user_id: the handler sets it to the identity it authenticated, so that
// the access log shows who published and key, header and topic can name
// the publisher.
const userIDPlaceholder = "http.auth.user.id"

// named records the identity's name as Caddy's authenticated user.
func (x *exchange) named() {
	if name := x.req.identity.name; name != "" && x.req.repl != nil {
		x.req.repl.Set(userIDPlaceholder, name)
	}
}

// The names a client certificate gives, for client_certificate.
const (
	certCommonName = "cn"    // the subject's common name
	certDNS        = "dns"   // the first DNS name of the subject alternative names
	certEmail      = "email" // the first email address of the SANs
	certURI        = "uri"   // the first URI of the SANs (a SPIFFE ID, for one)
)

// certificateName is the name of kind that a verified client certificate
// carries; "" if it has none.
func certificateName(cert *x509.Certificate, kind string) string {
	switch kind {
	case certCommonName:
		return cert.Subject.CommonName
	case certDNS:
		if len(cert.DNSNames) > 0 {
			return cert.DNSNames[0]
		}
	case certEmail:
		if len(cert.EmailAddresses) > 0 {
			return cert.EmailAddresses[0]
		}
	case certURI:
		if len(cert.URIs) > 0 {
			return cert.URIs[0].String()
		}
	}
	return ""
}

// A pattern names identities or topics: a name, or a shell pattern as
// path.Match reads it ("*" any characters but "/", "?" one, "[a-z]" a
// class), so that "team-*" names every team and, in a SPIFFE ID,
// "spiffe://example.org/ns/*/sa/publisher" every namespace.
type pattern string

// check reports a pattern path.Match cannot read.
func (p pattern) check() error {
	if _, err := path.Match(string(p), ""); err != nil {
		return fmt.Errorf("%q is not a valid pattern", string(p))
	}
	return nil
}

// matches reports whether name matches; a pattern that checked cannot
// fail.
func (p pattern) matches(name string) bool {
	ok, _ := path.Match(string(p), name)
	return ok
}

// literal reports whether the pattern names one identity exactly.
func (p pattern) literal() bool {
	for _, c := range p {
		switch c {
		case '*', '?', '[', '\\':
			return false
		}
	}
	return true
}

var errNoIdentityKind = errors.New("secret: required, or another way to authenticate (jwt, client_certificate, caddy_auth)")
