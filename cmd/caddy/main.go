// Command caddy is Caddy with the queue_publish handler and the in-memory
// development broker, for the quick start and the tests. For production,
// build Caddy with xcaddy and the queue_publish module only.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/queuepublish/caddy-queue-publish"
	_ "github.com/queuepublish/caddy-queue-publish/devbroker"
)

func main() {
	caddycmd.Main()
}
