package producer

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"io"
	"testing"
	"time"

	"github.com/segmentio/kafka-go/protocol"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// testRecords are records with what a batch can hold: keys or none,
// empty and binary values, headers, distinct timestamps.
func testRecords() []*Record {
	now := time.UnixMilli(1_700_000_000_123)
	var recs []*Record
	for i, v := range []string{`{"a":1}`, ``, "\x00\xff binary", `"x"`} {
		rec := NewRecord([]byte(v), now.Add(time.Duration(i)*time.Millisecond), time.Second)
		if i%2 == 1 {
			rec.Key = []byte(fmt.Sprint("key-", i))
		}
		if i >= 2 {
			rec.Headers = []Header{{Key: "idempotency-key", Value: []byte("k1")}, {Key: "empty", Value: []byte{}}}
		}
		recs = append(recs, rec)
	}
	return recs
}

// TestBatchDecodesWithKafkaGoAndFranzGo encodes a batch with every codec
// and decodes it with two independent readers: kafka-go's record-set
// reader, and franz-go's batch parser with a CRC-32C check.
func TestBatchDecodesWithKafkaGoAndFranzGo(t *testing.T) {
	who := producerIdentity{id: 4242, epoch: 3, sequence: 17}
	for _, codec := range []Compression{CompressionNone, CompressionGzip, CompressionSnappy, CompressionLZ4, CompressionZstd} {
		t.Run(codec.codec().String(), func(t *testing.T) {
			recs := testRecords()
			enc, err := encodeBatch(nil, recs, codec, who)
			if err != nil {
				t.Fatal(err)
			}

			var batch kmsg.RecordBatch
			if err := batch.ReadFrom(enc); err != nil {
				t.Fatal(err)
			}
			if got := int32(crc32.Checksum(enc[offAttributes:], castagnoli)); batch.CRC != got {
				t.Errorf("CRC %x, want %x", batch.CRC, got)
			}
			if batch.ProducerID != who.id || batch.ProducerEpoch != who.epoch || batch.FirstSequence != who.sequence ||
				batch.NumRecords != int32(len(recs)) || batch.LastOffsetDelta != int32(len(recs)-1) || batch.Magic != 2 ||
				batch.Attributes&7 != int16(codec) || batch.FirstTimestamp != recs[0].Time.UnixMilli() ||
				batch.MaxTimestamp != recs[3].Time.UnixMilli() || int(batch.Length) != len(enc)-12 {
				t.Errorf("header %+v", batch)
			}

			checkKafkaGoReads(t, enc, codec, recs)
		})
	}
}

// checkKafkaGoReads decodes enc with kafka-go's record-set reader and fails
// the test unless it reads recs back: offsets, timestamps, keys (or none),
// values and headers.
func checkKafkaGoReads(t testing.TB, enc []byte, codec Compression, recs []*Record) {
	t.Helper()
	var rs protocol.RecordSet
	if _, err := rs.ReadFrom(bytes.NewReader(sizePrefixed(enc))); err != nil {
		t.Fatal(err)
	}
	if rs.Version != 2 || rs.Attributes.Compression() != codec.codec() {
		t.Errorf("kafka-go reads version %d, compression %v", rs.Version, rs.Attributes.Compression())
	}
	for i := 0; ; i++ {
		r, err := rs.Records.ReadRecord()
		if err == io.EOF {
			if i != len(recs) {
				t.Errorf("kafka-go reads %d records, want %d", i, len(recs))
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		want := recs[i]
		if r.Value == nil {
			t.Fatalf("record %d: a null value, want %q", i, want.Value)
		}
		value, _ := io.ReadAll(r.Value)
		var key []byte
		if r.Key != nil {
			key, _ = io.ReadAll(r.Key)
		}
		if r.Offset != int64(i) || !r.Time.Equal(want.Time) || !bytes.Equal(value, want.Value) ||
			!bytes.Equal(key, want.Key) || (r.Key == nil) != (want.Key == nil) || len(r.Headers) != len(want.Headers) {
			t.Fatalf("record %d: offset %d time %v key %q value %q headers %v", i, r.Offset, r.Time, key, value, r.Headers)
		}
		for j, h := range r.Headers {
			if h.Key != want.Headers[j].Key || !bytes.Equal(h.Value, want.Headers[j].Value) {
				t.Errorf("record %d header %d: %q=%q", i, j, h.Key, h.Value)
			}
		}
	}
}

// sizePrefixed is b as a record set in a request: its length first.
func sizePrefixed(b []byte) []byte {
	return append([]byte{byte(len(b) >> 24), byte(len(b) >> 16), byte(len(b) >> 8), byte(len(b))}, b...)
}

// FuzzEncodeBatch encodes records made of the input (keys or none, values,
// headers, timestamps, any codec) and decodes them with franz-go's batch
// parser and kafka-go's record-set reader: both must read back what was
// encoded, with a valid CRC.
func FuzzEncodeBatch(f *testing.F) {
	f.Add([]byte(`{"a":1}`), []byte("key"), "h", []byte("v"), uint8(3), int64(0), uint8(0))
	f.Add([]byte{}, []byte(nil), "", []byte(nil), uint8(1), int64(-5000), uint8(4))
	f.Fuzz(func(t *testing.T, value, key []byte, hk string, hv []byte, n uint8, dt int64, codec uint8) {
		now := time.UnixMilli(1_700_000_000_000)
		var recs []*Record
		for i := range int(n%8) + 1 {
			rec := NewRecord(append([]byte{}, value...), now.Add(time.Duration(dt%100_000*int64(i))*time.Millisecond), time.Second)
			if i%2 == 0 && key != nil {
				rec.Key = key
			}
			if i%3 == 1 {
				rec.Headers = []Header{{Key: hk, Value: hv}}
			}
			recs = append(recs, rec)
		}
		c := Compression(codec % 5)
		enc, err := encodeBatch(nil, recs, c, producerIdentity{id: 7, epoch: 1, sequence: int32(n)})
		if err != nil {
			t.Fatal(err)
		}
		var batch kmsg.RecordBatch
		if err := batch.ReadFrom(enc); err != nil {
			t.Fatal(err)
		}
		if batch.CRC != int32(crc32.Checksum(enc[offAttributes:], castagnoli)) || batch.NumRecords != int32(len(recs)) {
			t.Fatalf("header %+v", batch)
		}
		checkKafkaGoReads(t, enc, c, recs)
	})
}
