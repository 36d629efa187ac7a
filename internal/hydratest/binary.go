package hydratest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Version is the Hydra release the tests run.
const Version = "v2.3.0"

// popReplace is needed because Hydra's own go.mod replaces pop with Ory's
// fork, and a module's replace directives do not apply to the modules that
// require it; without it the build picks upstream pop and fails.
const popReplace = "github.com/gobuffalo/pop/v6=github.com/ory/pop/v6@v6.2.1-0.20241121111754-e5dfc0f3344b"

// binaryMu serializes the build within one test binary; the file lock
// below does it across the test binaries go test runs in parallel (flock
// locks belong to open files, so the mutex alone would not do, nor the
// lock alone between goroutines sharing nothing but the path).
var binaryMu sync.Mutex

// Binary is the hydra program: the file $QP_HYDRA names, or one built once
// into Go's build cache and reused by every later run. A build that fails
// fails the test: a suite that needs Hydra must not pass without it.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := FindBinary(t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// FindBinary is Binary for a caller without a test (one whose Hydra
// outlives a test); logf, if not nil, is told of a build.
func FindBinary(logf func(format string, args ...any)) (string, error) {
	if path := os.Getenv("QP_HYDRA"); path != "" {
		if info, err := os.Stat(path); err != nil || info.IsDir() {
			return "", fmt.Errorf("QP_HYDRA=%s is not a file: %v", path, err)
		}
		return path, nil
	}
	binaryMu.Lock()
	defer binaryMu.Unlock()
	cache, err := goEnv("GOCACHE")
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "queue-publish", "hydra-"+Version)
	bin := filepath.Join(dir, "hydra")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	// Another test binary may have built it while this one waited.
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if logf != nil {
		logf("building Hydra %s into %s (a few minutes, once)", Version, bin)
	}
	return bin, build(bin)
}

// build builds Hydra into bin through a throwaway module: go install
// refuses Hydra's module because its go.mod has replace directives. The
// binary is written under a temporary name and renamed, so that a build
// killed halfway never leaves a file that FindBinary would take for done.
func build(bin string) error {
	mod, err := os.MkdirTemp("", "hydratool-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(mod)
	tmp := bin + ".building"
	steps := [][]string{
		{"mod", "init", "example/hydratool"},
		{"get", "-tool", "github.com/ory/hydra/v2@" + Version},
		{"mod", "edit", "-replace", popReplace},
		{"mod", "tidy"},
		{"build", "-tags", "sqlite,sqlite_omit_load_extension", "-o", tmp, "github.com/ory/hydra/v2"},
	}
	for _, args := range steps {
		cmd := exec.Command(goCommand(), args...)
		cmd.Dir = mod
		// The tool module is its own: no workspace, and none of the
		// caller's module flags (such as -mod=vendor) apply to it.
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-buildvcs=false")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("building Hydra: go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return os.Rename(tmp, bin)
}

func goEnv(name string) (string, error) {
	out, err := exec.Command(goCommand(), "env", name).Output()
	if err != nil {
		return "", fmt.Errorf("go env %s: %v", name, err)
	}
	value := strings.TrimSpace(string(out))
	if value == "" || value == "off" {
		return "", fmt.Errorf("go env %s is %q: no cache to build Hydra into (set QP_HYDRA to a hydra binary)", name, value)
	}
	return value, nil
}

// goCommand is the go command of the toolchain that runs the tests, so
// that Hydra is built by the same Go whatever PATH holds.
func goCommand() string {
	if root := os.Getenv("GOROOT"); root != "" {
		if _, err := os.Stat(filepath.Join(root, "bin", "go")); err == nil {
			return filepath.Join(root, "bin", "go")
		}
	}
	return "go"
}
