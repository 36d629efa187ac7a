// Package harness starts and watches the processes that the load benchmark
// (bench/) and the reliability tests (test/reliability) drive: a Caddy
// built with xcaddy, in one process for the broker and one under test.
package harness

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// BuildCaddy builds Caddy v2.11.9 with this module and the development
// broker into bin, from the repository root.
func BuildCaddy(bin string) error {
	with := []string{"build", "v2.11.9", "--output", bin, "--with", "github.com/queuepublish/caddy-queue-publish@v0.0.0=."}
	// The dev broker is a package of this module, which xcaddy looks up as
	// a module of its own, and the module proxy refuses. So a first build,
	// with the module alone, fills the module cache through the proxy
	// (verified against the checksum database); then, with the proxy off,
	// the go command finds the dev broker in the replaced module and the
	// rest in the cache it verified.
	if err := Run(exec.Command("xcaddy", with...)); err != nil {
		return err
	}
	cmd := exec.Command("xcaddy", append(with, "--with", "github.com/queuepublish/caddy-queue-publish/devbroker")...)
	cmd.Env = append(os.Environ(), "GOPROXY=off", "GOSUMDB=off")
	return Run(cmd)
}

// Run runs cmd, returning its output in the error if it fails.
func Run(cmd *exec.Cmd) error {
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, buf.Bytes())
	}
	return nil
}

// StartCaddy runs `bin run --config config` with env, its output going to
// logFile.
func StartCaddy(bin, config, logFile string, env []string) (*exec.Cmd, error) {
	f, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", config)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	return cmd, cmd.Start()
}

// Stop kills the processes and waits for them.
func Stop(cmds ...*exec.Cmd) {
	for _, c := range cmds {
		if c != nil && c.Process != nil {
			c.Process.Kill()
			c.Wait()
		}
	}
}

// WaitPort waits until something accepts connections on addr.
func WaitPort(addr string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on %s", addr)
}

// PortsFree fails if something already listens on one of addrs.
func PortsFree(addrs ...string) error {
	for _, addr := range addrs {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return fmt.Errorf("something already listens on %s", addr)
		}
	}
	return nil
}

var clockTick = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil || n <= 0 {
		return 100
	}
	return n
}()

// CPUTime is the user plus system CPU time of a process so far, from
// /proc/<pid>/stat.
func CPUTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after "(comm) ": utime and stime are the 14th and 15th
	// of the line.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return time.Duration((utime + stime) / clockTick * float64(time.Second))
}

// RSS is the resident memory of a process, in bytes, from
// /proc/<pid>/status.
func RSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// Signal sends sig to the process.
func Signal(cmd *exec.Cmd, sig syscall.Signal) error {
	return cmd.Process.Signal(sig)
}

// Machine describes this machine: CPU model, cores, OS, Go version.
func Machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d cores, %s/%s, %s", model, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
}
