package queuepublish

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// The settings with a closed set of values. Each table is the one list of
// its values: the Caddyfile parser and Validate both check against it,
// and its error names them in this order.
var (
	modes = choices[mode]{{modeBody, bodyMode{}}, {modeRecords, recordsMode{}}, {modeConfluent, confluentMode{}}}

	deliveries = choices[string]{{deliverySync, deliverySync}, {deliveryAsync, deliveryAsync}}

	acksLevels = choices[producer.Acks]{
		{"all", producer.AcksAll},
		{"leader", producer.AcksLeader},
		{"none", producer.AcksNone},
	}

	compressions = choices[producer.Compression]{
		{"none", producer.CompressionNone},
		{"gzip", producer.CompressionGzip},
		{"snappy", producer.CompressionSnappy},
		{"lz4", producer.CompressionLZ4},
		{"zstd", producer.CompressionZstd},
	}

	// An option that is on or off, as the Caddyfile says it.
	switches = choices[bool]{{"on", true}, {"off", false}}

	// What a request with an Idempotency-Key gets when the shared store
	// cannot be reached.
	storeErrorChoices = choices[string]{{storeErrorReject, storeErrorReject}, {storeErrorProduce, storeErrorProduce}}

	saslMechanisms = choices[string]{
		{"plain", "plain"},
		{"scram-sha-256", "scram-sha-256"},
		{"scram-sha-512", "scram-sha-512"},
		{"oauthbearer", "oauthbearer"},
	}

	// The name of a client certificate that is its identity.
	certificateNames = choices[string]{
		{certCommonName, certCommonName},
		{certDNS, certDNS},
		{certEmail, certEmail},
		{certURI, certURI},
	}
)

// Modes: how a request body becomes records.
const (
	modeBody    = "body"    // the whole body is one record
	modeRecords = "records" // the body is {"records":[...]}
	// the paths, bodies and answers of Confluent REST Proxy's produce
	// APIs, v2 and v3
	modeConfluent = "confluent"
)

// On a failure of the shared idempotency store.
const (
	storeErrorReject  = "reject"  // 503: nothing produced
	storeErrorProduce = "produce" // produced without the store
)

// Deliveries: whether a request waits for the broker.
const (
	deliverySync  = "sync"  // answered once the broker acknowledged
	deliveryAsync = "async" // answered 202 once queued
)

// choices are the values a setting may take, each with what it means.
type choices[T any] []struct {
	name  string
	value T
}

// check fails for a name that is not one of the choices.
func (c choices[T]) check(name string) error {
	if _, ok := c.lookup(name); ok {
		return nil
	}
	names := make([]string, len(c))
	for i, ch := range c {
		names[i] = ch.name
	}
	list := strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
	return fmt.Errorf("%q is not %s", name, list)
}

// lookup is the value of a name.
func (c choices[T]) lookup(name string) (T, bool) {
	for _, ch := range c {
		if ch.name == name {
			return ch.value, true
		}
	}
	var zero T
	return zero, false
}

// valueOf is the value of a name already checked, or the zero value
// (the default) for an unset one.
func (c choices[T]) valueOf(name string) T {
	v, _ := c.lookup(name)
	return v
}

// limit is a numeric setting that must not be negative; unset (zero), it
// takes its default, unless zero is one of its values.
type limit struct {
	name      string
	value     int64
	zeroValid bool
}

// checkLimits checks a concern's numeric settings, in order.
func checkLimits(limits ...limit) error {
	for _, l := range limits {
		switch {
		case l.value >= 0:
		case l.zeroValid:
			return fmt.Errorf("%s: must not be negative", l.name)
		default:
			return fmt.Errorf("%s: must be positive", l.name)
		}
	}
	return nil
}

// checkChoice checks a setting against its choices, unless it is unset.
func checkChoice[T any](name, value string, c choices[T]) error {
	if value == "" {
		return nil
	}
	if err := c.check(value); err != nil {
		return fmt.Errorf("%s: %v", name, err)
	}
	return nil
}

// A Switch is a setting that is on or off: true or false in JSON, as
// Caddy's own settings are; "on" and "off", as the Caddyfile says them,
// are taken too. A *Switch that is nil is unset.
type Switch bool

// UnmarshalJSON takes true, false, "on" or "off".
func (s *Switch) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch v {
	case true, "on":
		*s = true
	case false, "off":
		*s = false
	default:
		return fmt.Errorf("%s is not true, false, \"on\" or \"off\"", b)
	}
	return nil
}

// switchOf is the Switch of a Caddyfile's on or off, checked.
func switchOf(name string) (*Switch, error) {
	on, ok := switches.lookup(name)
	if !ok {
		return nil, switches.check(name)
	}
	s := Switch(on)
	return &s, nil
}

// isOn reports whether a switch is on, or unset with def.
func (s *Switch) isOn(def bool) bool {
	if s == nil {
		return def
	}
	return bool(*s)
}
