// Package apachekafka runs real Apache Kafka for the tests that only a real
// broker can prove: a cluster of one or three combined broker+controller
// nodes (KRaft) on loopback ports, from the jars of the Maven artifact
// org.apache.kafka:kafka_2.13, with PLAINTEXT, SASL_PLAINTEXT, TLS and
// mutual TLS listeners and ACLs, whose nodes can be killed, frozen and
// restarted on their data. See README.md in this folder.
package apachekafka

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// Version is the Apache Kafka release in pom.xml.
const Version = "4.4.0"

//go:embed pom.xml
var pom []byte

//go:embed log4j2.properties
var log4jConfig []byte

// Jars returns a folder holding the broker's jars and their dependencies.
// The first call on a machine fetches them from Maven Central with
// `mvn dependency:copy-dependencies` (about 45 jars, 43 MB, seconds) into
// the user's cache, in a folder named after pom.xml's content so that a
// change of version fetches anew; later calls find them there.
// $KAFKA_TEST_JARS names another cache folder.
func Jars() (string, error) {
	base := os.Getenv("KAFKA_TEST_JARS")
	if base == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		base = filepath.Join(cache, "caddy-queue-publish")
	}
	sum := sha256.Sum256(pom)
	dir := filepath.Join(base, "kafka-"+Version+"-"+hex.EncodeToString(sum[:4]))
	lib := filepath.Join(dir, "lib")
	if _, err := os.Stat(filepath.Join(lib, "complete")); err == nil {
		return lib, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// One fetch at a time (two test binaries starting at once, say).
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(lib, "complete")); err == nil {
		return lib, nil // fetched while this one waited
	}
	pomFile := filepath.Join(dir, "pom.xml")
	if err := os.WriteFile(pomFile, pom, 0o644); err != nil {
		return "", err
	}
	// Into a folder of its own first, so that an interrupted fetch is never
	// taken for a complete one.
	part := lib + ".part"
	if err := os.RemoveAll(part); err != nil {
		return "", err
	}
	cmd := exec.Command("mvn", "-q", "-B", "-f", pomFile, "dependency:copy-dependencies",
		"-DincludeScope=runtime", "-DoutputDirectory="+part)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("fetching Kafka %s with Maven: %v\n%s", Version, err, out)
	}
	if err := os.WriteFile(filepath.Join(part, "complete"), nil, 0o644); err != nil {
		return "", err
	}
	if err := os.RemoveAll(lib); err != nil {
		return "", err
	}
	return lib, os.Rename(part, lib)
}
