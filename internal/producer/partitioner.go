package producer

import (
	"math/rand/v2"

	"github.com/segmentio/kafka-go"
)

// keyPartitioner places keyed records as Kafka's Java client does
// (murmur2 of the key over all partitions).
var keyPartitioner = kafka.Murmur2Balancer{Consistent: true}

// partitionFor returns the partition rec goes to: the one it asks for; for
// a keyed record the one Kafka's Java client would choose; otherwise the
// topic's sticky partition.
func (t *topicLayout) partitionFor(rec *Record) *partition {
	switch {
	case rec.Partition >= 0:
		return t.parts[rec.Partition]
	case rec.Key != nil:
		return t.parts[keyPartitioner.Balance(kafka.Message{Key: rec.Key}, t.ids...)]
	}
	return t.sticky()
}

// sticky returns the partition that records without a key go to: one
// partition until its batch is taken, then another (KIP-480), so that
// batches stay large however many partitions the topic has.
//
// A sticky partition that lost its leader, or whose broker did not answer
// the last request, is left at once: its records would wait there while
// the other partitions take them. The sticky choice is shared by the
// topic's snapshots, and a snapshot older than the one that chose it may
// have fewer partitions: it then picks among its own.
func (t *topicLayout) sticky() *partition {
	id := t.ts.sticky.Load()
	if id >= 0 && int(id) < len(t.parts) {
		if pt := t.parts[id]; pt.leader.Load() >= 0 && !pt.p.sinkFailing(pt) {
			return pt
		}
	}
	pt := t.pick(id)
	t.ts.sticky.CompareAndSwap(id, pt.id)
	return pt
}

// pick chooses a partition other than not at random, among those whose
// leader is known and was reachable at the last request, else among those
// with a leader, else among all.
func (t *topicLayout) pick(not int32) *partition {
	var choice *partition
	seen := 0
	for _, pt := range t.led {
		if pt.id == not || pt.p.sinkFailing(pt) {
			continue
		}
		// Reservoir sampling: a uniform choice in one pass, without
		// a list.
		if seen++; rand.IntN(seen) == 0 {
			choice = pt
		}
	}
	if choice != nil {
		return choice
	}
	list := t.led
	if len(list) == 0 {
		list = t.parts
	}
	return list[rand.IntN(len(list))]
}

// batchTaken moves the topic's sticky partition on once pt's batch is
// taken; pt.mu is held.
func (ts *topicState) batchTaken(pt *partition) {
	if ts.sticky.Load() != pt.id {
		return
	}
	if cur := ts.current.Load(); cur != nil && len(cur.parts) > 1 {
		ts.sticky.CompareAndSwap(pt.id, cur.pick(pt.id).id)
	}
}
