// Command token mints a token with which a page publishes to one topic of
// queue_publish from a browser, without the secret: an application's
// server runs the same code (queuepublish.MintToken) and puts the token in
// the page, which sends it in the query, ?token=<token>.
//
//	QUEUE_AUTH_SECRET=... go run ./examples/clients/token -topic my-queue -ttl 10m
//
// The token is valid for that topic until it expires; a request with an
// expired token, or one for another topic, is answered 403.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	queuepublish "github.com/queuepublish/caddy-queue-publish"
)

func main() {
	topic := flag.String("topic", "my-queue", "the topic the token may publish to")
	ttl := flag.Duration("ttl", 10*time.Minute, "how long the token is valid")
	flag.Parse()
	secret := os.Getenv("QUEUE_AUTH_SECRET")
	if secret == "" {
		fmt.Fprintln(os.Stderr, "QUEUE_AUTH_SECRET is not set")
		os.Exit(1)
	}
	fmt.Println(queuepublish.MintToken(secret, *topic, time.Now().Add(*ttl)))
}
