package queuepublish

import (
	"fmt"
	"strings"

	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"github.com/segmentio/kafka-go"
)

// The settings with a closed set of values. Each table is the one list of
// its values: the Caddyfile parser and Validate both check against it,
// and its error names them in this order.
var (
	modes = choices[string]{{modeBody, modeBody}, {modeRecords, modeRecords}, {modeConfluent, modeConfluent}}

	deliveries = choices[string]{{deliverySync, deliverySync}, {deliveryAsync, deliveryAsync}}

	acksLevels = choices[kafka.RequiredAcks]{
		{"all", kafka.RequireAll},
		{"leader", kafka.RequireOne},
		{"none", kafka.RequireNone},
	}

	compressions = choices[kafka.Compression]{
		{"none", 0},
		{"gzip", kafka.Gzip},
		{"snappy", kafka.Snappy},
		{"lz4", kafka.Lz4},
		{"zstd", kafka.Zstd},
	}

	// Unset, idempotence is used where the cluster allows it.
	idempotence = choices[producer.Idempotence]{
		{"on", producer.IdempotenceOn},
		{"off", producer.IdempotenceOff},
	}

	// An option that is on or off.
	switches = choices[bool]{{"on", true}, {"off", false}}

	// What a request with an Idempotency-Key gets when the shared store
	// cannot be reached.
	storeErrorChoices = choices[string]{{storeErrorReject, storeErrorReject}, {storeErrorProduce, storeErrorProduce}}

	saslMechanisms = choices[string]{
		{"plain", "plain"},
		{"scram-sha-256", "scram-sha-256"},
		{"scram-sha-512", "scram-sha-512"},
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
