package apachekafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// CreateTopic creates topic with partitions and the cluster's replication
// factor, and waits until every running node knows a leader for each of
// its partitions, so that a producer finds it whichever node it asks.
func (c *Cluster) CreateTopic(ctx context.Context, topic string, partitions int, configs map[string]*string) error {
	resp, err := c.Admin().CreateTopic(ctx, int32(partitions), -1, configs, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		return fmt.Errorf("creating %s: %w", topic, err)
	}
	return c.WaitInSync(ctx, topic)
}

// WaitInSync waits until every running node's metadata shows each of
// topic's partitions with a leader and all its replicas in sync: the state
// a test that stopped nodes restores before the next one.
func (c *Cluster) WaitInSync(ctx context.Context, topic string) error {
	for {
		err := c.inSync(ctx, topic)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not in sync: %v (%v)", topic, err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) inSync(ctx context.Context, topic string) error {
	for _, n := range c.nodes {
		if !n.Running() {
			continue
		}
		adm, done, err := c.adminOf(n)
		if err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		topics, err := adm.ListTopics(rctx, topic)
		cancel()
		done()
		if err != nil {
			return err
		}
		d, ok := topics[topic]
		if !ok || d.Err != nil {
			return fmt.Errorf("node %d does not know %s: %v", n.ID, topic, d.Err)
		}
		for _, p := range d.Partitions {
			if p.Err != nil || p.Leader < 0 || len(p.ISR) != len(p.Replicas) {
				return fmt.Errorf("node %d: partition %d has leader %d, ISR %v of %v (%v)", n.ID, p.Partition, p.Leader, p.ISR, p.Replicas, p.Err)
			}
		}
	}
	return nil
}

// Leader is the node that leads topic's partition, as the controller's
// metadata says now.
func (c *Cluster) Leader(ctx context.Context, topic string, partition int32) (*Node, error) {
	d, err := c.Partition(ctx, topic, partition)
	if err != nil {
		return nil, err
	}
	if d.Leader < 1 || int(d.Leader) > len(c.nodes) {
		return nil, fmt.Errorf("%s/%d has no leader (%d)", topic, partition, d.Leader)
	}
	return c.Node(d.Leader), nil
}

// Partition describes topic's partition (leader, replicas, in-sync
// replicas) as the first running node that answers within a second says:
// asked directly, so that a node just killed delays nothing.
func (c *Cluster) Partition(ctx context.Context, topic string, partition int32) (kadm.PartitionDetail, error) {
	err := errors.New("no node runs")
	for _, n := range c.nodes {
		if !n.Running() {
			continue
		}
		var adm *kadm.Client
		var done func()
		if adm, done, err = c.adminOf(n); err != nil {
			return kadm.PartitionDetail{}, err
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		var topics kadm.TopicDetails
		topics, err = adm.ListTopics(rctx, topic)
		cancel()
		done()
		if err != nil {
			continue
		}
		p, ok := topics[topic].Partitions[partition]
		if !ok {
			return kadm.PartitionDetail{}, fmt.Errorf("%s/%d not found: %v", topic, partition, topics[topic].Err)
		}
		return p, p.Err
	}
	return kadm.PartitionDetail{}, err
}

// MoveLeader makes to the preferred leader of topic's partition, by
// reordering its replicas (a reassignment that moves no data), and runs a
// preferred leader election, so that leadership moves to it as an
// operator's rebalance would move it.
func (c *Cluster) MoveLeader(ctx context.Context, topic string, partition int32, to *Node) error {
	d, err := c.Partition(ctx, topic, partition)
	if err != nil {
		return err
	}
	replicas := []int32{int32(to.ID)}
	for _, r := range d.Replicas {
		if r != int32(to.ID) {
			replicas = append(replicas, r)
		}
	}
	var req kadm.AlterPartitionAssignmentsReq
	req.Assign(topic, partition, replicas)
	resp, err := c.Admin().AlterPartitionAssignments(ctx, req)
	if err != nil {
		return err
	}
	if err := resp.Error(); err != nil {
		return err
	}
	for {
		d, err := c.Partition(ctx, topic, partition)
		if err == nil && slices.Equal(d.Replicas, replicas) {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("reassigning %s/%d to %v: %v", topic, partition, replicas, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	set := make(kadm.TopicsSet)
	set.Add(topic, partition)
	results, err := c.Admin().ElectLeaders(ctx, kadm.ElectPreferredReplica, set)
	if err != nil {
		return err
	}
	for _, ps := range results {
		for _, r := range ps {
			if r.Err != nil && !errors.Is(r.Err, kerr.ElectionNotNeeded) {
				return fmt.Errorf("electing the preferred leader of %s/%d: %w", topic, r.Partition, r.Err)
			}
		}
	}
	for { // until the metadata says so
		if leader, err := c.Leader(ctx, topic, partition); err == nil && leader == to {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("leadership of %s/%d did not move to node %d: %v", topic, partition, to.ID, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// adminOf is an admin client of n alone, and a function closing it.
func (c *Cluster) adminOf(n *Node) (*kadm.Client, func(), error) {
	cl, err := newClient(n.Addr(Plaintext))
	if err != nil {
		return nil, nil, err
	}
	return kadm.NewClient(cl), cl.Close, nil
}

// Records reads every record of topic, up to the end offsets the brokers
// report now, with franz-go's consumer: a client independent of the
// producer under test.
func (c *Cluster) Records(ctx context.Context, topic string) ([]*kgo.Record, error) {
	ends, err := c.Admin().ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	if err := ends.Error(); err != nil {
		return nil, err
	}
	starts, err := c.Admin().ListStartOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	want := int64(0)
	ends.Each(func(o kadm.ListedOffset) {
		s, _ := starts.Lookup(topic, o.Partition)
		want += o.Offset - s.Offset
	})
	if want == 0 {
		return nil, nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers(Plaintext)...),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var recs []*kgo.Record
	for int64(len(recs)) < want {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return recs, fmt.Errorf("read %d of %d records of %s: %w", len(recs), want, topic, ctx.Err())
		}
		if errs := fetches.Errors(); len(errs) > 0 {
			return recs, fmt.Errorf("reading %s/%d: %w", errs[0].Topic, errs[0].Partition, errs[0].Err)
		}
		recs = append(recs, fetches.Records()...)
	}
	return recs, nil
}
