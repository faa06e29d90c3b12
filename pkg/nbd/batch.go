package nbd

import (
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
)

// batchWriter sends frames (requests or replies) on one connection,
// combining those queued while a write is in progress into a single
// writev. There is no writer goroutine: the first caller to find no
// write in progress becomes the flusher and sends what is queued until
// the queue is empty; the others only queue and return. At depth, one
// system call (and one wake-up of the peer's reader) carries many
// frames instead of one each.
//
// A frame's buffers must stay unchanged until it is sent: callers keep
// them until the peer's answer to the frame arrives, which cannot come
// before it is sent. Buffers given to release are handed back (putBuf)
// by whoever sends them.
type batchWriter struct {
	w io.Writer

	mu       sync.Mutex
	queue    net.Buffers
	release  []*[]byte
	spare    net.Buffers
	spareRel []*[]byte
	flushing bool
	err      error
}

func newBatchWriter(w io.Writer) *batchWriter { return &batchWriter{w: w} }

// write queues one frame made of parts and, unless another caller is
// already sending, sends everything queued. It returns the error of the
// connection's first failed write, if any; a frame queued behind a write
// that failed is dropped (its release buffers are still handed back).
func (b *batchWriter) write(release *[]byte, parts ...[]byte) error {
	b.mu.Lock()
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		putBuf(release)
		return err
	}
	b.queue = append(b.queue, parts...)
	batchFrames.Add(1)
	if release != nil {
		b.release = append(b.release, release)
	}
	if b.flushing {
		b.mu.Unlock()
		return nil
	}
	b.flushing = true
	// Let goroutines that are runnable now (other requests' handlers,
	// about to send their frames) queue first: on a few CPUs they rarely
	// overlap a write otherwise, and each frame would go alone.
	b.mu.Unlock()
	runtime.Gosched()
	b.mu.Lock()
	for len(b.queue) > 0 && b.err == nil {
		q, rel := b.queue, b.release
		b.queue, b.release = b.spare[:0], b.spareRel[:0]
		b.mu.Unlock()

		// WriteTo consumes q; keep its backing array to reuse.
		keep := q[:0:cap(q)]
		batchWrites.Add(1)
		_, err := q.WriteTo(b.w)
		for _, p := range rel {
			putBuf(p)
		}
		clear(keep[:cap(keep)])
		clear(rel)

		b.mu.Lock()
		b.spare, b.spareRel = keep, rel[:0]
		if err != nil {
			b.err = err
		}
	}
	if b.err != nil {
		for _, p := range b.release {
			putBuf(p)
		}
		b.queue, b.release = nil, nil
	}
	b.flushing = false
	err := b.err
	b.mu.Unlock()
	return err
}

// batchFrames and batchWrites count frames queued and writes made by all
// batchWriters, for benchmarks: their ratio is the frames per write.
var batchFrames, batchWrites atomic.Int64
