package apachekafka

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Listener is one of the ways a node can be reached.
type Listener int

const (
	// Plaintext needs nothing; its clients are User:ANONYMOUS, a super user.
	Plaintext Listener = iota
	// SASLPlaintext takes PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for User.
	SASLPlaintext
	// TLS is SSL with the brokers' certificate, signed by Certs.CA.
	TLS
	// MutualTLS is SSL that requires a client certificate signed by
	// Certs.CA.
	MutualTLS
	// OAuth is SASL_PLAINTEXT taking OAUTHBEARER tokens of the issuer
	// Options.OAuth names; only a cluster started with it has it.
	OAuth
	listeners
)

// Options shape a cluster.
type Options struct {
	// Nodes is 1 or 3. Three nodes have topics replicated three times
	// with min.insync.replicas 2.
	Nodes int
	// Dir holds the nodes' data, configuration and logs; a new temporary
	// folder if empty.
	Dir string
	// Heap is the JVM's -Xmx of each node; 512m if empty.
	Heap string
	// OAuth, if set, gives the nodes the OAuth listener.
	OAuth *OAuthIssuer
}

// OAuthIssuer is what the OAuth listener validates tokens against: the
// issuer's keys (a JWKS), and the issuer and audience a token must name.
// Sessions there last at most ReauthMs (connections.max.reauth.ms; 0 for
// Kafka's default, sessions that never end), and at most a token's life.
type OAuthIssuer struct {
	JWKSURL  string
	Issuer   string
	Audience string
	ReauthMs int
}

// Cluster is a running Apache Kafka cluster.
type Cluster struct {
	// Dir holds each node's data, server.properties and log.
	Dir string
	// Certs are the PEM files of its TLS listeners.
	Certs Certs

	nodes  []*Node
	lib    string
	heap   string
	oauth  *OAuthIssuer
	admin  *kgo.Client
	closed bool
}

// Node is one combined broker and controller.
type Node struct {
	// ID is its node.id, 1 to the cluster's size.
	ID int

	ports      [listeners]int
	controller int
	dir        string
	log        string

	mu   sync.Mutex
	cmd  *exec.Cmd
	exit chan struct{} // closed when cmd has exited
}

// Start formats and starts a cluster and waits until every node is a
// registered, unfenced broker.
func Start(opts Options) (*Cluster, error) {
	if opts.Nodes != 1 && opts.Nodes != 3 {
		return nil, fmt.Errorf("a cluster has 1 or 3 nodes, not %d", opts.Nodes)
	}
	if _, err := exec.LookPath("java"); err != nil {
		return nil, fmt.Errorf("running Apache Kafka needs Java 17 or later: %w", err)
	}
	lib, err := Jars()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: opts.Dir, lib: lib, heap: opts.Heap, oauth: opts.OAuth}
	if c.heap == "" {
		c.heap = "512m"
	}
	if c.Dir == "" {
		c.Dir, err = os.MkdirTemp("", "apachekafka-")
	} else {
		err = os.MkdirAll(c.Dir, 0o755)
	}
	if err != nil {
		return nil, err
	}
	if c.Certs, err = writeCerts(c.Dir); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "log4j2.properties"), log4jConfig, 0o644); err != nil {
		return nil, err
	}
	ports, err := freePorts(opts.Nodes * (int(listeners) + 1))
	if err != nil {
		return nil, err
	}
	for i := range opts.Nodes {
		n := &Node{ID: i + 1, dir: filepath.Join(c.Dir, fmt.Sprintf("node%d", i+1))}
		copy(n.ports[:], ports)
		n.controller, ports = ports[listeners], ports[listeners+1:]
		n.log = filepath.Join(n.dir, "server.log")
		c.nodes = append(c.nodes, n)
	}
	if err := c.format(); err != nil {
		return nil, fmt.Errorf("%w (files kept in %s)", err, c.Dir)
	}
	fail := func(err error) (*Cluster, error) {
		err = fmt.Errorf("starting Apache Kafka (logs kept in %s): %v\n%s", c.Dir, err, c.LogTails(30))
		c.Close(true)
		return nil, err
	}
	for _, n := range c.nodes {
		if err := c.launch(n); err != nil {
			return fail(err)
		}
	}
	if c.admin, err = newClient(c.Brokers(Plaintext)...); err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.WaitBrokers(ctx, c.nodes...); err != nil {
		return fail(err)
	}
	return c, nil
}

// newClusterID returns a random cluster ID as Kafka's random-uuid makes it: a
// version 4 UUID in URL-safe base64. Like Kafka's Uuid.randomUuid, it never
// starts with '-', which the storage tool would read as an option.
func newClusterID() (string, error) {
	for {
		var uuid [16]byte
		if _, err := rand.Read(uuid[:]); err != nil {
			return "", err
		}
		uuid[6] = uuid[6]&0x0f | 0x40
		if id := base64.RawURLEncoding.EncodeToString(uuid[:]); id[0] != '-' {
			return id, nil
		}
	}
}

// format writes each node's server.properties and formats its storage, all
// with one cluster ID and the SCRAM credentials of User.
func (c *Cluster) format() error {
	id, err := newClusterID()
	if err != nil {
		return err
	}
	errs := make(chan error, len(c.nodes))
	for _, n := range c.nodes {
		if err := os.MkdirAll(n.dir, 0o755); err != nil {
			return err
		}
		props := filepath.Join(n.dir, "server.properties")
		if err := os.WriteFile(props, []byte(c.properties(n)), 0o644); err != nil {
			return err
		}
		go func() {
			cmd := c.java("128m", "kafka.tools.StorageTool", "format", "-t", id, "-c", props,
				"--add-scram", fmt.Sprintf("SCRAM-SHA-256=[name=%s,password=%s]", User, Password),
				"--add-scram", fmt.Sprintf("SCRAM-SHA-512=[name=%s,password=%s]", User, Password))
			if out, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Errorf("formatting node %d: %v\n%s", n.ID, err, out)
				return
			}
			errs <- nil
		}()
	}
	for range c.nodes {
		err = errors.Join(err, <-errs)
	}
	return err
}

// java is a JVM of at most heap running the class and arguments args,
// with the broker's jars and the harness's logging; it is killed if the
// process that started it dies (a test binary that panicked or timed out
// leaves no broker behind).
func (c *Cluster) java(heap string, args ...string) *exec.Cmd {
	cmd := exec.Command("java", append([]string{
		"-Xmx" + heap,
		"-Dlog4j2.configurationFile=" + filepath.Join(c.Dir, "log4j2.properties"),
		"-cp", filepath.Join(c.lib, "*"),
	}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// launch starts n's JVM on its data, its output appended to its log.
func (c *Cluster) launch(n *Node) error {
	f, err := os.OpenFile(n.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "=== node %d started by the harness at %s\n", n.ID, time.Now().Format(time.TimeOnly+".000"))
	var props []string
	if c.oauth != nil {
		// Since Kafka 4.0 a broker fetches no URL its JVM does not
		// allow, and allows none by default.
		props = append(props, "-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls="+c.oauth.JWKSURL)
	}
	cmd := c.java(c.heap, append(props, "kafka.Kafka", filepath.Join(n.dir, "server.properties"))...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	exit := make(chan struct{})
	go func() {
		cmd.Wait()
		f.Close()
		close(exit)
	}()
	n.mu.Lock()
	n.cmd, n.exit = cmd, exit
	n.mu.Unlock()
	return nil
}

// Nodes are the cluster's nodes, by ID from 1.
func (c *Cluster) Nodes() []*Node { return c.nodes }

// Node is the node with id.
func (c *Cluster) Node(id int32) *Node { return c.nodes[id-1] }

// Brokers are the nodes' addresses on listener l.
func (c *Cluster) Brokers(l Listener) []string {
	var addrs []string
	for _, n := range c.nodes {
		addrs = append(addrs, n.Addr(l))
	}
	return addrs
}

// Addr is n's address on listener l.
func (n *Node) Addr(l Listener) string { return "127.0.0.1:" + strconv.Itoa(n.ports[l]) }

// Admin is a client of the PLAINTEXT listener, a super user.
func (c *Cluster) Admin() *kadm.Client { return kadm.NewClient(c.admin) }

// Client is the kgo client behind Admin, for reading records back.
func (c *Cluster) Client() *kgo.Client { return c.admin }

// Kill kills n with SIGKILL, as a crash would, and waits until it is gone.
func (c *Cluster) Kill(n *Node) error { return n.stop(syscall.SIGKILL) }

// Stop stops n with SIGTERM, a controlled shutdown that hands its
// partitions' leadership to others, and waits until it is gone.
func (c *Cluster) Stop(n *Node) error { return n.stop(syscall.SIGTERM) }

// Freeze stops n with SIGSTOP: it keeps its connections but answers
// nothing until Thaw.
func (c *Cluster) Freeze(n *Node) error { return n.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen n with SIGCONT.
func (c *Cluster) Thaw(n *Node) error { return n.signal(syscall.SIGCONT) }

// Restart starts a stopped or killed n again on its data and waits until
// the cluster lists it as a broker again.
func (c *Cluster) Restart(ctx context.Context, n *Node) error {
	if n.Running() {
		return fmt.Errorf("node %d is running", n.ID)
	}
	if err := c.launch(n); err != nil {
		return err
	}
	return c.WaitBrokers(ctx, n)
}

// Running says whether n's process runs (frozen or not).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.exit == nil {
		return false
	}
	select {
	case <-n.exit:
		return false
	default:
		return true
	}
}

// Pid is the process ID of n's JVM, 0 if it never started.
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

func (n *Node) signal(sig syscall.Signal) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return fmt.Errorf("node %d never started", n.ID)
	}
	return n.cmd.Process.Signal(sig)
}

func (n *Node) stop(sig syscall.Signal) error {
	if !n.Running() {
		return nil
	}
	if err := n.signal(sig); err != nil {
		return err
	}
	n.signal(syscall.SIGCONT) // a frozen JVM acts on SIGTERM once resumed
	n.mu.Lock()
	exit := n.exit
	n.mu.Unlock()
	select {
	case <-exit:
		return nil
	case <-time.After(60 * time.Second):
		n.signal(syscall.SIGKILL)
		<-exit
		return fmt.Errorf("node %d did not stop within 60 s of %v; killed", n.ID, sig)
	}
}

// WaitBrokers waits until the cluster's metadata, asked of every running
// node, lists nodes as registered, unfenced brokers and names a
// controller.
func (c *Cluster) WaitBrokers(ctx context.Context, nodes ...*Node) error {
	for {
		for _, n := range nodes {
			if !n.Running() {
				return fmt.Errorf("node %d exited (its log: %s)", n.ID, n.log)
			}
		}
		missing, err := c.missingBrokers(ctx, nodes)
		if err == nil && len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for brokers %v: %v (last error: %v)", missing, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) missingBrokers(ctx context.Context, want []*Node) ([]int, error) {
	var missing []int
	for _, ask := range c.nodes {
		if !ask.Running() {
			continue
		}
		adm, done, err := c.adminOf(ask)
		if err != nil {
			return nil, err
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		m, err := adm.BrokerMetadata(rctx)
		cancel()
		done()
		if err != nil {
			return []int{ask.ID}, err
		}
		if m.Controller < 0 {
			return []int{ask.ID}, errors.New("no active controller")
		}
		for _, n := range want {
			if !slices.Contains(m.Brokers.NodeIDs(), int32(n.ID)) {
				missing = append(missing, n.ID)
			}
		}
		if len(missing) > 0 {
			return missing, fmt.Errorf("node %d does not list them", ask.ID)
		}
	}
	return nil, nil
}

// LogTails is, for a failing test, each node's log file and its last
// lines at level WARN or above.
func (c *Cluster) LogTails(lines int) string {
	var b strings.Builder
	for _, n := range c.nodes {
		fmt.Fprintf(&b, "--- %s, last %d warnings and errors:\n", n.log, lines)
		b.WriteString(problems(n.log, lines))
	}
	return b.String()
}

func problems(file string, lines int) string {
	f, err := os.Open(file)
	if err != nil {
		return err.Error() + "\n"
	}
	defer f.Close()
	var last []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		if l := s.Text(); strings.Contains(l, "] WARN ") || strings.Contains(l, "] ERROR ") || strings.HasPrefix(l, "===") {
			last = append(last, l)
		}
		if len(last) > lines {
			last = last[1:]
		}
	}
	return strings.Join(last, "\n") + "\n"
}

// Close kills every node and removes Dir, unless keepDir is set (for the
// logs of a failing run).
func (c *Cluster) Close(keepDir bool) {
	if c.closed {
		return
	}
	c.closed = true
	if c.admin != nil {
		c.admin.Close()
	}
	for _, n := range c.nodes {
		n.stop(syscall.SIGKILL)
	}
	if !keepDir {
		os.RemoveAll(c.Dir)
	}
}

// newClient is a client of the PLAINTEXT listeners at addrs.
func newClient(addrs ...string) (*kgo.Client, error) {
	return kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.RetryTimeout(5*time.Second))
}

// freePorts are n TCP ports on 127.0.0.1 that nothing listens on, below
// the kernel's range of ephemeral ports: a node's port must stay free
// while the node is down, and an outgoing connection (a client dialling
// the node, even) may take any port of that range.
func freePorts(n int) ([]int, error) {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				low = v
			}
		}
	}
	const from = 20000 // above the fixed ports of the tests, the benchmark and the examples
	if low <= from+n {
		return nil, fmt.Errorf("no room for %d ports below the ephemeral range, which starts at %d", n, low)
	}
	var ports []int
	var held []io.Closer
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n {
			return nil, fmt.Errorf("found %d free ports of %d between %d and %d", len(ports), n, from, low)
		}
		port := from + mrand.IntN(low-from)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue // taken
		}
		held = append(held, l)
		ports = append(ports, port)
	}
	return ports, nil
}
