package apachekafka

import (
	"encoding/base64"
	"testing"
)

// Kafka's storage tool reads an argument starting with '-' as an option, so
// one cluster ID in 64 would fail the format if it could start with one.
func TestClusterIDIsAVersion4UUIDNotStartingWithDash(t *testing.T) {
	for range 5000 {
		id, err := newClusterID()
		if err != nil {
			t.Fatal(err)
		}
		if id[0] == '-' {
			t.Fatalf("cluster ID %q starts with '-'", id)
		}
		uuid, err := base64.RawURLEncoding.DecodeString(id)
		if err != nil || len(uuid) != 16 {
			t.Fatalf("cluster ID %q is not a UUID in URL-safe base64: %v", id, err)
		}
		if uuid[6]>>4 != 4 {
			t.Fatalf("cluster ID %q is not a version 4 UUID", id)
		}
	}
}
