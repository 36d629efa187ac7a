package main

import "testing"

// A batch the producer resent and the broker appended again is told from
// a second attempt of the client, and only a broker that forgets its
// producers' batches when killed is excused for it.
func TestStoredOnceTellsResentBatchesFromSecondAttempts(t *testing.T) {
	first := storedCopy{partition: 1, producerID: 7, timestamp: 1000}
	ids := map[string]uint8{"a": idUnknown | idAcked, "b": idAcked}
	resent := tally(map[string][]storedCopy{"a": {first, first}, "b": {{partition: 0, producerID: 7, timestamp: 1001}}}, ids)
	if resent.duplicates != 1 || resent.reappended != 1 {
		t.Fatalf("the same record twice: %+v, want 1 duplicate, reappended", resent)
	}
	retried := first
	retried.timestamp += 100 // the client's retry, 100 ms later
	again := tally(map[string][]storedCopy{"a": {first, retried}, "b": {{partition: 0, producerID: 7, timestamp: 1001}}}, ids)
	if again.duplicates != 1 || again.reappended != 0 {
		t.Fatalf("a second attempt: %+v, want 1 duplicate, not reappended", again)
	}
	other := first
	other.producerID = 8 // another instance's producer
	if r := tally(map[string][]storedCopy{"a": {first, other}}, ids); r.reappended != 0 || r.missing != 1 {
		t.Fatalf("a copy from another producer: %+v, want not reappended, b missing", r)
	}

	dev, kafka := &devBroker{}, &kafkaCluster{}
	if err := resent.storedOnce(dev); err != nil {
		t.Errorf("a resent batch on the development broker: %v", err)
	}
	if err := resent.storedOnce(kafka); err == nil {
		t.Error("a resent batch appended twice by Apache Kafka passed")
	}
	for _, b := range []brokers{dev, kafka} {
		if err := again.storedOnce(b); err == nil {
			t.Errorf("an id stored by two attempts on %T passed", b)
		}
	}
}
