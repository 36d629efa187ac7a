package queuepublish

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("queue_publish", parseCaddyfile)
	// Before respond, so that the directive works in a plain site block
	// without a route or an order option.
	httpcaddyfile.RegisterDirectiveOrder("queue_publish", httpcaddyfile.Before, "respond")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	queue_publish [<matcher>] {
//		brokers  <host:port> [<host:port>...]
//		topic    <name>
//		secret   <value>
//		max_size <size>
//		timeout  <duration>
//		acks     all|leader|none
//	}
//
// brokers is required and may repeat; topic and secret are required. The
// secret should be a placeholder, {env.NAME} or {file.PATH}, which is
// resolved when the config loads; {$NAME} would be written into the
// adapted JSON config. max_size defaults to 1MB, timeout to 5s, acks to all.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "brokers":
			addrs := d.RemainingArgs()
			if len(addrs) == 0 {
				return d.ArgErr()
			}
			h.Brokers = append(h.Brokers, addrs...)
		case "topic":
			if err := singleArg(d, &h.Topic); err != nil {
				return err
			}
		case "secret":
			if err := singleArg(d, &h.Secret); err != nil {
				return err
			}
		case "max_size":
			var s string
			if err := singleArg(d, &s); err != nil {
				return err
			}
			size, err := humanize.ParseBytes(s)
			if err != nil || size == 0 || size > 1<<40 {
				return d.Errf("max_size: invalid size %q", s)
			}
			h.MaxSize = int64(size)
		case "timeout":
			var s string
			if err := singleArg(d, &s); err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil || dur <= 0 {
				return d.Errf("timeout: invalid duration %q", s)
			}
			h.Timeout = caddy.Duration(dur)
		case "acks":
			if err := singleArg(d, &h.Acks); err != nil {
				return err
			}
			if _, ok := acksValues[h.Acks]; !ok {
				return d.Errf("acks: %q is not all, leader or none", h.Acks)
			}
		default:
			return d.Errf("unrecognized subdirective %q", d.Val())
		}
	}
	return nil
}

// singleArg reads the one argument of the current subdirective into dst.
func singleArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
