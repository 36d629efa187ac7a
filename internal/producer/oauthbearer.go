package producer

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
)

// oauthBearer is SASL OAUTHBEARER (RFC 7628, KIP-255) for kafka-go: the
// client's first message carries an access token, which the broker
// validates (Kafka's OAuthBearerValidatorCallbackHandler checks its
// signature against the issuer's keys, its expiry, audience and issuer),
// and an empty answer means accepted. The token comes from tokens, which
// keeps one at hand.
type oauthBearer struct {
	tokens *tokenSource
}

func (oauthBearer) Name() string { return "OAUTHBEARER" }

// Start is the client's first message (RFC 7628 3.1): the GS2 header
// without an authorization identity ("n,,"), then the auth key-value,
// each key-value closed by ^A, and the message by another.
func (m oauthBearer) Start(ctx context.Context) (sasl.StateMachine, []byte, error) {
	token, err := m.tokens.get(ctx)
	if err != nil {
		return nil, nil, err
	}
	return oauthBearerSession{}, []byte("n,,\x01auth=Bearer " + token + "\x01\x01"), nil
}

type oauthBearerSession struct{}

// Next reads the broker's answer: empty on success; on failure a JSON
// error (RFC 7628 3.2.2), after which the exchange ends. The RFC has the
// client answer ^A for the server to fail the exchange; the connection is
// dropped instead, which ends it as surely, a round trip sooner, with the
// broker's reason kept. Only its status and scope are kept: never more of
// what a broker sends back.
func (oauthBearerSession) Next(_ context.Context, challenge []byte) (bool, []byte, error) {
	if len(challenge) == 0 {
		return true, nil, nil
	}
	var failure struct {
		Status string `json:"status"`
		Scope  string `json:"scope"`
	}
	json.Unmarshal(challenge, &failure)
	if failure.Status == "" {
		failure.Status = "unknown"
	}
	reason := "status " + failure.Status
	if failure.Scope != "" {
		reason += ", scope " + failure.Scope
	}
	return false, nil, fmt.Errorf("%w: the broker refused the OAuth token (%.200s)", kafka.SASLAuthenticationFailed, reason)
}
