package apachekafka

import (
	"fmt"
	"strings"
)

// User and Password are the SASL credentials every mechanism knows: PLAIN
// from the listener's JAAS configuration, SCRAM-SHA-256 and SCRAM-SHA-512
// from the cluster's metadata, where StorageTool put them at format time.
const (
	User     = "alice"
	Password = "alice-secret"
)

// Timings of the cluster, shorter than Kafka's defaults so that a failure
// is handled in the seconds a test can wait, and named in the README next
// to the recovery times measured with them.
const (
	// SessionTimeoutMs is broker.session.timeout.ms: how long the
	// controller waits for a killed node's heartbeat before it fences the
	// node and elects new leaders for its partitions (default 9000).
	SessionTimeoutMs = 2000
	// ReplicaLagMs is replica.lag.time.max.ms: how long a leader waits for
	// a follower that fetches nothing before it removes the follower from
	// the in-sync replicas (default 30000).
	ReplicaLagMs = 5000
)

// properties is a node's server.properties.
func (c *Cluster) properties(n *Node) string {
	var voters []string
	for _, m := range c.nodes {
		voters = append(voters, fmt.Sprintf("%d@127.0.0.1:%d", m.ID, m.controller))
	}
	replicas, minISR := len(c.nodes), min(2, len(c.nodes))
	jaas := func(module, users string) string {
		return fmt.Sprintf("org.apache.kafka.common.security.%s required%s;", module, users)
	}
	addrs := fmt.Sprintf("PLAINTEXT://127.0.0.1:%d,SASL_PLAINTEXT://127.0.0.1:%d,SSL://127.0.0.1:%d,MTLS://127.0.0.1:%d",
		n.ports[Plaintext], n.ports[SASLPlaintext], n.ports[TLS], n.ports[MutualTLS])
	protocols := "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,MTLS:SSL,CONTROLLER:PLAINTEXT"
	if c.oauth != nil {
		addrs += fmt.Sprintf(",OAUTH://127.0.0.1:%d", n.ports[OAuth])
		protocols += ",OAUTH:SASL_PLAINTEXT"
	}
	props := []string{
		"process.roles=broker,controller",
		fmt.Sprintf("node.id=%d", n.ID),
		"controller.quorum.voters=" + strings.Join(voters, ","),
		fmt.Sprintf("listeners=%s,CONTROLLER://127.0.0.1:%d", addrs, n.controller),
		"advertised.listeners=" + addrs,
		"listener.security.protocol.map=" + protocols,
		"inter.broker.listener.name=PLAINTEXT",
		"controller.listener.names=CONTROLLER",
		"log.dirs=" + n.dir + "/data",

		"sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
		"listener.name.sasl_plaintext.plain.sasl.jaas.config=" + jaas("plain.PlainLoginModule", fmt.Sprintf(" user_%s=%q", User, Password)),
		"listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=" + jaas("scram.ScramLoginModule", ""),
		"listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=" + jaas("scram.ScramLoginModule", ""),

		"ssl.keystore.type=PEM",
		"ssl.keystore.location=" + c.Certs.brokerKeystore,
		"ssl.truststore.type=PEM",
		"ssl.truststore.location=" + c.Certs.CA,
		"listener.name.mtls.ssl.client.auth=required",

		// ACLs: a topic without any is open to all; the PLAINTEXT
		// listener (ANONYMOUS) administers, and tests deny what they need.
		"authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
		"allow.everyone.if.no.acl.found=true",
		"super.users=User:ANONYMOUS",

		fmt.Sprintf("default.replication.factor=%d", replicas),
		fmt.Sprintf("min.insync.replicas=%d", minISR),
		fmt.Sprintf("offsets.topic.replication.factor=%d", replicas),
		fmt.Sprintf("transaction.state.log.replication.factor=%d", replicas),
		fmt.Sprintf("transaction.state.log.min.isr=%d", minISR),
		"offsets.topic.num.partitions=1",
		"auto.create.topics.enable=false",
		"group.initial.rebalance.delay.ms=0",

		fmt.Sprintf("broker.session.timeout.ms=%d", SessionTimeoutMs),
		"broker.heartbeat.interval.ms=500",
		fmt.Sprintf("replica.lag.time.max.ms=%d", ReplicaLagMs),
	}
	if o := c.oauth; o != nil {
		const prefix = "listener.name.oauth.oauthbearer."
		props = append(props,
			"listener.name.oauth.sasl.enabled.mechanisms=OAUTHBEARER",
			prefix+"sasl.jaas.config="+jaas("oauthbearer.OAuthBearerLoginModule", ""),
			prefix+"sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler",
			prefix+"sasl.oauthbearer.jwks.endpoint.url="+o.JWKSURL,
			prefix+"sasl.oauthbearer.expected.issuer="+o.Issuer,
			prefix+"sasl.oauthbearer.expected.audience="+o.Audience,
		)
		if o.ReauthMs > 0 {
			props = append(props, fmt.Sprintf("%sconnections.max.reauth.ms=%d", prefix, o.ReauthMs))
		}
	}
	return strings.Join(props, "\n") + "\n"
}
