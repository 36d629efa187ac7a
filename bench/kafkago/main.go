// Command kafkago is the baseline of bench/run.sh: a bare kafka-go
// producer (kafka.Writer, acks=all) publishing the same payload from the
// same number of concurrent, synchronous callers as the HTTP load, for a
// fixed time. It prints one JSON line: records written, seconds, and the
// CPU time this process used.
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

	"github.com/segmentio/kafka-go"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:19092", "bootstrap broker")
	topic := flag.String("topic", "bench", "topic")
	callers := flag.Int("callers", 64, "concurrent synchronous callers")
	perCall := flag.Int("records-per-call", 1, "records in each WriteMessages call")
	duration := flag.Duration("duration", 10*time.Second, "how long to run")
	batchTimeout := flag.Duration("batch-timeout", time.Millisecond, "kafka.Writer BatchTimeout")
	body := flag.String("body", `{"messages": [{"msg":"hello world"}]}`, "record value")
	flag.Parse()

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
	// Warm up metadata and connections.
	if err := w.WriteMessages(context.Background(), msgs[0]); err != nil {
		fmt.Fprintln(os.Stderr, "warm-up:", err)
		os.Exit(1)
	}

	var written, failed atomic.Int64
	cpu0 := cpuTime()
	start := time.Now()
	stop := start.Add(*duration)
	var wg sync.WaitGroup
	for range *callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				if err := w.WriteMessages(context.Background(), msgs...); err != nil {
					failed.Add(int64(len(msgs)))
					continue
				}
				written.Add(int64(len(msgs)))
			}
		}()
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
