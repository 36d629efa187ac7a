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
func (t *Topic) partitionFor(rec *Record) *partition {
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
func (t *Topic) sticky() *partition {
	if id := t.ts.sticky.Load(); id >= 0 && int(id) < len(t.parts) {
		return t.parts[id]
	}
	pt := t.pick(-1)
	t.ts.sticky.CompareAndSwap(-1, pt.id)
	return t.parts[t.ts.sticky.Load()]
}

// pick chooses a partition other than not at random, among those whose
// leader is known and was reachable at the last request, else among those
// with a leader, else among all.
func (t *Topic) pick(not int32) *partition {
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
