package producer

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"
)

// seedBody is the seed Worker's example payload.
const seedBody = `{"messages": [{"msg":"hello world"}]}`

// batchCounter counts the acknowledged batches and their records.
type batchCounter struct{ batches, records atomic.Int64 }

func (c *batchCounter) Batch(_ string, records int) {
	c.batches.Add(1)
	c.records.Add(int64(records))
}

// BenchmarkProducerSend measures the producer from enqueue to
// acknowledgement, with acks=all, from 1 and from 64 concurrent callers,
// on a topic of 1 and of 6 partitions. It reports the records per batch
// that group commit and sticky partitioning achieved.
func BenchmarkProducerSend(b *testing.B) {
	for _, partitions := range []int32{1, 6} {
		for _, callers := range []int{1, 64} {
			b.Run("partitions="+strconv.Itoa(int(partitions))+"/callers="+strconv.Itoa(callers), func(b *testing.B) {
				c := kafkatest.NewCluster(b, kfake.NumBrokers(1), kfake.SeedTopics(partitions, "bench"))
				var counted batchCounter
				p := mustProducer(b, Config{Brokers: c.ListenAddrs(), Acks: AcksAll, Hooks: &counted}, zap.NewNop())
				defer func() { <-p.Close() }()
				body := []byte(seedBody)
				// Warm up: metadata, connections, the producer ID.
				if _, perr := sendOne(p, "bench", body, 5*time.Second); perr != nil {
					b.Fatal(perr)
				}
				batches0, records0 := counted.batches.Load(), counted.records.Load()
				b.ReportAllocs()
				b.SetParallelism((callers + 1) / 2) // GOMAXPROCS is 2 here
				if callers == 1 {
					b.SetParallelism(1)
				}
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						rec := NewRecord(body, time.Now(), 5*time.Second)
						if perr := p.send(context.Background(), "bench", rec); perr != nil {
							b.Error(perr)
							return
						}
					}
				})
				b.StopTimer()
				if n := counted.batches.Load() - batches0; n > 0 {
					b.ReportMetric(float64(counted.records.Load()-records0)/float64(n), "records/batch")
				}
			})
		}
	}
}
