// Package kafkatest holds what the tests of this module share: an
// in-process Kafka-protocol broker (franz-go's kfake) with its fault
// injections, and a second, independent Kafka client to read back what
// reached it.
package kafkatest

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// NewCluster starts an in-process Kafka-protocol broker (kfake) that is
// closed when the test ends.
func NewCluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("starting kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Stored reads every record of topic, up to what the brokers report as
// written, with franz-go's client: a Kafka client independent of ours.
func Stored(t testing.TB, c *kfake.Cluster, topic string) []*kgo.Record {
	t.Helper()
	want := int64(0)
	for _, p := range c.PartitionInfos(topic) {
		want += p.HighWatermark - p.LogStartOffset
	}
	if want == 0 {
		return nil
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(c.ListenAddrs()...),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for int64(len(recs)) < want {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records of %s: %v", len(recs), want, topic, ctx.Err())
		}
		fetches.EachError(func(_ string, _ int32, err error) { t.Fatalf("consuming: %v", err) })
		recs = append(recs, fetches.Records()...)
	}
	return recs
}

// ObservedLogger returns a logger whose entries, at debug level and above,
// the test can inspect.
func ObservedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// records reads topic back with kgo, by value.
func RecordsByValue(t testing.TB, c *kfake.Cluster, topic string) map[string]*kgo.Record {
	t.Helper()
	m := map[string]*kgo.Record{}
	for _, r := range Stored(t, c, topic) {
		m[string(r.Value)] = r
	}
	return m
}

// ClosedPort returns a local address where nothing listens.
func ClosedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// WaitFor polls cond until it holds, failing the test after limit.
func WaitFor(t testing.TB, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// HoldProduce makes the broker hold every produce request until release
// is closed, and counts the requests it received.
func HoldProduce(c *kfake.Cluster, release <-chan struct{}) *atomic.Int32 {
	var received atomic.Int32
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		received.Add(1)
		c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	return &received
}

// HoldFirstProduce makes the broker hold the first produce request until
// release is closed, and answer the others; it counts the requests.
func HoldFirstProduce(c *kfake.Cluster, release <-chan struct{}) *atomic.Int32 {
	var received atomic.Int32
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if received.Add(1) == 1 {
			c.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	return &received
}

// JavaMurmur2 holds the murmur2 hashes that Kafka's Java client computes
// (org.apache.kafka.common.utils.UtilsTest#testMurmur2).
var JavaMurmur2 = map[string]int32{
	"21":                         -973932308,
	"foobar":                     -790332482,
	"a-little-bit-long-string":   -985981536,
	"a-little-bit-longer-string": -1486304829,
	"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
	"abc": 479470107,
}

// JavaPartition is where the Java client's default partitioner puts a
// keyed record: toPositive(murmur2(key)) % partitions.
func JavaPartition(key string, partitions int) int32 {
	return (JavaMurmur2[key] & 0x7fffffff) % int32(partitions)
}

// refuseBadRecords makes c refuse every produce request holding a record
// whose bytes contain "bad", as Kafka refuses a record it will never take
// (a record without a key on a compacted topic): with INVALID_RECORD
// naming the records at fault if named, else with CORRUPT_MESSAGE and no
// names, as older brokers do. The first after produce requests are left
// alone. It reports the records of each refused request.
func RefuseBadRecords(t testing.TB, c *kfake.Cluster, named bool, after int) <-chan int {
	refused := make(chan int, 100)
	seen := 0
	c.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if seen++; seen <= after {
			return nil, nil, false
		}
		req := kreq.(*kmsg.ProduceRequest)
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		refuse := false
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				var batch kmsg.RecordBatch
				if err := batch.ReadFrom(rp.Records); err != nil {
					t.Errorf("reading a record batch: %v", err)
				}
				for i, raw := range splitRecords(batch) {
					if !bytes.Contains(raw, []byte("bad")) {
						continue
					}
					refuse = true
					if named {
						sp.ErrorCode = kerr.InvalidRecord.Code
						er := kmsg.NewProduceResponseTopicPartitionErrorRecord()
						er.RelativeOffset = int32(i)
						msg := "Compacted topic cannot accept message without key in topic partition " + rt.Topic
						er.ErrorMessage = &msg
						sp.ErrorRecords = append(sp.ErrorRecords, er)
					} else {
						sp.ErrorCode = kerr.CorruptMessage.Code
					}
				}
				if refuse {
					select {
					case refused <- int(batch.NumRecords):
					default:
					}
				}
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		if !refuse {
			return nil, nil, false
		}
		return resp, nil, true
	})
	return refused
}

// splitRecords returns the bytes of each record of an uncompressed batch.
func splitRecords(batch kmsg.RecordBatch) [][]byte {
	var recs [][]byte
	b := batch.Records
	for range batch.NumRecords {
		n, used := binary.Varint(b)
		recs = append(recs, b[used:used+int(n)])
		b = b[used+int(n):]
	}
	return recs
}

// NoLeaks fails the test if goroutines it started are still running once
// all its other cleanups (producers, brokers) have run.
func NoLeaks(t testing.TB) {
	t.Helper()
	current := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, current) })
}

// GoroutinesOf returns the stacks of the goroutines that run code of one
// of owners, other than those running the tests' own code.
func GoroutinesOf(owners ...string) []string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var found []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "_test.go:") {
			continue
		}
		for _, o := range owners {
			if strings.Contains(g, o) {
				found = append(found, g)
				break
			}
		}
	}
	return found
}

// BatchID is what tells a producer's batches apart: its producer ID and
// the sequence number of its first record (-1 without idempotence), and
// its records.
type BatchID struct {
	ProducerID int64
	Sequence   int32
	Records    int32
}

// ProducedBatches records the batches of every produce request c receives,
// as it receives them (before the controls added after it); the function
// it returns lists the distinct ones so far.
func ProducedBatches(c *kfake.Cluster) func() []BatchID {
	var mu sync.Mutex
	seen := map[BatchID]bool{}
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		mu.Lock()
		defer mu.Unlock()
		for _, t := range req.(*kmsg.ProduceRequest).Topics {
			for _, p := range t.Partitions {
				var b kmsg.RecordBatch
				if b.ReadFrom(p.Records) == nil {
					seen[BatchID{b.ProducerID, b.FirstSequence, b.NumRecords}] = true
				}
			}
		}
		return nil, nil, false
	})
	return func() []BatchID {
		mu.Lock()
		defer mu.Unlock()
		var list []BatchID
		for id := range seen {
			list = append(list, id)
		}
		return list
	}
}

// SASLSessions is the broker's side of KIP-368 that kfake lacks: kfake
// tells a client its SASL session's lifetime (connections.max.reauth.ms)
// and takes a re-authentication, but never ends a session, while Kafka
// closes a connection on which any request arrives after its session
// ended (SocketServer's "Disconnecting expired channel"), with the
// request lost. A session starts when the SaslAuthenticate request that
// completes it arrives, a little earlier than Kafka counts it from, so
// this is the stricter of the two.
type SASLSessions struct {
	lifetime time.Duration
	// Expired counts the connections closed for a request after their
	// session ended.
	Expired atomic.Int32
	// Reauthentications counts the handshakes on connections already
	// authenticated.
	Reauthentications atomic.Int32
}

// ExpireSASLSessions returns the options of a cluster whose SASL sessions
// last lifetime: kfake's setting, and a listener that ends them.
func ExpireSASLSessions(lifetime time.Duration) (*SASLSessions, []kfake.Opt) {
	s := &SASLSessions{lifetime: lifetime}
	return s, []kfake.Opt{
		kfake.BrokerConfigs(map[string]string{"connections.max.reauth.ms": strconv.FormatInt(lifetime.Milliseconds(), 10)}),
		kfake.ListenFn(func(network, address string) (net.Listener, error) {
			ln, err := net.Listen(network, address)
			if err != nil {
				return nil, err
			}
			return &sessionListener{Listener: ln, s: s}, nil
		}),
	}
}

type sessionListener struct {
	net.Listener
	s *SASLSessions
}

func (l *sessionListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &sessionConn{Conn: conn, s: l.s}, nil
}

// sessionConn reads a client's requests (each its size, 4 bytes, then its
// API key, 2 bytes, then the rest) as kfake does, and closes the
// connection at a request that arrives after the session ended.
type sessionConn struct {
	net.Conn
	s        *SASLSessions
	head     [6]byte
	headN    int
	left     int64
	started  time.Time // the session's; zero before the first
	finished bool
}

func (c *sessionConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.finished {
		return 0, net.ErrClosed
	}
	for rest := b[:n]; len(rest) > 0; {
		if c.left > 0 {
			skip := min(int64(len(rest)), c.left)
			c.left -= skip
			rest = rest[skip:]
			continue
		}
		k := copy(c.head[c.headN:], rest)
		c.headN += k
		rest = rest[k:]
		if c.headN < len(c.head) {
			continue
		}
		c.headN = 0
		c.left = max(int64(binary.BigEndian.Uint32(c.head[:4]))-2, 0)
		now := time.Now()
		if !c.started.IsZero() && now.Sub(c.started) > c.s.lifetime {
			c.s.Expired.Add(1)
			c.finished = true
			c.Conn.Close()
			return 0, net.ErrClosed
		}
		switch kmsg.Key(binary.BigEndian.Uint16(c.head[4:6])) {
		case kmsg.SASLHandshake:
			if !c.started.IsZero() {
				c.s.Reauthentications.Add(1)
			}
		case kmsg.SASLAuthenticate:
			c.started = now
		}
	}
	return n, err
}
