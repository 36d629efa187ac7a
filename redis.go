package queuepublish

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"sync"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Redis (or Valkey) is where a fleet of instances shares what it must
// agree on: the Idempotency-Keys (idempotency_redis.go) and the quotas
// (quota_redis.go).

// newRedisClient connects to the Redis of rawURL: redis:// or rediss://
// (TLS, with tlsConfig's roots, certificate and server name if given),
// with user and password in the URL; with ?master_name=, through
// Sentinel; with ?addr= for more nodes, to a Redis Cluster. The URL is
// never part of an error or a log line: it may hold a password.
//
// Every call is bounded by its context's deadline (ContextTimeoutEnabled):
// without it go-redis waits out its own read_timeout (5 s) on a server
// that stopped answering, whatever the request's timeout.
func newRedisClient(rawURL string, tlsConfig *tls.Config) (redis.UniversalClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, errors.New("not a URL (it is not quoted here: it may hold a password)")
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, errors.New("the URL must start with redis:// or rediss://")
	}
	if tlsConfig != nil && u.Scheme != "rediss" {
		return nil, errors.New("TLS settings need a rediss:// URL")
	}
	q := u.Query()
	var client redis.UniversalClient
	switch {
	case q.Has("master_name"):
		opts, err := redis.ParseFailoverURL(rawURL)
		if err != nil {
			return nil, redisURLError(err)
		}
		opts.TLSConfig = withOwnTLS(opts.TLSConfig, tlsConfig)
		opts.ContextTimeoutEnabled = true
		client = redis.NewFailoverClient(opts)
	case q.Has("addr"):
		opts, err := redis.ParseClusterURL(rawURL)
		if err != nil {
			return nil, redisURLError(err)
		}
		opts.TLSConfig = withOwnTLS(opts.TLSConfig, tlsConfig)
		opts.ContextTimeoutEnabled = true
		client = redis.NewClusterClient(opts)
	default:
		opts, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, redisURLError(err)
		}
		opts.TLSConfig = withOwnTLS(opts.TLSConfig, tlsConfig)
		opts.ContextTimeoutEnabled = true
		client = redis.NewClient(opts)
	}
	return client, nil
}

// useRedisLog sends go-redis's log to Caddy's.
func useRedisLog(logger *zap.Logger) {
	redisLogOnce.Do(func() { redis.SetLogger(redisLog{logger.Named("redis")}) })
}

// withOwnTLS is the TLS configuration of a rediss:// URL (go-redis's: the
// URL's host as the server name, with ?skip_verify=) with the roots,
// client certificate and server name of own, where given.
func withOwnTLS(fromURL, own *tls.Config) *tls.Config {
	if own == nil || fromURL == nil {
		return fromURL
	}
	cfg := own.Clone()
	cfg.ServerName = cmp.Or(own.ServerName, fromURL.ServerName)
	cfg.InsecureSkipVerify = own.InsecureSkipVerify || fromURL.InsecureSkipVerify //nolint:gosec // asked for, for tests
	return cfg
}

// redisLog sends go-redis's own log lines (a Sentinel's failover, a
// Cluster's moved slots) to Caddy's log at info level, not to stderr.
type redisLog struct{ logger *zap.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.logger.Info(fmt.Sprintf(format, v...))
}

// redisLogOnce installs redisLog: go-redis has one logger per process.
var redisLogOnce sync.Once

// redisURLError is err of go-redis on a URL, without the URL.
func redisURLError(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	return fmt.Errorf("the URL does not parse: %v", err)
}
