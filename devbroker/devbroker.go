// Package devbroker is an in-memory Kafka-protocol broker, run as a Caddy
// app, for trying queue_publish on a machine without Kafka. It keeps
// records in memory only: they are lost when Caddy stops. It is for
// development; do not use it in production.
//
// It is franz-go's kfake, which speaks the real Kafka protocol, so any
// Kafka client (kcat, for one) can read what was published.
package devbroker

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
	httpcaddyfile.RegisterGlobalOption("queue_publish_dev_broker", parseGlobalOption)
}

const (
	defaultPort       = 9092
	defaultPartitions = 1
)

// App runs an in-memory Kafka-protocol broker on 127.0.0.1, for
// development only: records are kept in memory and lost when Caddy stops,
// unless data_dir names a directory to keep them in.
// The broker is shared across config reloads as long as its settings do
// not change, so reloading does not lose records.
type App struct {
	// The TCP port the broker listens on, on 127.0.0.1. Default: 9092.
	Port int `json:"port,omitempty"`

	// Topics to create at start.
	Topics []string `json:"topics,omitempty"`

	// How many partitions each topic has. Default: 1.
	Partitions int `json:"partitions,omitempty"`

	// A directory to keep the records in, so that they survive a
	// restart of Caddy (or a crash: the broker writes as it goes).
	// Default: memory only.
	DataDir string `json:"data_dir,omitempty"`

	key string
}

// brokers holds the running brokers, shared across config reloads.
var brokers = caddy.NewUsagePool()

type broker struct{ cluster *kfake.Cluster }

func (b broker) Destruct() error {
	b.cluster.Close()
	return nil
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "queue_publish_dev_broker",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision starts the broker, or reuses the one a previous config started
// with the same settings. It listens at once, so that handlers provisioned
// after it find it.
func (a *App) Provision(ctx caddy.Context) error {
	if a.Port == 0 {
		a.Port = defaultPort
	}
	if a.Partitions == 0 {
		a.Partitions = defaultPartitions
	}
	if a.Port < 0 || a.Port > 65535 {
		return fmt.Errorf("port: %d is not a TCP port", a.Port)
	}
	if a.Partitions < 0 {
		return fmt.Errorf("partitions: must be positive")
	}
	a.key = fmt.Sprintf("%d/%d/%s/%s", a.Port, a.Partitions, strings.Join(a.Topics, ","), a.DataDir)
	_, loaded, err := brokers.LoadOrNew(a.key, func() (caddy.Destructor, error) {
		opts := []kfake.Opt{kfake.Ports(a.Port)}
		if a.DataDir != "" {
			opts = append(opts, kfake.DataDir(a.DataDir))
		}
		if len(a.Topics) > 0 {
			opts = append(opts, kfake.SeedTopics(int32(a.Partitions), a.Topics...))
		}
		c, err := kfake.NewCluster(opts...)
		if errors.Is(err, syscall.EADDRINUSE) {
			// Most often a local Kafka, on the same default port: say which
			// two settings move the broker, rather than only the socket's
			// error at the end of Caddy's chain of wrapped errors.
			return nil, fmt.Errorf("port: 127.0.0.1:%d is already in use by another program (a local Kafka?); "+
				"set queue_publish_dev_broker's port to a free port, and queue_publish's brokers to match: %w", a.Port, err)
		}
		if err != nil {
			return nil, fmt.Errorf("starting the development broker on 127.0.0.1:%d: %w", a.Port, err)
		}
		return broker{cluster: c}, nil
	})
	if err != nil {
		return err
	}
	if !loaded {
		msg := "in-memory Kafka development broker started: records are kept in memory only and lost when Caddy stops; do not use in production"
		if a.DataDir != "" {
			msg = "Kafka development broker started, keeping records in data_dir; do not use in production"
		}
		ctx.Logger().Warn(msg,
			zap.String("address", "127.0.0.1:"+strconv.Itoa(a.Port)),
			zap.Strings("topics", a.Topics),
			zap.Int("partitions", a.Partitions),
			zap.String("data_dir", a.DataDir))
	}
	return nil
}

// Start does nothing: the broker listens from Provision on.
func (a *App) Start() error { return nil }

// Stop does nothing: the broker stops in Cleanup, once no config uses it.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's use of the broker; the last one stops it.
func (a *App) Cleanup() error {
	if a.key == "" {
		return nil
	}
	_, err := brokers.Delete(a.key)
	a.key = ""
	return err
}

// parseGlobalOption sets up the app from the Caddyfile global option:
//
//	queue_publish_dev_broker {
//		port       <port>
//		topic      <name> [<name>...]
//		partitions <count>
//		data_dir   <directory>
//	}
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	d.Next() // option name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "port", "partitions":
			name := d.Val()
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n <= 0 {
				return nil, d.Errf("%s: %q is not a positive number", name, d.Val())
			}
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			if name == "port" {
				app.Port = n
			} else {
				app.Partitions = n
			}
		case "data_dir":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			app.DataDir = d.Val()
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "topic":
			topics := d.RemainingArgs()
			if len(topics) == 0 {
				return nil, d.ArgErr()
			}
			app.Topics = append(app.Topics, topics...)
		default:
			return nil, d.Errf("unrecognized option %q", d.Val())
		}
	}
	return httpcaddyfile.App{
		Name:  "queue_publish_dev_broker",
		Value: caddyconfig.JSON(app, nil),
	}, nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
