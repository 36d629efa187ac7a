package queuepublish

import (
	"errors"
	"fmt"
	"strings"

	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// Permissions is what each publisher may do: the topics it may publish
// to, and whether its identity goes with its records.
type Permissions struct {
	// Which identities may publish to which topics. A request is
	// allowed a topic if a rule names its identity (or, for a JWT, one
	// of its claims) and the topic; any other request for that topic is
	// answered 403 {"err":"not allowed to publish to this topic"},
	// before its body is read (but for a signed webhook, whose identity
	// is known only once its body is). With rules, an identity no rule
	// names may publish nowhere, and the holders of an unnamed secret
	// only where a rule's identity pattern matches the empty name ("*").
	// Unset, every authenticated request may publish to every topic the
	// handler serves.
	Allow []Permission `json:"allow,omitempty"`

	// If set, every record gets a header of this name holding the
	// identity that published it (nothing for an unnamed secret): a
	// consumer knows who produced it. A header of the same name
	// (compared without case) that the request carries is dropped, so
	// that a client cannot claim to be someone else.
	IdentityHeader string `json:"identity_header,omitempty"`

	permissions []Permission // nil: everyone may publish everywhere
}

// A Permission allows identities, or the holders of a JWT with a claim,
// to publish to topics.
type Permission struct {
	// The identities allowed: a name, or a pattern ("*" any characters
	// but "/", "?" one, "[a-z]" a class, as path.Match reads it).
	Identity string `json:"identity,omitempty"`

	// Instead of identity: a JWT claim (such as "scp" or "groups") that
	// must hold value, as a string or one string of an array (or of a
	// space-separated "scope").
	Claim string `json:"claim,omitempty"`
	Value string `json:"value,omitempty"`

	// The topics allowed, names or patterns.
	Topics []string `json:"topics,omitempty"`
}

// check checks the rules and the header's name.
func (p *Permissions) check() error {
	for i, rule := range p.Allow {
		if err := rule.check(); err != nil {
			return fmt.Errorf("allow %d: %v", i+1, err)
		}
	}
	if p.IdentityHeader != "" && strings.TrimSpace(p.IdentityHeader) != p.IdentityHeader {
		return errors.New("identity_header: a header name without spaces around it")
	}
	return nil
}

func (rule Permission) check() error {
	switch {
	case (rule.Identity == "") == (rule.Claim == ""):
		return errors.New("names an identity or a claim, and not both")
	case rule.Claim != "" && rule.Value == "":
		return errors.New("a claim needs the value it must hold")
	case rule.Identity != "" && rule.Value != "":
		return errors.New("value: goes with a claim")
	case len(rule.Topics) == 0:
		return errors.New("lists no topic")
	}
	if rule.Identity != "" {
		if err := pattern(rule.Identity).check(); err != nil {
			return err
		}
	}
	for _, t := range rule.Topics {
		if err := pattern(t).check(); err != nil {
			return err
		}
		if pattern(t).literal() {
			if err := validTopic(t); err != nil {
				return err
			}
		}
	}
	return nil
}

// provision keeps the rules.
func (p *Permissions) provision(*provisioning) error {
	p.permissions = p.Allow
	return nil
}

func (p *Permissions) cleanup() error { return nil }

// allows reports whether id may publish to topic.
func (p *Permissions) allows(id *identity, topic string) bool {
	for _, rule := range p.permissions {
		if rule.names(id) && rule.allows(topic) {
			return true
		}
	}
	return false
}

// names reports whether the rule is about id.
func (rule *Permission) names(id *identity) bool {
	if rule.Claim == "" {
		return pattern(rule.Identity).matches(id.name)
	}
	if id.claims == nil {
		return false
	}
	for _, v := range id.claims.values(rule.Claim) {
		if v == rule.Value {
			return true
		}
	}
	return false
}

func (rule *Permission) allows(topic string) bool {
	for _, t := range rule.Topics {
		if pattern(t).matches(topic) {
			return true
		}
	}
	return false
}

// permit refuses a request whose publisher may not publish to topic.
func (h *Handler) permit(x *exchange, topic string) *rejection {
	if h.permissions == nil || h.allows(&x.req.identity, topic) {
		return nil
	}
	return rejectedPermission
}

// stampIdentity gives each record the identity header, in place of any
// the request set.
func (p *Permissions) stampIdentity(id *identity, recs []*record) {
	if p.IdentityHeader == "" {
		return
	}
	for _, rec := range recs {
		rec.Headers = dropHeader(rec.Headers, p.IdentityHeader)
		if id.name != "" {
			rec.Headers = append(rec.Headers, producer.Header{Key: p.IdentityHeader, Value: []byte(id.name)})
		}
	}
}

// dropHeader removes the headers named name, compared without case.
func dropHeader(headers []producer.Header, name string) []producer.Header {
	kept := headers[:0]
	for _, h := range headers {
		if !strings.EqualFold(h.Key, name) {
			kept = append(kept, h)
		}
	}
	return kept
}
