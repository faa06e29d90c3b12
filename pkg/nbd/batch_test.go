package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// slowWriter records each write call and, while one is in progress,
// lets the test queue more frames behind it.
type slowWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	calls  int
	gate   chan struct{} // closed to let the first write finish
	inside chan struct{} // closed when the first write has started
	fail   error
}

func (w *slowWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.calls++
	first := w.calls == 1
	w.mu.Unlock()
	if first && w.gate != nil {
		close(w.inside)
		<-w.gate
	}
	if w.fail != nil {
		return 0, w.fail
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func TestBatchWriter_FramesQueuedDuringAWrite_GoOutTogetherInOrder(t *testing.T) {
	w := &slowWriter{gate: make(chan struct{}), inside: make(chan struct{})}
	bw := newBatchWriter(w)
	done := make(chan error, 1)
	go func() { done <- bw.write(nil, []byte("a1"), []byte("a2")) }()
	<-w.inside
	// The first write is in progress: these only queue and return (were
	// they to write themselves, they would wait for it: the test would
	// hang here).
	for i := range 5 {
		if err := bw.write(nil, []byte(fmt.Sprintf("b%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	close(w.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, want := w.buf.String(), "a1a2b0b1b2b3b4"; got != want {
		t.Fatalf("sent %q, want %q", got, want)
	}
	// bytes.Buffer has no ReadFrom for writev, so net.Buffers writes each
	// part; what matters is that the queued frames went in the flusher's
	// second round, not in five rounds of their own.
	if w.calls != 2+5 {
		t.Fatalf("%d write calls, want 7 (2 parts, then 5 queued parts in one round)", w.calls)
	}
}

func TestBatchWriter_AfterAFailedWrite_EveryWriteFails_AndBuffersGoBack(t *testing.T) {
	boom := errors.New("broken pipe")
	w := &slowWriter{fail: boom}
	bw := newBatchWriter(w)
	p, _ := getBuf(4096)
	if err := bw.write(p, []byte("x")); !errors.Is(err, boom) {
		t.Fatalf("first write: %v, want %v", err, boom)
	}
	if err := bw.write(nil, []byte("y")); !errors.Is(err, boom) {
		t.Fatalf("write after a failure: %v, want %v", err, boom)
	}
	if len(bw.queue) != 0 || len(bw.release) != 0 {
		t.Fatalf("queue %d, release %d after a failure; want both empty", len(bw.queue), len(bw.release))
	}
}

func TestBatchWriter_ManyWriters_EveryFrameSentWhole(t *testing.T) {
	var out bytes.Buffer
	var mu sync.Mutex
	bw := newBatchWriter(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return out.Write(p)
	}))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				f := []byte(fmt.Sprintf("<%d:%03d>", g, i))
				if err := bw.write(nil, f[:3], f[3:]); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	s := out.String()
	for g := range 8 {
		for i := range 200 {
			if !bytes.Contains([]byte(s), []byte(fmt.Sprintf("<%d:%03d>", g, i))) {
				t.Fatalf("frame <%d:%03d> missing or split", g, i)
			}
		}
	}
	if len(s) != 8*200*7 {
		t.Fatalf("sent %d bytes, want %d", len(s), 8*200*7)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
