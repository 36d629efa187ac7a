package producer

import (
	"fmt"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Every batch of the idempotent producer carries its producer ID, and the
// sequence numbers of a partition follow each other from 0.
func TestBatchesCarryTheProducerIDAndSequence(t *testing.T) {
	c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	batches := kafkatest.ProducedBatches(c)
	p := testProducer(t, c)
	for i := range 3 {
		if _, perr := sendOne(p, "events", fmt.Appendf(nil, `%d`, i), 5*time.Second); perr != nil {
			t.Fatal(perr)
		}
	}
	s := p.currentSession()
	got := map[kafkatest.BatchID]bool{}
	for _, b := range batches() {
		got[b] = true
	}
	for seq := range int32(3) {
		if !got[kafkatest.BatchID{ProducerID: s.id, Sequence: seq, Records: 1}] {
			t.Errorf("no batch of producer %d at sequence %d: %v", s.id, seq, batches())
		}
	}
}

// The broker's answers that it lost track of the producer or of the
// partition's sequence are recovered with a new producer ID, the batch
// (which the broker did not append) sent again under it: the record is
// acknowledged and stored once. DUPLICATE_SEQUENCE_NUMBER is the broker
// saying it has the batch already: success.
func TestSequenceErrors(t *testing.T) {
	for _, tt := range []struct {
		err     *kerr.Error
		renewed bool
		stored  int64
	}{
		{kerr.OutOfOrderSequenceNumber, true, 2},
		{kerr.UnknownProducerID, true, 2},
		{kerr.InvalidProducerEpoch, true, 2},
		{kerr.DuplicateSequenceNumber, false, 1},
	} {
		t.Run(tt.err.Message, func(t *testing.T) {
			kafkatest.NoLeaks(t)
			c, p := warmProducer(t)
			before := p.currentSession()
			fault := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "events", Err: tt.err})
			rec, perr := sendOne(p, "events", []byte(`"after"`), 5*time.Second)
			if perr != nil {
				t.Fatalf("got %v, want the record acknowledged", perr)
			}
			if fault.Hits() != 1 {
				t.Errorf("the fault answered %d requests, want 1", fault.Hits())
			}
			after := p.currentSession()
			if renewed := after.id != before.id; renewed != tt.renewed {
				t.Errorf("producer ID %d, then %d: want renewed %v", before.id, after.id, tt.renewed)
			}
			if tt.renewed && rec.attempts.Load() != 2 {
				t.Errorf("attempts = %d, want 2: refused, then sent under the new ID", rec.attempts.Load())
			}
			if hw := c.PartitionInfo("events", 0).HighWatermark; hw != tt.stored {
				t.Errorf("the topic holds %d records, want %d (the warm-up and the record once, or the warm-up alone when the broker said it had the batch)", hw, tt.stored)
			}
		})
	}
}

// A cluster that refuses InitProducerId: without idempotent on, the
// producer warns and produces without idempotence; with it, records are
// refused (500). CheckIdempotence says why in both.
func TestClusterRefusingIdempotence(t *testing.T) {
	for _, mode := range []Idempotence{IdempotenceAuto, IdempotenceOn} {
		t.Run(fmt.Sprint("idempotence=", mode), func(t *testing.T) {
			c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
			c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.InitProducerID}, Err: kerr.ClusterAuthorizationFailed, Count: -1})
			batches := kafkatest.ProducedBatches(c)
			logger, logs := kafkatest.ObservedLogger()
			p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: AcksAll, Idempotence: mode}, logger)
			t.Cleanup(func() { <-p.Close() })
			if err := p.CheckIdempotence(t.Context()); err == nil {
				t.Fatal("CheckIdempotence: nil, want the refusal")
			}
			_, perr := sendOne(p, "events", []byte(`"x"`), 2*time.Second)
			if mode == IdempotenceAuto {
				if perr != nil {
					t.Fatalf("send %v: want the record produced without idempotence", perr)
				}
				if logs.FilterMessageSnippet("refuses the idempotent producer: producing without it").Len() != 1 {
					t.Error("no warning that the producer is not idempotent")
				}
				if got := batches(); len(got) != 1 || got[0].ProducerID != -1 {
					t.Errorf("batches %v, want one without a producer ID", got)
				}
				return
			}
			if perr == nil || perr.Outcome != OutcomeRejected || perr.Reason != "the Kafka cluster refuses the idempotent producer" {
				t.Fatalf("send: %v, want refused", perr)
			}
			if len(batches()) != 0 {
				t.Errorf("batches %v sent, want none", batches())
			}
		})
	}
}

// Idempotence needs acks=all, as in Kafka's clients: with fewer acks the
// producer's batches carry no producer ID.
func TestIdempotenceOnlyWithAcksAll(t *testing.T) {
	for _, acks := range []Acks{AcksLeader, AcksNone} {
		t.Run(acks.String(), func(t *testing.T) {
			c := kafkatest.NewCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
			batches := kafkatest.ProducedBatches(c)
			p := mustProducer(t, Config{Brokers: c.ListenAddrs(), Acks: acks}, nil)
			t.Cleanup(func() { <-p.Close() })
			if _, perr := sendOne(p, "events", []byte(`"x"`), 5*time.Second); perr != nil {
				t.Fatal(perr)
			}
			// With acks=none, acknowledged once sent: wait for the append.
			kafkatest.WaitFor(t, 5*time.Second, func() bool { return c.PartitionInfo("events", 0).HighWatermark == 1 })
			if got := batches(); len(got) != 1 || got[0].ProducerID != -1 {
				t.Errorf("batches %v, want one without a producer ID", got)
			}
		})
	}
}
