package queuepublish

import (
	"fmt"
	"math"
	"strconv"
	"strings"

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
//		allow_topics <name> [<name>...]
//		secret   [<name>] <value>
//		jwt      [<issuer>] {
//			jwks_url         <url>
//			audience         <audience> [<audience>...]
//			algorithms       <alg> [<alg>...]
//			identity_claim   <claim>
//			leeway           <duration>
//			refetch_interval <duration>
//			refresh_interval <duration>
//			cache_size       <count>
//		}
//		client_certificate cn|dns|email|uri
//		caddy_auth
//		allow       <identity> <topic> [<topic>...]
//		allow_claim <claim> <value> <topic> [<topic>...]
//		identity_header <name>
//		quota [<identity>] {
//			records <per second> [<burst>]
//			bytes   <size per second> [<burst size>]
//		}
//		quota_store memory|redis <url>
//		quota_store redis <url> {
//			<the settings of tls, for a rediss:// url>
//		}
//		signature_header <name>
//		cors     <origin> [<origin>...]
//		token_max_age <duration>
//		mode     body|records|confluent
//		cluster_id <id>
//		schema   <file>
//		max_records <count>
//		key      <value>
//		header   <name> <value>
//		trace_headers on|off
//		delivery sync|async
//		queue_size <count>
//		queue_timeout <duration>
//		idempotency_window   <duration>
//		idempotency_max_keys <count>
//		idempotency_max_bytes <size>
//		idempotency_store memory|redis <url>
//		idempotency_store redis <url> {
//			<the settings of tls, for a rediss:// url>
//		}
//		idempotency_key_prefix <prefix>
//		on_store_error reject|produce
//		max_size <size>
//		timeout  <duration>
//		acks     all|leader|none
//		idempotent on|off
//		compression       none|gzip|snappy|lz4|zstd
//		client_id         <id>
//		sasl              plain|scram-sha-256|scram-sha-512 <user> <password>
//		sasl oauthbearer {
//			token_url     <url>
//			client_id     <id>
//			client_secret <secret>
//			scope         <scope> [<scope>...]
//			audience      <audience>
//			token_ca      <file>
//		}
//		tls
//		tls {
//			ca                   <file>
//			cert                 <file>
//			key                  <file>
//			server_name          <name>
//			insecure_skip_verify
//		}
//		linger            <duration>
//		max_batch_records <count>
//		max_batch_bytes   <size>
//		max_in_flight     <count>
//	}
//
// brokers is required and may repeat; topic is required (in mode
// confluent, allow_topics instead of topic: the path names it), and so is
// a way to authenticate: secret, jwt, client_certificate or caddy_auth,
// alone or together. secret may repeat (any of the secrets is accepted);
// a secret with a name gives its holder that identity. allow, allow_claim
// and quota may repeat. A secret should be a
// placeholder, {env.NAME} or {file.PATH}, which is resolved when the config
// loads; {$NAME} would be written into the adapted JSON config. topic may
// hold request placeholders if allow_topics lists the topics allowed.
// header may repeat; key and header values take request placeholders.
// cors lists the origins whose pages may publish from a browser, and may
// repeat. trace_headers defaults to on. mode defaults to body, max_records to 500. max_size defaults to 1MB, timeout to 5s, acks to all.
// compression defaults to none. The last four tune the producer's
// batching: linger defaults to 0,
// max_batch_records to 1000, max_batch_bytes to 1MB, max_in_flight to 1.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		name := d.Val()
		switch name {
		case "brokers", "allow_topics":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			if name == "brokers" {
				h.Brokers = append(h.Brokers, args...)
			} else {
				h.AllowTopics = append(h.AllowTopics, args...)
			}
			continue
		case "tls":
			if d.NextArg() {
				return d.ArgErr()
			}
			t, err := parseTLSBlock(d, "tls")
			if err != nil {
				return err
			}
			h.TLS = t
			continue
		case "sasl":
			args := d.RemainingArgs()
			if len(args) == 1 && args[0] == "oauthbearer" {
				s, err := parseOAuthBearerBlock(d)
				if err != nil {
					return err
				}
				h.SASL = s
				continue
			}
			if len(args) != 3 {
				return d.ArgErr()
			}
			if err := saslMechanisms.check(args[0]); err != nil {
				return d.Errf("sasl: %v", err)
			}
			if args[0] == "oauthbearer" {
				return d.Errf("sasl oauthbearer: takes its settings in a block")
			}
			h.SASL = &BrokerSASL{Mechanism: args[0], Username: args[1], Password: args[2]}
			continue
		case "secret":
			args := d.RemainingArgs()
			switch len(args) {
			case 1:
				h.Secrets = append(h.Secrets, args[0])
			case 2:
				if h.NamedSecrets == nil {
					h.NamedSecrets = make(map[string]string)
				}
				if _, dup := h.NamedSecrets[args[0]]; dup {
					return d.Errf("secret: %q is named twice", args[0])
				}
				h.NamedSecrets[args[0]] = args[1]
			default:
				return d.ArgErr()
			}
			continue
		case "jwt":
			j, err := parseJWT(d)
			if err != nil {
				return err
			}
			h.JWT = j
			continue
		case "caddy_auth":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.CaddyAuth = true
			continue
		case "allow", "allow_claim":
			args := d.RemainingArgs()
			rule := Permission{}
			switch {
			case name == "allow" && len(args) >= 2:
				rule.Identity, rule.Topics = args[0], args[1:]
			case name == "allow_claim" && len(args) >= 3:
				rule.Claim, rule.Value, rule.Topics = args[0], args[1], args[2:]
			default:
				return d.ArgErr()
			}
			h.Allow = append(h.Allow, rule)
			continue
		case "quota":
			q, err := parseQuota(d)
			if err != nil {
				return err
			}
			h.Quotas.Quotas = append(h.Quotas.Quotas, q)
			continue
		case "quota_store":
			args := d.RemainingArgs()
			switch {
			case len(args) == 1 && args[0] == "memory":
				h.QuotaRedis, h.QuotaRedisTLS = "", nil
			case len(args) == 2 && args[0] == "redis":
				h.QuotaRedis, h.QuotaRedisTLS = args[1], nil
			default:
				return d.Errf("quota_store: want memory, or redis <url>")
			}
			t, err := parseTLSBlock(d, "quota_store")
			if err != nil {
				return err
			}
			if *t != (BrokerTLS{}) {
				if h.QuotaRedis == "" {
					return d.Errf("quota_store memory: takes no block")
				}
				h.QuotaRedisTLS = t
			}
			continue
		case "cors":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.CORS = append(h.CORS, args...)
			continue
		case "idempotency_store":
			args := d.RemainingArgs()
			switch {
			case len(args) == 1 && args[0] == "memory":
				h.IdempotencyRedis, h.IdempotencyRedisTLS = "", nil
			case len(args) == 2 && args[0] == "redis":
				h.IdempotencyRedis, h.IdempotencyRedisTLS = args[1], nil
			default:
				return d.Errf("idempotency_store: want memory, or redis <url>")
			}
			t, err := parseTLSBlock(d, "idempotency_store")
			if err != nil {
				return err
			}
			if *t != (BrokerTLS{}) {
				if h.IdempotencyRedis == "" {
					return d.Errf("idempotency_store memory: takes no block")
				}
				h.IdempotencyRedisTLS = t
			}
			continue
		case "header":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.ArgErr()
			}
			if h.Headers == nil {
				h.Headers = make(map[string]string)
			}
			h.Headers[args[0]] = args[1]
			continue
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		val := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		var err error
		switch name {
		case "topic":
			h.Topic = val
		case "client_certificate":
			h.ClientCertificate, err = val, certificateNames.check(val)
		case "identity_header":
			h.IdentityHeader = val
		case "delivery":
			h.Delivery, err = val, deliveries.check(val)
		case "queue_size":
			h.QueueSize, err = parseCount(val)
		case "queue_timeout":
			h.QueueTimeout, err = parseDuration(val, false)
		case "idempotency_window":
			h.IdempotencyWindow, err = parseDuration(val, false)
		case "idempotency_max_keys":
			h.IdempotencyMaxKeys, err = parseCount(val)
		case "idempotency_max_bytes":
			h.IdempotencyMaxBytes, err = parseSize(val, 1<<40)
		case "idempotency_key_prefix":
			h.IdempotencyKeyPrefix = val
		case "on_store_error":
			h.OnStoreError, err = val, storeErrorChoices.check(val)
		case "client_id":
			h.ClientID = val
		case "schema":
			h.Schema = val
		case "token_max_age":
			h.TokenMaxAge, err = parseDuration(val, false)
		case "signature_header":
			h.SignatureHeader = val
		case "mode":
			h.Mode, err = val, modes.check(val)
		case "cluster_id":
			h.ClusterID = val
		case "max_records":
			h.MaxRecords, err = parseCount(val)
		case "key":
			h.Key = val
		case "trace_headers":
			h.TraceHeaders, err = switchOf(val)
		case "idempotent":
			h.Idempotent, err = switchOf(val)
		case "acks":
			h.Acks, err = val, acksLevels.check(val)
		case "compression":
			h.Compression, err = val, compressions.check(val)
		case "max_size":
			h.MaxSize, err = parseSize(val, 1<<40)
		case "max_batch_bytes":
			var n int64
			n, err = parseSize(val, 1<<30)
			h.MaxBatchBytes = int(n)
		case "timeout":
			h.Timeout, err = parseDuration(val, false)
		case "linger":
			h.Linger, err = parseDuration(val, true)
		case "max_batch_records":
			h.MaxBatchRecords, err = parseCount(val)
		case "max_in_flight":
			h.MaxInFlight, err = parseCount(val)
		default:
			return d.Errf("unrecognized subdirective %q", name)
		}
		if err != nil {
			return d.Errf("%s: %v", name, err)
		}
	}
	return nil
}

// parseSize parses a size such as 256KB or 1MiB, from 1 byte to limit.
func parseSize(s string, limit uint64) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > limit {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return int64(n), nil
}

// parseDuration parses a duration such as 500ms or 5s; zero is allowed
// only if zeroOK.
func parseDuration(s string, zeroOK bool) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur < 0 || (dur == 0 && !zeroOK) {
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	return caddy.Duration(dur), nil
}

// parseCount parses a positive whole number.
func parseCount(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive number", s)
	}
	return n, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)

// parseTLSBlock parses the block of TLS settings that may follow the
// current line (the brokers' tls, or idempotency_store redis <url>):
//
//	{
//		ca          <file>
//		cert        <file>
//		key         <file>
//		server_name <name>
//		insecure_skip_verify
//	}
func parseTLSBlock(d *caddyfile.Dispenser, directive string) (*BrokerTLS, error) {
	t := new(BrokerTLS)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt == "insecure_skip_verify" {
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			t.InsecureSkipVerify = true
			continue
		}
		if !d.NextArg() {
			return nil, d.ArgErr()
		}
		switch opt {
		case "ca":
			t.CA = d.Val()
		case "cert":
			t.Cert = d.Val()
		case "key":
			t.Key = d.Val()
		case "server_name":
			t.ServerName = d.Val()
		default:
			return nil, d.Errf("%s: unrecognized option %q", directive, opt)
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	return t, nil
}

// parseJWT parses jwt's line and block:
//
//	jwt [<issuer>] {
//		jwks_url         <url>
//		audience         <audience> [<audience>...]
//		algorithms       <alg> [<alg>...]
//		identity_claim   <claim>
//		leeway           <duration>
//		refetch_interval <duration>
//		refresh_interval <duration>
//		cache_size       <count>
//	}
func parseJWT(d *caddyfile.Dispenser) (*JWTAuth, error) {
	j := new(JWTAuth)
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
	case 1:
		j.Issuer = args[0]
	default:
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		args := d.RemainingArgs()
		if len(args) == 0 {
			return nil, d.ArgErr()
		}
		if opt != "audience" && opt != "algorithms" && len(args) != 1 {
			return nil, d.ArgErr()
		}
		var err error
		switch opt {
		case "jwks_url":
			j.JWKSURL = args[0]
		case "audience":
			j.Audiences = append(j.Audiences, args...)
		case "algorithms":
			j.Algorithms = append(j.Algorithms, args...)
		case "identity_claim":
			j.IdentityClaim = args[0]
		case "leeway":
			j.Leeway, err = parseDuration(args[0], true)
		case "refetch_interval":
			j.RefetchInterval, err = parseDuration(args[0], false)
		case "refresh_interval":
			j.RefreshInterval, err = parseDuration(args[0], false)
		case "cache_size":
			j.CacheSize, err = parseCount(args[0])
		default:
			return nil, d.Errf("jwt: unrecognized option %q", opt)
		}
		if err != nil {
			return nil, d.Errf("jwt: %s: %v", opt, err)
		}
	}
	return j, nil
}

// parseQuota parses quota's line and block:
//
//	quota [<identity>] {
//		records <per second> [<burst>]
//		bytes   <size per second> [<burst size>]
//	}
func parseQuota(d *caddyfile.Dispenser) (Quota, error) {
	var q Quota
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
	case 1:
		q.Identity = args[0]
	default:
		return q, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		args := d.RemainingArgs()
		if len(args) < 1 || len(args) > 2 {
			return q, d.ArgErr()
		}
		var err error
		switch opt {
		case "records":
			q.RecordsPerSecond, err = strconv.ParseFloat(args[0], 64)
			if err != nil || q.RecordsPerSecond <= 0 || math.IsInf(q.RecordsPerSecond, 0) {
				err = fmt.Errorf("%q is not a positive number", args[0])
			} else if len(args) == 2 {
				var n int
				n, err = parseCount(args[1])
				q.RecordsBurst = int64(n)
			}
		case "bytes":
			q.BytesPerSecond, err = parseSize(args[0], 1<<40)
			if err == nil && len(args) == 2 {
				q.BytesBurst, err = parseSize(args[1], 1<<40)
			}
		default:
			return q, d.Errf("quota: unrecognized option %q", opt)
		}
		if err != nil {
			return q, d.Errf("quota: %s: %v", opt, err)
		}
	}
	if q.RecordsPerSecond == 0 && q.BytesPerSecond == 0 {
		return q, d.Errf("quota: needs records or bytes")
	}
	return q, nil
}

// parseOAuthBearerBlock parses the block of sasl oauthbearer:
//
//	{
//		token_url     <url>
//		client_id     <id>
//		client_secret <secret>
//		scope         <scope> [<scope>...]
//		audience      <audience>
//		token_ca      <file>
//	}
func parseOAuthBearerBlock(d *caddyfile.Dispenser) (*BrokerSASL, error) {
	s := &BrokerSASL{Mechanism: "oauthbearer"}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		args := d.RemainingArgs()
		if len(args) == 0 || (len(args) > 1 && opt != "scope") {
			return nil, d.ArgErr()
		}
		switch opt {
		case "token_url":
			s.TokenURL = args[0]
		case "client_id":
			s.ClientID = args[0]
		case "client_secret":
			s.ClientSecret = args[0]
		case "scope":
			s.Scope = strings.Join(args, " ")
		case "audience":
			s.Audience = args[0]
		case "token_ca":
			s.TokenCA = args[0]
		default:
			return nil, d.Errf("sasl oauthbearer: unrecognized option %q", opt)
		}
	}
	return s, nil
}
