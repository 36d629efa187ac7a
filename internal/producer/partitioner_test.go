package producer

import (
	"testing"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/kafkatest"
)

func TestKeyPartitionerMatchesJavaClient(t *testing.T) {
	for _, n := range []int{1, 3, 7, 12, 1000003} {
		set := &topicLayout{parts: make([]*partition, n), ids: make([]int, n)}
		for i := range n {
			set.parts[i] = &partition{id: int32(i)}
			set.ids[i] = i
		}
		for key := range kafkatest.JavaMurmur2 {
			rec := NewRecord(nil, time.Now(), time.Second)
			rec.Key = []byte(key)
			if got, want := set.partitionFor(rec).id, kafkatest.JavaPartition(key, n); got != want {
				t.Errorf("key %q over %d partitions: partition %d, the Java client says %d", key, n, got, want)
			}
		}
	}
}
