package producer

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
)

// kafka-go's record-batch writer (protocol/record_v2.go) writes the
// producer ID, epoch and base sequence as -1, so an idempotent producer
// needs its own: this writes Kafka's v2 record batch (magic 2), as
// described in Kafka's protocol guide ("Record Batch"), once per batch.

// batchHeaderSize is the size of a v2 record batch before its records.
const batchHeaderSize = 61

// Offsets in the batch header.
const (
	offLength     = 8
	offCRC        = 17
	offAttributes = 21
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// producerIdentity is what a batch carries of the idempotent producer:
// ID -1 when there is none.
type producerIdentity struct {
	id       int64
	epoch    int16
	sequence int32
}

var noProducer = producerIdentity{id: -1, epoch: -1, sequence: -1}

// encodeBatch appends to dst the v2 record batch of recs, with the
// producer's identity and the codec's compression of the records.
func encodeBatch(dst []byte, recs []*Record, codec Compression, who producerIdentity) ([]byte, error) {
	start := len(dst)
	first, maxTime := recs[0].Time.UnixMilli(), recs[0].Time.UnixMilli()
	for _, r := range recs[1:] {
		maxTime = max(maxTime, r.Time.UnixMilli())
	}
	dst = binary.BigEndian.AppendUint64(dst, 0)          // base offset: the broker's to set
	dst = binary.BigEndian.AppendUint32(dst, 0)          // length, below
	dst = binary.BigEndian.AppendUint32(dst, 0xffffffff) // partition leader epoch: -1
	dst = append(dst, 2)                                 // magic
	dst = binary.BigEndian.AppendUint32(dst, 0)          // CRC, below
	dst = binary.BigEndian.AppendUint16(dst, uint16(codec)&0x7)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(recs)-1)) // last offset delta
	dst = binary.BigEndian.AppendUint64(dst, uint64(first))
	dst = binary.BigEndian.AppendUint64(dst, uint64(maxTime))
	dst = binary.BigEndian.AppendUint64(dst, uint64(who.id))
	dst = binary.BigEndian.AppendUint16(dst, uint16(who.epoch))
	dst = binary.BigEndian.AppendUint32(dst, uint32(who.sequence))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(recs)))

	if codec == CompressionNone {
		for i, r := range recs {
			dst = appendRecord(dst, r, int64(i), first)
		}
	} else {
		var raw []byte
		for i, r := range recs {
			raw = appendRecord(raw, r, int64(i), first)
		}
		out := bytes.NewBuffer(dst)
		w := codec.codec().Codec().NewWriter(out)
		if _, err := w.Write(raw); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		dst = out.Bytes()
	}
	binary.BigEndian.PutUint32(dst[start+offLength:], uint32(len(dst)-start-12))
	binary.BigEndian.PutUint32(dst[start+offCRC:], crc32.Checksum(dst[start+offAttributes:], castagnoli))
	return dst, nil
}

// appendRecord appends one record of a v2 batch: its length, then its
// attributes, timestamp and offset deltas, key, value and headers, all
// lengths as zig-zag varints (-1 for null).
func appendRecord(dst []byte, r *Record, offsetDelta, baseTime int64) []byte {
	timeDelta := r.Time.UnixMilli() - baseTime
	size := 1 + varintLen(timeDelta) + varintLen(offsetDelta) +
		bytesLen(r.Key) + bytesLen(r.Value) + varintLen(int64(len(r.Headers)))
	for _, h := range r.Headers {
		size += varintLen(int64(len(h.Key))) + len(h.Key) + bytesLen(h.Value)
	}
	dst = binary.AppendVarint(dst, int64(size))
	dst = append(dst, 0) // attributes
	dst = binary.AppendVarint(dst, timeDelta)
	dst = binary.AppendVarint(dst, offsetDelta)
	dst = appendBytes(dst, r.Key)
	dst = appendBytes(dst, r.Value)
	dst = binary.AppendVarint(dst, int64(len(r.Headers)))
	for _, h := range r.Headers {
		dst = binary.AppendVarint(dst, int64(len(h.Key)))
		dst = append(dst, h.Key...)
		dst = appendBytes(dst, h.Value)
	}
	return dst
}

func appendBytes(dst, b []byte) []byte {
	if b == nil {
		return binary.AppendVarint(dst, -1)
	}
	dst = binary.AppendVarint(dst, int64(len(b)))
	return append(dst, b...)
}

func bytesLen(b []byte) int {
	if b == nil {
		return varintLen(-1)
	}
	return varintLen(int64(len(b))) + len(b)
}

// varintLen is the length of x as a zig-zag varint.
func varintLen(x int64) int {
	ux := uint64(x<<1) ^ uint64(x>>63)
	n := 1
	for ux >= 0x80 {
		ux >>= 7
		n++
	}
	return n
}
