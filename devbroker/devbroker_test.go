package devbroker

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestPortInUseNamesTheSettings loads a config whose development broker's
// port is taken by another program (as a local Kafka takes 9092) and checks
// that the error names the port and the two settings that move the broker,
// and that the troubleshooting page quotes that error.
func TestPortInUseNamesTheSettings(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	cf := fmt.Sprintf("{\n\tqueue_publish_dev_broker {\n\t\tport %d\n\t\ttopic my-queue\n\t}\n}\n", port)
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	var cfg caddy.Config
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatal(err)
	}
	err = caddy.Validate(&cfg)
	if err == nil {
		t.Fatalf("the config loaded with port %d in use", port)
	}

	addr := "127.0.0.1:" + strconv.Itoa(port)
	want := "port: " + addr + " is already in use by another program (a local Kafka?); " +
		"set queue_publish_dev_broker's port to a free port, and queue_publish's brokers to match: " +
		"listen tcp " + addr + ": bind: address already in use"
	if !strings.HasSuffix(err.Error(), want) {
		t.Fatalf("error:\n%v\nwant it to end with:\n%s", err, want)
	}

	page, err := os.ReadFile("../docs/troubleshooting.md")
	if err != nil {
		t.Fatal(err)
	}
	quoted := strings.ReplaceAll(want, strconv.Itoa(port), "9092")
	if !strings.Contains(string(page), quoted) {
		t.Errorf("docs/troubleshooting.md does not quote the error:\n%s", quoted)
	}
}
