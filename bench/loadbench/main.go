// Command loadbench is the load benchmark of queue_publish; bench/run.sh
// runs it from the repository root. It builds Caddy with xcaddy, starts the
// in-memory broker in a process of its own and Caddy in another, and drives
// both of Caddy's endpoints, Caddy's respond (the HTTP ceiling) and
// queue_publish, with the same wrk load in alternating rounds. It reads
// each process's CPU time from /proc/<pid>/stat around every run, checks
// with kcat that every acknowledged record is in the topic, runs a bare
// kafka-go producer with the same number of callers for comparison, and
// prints a Markdown report with the ratios; the kafka-go runs alternate
// with the endpoints' rounds too. With -kafka the broker is one
// Apache Kafka node (test/apachekafka) instead of the in-memory broker:
// the same load, so that the two reports side by side say what a real
// broker costs.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/queuepublish/caddy-queue-publish/internal/harness"
	"github.com/queuepublish/caddy-queue-publish/internal/producer"
	"github.com/queuepublish/caddy-queue-publish/test/apachekafka"
)

const (
	respondURL = "http://127.0.0.1:18080/"
	publishURL = "http://127.0.0.1:18081/"
	recordsURL = "http://127.0.0.1:18082/"
	keyedURL   = "http://127.0.0.1:18083/"
	// jwtURL is publishURL's handler with a JWT in place of the secret.
	jwtURL = "http://127.0.0.1:18084/"
	// jwksAddr serves the key set that verifies the benchmark's JWT.
	jwksAddr = "127.0.0.1:18099"
	// The same as respondURL and publishURL over HTTPS with HTTP/2.
	respondTLS = "https://localhost:18443/"
	publishTLS = "https://localhost:18444/"
	// h2Streams is the number of concurrent HTTP/2 streams of the HTTPS
	// runs, on one connection.
	h2Streams = 64
	// perRequest is the number of records in each records-mode request.
	perRequest    = 100
	devBrokerAddr = "127.0.0.1:19092"
	topic         = "bench"
	seedBody      = `{"messages": [{"msg":"hello world"}]}`
)

var (
	duration   = flag.Duration("duration", 10*time.Second, "length of each measured run")
	rounds     = flag.Int("rounds", 3, "alternating rounds of respond and queue_publish")
	conns      = flag.Int("conns", 64, "wrk connections (and kafka-go callers)")
	partitions = flag.Int("partitions", 6, "partitions of the benchmark topic")
	latencyDur = flag.Duration("latency-duration", 5*time.Second, "length of each run at 1 connection")
	linger     = flag.String("linger", "0", "queue_publish linger")
	inFlight   = flag.Int("max-in-flight", 1, "queue_publish max_in_flight")
	caddyBin   = flag.String("caddy", "", "a Caddy binary with queue_publish and the dev broker; built with xcaddy if empty")
	out        = flag.String("out", "", "also write the report to this file")
	realKafka  = flag.Bool("kafka", false, "produce to one Apache Kafka node (test/apachekafka; Java 17 and Maven) instead of the in-memory dev broker")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "loadbench:", err)
		os.Exit(1)
	}
}

// sample is one measured wrk run.
type sample struct {
	Requests   int64 `json:"requests"`
	DurationUS int64 `json:"duration_us"`
	P50US      int64 `json:"p50_us"`
	P99US      int64 `json:"p99_us"`
	Non2xx     int64 `json:"non2xx"`
	SocketErrs int64 `json:"socket_errors"`
	caddyCPU   time.Duration
	brokerCPU  time.Duration
}

type procs struct {
	caddy *exec.Cmd
	// brokerAddr and brokerPid are the broker's address and process.
	brokerAddr string
	brokerPid  int
}

func run() error {
	if *drawDir != "" {
		rows, err := readSweep(*drawDir)
		if err != nil {
			return err
		}
		return drawSweep(*drawDir, rows)
	}
	for _, tool := range []string{"wrk", "kcat", "h2load"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is needed (apt-get install wrk kcat nghttp2-client)", tool)
		}
	}
	tmp, err := os.MkdirTemp("", "loadbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	bin := *caddyBin
	if bin == "" {
		bin = filepath.Join(tmp, "caddy")
		if err := harness.BuildCaddy(bin); err != nil {
			return err
		}
	}
	kafkago := filepath.Join(tmp, "kafkago")
	if err := harness.Run(exec.Command("go", "build", "-o", kafkago, "./bench/kafkago")); err != nil {
		return err
	}

	secret := make([]byte, 32)
	rand.Read(secret)
	env := append(os.Environ(),
		"QUEUE_AUTH_SECRET="+hex.EncodeToString(secret),
		"BENCH_PARTITIONS="+strconv.Itoa(*partitions),
		"BENCH_LINGER="+*linger,
		"BENCH_MAX_IN_FLIGHT="+strconv.Itoa(*inFlight),
		"XDG_DATA_HOME="+filepath.Join(tmp, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(tmp, "config"),
	)
	if err := harness.PortsFree("127.0.0.1:18080", "127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083", "127.0.0.1:18084", "127.0.0.1:18443", "127.0.0.1:18444", jwksAddr); err != nil {
		return err
	}
	token, stopIssuer, err := startIssuer()
	if err != nil {
		return err
	}
	defer stopIssuer()
	env = append(env, "BENCH_JWKS_URL=http://"+jwksAddr+"/jwks")
	var p procs
	stopBroker, err := p.startBroker(bin, tmp, env)
	if err != nil {
		return err
	}
	defer stopBroker()
	defer func() { harness.Stop(p.caddy) }() // before the broker
	env = append(env, "BENCH_BROKERS="+p.brokerAddr)
	if p.caddy, err = harness.StartCaddy(bin, "bench/caddy.Caddyfile", filepath.Join(tmp, "caddy.log"), env); err != nil {
		return err
	}
	for _, addr := range []string{"127.0.0.1:18080", "127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083", "127.0.0.1:18084", "127.0.0.1:18443", "127.0.0.1:18444"} {
		if err := harness.WaitPort(addr); err != nil {
			return err
		}
	}

	recordsEnv := append(slices.Clone(env), "BENCH_BODY="+recordsBody())
	jwtEnv := append(slices.Clone(env), "BENCH_AUTHORIZATION=Bearer "+token)
	acked := int64(0)
	measure := func(url string, c int, d time.Duration) (sample, error) {
		if url == recordsURL {
			s, err := p.measure(url, c, d, recordsEnv)
			acked += perRequest * (s.Requests - s.Non2xx)
			return s, err
		}
		if url == jwtURL {
			s, err := p.measure(url, c, d, jwtEnv)
			acked += s.Requests - s.Non2xx
			return s, err
		}
		var s sample
		var err error
		if strings.HasPrefix(url, "https://") {
			s, err = p.measureH2(url, d, env)
		} else {
			s, err = p.measure(url, c, d, env)
		}
		if url != respondURL && url != respondTLS {
			acked += s.Requests - s.Non2xx
		}
		return s, err
	}
	// Warm up the endpoints (connections, metadata).
	for _, u := range []string{respondURL, publishURL, keyedURL, jwtURL, recordsURL, respondTLS, publishTLS} {
		if _, err := measure(u, *conns, 2*time.Second); err != nil {
			return err
		}
	}
	// Each round measures every endpoint and, beside them, the bare
	// kafka-go and kgo producers against the same broker process, so that
	// each comparison is of runs on a broker in the same state: the
	// in-memory broker slows as it fills.
	var respond, publish, keyed, jwt, respond1, publish1, respondH2, publishH2 []sample
	var kg, kgo baselineResult
	for range *rounds {
		for _, run := range []struct {
			url string
			to  *[]sample
		}{{respondURL, &respond}, {publishURL, &publish}, {keyedURL, &keyed}, {jwtURL, &jwt}, {respondTLS, &respondH2}, {publishTLS, &publishH2}} {
			s, err := measure(run.url, *conns, *duration)
			if err != nil {
				return err
			}
			*run.to = append(*run.to, s)
		}
		if err := p.baselines(kafkago, 1, &kg, &kgo); err != nil {
			return err
		}
	}
	for range *rounds {
		s, err := measure(respondURL, 1, *latencyDur)
		if err != nil {
			return err
		}
		respond1 = append(respond1, s)
		if s, err = measure(publishURL, 1, *latencyDur); err != nil {
			return err
		}
		publish1 = append(publish1, s)
	}

	alone, err := producerAlone(p.brokerAddr)
	if err != nil {
		return err
	}
	acked += producerAloneRecords

	var records []sample
	var kg100, kgo100 baselineResult
	for range *rounds {
		s, err := measure(recordsURL, *conns, *duration)
		if err != nil {
			return err
		}
		records = append(records, s)
		if err := p.baselines(kafkago, perRequest, &kg100, &kgo100); err != nil {
			return err
		}
	}
	if *sweepDir != "" {
		n, err := p.sweep(*sweepDir, env)
		acked += n
		if err != nil {
			return err
		}
	}
	// +1 a run: the baselines' warm-up records.
	expected := acked + kg.Records + kg100.Records + kgo.Records + kgo100.Records + 4*int64(*rounds)

	inTopic, err := countRecords(p.brokerAddr)
	if err != nil {
		return err
	}

	report := renderReport(runs{respond, publish, keyed, jwt, respond1, publish1, records, respondH2, publishH2, alone}, baselines{kg, kg100, kgo, kgo100}, expected, inTopic)
	fmt.Print(report)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
			return err
		}
	}
	for _, s := range slices.Concat(publish, keyed, jwt, publish1, records, publishH2) {
		if s.Non2xx > 0 || s.SocketErrs > 0 {
			return fmt.Errorf("queue_publish answered %d non-2xx, %d socket errors", s.Non2xx, s.SocketErrs)
		}
	}
	if inTopic < expected {
		return fmt.Errorf("%d records acknowledged, only %d in the topic", expected, inTopic)
	}
	return nil
}

// startBroker starts the broker: the dev broker in a Caddy process of its
// own, or one Apache Kafka node with the topic; it returns a function
// stopping it.
func (p *procs) startBroker(bin, tmp string, env []string) (func(), error) {
	if *realKafka {
		c, err := apachekafka.Start(apachekafka.Options{Nodes: 1, Dir: filepath.Join(tmp, "kafka")})
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.CreateTopic(ctx, topic, *partitions, nil); err != nil {
			c.Close(false)
			return nil, err
		}
		p.brokerAddr, p.brokerPid = c.Brokers(apachekafka.Plaintext)[0], c.Node(1).Pid()
		return func() { c.Close(false) }, nil
	}
	if err := harness.PortsFree(devBrokerAddr); err != nil {
		return nil, err
	}
	broker, err := harness.StartCaddy(bin, "bench/broker.Caddyfile", filepath.Join(tmp, "broker.log"), env)
	if err != nil {
		return nil, err
	}
	p.brokerAddr, p.brokerPid = devBrokerAddr, broker.Process.Pid
	stop := func() { harness.Stop(broker) }
	if err := harness.WaitPort(devBrokerAddr); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// recordsBody is a records-mode request of perRequest seed payloads.
func recordsBody() string { return recordsBodyOf(perRequest) }

// baselineResult is what a run of bench/kafkago measured.
type baselineResult struct {
	Records    int64   `json:"records"`
	Failed     int64   `json:"failed"`
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpu_seconds"`
	brokerCPU  time.Duration
}

// add sums the runs of r into k.
func (k *baselineResult) add(r baselineResult) {
	k.Records += r.Records
	k.Failed += r.Failed
	k.Seconds += r.Seconds
	k.CPUSeconds += r.CPUSeconds
	k.brokerCPU += r.brokerCPU
}

// baselines runs the bare kafka-go and kgo producers, one after the other,
// perCall records a call, and adds their runs to kg and kgo.
func (p *procs) baselines(bin string, perCall int, kg, kgo *baselineResult) error {
	for _, b := range []struct {
		client string
		to     *baselineResult
	}{{"kafka-go", kg}, {"kgo", kgo}} {
		r, err := p.baseline(bin, b.client, perCall)
		if err != nil {
			return err
		}
		b.to.add(r)
	}
	return nil
}

// baseline runs a bare Go producer (bench/kafkago -client) for one run's
// duration with the same number of callers, perCall records a call.
func (p *procs) baseline(bin, client string, perCall int) (baselineResult, error) {
	var r baselineResult
	b0 := harness.CPUTime(p.brokerPid)
	out, err := exec.Command(bin, "-client", client, "-brokers", p.brokerAddr, "-topic", topic, "-callers", strconv.Itoa(*conns),
		"-records-per-call", strconv.Itoa(perCall), "-duration", duration.String(), "-body", seedBody).Output()
	if err != nil {
		return r, fmt.Errorf("%s baseline: %v", client, err)
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return r, fmt.Errorf("%s baseline: %v: %s", client, err, out)
	}
	r.brokerCPU = harness.CPUTime(p.brokerPid) - b0
	return r, nil
}

// baselines are the bare producers' runs: kafka-go's Writer and kgo, at 1
// and at perRequest records a call.
type baselines struct{ kg, kg100, kgo, kgo100 baselineResult }

// rate is records a second; cpu the client's CPU per record, in us; broker
// the broker's.
func (k baselineResult) rate() float64 { return float64(k.Records) / k.Seconds }
func (k baselineResult) cpu() float64  { return k.CPUSeconds * 1e6 / float64(k.Records) }
func (k baselineResult) broker() float64 {
	return float64(k.brokerCPU.Microseconds()) / float64(k.Records)
}

// measure runs wrk once against url and reads the CPU time that Caddy and
// the broker used meanwhile.
func (p *procs) measure(url string, c int, d time.Duration, env []string) (sample, error) {
	c0, b0 := harness.CPUTime(p.caddy.Process.Pid), harness.CPUTime(p.brokerPid)
	cmd := exec.Command("wrk", "-t1", "-c"+strconv.Itoa(c), "-d"+strconv.Itoa(max(int(d.Seconds()), 1))+"s", // wrk counts whole seconds
		"--latency", "-s", "bench/wrk.lua", url)
	cmd.Env = env
	outb, err := cmd.CombinedOutput()
	if err != nil {
		return sample{}, fmt.Errorf("wrk: %v\n%s", err, outb)
	}
	var s sample
	sc := bufio.NewScanner(bytes.NewReader(outb))
	found := false
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "BENCH "); ok {
			if err := json.Unmarshal([]byte(line), &s); err != nil {
				return s, err
			}
			found = true
		}
	}
	if !found {
		return s, fmt.Errorf("no result from wrk:\n%s", outb)
	}
	s.caddyCPU = harness.CPUTime(p.caddy.Process.Pid) - c0
	s.brokerCPU = harness.CPUTime(p.brokerPid) - b0
	return s, nil
}

// measureH2 runs h2load once against url (HTTPS, HTTP/2, h2Streams
// streams on one connection) and reads the CPU time that Caddy and the
// broker used meanwhile. h2load gives no percentiles: the sample has none.
func (p *procs) measureH2(url string, d time.Duration, env []string) (sample, error) {
	body := filepath.Join(os.TempDir(), "loadbench-body.json")
	if err := os.WriteFile(body, []byte(seedBody), 0o600); err != nil {
		return sample{}, err
	}
	defer os.Remove(body)
	var secret string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "QUEUE_AUTH_SECRET="); ok {
			secret = v
		}
	}
	c0, b0 := harness.CPUTime(p.caddy.Process.Pid), harness.CPUTime(p.brokerPid)
	outb, err := exec.Command("h2load", "-D", strconv.Itoa(int(d.Seconds())), "-c1", "-m"+strconv.Itoa(h2Streams),
		"-d", body, "-H", "Authorization: "+secret, "-H", "Content-Type: application/json", url).CombinedOutput()
	if err != nil {
		return sample{}, fmt.Errorf("h2load: %v\n%s", err, outb)
	}
	s := sample{DurationUS: d.Microseconds()}
	// "status codes: N 2xx, N 3xx, N 4xx, N 5xx": every answer, also
	// those that came after the run's end; "requests: ... N failed, N
	// errored, N timeout".
	var ok2xx, s3, s4, s5, failed, errored, timeouts int64
	found := false
	for line := range strings.Lines(string(outb)) {
		if _, err := fmt.Sscanf(line, "status codes: %d 2xx, %d 3xx, %d 4xx, %d 5xx", &ok2xx, &s3, &s4, &s5); err == nil {
			found = true
		}
		if i := strings.Index(line, "succeeded, "); strings.HasPrefix(line, "requests: ") && i > 0 {
			fmt.Sscanf(line[i:], "succeeded, %d failed, %d errored, %d timeout", &failed, &errored, &timeouts)
		}
	}
	if !found {
		return s, fmt.Errorf("no result from h2load:\n%s", outb)
	}
	s.Requests = ok2xx + s3 + s4 + s5
	s.Non2xx = s3 + s4 + s5
	s.SocketErrs = errored + timeouts
	s.caddyCPU = harness.CPUTime(p.caddy.Process.Pid) - c0
	s.brokerCPU = harness.CPUTime(p.brokerPid) - b0
	return s, nil
}

// countRecords counts the records in the topic with kcat, an independent
// Kafka client.
func countRecords(brokerAddr string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kcat", "-b", brokerAddr, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "\n")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	n, err := countLines(stdout)
	if werr := cmd.Wait(); werr != nil {
		return n, fmt.Errorf("kcat: %v", werr)
	}
	return n, err
}

func countLines(r io.Reader) (int64, error) {
	buf := make([]byte, 1<<16)
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(bytes.Count(buf[:m], []byte{'\n'}))
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// summary aggregates the runs of one endpoint: throughput and CPU over all
// of them, latency percentiles as the median of the runs.
type summary struct {
	reqPerSec, p50ms, p99ms, caddyUS, brokerUS float64
	non2xx                                     int64
}

func summarize(runs []sample) summary {
	var req, non2xx int64
	var us int64
	var caddy, broker time.Duration
	var p50, p99 []float64
	for _, s := range runs {
		req += s.Requests
		non2xx += s.Non2xx + s.SocketErrs
		us += s.DurationUS
		caddy += s.caddyCPU
		broker += s.brokerCPU
		p50 = append(p50, float64(s.P50US)/1000)
		p99 = append(p99, float64(s.P99US)/1000)
	}
	return summary{
		reqPerSec: float64(req) / (float64(us) / 1e6),
		p50ms:     median(p50),
		p99ms:     median(p99),
		caddyUS:   float64(caddy.Microseconds()) / float64(req),
		brokerUS:  float64(broker.Microseconds()) / float64(req),
		non2xx:    non2xx,
	}
}

func median(v []float64) float64 {
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// runs are the measured runs of each endpoint.
type runs struct {
	respond, publish, keyed, jwt, respond1, publish1, records, respondH2, publishH2 []sample
	alone                                                                           sample
}

// producerAlone sends records one at a time with the module's producer,
// in this process and without HTTP, to the broker: the round trip that a
// request at 1 connection waits for.
func producerAlone(brokerAddr string) (sample, error) {
	const n, warm = producerAloneRecords - 500, 500
	p, err := producer.New(producer.Config{Brokers: []string{brokerAddr}, Acks: producer.AcksAll})
	if err != nil {
		return sample{}, err
	}
	defer func() { <-p.Close() }()
	var lat []time.Duration
	start := time.Now()
	for i := range n + warm {
		if i == warm {
			start = time.Now()
		}
		rec := producer.NewRecord([]byte(seedBody), time.Now(), 5*time.Second)
		rec.Topic = topic
		t0 := time.Now()
		if err := p.Produce(context.Background(), []*producer.Record{rec}); err != nil {
			return sample{}, fmt.Errorf("the producer alone: %v", err)
		}
		if perr := rec.Outcome(); perr != nil {
			return sample{}, fmt.Errorf("the producer alone: %v", perr)
		}
		if i >= warm {
			lat = append(lat, time.Since(t0))
		}
	}
	slices.Sort(lat)
	return sample{Requests: n, DurationUS: time.Since(start).Microseconds(),
		P50US: lat[n/2].Microseconds(), P99US: lat[n*99/100].Microseconds()}, nil
}

// producerAloneRecords is the number of records producerAlone sends.
const producerAloneRecords = 5500

func renderReport(rs runs, bl baselines, expected, inTopic int64) string {
	kg, kg100, kgo, kgo100 := bl.kg, bl.kg100, bl.kgo, bl.kgo100
	r, q, k, j := summarize(rs.respond), summarize(rs.publish), summarize(rs.keyed), summarize(rs.jwt)
	r1, q1 := summarize(rs.respond1), summarize(rs.publish1)
	rm := summarize(rs.records)
	rh, qh := summarize(rs.respondH2), summarize(rs.publishH2)
	kgRate := float64(kg.Records) / kg.Seconds
	kg100Rate := float64(kg100.Records) / kg100.Seconds
	perRecord := func(d time.Duration, n int64) float64 { return float64(d.Microseconds()) / float64(n) }

	var b strings.Builder
	broker := "the in-memory dev broker (kfake) in its own process"
	if *realKafka {
		broker = fmt.Sprintf("one Apache Kafka %s node (KRaft, broker and controller, JVM -Xmx512m, data on local disk)", apachekafka.Version)
	}
	fmt.Fprintf(&b, "Machine: %s. Caddy v2.11.9 built with xcaddy; broker: %s, %d partition(s).\n", harness.Machine(), broker, *partitions)
	fmt.Fprintf(&b, "Load: wrk -t1 -c%d, %s runs, %d alternating rounds, POST of the seed payload (%d bytes), acks=all, linger %s, max_in_flight %d.\n\n", *conns, *duration, *rounds, len(seedBody), *linger, *inFlight)
	fmt.Fprintf(&b, "| at %d connections | req/s | p50 | p99 | Caddy CPU/req | broker CPU/msg | non-2xx |\n", *conns)
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| Caddy `respond` | %.0f | %.2f ms | %.2f ms | %.1f us | - | %d |\n", r.reqPerSec, r.p50ms, r.p99ms, r.caddyUS, r.non2xx)
	fmt.Fprintf(&b, "| `queue_publish` | %.0f | %.2f ms | %.2f ms | %.1f us | %.1f us | %d |\n", q.reqPerSec, q.p50ms, q.p99ms, q.caddyUS, q.brokerUS, q.non2xx)
	fmt.Fprintf(&b, "| `queue_publish`, a distinct key per request | %.0f | %.2f ms | %.2f ms | %.1f us | %.1f us | %d |\n", k.reqPerSec, k.p50ms, k.p99ms, k.caddyUS, k.brokerUS, k.non2xx)
	fmt.Fprintf(&b, "| `queue_publish`, a JWT (RS256, verified once, then from the cache) instead of the secret, and a quota on its identity | %.0f | %.2f ms | %.2f ms | %.1f us | %.1f us | %d |\n", j.reqPerSec, j.p50ms, j.p99ms, j.caddyUS, j.brokerUS, j.non2xx)
	fmt.Fprintf(&b, "| bare kafka-go `Writer`, %d callers, 1 record a call (msg/s) | %.0f | - | - | %.1f us (client) | %.1f us | %d failed |\n", *conns, kgRate, kg.CPUSeconds*1e6/float64(kg.Records), perRecord(kg.brokerCPU, kg.Records), kg.Failed)
	fmt.Fprintf(&b, "| bare franz-go `kgo`, %d callers, 1 record a call (msg/s) | %.0f | - | - | %.1f us (client) | %.1f us | %d failed |\n\n", *conns, kgo.rate(), kgo.cpu(), kgo.broker(), kgo.Failed)
	fmt.Fprintf(&b, "| %d records a request or call, %d connections or callers | records/s | p50 | p99 | client CPU/record | broker CPU/record | non-2xx |\n", perRequest, *conns)
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| `queue_publish` `mode records` (Caddy CPU) | %.0f | %.2f ms | %.2f ms | %.2f us | %.2f us | %d |\n", rm.reqPerSec*perRequest, rm.p50ms, rm.p99ms, rm.caddyUS/perRequest, rm.brokerUS/perRequest, rm.non2xx)
	fmt.Fprintf(&b, "| bare kafka-go `Writer` | %.0f | - | - | %.2f us | %.2f us | %d failed |\n", kg100Rate, kg100.CPUSeconds*1e6/float64(kg100.Records), perRecord(kg100.brokerCPU, kg100.Records), kg100.Failed)
	fmt.Fprintf(&b, "| bare franz-go `kgo` | %.0f | - | - | %.2f us | %.2f us | %d failed |\n\n", kgo100.rate(), kgo100.cpu(), kgo100.broker(), kgo100.Failed)
	fmt.Fprintf(&b, "| HTTPS (tls internal), HTTP/2: h2load, 1 connection, %d streams | req/s | Caddy CPU/req | broker CPU/msg | non-2xx |\n|---|---:|---:|---:|---:|\n", h2Streams)
	fmt.Fprintf(&b, "| Caddy `respond` | %.0f | %.1f us | - | %d |\n", rh.reqPerSec, rh.caddyUS, rh.non2xx)
	fmt.Fprintf(&b, "| `queue_publish` | %.0f | %.1f us | %.1f us | %d |\n\n", qh.reqPerSec, qh.caddyUS, qh.brokerUS, qh.non2xx)
	fmt.Fprintf(&b, "| at 1 connection | req/s | p50 | p99 |\n|---|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| Caddy `respond` | %.0f | %.3f ms | %.3f ms |\n", r1.reqPerSec, r1.p50ms, r1.p99ms)
	fmt.Fprintf(&b, "| `queue_publish` | %.0f | %.3f ms | %.3f ms |\n", q1.reqPerSec, q1.p50ms, q1.p99ms)
	fmt.Fprintf(&b, "| the producer alone, in the benchmark's process, no HTTP | %.0f | %.3f ms | %.3f ms |\n\n", float64(rs.alone.Requests)/(float64(rs.alone.DurationUS)/1e6), float64(rs.alone.P50US)/1000, float64(rs.alone.P99US)/1000)
	fmt.Fprintf(&b, "Ratios at %d connections: throughput queue_publish/respond = %.2f; Caddy CPU per request queue_publish/respond = %.2f; p99 queue_publish - respond = %+.2f ms; throughput queue_publish/bare kafka-go = %.2f.\n", *conns, q.reqPerSec/r.reqPerSec, q.caddyUS/r.caddyUS, q.p99ms-r.p99ms, q.reqPerSec/kgRate)
	fmt.Fprintf(&b, "A JWT instead of the secret, and a quota: Caddy CPU per request jwt/secret = %.2f; throughput jwt/secret = %.2f.\n", j.caddyUS/q.caddyUS, j.reqPerSec/q.reqPerSec)
	fmt.Fprintf(&b, "A distinct key per request: throughput queue_publish/respond = %.2f; Caddy CPU per request = %.2f.\n", k.reqPerSec/r.reqPerSec, k.caddyUS/r.caddyUS)
	fmt.Fprintf(&b, "HTTPS, HTTP/2: throughput queue_publish/respond = %.2f; Caddy CPU per request queue_publish/respond = %.2f.\n", qh.reqPerSec/rh.reqPerSec, qh.caddyUS/rh.caddyUS)
	fmt.Fprintf(&b, "Broker CPU per message: queue_publish %.1f us, bare kafka-go %.1f us.\n", q.brokerUS, perRecord(kg.brokerCPU, kg.Records))
	fmt.Fprintf(&b, "Records mode: records/s queue_publish/bare kafka-go at %d records a call = %.2f; /kgo = %.2f; Caddy CPU per record over kgo's client CPU per record = %.2f.\n",
		perRequest, rm.reqPerSec*perRequest/kg100Rate, rm.reqPerSec*perRequest/kgo100.rate(), rm.caddyUS/perRequest/kgo100.cpu())
	fmt.Fprintf(&b, "At 1 connection: p50 queue_publish - respond = %+.3f ms.\n", q1.p50ms-r1.p50ms)
	check := "ok"
	if inTopic < expected {
		check = "MISSING RECORDS"
	}
	fmt.Fprintf(&b, "Records: %d acknowledged (queue_publish 2xx, kafka-go's and kgo's writes), %d in the topic (read back with kcat): %s.\n", expected, inTopic, check)
	return b.String()
}
