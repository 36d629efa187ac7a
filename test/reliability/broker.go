package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/harness"
	"github.com/queuepublish/caddy-queue-publish/test/apachekafka"
)

// topics are the topics the scenarios write to, of three partitions each.
var topics = []string{"load", "kill", "reload", "reload-plain", "shutdown", "async", "memory", "fleet"}

// brokers are what the scenarios produce to: the development broker in a
// Caddy process of its own, or (-kafka) a three-node Apache Kafka cluster.
type brokers interface {
	// addrs are the addresses to bootstrap from.
	addrs() []string
	// crash kills a broker with SIGKILL (the development broker, or the
	// node leading the kill topic's partition 0), leaves it down for
	// down, and restarts it on its data.
	crash(down time.Duration) (killedAt, restartedAt time.Time, err error)
	// keepsProducerState: a broker killed and restarted still knows
	// the batches each producer appended, so that one resent across
	// the crash is not appended again. Apache Kafka rebuilds that
	// state from its log; the development broker (kfake) saves it only
	// when it stops in order.
	keepsProducerState() bool
	// String names the brokers for the report.
	String() string
	close()
}

// devBroker is the development broker, keeping its records in a folder so
// that a restart finds them (broker.Caddyfile).
type devBroker struct {
	e   *env
	cmd *exec.Cmd
}

const devBrokerAddr = "127.0.0.1:19093"

func startDevBroker(e *env) (*devBroker, error) {
	if err := harness.PortsFree(devBrokerAddr); err != nil {
		return nil, err
	}
	b := &devBroker{e: e}
	return b, b.start()
}

func (b *devBroker) start() error {
	var err error
	if b.cmd, err = harness.StartCaddy(b.e.bin, "test/reliability/broker.Caddyfile", filepath.Join(b.e.tmp, "broker.log"), b.e.vars); err != nil {
		return err
	}
	return harness.WaitPort(devBrokerAddr)
}

func (b *devBroker) addrs() []string { return []string{devBrokerAddr} }
func (b *devBroker) String() string  { return "the development broker (3 partitions a topic)" }
func (b *devBroker) close()          { harness.Stop(b.cmd) }

func (b *devBroker) keepsProducerState() bool { return false }

func (b *devBroker) crash(down time.Duration) (killedAt, restartedAt time.Time, err error) {
	if err := harness.Signal(b.cmd, syscall.SIGKILL); err != nil {
		return killedAt, restartedAt, err
	}
	b.cmd.Wait()
	killedAt = time.Now()
	time.Sleep(down)
	err = b.start()
	return killedAt, time.Now(), err
}

// kafkaCluster is three Apache Kafka nodes (test/apachekafka): topics of
// three partitions replicated on all three, min.insync.replicas 2.
type kafkaCluster struct {
	c *apachekafka.Cluster
}

func startKafka(e *env) (*kafkaCluster, error) {
	c, err := apachekafka.Start(apachekafka.Options{Nodes: 3, Dir: filepath.Join(e.tmp, "kafka")})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, topic := range topics {
		if err := c.CreateTopic(ctx, topic, 3, nil); err != nil {
			c.Close(false)
			return nil, err
		}
	}
	return &kafkaCluster{c}, nil
}

func (k *kafkaCluster) addrs() []string { return k.c.Brokers(apachekafka.Plaintext) }
func (k *kafkaCluster) close()          { k.c.Close(false) }

func (k *kafkaCluster) keepsProducerState() bool { return true }
func (k *kafkaCluster) String() string {
	return fmt.Sprintf("Apache Kafka %s, 3 nodes (3 partitions a topic, replication factor 3, min.insync.replicas 2)", apachekafka.Version)
}

func (k *kafkaCluster) crash(down time.Duration) (killedAt, restartedAt time.Time, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leader, err := k.c.Leader(ctx, "kill", 0)
	if err != nil {
		return killedAt, restartedAt, err
	}
	if err := k.c.Kill(leader); err != nil {
		return killedAt, restartedAt, err
	}
	killedAt = time.Now()
	fmt.Printf("  killed node %d, the leader of kill/0\n", leader.ID)
	time.Sleep(down)
	if err := k.c.Restart(ctx, leader); err != nil {
		return killedAt, restartedAt, err
	}
	restartedAt = time.Now()
	return killedAt, restartedAt, k.c.WaitInSync(ctx, "kill")
}
