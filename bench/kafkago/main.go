// Command kafkago is the baseline of bench/run.sh: a bare Go Kafka
// producer (acks=all) publishing the same payload from the same number of
// concurrent, synchronous callers as the HTTP load, for a fixed time:
// kafka-go's Writer (-client kafka-go, the library this module is built
// on), franz-go's kgo (-client kgo, the fastest Go client; idempotent,
// as this module's producer is by default), or the module's own producer
// without HTTP (-client producer), to hold it to kgo. It prints one JSON line:
// records written, seconds, and the CPU time this process used.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:19092", "bootstrap broker")
	topic := flag.String("topic", "bench", "topic")
	client := flag.String("client", "kafka-go", "the producer: kafka-go (its Writer), kgo (franz-go) or producer (the module's)")
	callers := flag.Int("callers", 64, "concurrent synchronous callers")
	perCall := flag.Int("records-per-call", 1, "records in each call")
	duration := flag.Duration("duration", 10*time.Second, "how long to run")
	batchTimeout := flag.Duration("batch-timeout", time.Millisecond, "kafka.Writer BatchTimeout")
	inFlight := flag.Int("max-in-flight", 1, "-client producer: produce requests in flight to a broker")
	body := flag.String("body", `{"messages": [{"msg":"hello world"}]}`, "record value")
	flag.Parse()

	var send func(n int) error // sends n records in one synchronous call
	switch *client {
	case "kafka-go":
		w := &kafka.Writer{
			Addr:         kafka.TCP(*brokers),
			Topic:        *topic,
			RequiredAcks: kafka.RequireAll,
			BatchTimeout: *batchTimeout,
			BatchSize:    1000,
		}
		defer w.Close()
		msgs := make([]kafka.Message, *perCall)
		for i := range msgs {
			msgs[i] = kafka.Message{Value: []byte(*body)}
		}
		send = func(n int) error { return w.WriteMessages(context.Background(), msgs[:n]...) }
	case "kgo":
		cl, err := kgo.NewClient(kgo.SeedBrokers(*brokers), kgo.DefaultProduceTopic(*topic), kgo.RequiredAcks(kgo.AllISRAcks()))
		if err != nil {
			fmt.Fprintln(os.Stderr, "kgo:", err)
			os.Exit(1)
		}
		defer cl.Close()
		send = func(n int) error {
			// Records are the client's until their promise runs:
			// a new slice a call, as a caller would build.
			recs := make([]*kgo.Record, n)
			for i := range recs {
				recs[i] = &kgo.Record{Value: []byte(*body)}
			}
			return cl.ProduceSync(context.Background(), recs...).FirstErr()
		}
	case "producer":
		p, err := producer.New(producer.Config{Brokers: []string{*brokers}, Acks: producer.AcksAll, MaxInFlight: *inFlight})
		if err != nil {
			fmt.Fprintln(os.Stderr, "producer:", err)
			os.Exit(1)
		}
		defer func() { <-p.Close() }()
		value := []byte(*body)
		send = func(n int) error {
			// Records are the producer's until the call returns: a
			// new block a call, as the handler makes one a request.
			block := make([]producer.Record, n)
			recs := make([]*producer.Record, n)
			now := time.Now()
			for i := range block {
				block[i] = producer.MakeRecord(value, now, 10*time.Second)
				block[i].Topic = *topic
				recs[i] = &block[i]
			}
			if err := p.Produce(context.Background(), recs); err != nil {
				return err
			}
			for _, rec := range recs {
				if f := rec.Outcome(); f != nil {
					return f
				}
			}
			return nil
		}
	default:
		fmt.Fprintf(os.Stderr, "-client %q: kafka-go, kgo or producer\n", *client)
		os.Exit(2)
	}
	// Warm up metadata and connections.
	if err := send(1); err != nil {
		fmt.Fprintln(os.Stderr, "warm-up:", err)
		os.Exit(1)
	}

	var written, failed atomic.Int64
	cpu0 := cpuTime()
	start := time.Now()
	stop := start.Add(*duration)
	var wg sync.WaitGroup
	for range *callers {
		wg.Go(func() {
			for time.Now().Before(stop) {
				if err := send(*perCall); err != nil {
					failed.Add(int64(*perCall))
					continue
				}
				written.Add(int64(*perCall))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"records":     written.Load(),
		"failed":      failed.Load(),
		"seconds":     elapsed.Seconds(),
		"cpu_seconds": cpu.Seconds(),
	})
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
