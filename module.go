// Package queuepublish is a Caddy HTTP handler that publishes the JSON
// body of authenticated POST requests to a Kafka topic: any HTTP client
// becomes a Kafka producer.
package queuepublish

import (
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler checks a shared secret, validates that the request body is one
// JSON value and produces it, unchanged, as one record to a Kafka topic.
// It answers 200 {"success":true} only after the broker acknowledged the
// record; every other answer says whether retrying is safe.
//
// Its settings are grouped by concern, each group a type of its own with
// its defaults, checks, provisioning and cleanup in its file; their
// fields are the handler's (JSON and Caddyfile alike).
type Handler struct {
	// The brokers, the connection to them and the producer (kafka.go).
	Kafka
	// The topic, what a request may carry, how its body becomes
	// records and how it is delivered (request.go).
	Requests
	// Who may publish, and who each publisher is (auth.go).
	Authentication
	// What each publisher may publish to (permissions.go).
	Permissions
	// How much each publisher may publish (quota.go).
	Quotas
	// The browser pages that may publish (cors.go).
	CrossOrigin
	// The Idempotency-Keys of requests (idempotency.go).
	Idempotency

	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.queue_publish",
		New: func() caddy.Module { return new(Handler) },
	}
}

// concern is one group of settings: it checks and defaults its own
// settings, then takes what serving needs, and gives it back on cleanup.
type concern interface {
	// check applies the defaults and checks the settings, without any
	// effect outside the handler.
	check() error
	// provision resolves placeholders and takes what serving needs.
	provision(p *provisioning) error
	// cleanup gives back what provision took; safe after a failed or
	// missing provision.
	cleanup() error
}

// provisioning is what a concern's provision may read.
type provisioning struct {
	ctx    caddy.Context
	repl   *caddy.Replacer // for {env.*} and {file.*}, resolved at load
	logger *zap.Logger
	h      *Handler // the settings of the other concerns, checked
}

// concerns are the handler's concerns, in the order they are
// provisioned: the idempotency store last, as its keys' scope is the
// brokers resolved.
func (h *Handler) concerns() []concern {
	return []concern{&h.Requests, &h.Authentication, &h.Permissions, &h.Quotas, &h.CrossOrigin, &h.Kafka, &h.Idempotency}
}

// Provision checks and defaults every concern's settings, then
// provisions each: the secrets and the brokers resolved, the producer
// shared by every config that uses the same connection settings taken.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	for _, c := range h.concerns() {
		if err := c.check(); err != nil {
			return err
		}
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	p := &provisioning{ctx: ctx, repl: caddy.NewReplacer(), logger: h.logger, h: h}
	for _, c := range h.concerns() {
		if err := c.provision(p); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks the rules across concerns; each concern checked its
// own settings in Provision.
func (h *Handler) Validate() error {
	if err := h.mode.validate(h); err != nil {
		return err
	}
	for i, rule := range h.Allow {
		if rule.Claim != "" && h.JWT == nil {
			return fmt.Errorf("allow %d: a claim's rule needs jwt, whose tokens carry claims", i+1)
		}
	}
	if h.IdempotencyRedis != "" && h.Delivery == deliveryAsync {
		return errors.New("idempotency_store redis: not with delivery async, whose requests are answered before the broker settles their records")
	}
	return nil
}

// Cleanup gives back what each concern took: the last config that uses a
// producer flushes and closes it. It is safe after a failed Provision.
//
// Requests of the unloaded config may still be running (Caddy does not wait
// for them on a reload): the producer is released when the last of them
// ends.
func (h *Handler) Cleanup() error {
	var errs []error
	for _, c := range h.concerns() {
		errs = append(errs, c.cleanup())
	}
	return errors.Join(errs...)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
