package queuepublish

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/queuepublish/caddy-queue-publish/internal/confluent"
)

// serveStream serves v3's streaming mode, a request of unknown length
// (Transfer-Encoding: chunked) whose body is record objects one after the
// other, for as long as the client sends them. Each record is produced as
// soon as it is read, and its delivery report is written as soon as it is
// settled, in request order, each with its own error_code: the status,
// 200, goes before any record is known, as the REST Proxy's does. At most
// max_records records (at least 2), and max_size bytes of them (but always
// one), are in flight: reading waits for their reports, so that a stream
// holds no more memory than a request of known length. A record longer than
// max_size, or JSON that is broken, is answered and ends the stream; any
// other bad record is answered and the stream goes on.
func (h *Handler) serveStream(x *exchange) error {
	// A stream is refused before full duplex is on, and its connection
	// closed: its body may go on for as long as the client likes, so it
	// is not read to keep the connection; and in full duplex, net/http
	// reads what a handler left of a body only after it stopped watching
	// the connection, then reads the connection twice at once, and panics
	// (go.dev/issue/68560). serveConfluent checked the credentials.
	if x.req.key != "" {
		x.closeUnread()
		return x.reject(rejectedConfluentStream)
	}
	topic, ref := h.requestTopic(x)
	x.topic = topic
	if ref != nil {
		x.closeUnread()
		return x.reject(ref)
	}
	// HTTP/1 answers while it reads only in full duplex (HTTP/2 always
	// can); without, net/http would discard what is left of the body when
	// the status goes: the body is then one request of known length.
	rc := http.NewResponseController(x.w)
	if err := rc.EnableFullDuplex(); err != nil && x.req.protoMajor == 1 {
		return h.serve(x)
	}
	ctx, cancel := context.WithCancel(x.req.ctx)
	defer cancel()
	// In flight: the items queued, the one being answered, the one
	// being read and given to the producer.
	items := make(chan *streamItem, max(h.MaxRecords-2, 0))
	window := newByteWindow(h.MaxSize)
	var unread bool // the body did not end: written before items closes
	go h.readStream(ctx, x, items, window, &unread)

	x.status = http.StatusOK
	x.w.Header()["Content-Type"] = []string{confluent.MediaV3}
	var werr error
	// A client that sent Expect: 100-continue waits for a 100 before it
	// sends the body, and net/http sends one when the body is first read;
	// a status written before would tell it the request was refused. Its
	// status goes with the first report; any other client's at once.
	headerSent := false
	sendHeader := func() {
		headerSent = true
		x.w.WriteHeader(http.StatusOK)
		if werr = rc.Flush(); werr != nil {
			cancel() // no report can reach the client: read no more
		}
	}
	if !strings.EqualFold(x.req.expect, "100-continue") {
		sendHeader()
	}
	b := make([]byte, 0, 256)
	for item := range items {
		h.settleStreamItem(ctx, x, item)
		window.release(item.size)
		if !headerSent {
			sendHeader()
		}
		if werr != nil {
			continue // the client is gone: wait until the reader stops
		}
		b = append(h.appendStreamReport(b[:0], x, item), confluent.Separator...)
		if _, werr = x.w.Write(b); werr == nil {
			werr = rc.Flush()
		}
		if werr != nil {
			cancel()
		}
	}
	if !headerSent {
		sendHeader() // an empty stream
	}
	if unread && x.req.protoMajor == 1 {
		endUnread(rc, x.req.protoMinor)
	}
	return werr
}

// endUnread ends the answer to a stream that ended before its body did (a
// record ended it, or its client left) and closes the connection, the
// rest of the body unread: it may go on for as long as the client likes,
// and net/http, reading what full duplex left of a body, reads the
// connection twice at once and panics (go.dev/issue/68560). The
// connection is taken from net/http, and the chunked answer ended by hand.
func endUnread(rc *http.ResponseController, protoMinor int) {
	conn, bufrw, err := rc.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	if protoMinor >= 1 {
		bufrw.WriteString("0\r\n\r\n") // the last chunk: the answer is whole
		bufrw.Flush()
	}
}

// A streamItem is one record of a stream on its way to its report.
type streamItem struct {
	rec     *record
	shape   confluent.Shape
	ref     *rejection    // the record is refused, not sent
	started bool          // the record was given to the producer
	outcome *publishError // once settled; nil: acknowledged
	start   time.Time
	size    int64 // the bytes of its JSON, held until it is answered
}

// errRecordTooLarge stops the reading of a record longer than max_size.
var errRecordTooLarge = errors.New("record larger than max_size")

// recordBudget reads a stream's body, but at most max_size bytes, and a
// little whitespace, past the end of the last record read: a record
// cannot make its reader hold more.
type recordBudget struct {
	r     io.Reader
	max   int64
	read  int64
	limit int64
	over  bool // a record met the limit
}

// streamSpacing is how much whitespace (a CRLF, a newline, indentation)
// may come between a stream's records beyond max_size: the decoder's
// offset counts it into the next record.
const streamSpacing = 4 << 10

// from lets the next record start at offset.
func (b *recordBudget) from(offset int64) { b.limit = offset + b.max + streamSpacing }

func (b *recordBudget) Read(p []byte) (int, error) {
	if b.read >= b.limit {
		b.over = true
		return 0, errRecordTooLarge
	}
	p = p[:min(int64(len(p)), b.limit-b.read)]
	n, err := b.r.Read(p)
	b.read += int64(n)
	return n, err
}

// byteWindow bounds the bytes of a stream's records in flight; one
// record always goes, whatever its size.
type byteWindow struct {
	mu    sync.Mutex
	room  *sync.Cond
	bytes int64
	max   int64
}

func newByteWindow(max int64) *byteWindow {
	w := &byteWindow{max: max}
	w.room = sync.NewCond(&w.mu)
	return w
}

// take waits until n more bytes fit.
func (w *byteWindow) take(n int64) {
	w.mu.Lock()
	for w.bytes > 0 && w.bytes+n > w.max {
		w.room.Wait()
	}
	w.bytes += n
	w.mu.Unlock()
}

// release gives back n bytes taken.
func (w *byteWindow) release(n int64) {
	w.mu.Lock()
	w.bytes -= n
	w.mu.Unlock()
	w.room.Signal()
}

// readStream reads the records of a stream, gives each to the producer
// and passes it on to be answered, until the body ends, a record ends the
// stream, or ctx is done. Every record read is passed on, so that each one
// given to the producer is waited for and counted.
// *unread says, once items is closed, whether the body was left before
// its end.
func (h *Handler) readStream(ctx context.Context, x *exchange,
	items chan<- *streamItem, window *byteWindow, unread *bool) {
	defer close(items)
	*unread = true
	body := &recordBudget{r: x.req.bodyReader, max: h.MaxSize}
	d := jsontext.NewDecoder(body, jsontext.AllowDuplicateNames(true))
	for ctx.Err() == nil {
		offset := d.InputOffset()
		body.from(offset)
		item := &streamItem{}
		if d.PeekKind() == 0 {
			if _, err := d.ReadToken(); err == io.EOF {
				*unread = false
				return
			}
			item.ref = confluentRejectionOf(confluent.ErrBrokenJSON)
		} else {
			// The record's time, and its deadline, start when it
			// arrives, however long the client paused before it.
			item.start = time.Now()
			item.rec = newRecord(nil, item.start, time.Duration(h.Timeout))
			item.ref = confluentRejectionOf(confluent.ReadV3Record(d, item.rec, &item.shape, h.MaxSize))
			item.size = d.InputOffset() - offset
		}
		if body.over {
			item.ref = confluentRejectionOf(confluent.ErrRecordTooLarge)
		}
		if item.ref == nil {
			window.take(item.size)
			h.startStreamRecord(x, item)
		} else {
			item.size = 0
			metricRejections.WithLabelValues(item.ref.reason).Inc()
		}
		items <- item // the writer takes every item until the channel closes
		if item.ref != nil && item.ref.endsStream {
			return
		}
	}
}

// startStreamRecord checks a record of a stream and gives it to the
// producer; item.ref says why it was not.
func (h *Handler) startStreamRecord(x *exchange, item *streamItem) {
	recs := []*record{item.rec}
	if h.schema != nil {
		if item.ref = h.checkSchema(recs); item.ref != nil {
			return
		}
	}
	// The status and headers went before the stream's records: the
	// quota's answer is the record's report alone.
	if _, _, ref := h.take(x, 1, item.size); ref != nil {
		item.ref = ref
		return
	}
	h.stampIdentity(&x.req.identity, recs)
	if h.traceHeaders {
		addTraceHeaders(&x.req, recs)
	}
	item.rec.Topic = x.topic
	err := x.producer.Start(x.req.ctx, recs)
	if item.ref = partitionRejection(err); item.ref != nil {
		h.refund(x, 1, item.size)
		return
	}
	item.started = true // a failed topic lookup is the record's outcome
}

// settleStreamItem waits for a record of a stream to be settled, and
// counts it.
func (h *Handler) settleStreamItem(ctx context.Context, x *exchange, item *streamItem) {
	if !item.started {
		return
	}
	recs := []*record{item.rec}
	x.producer.Wait(ctx, recs)
	out := outcomesOf(recs)
	item.outcome = out.of(0)
	countRecord(x.topic, item.rec, item.outcome)
	if item.outcome != nil {
		h.logFailure(x.topic, recs, out, item.start)
	} else {
		metricsFor(x.topic).latency.Observe(time.Since(item.start).Seconds())
	}
}

// appendStreamReport appends the delivery report of a record of a stream.
func (h *Handler) appendStreamReport(b []byte, x *exchange, item *streamItem) []byte {
	if item.ref != nil {
		_, code, message := confluentError(item.ref)
		return confluent.AppendError(b, code, message)
	}
	return h.appendV3Report(b, x, item.rec, item.outcome, item.shape)
}
