package nbd

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Reads through the O_DIRECT descriptor see buffered writes not yet
// written back, and a read over an image's unaligned end is completed
// through the page cache.
func TestFileBackend_DirectReads_SeeBufferedWritesAndTheUnalignedEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 3*DirectAlign + 100
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	d, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Skipf("no O_DIRECT on %s: %v", filepath.Dir(path), err)
	}
	defer d.Close()
	b := FileBackend{F: f, Direct: d}
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
	if _, err := b.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		off, n  int
		wantN   int
		wantEOF bool
	}{
		{name: "aligned block", off: DirectAlign, n: DirectAlign, wantN: DirectAlign},
		{name: "over the end", off: 3 * DirectAlign, n: DirectAlign, wantN: 100, wantEOF: true},
		{name: "unaligned", off: 10, n: 4000, wantN: 4000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf := alignedBuf(tc.n)
			n, err := b.ReadAt(buf, int64(tc.off))
			if n != tc.wantN || (err == io.EOF) != tc.wantEOF || (err != nil && err != io.EOF) {
				t.Fatalf("ReadAt(%d, %d) = %d, %v; want %d bytes, EOF %v", tc.n, tc.off, n, err, tc.wantN, tc.wantEOF)
			}
			if !bytes.Equal(buf[:n], data[tc.off:tc.off+n]) {
				t.Fatal("read back other bytes than written")
			}
		})
	}
}

// Many aligned reads at once go through Linux AIO (not a thread each) and
// every one returns its own block's bytes.
func TestFileBackend_ConcurrentDirectReads_ThroughAIO_EqualTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	const blocks = 256
	data := make([]byte, blocks*DirectAlign)
	for i := range blocks {
		copy(data[i*DirectAlign:], bytes.Repeat([]byte{byte(i), byte(i >> 8), 0xa5, 0x5a}, DirectAlign/4))
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Skipf("no O_DIRECT on %s: %v", filepath.Dir(path), err)
	}
	defer d.Close()
	if sharedAIO() == nil {
		_, err := newAIOReads()
		t.Fatalf("Linux AIO is not available, so direct reads block a thread each: %v", err)
	}
	b := FileBackend{F: f, Direct: d}
	before := aioCompleted.Load()
	const readers, each = 64, 32
	errs := make(chan error, readers)
	for g := range readers {
		go func() {
			buf := alignedBuf(DirectAlign)
			for k := range each {
				i := (g*each + k*7) % blocks
				if n, err := b.ReadAt(buf, int64(i*DirectAlign)); n != DirectAlign || err != nil {
					errs <- fmt.Errorf("block %d: read %d bytes, %v", i, n, err)
					return
				}
				if !bytes.Equal(buf, data[i*DirectAlign:(i+1)*DirectAlign]) {
					errs <- fmt.Errorf("block %d: other bytes than the file's", i)
					return
				}
			}
			errs <- nil
		}()
	}
	for range readers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := aioCompleted.Load() - before; got < readers*each {
		t.Fatalf("%d of %d reads completed through AIO", got, readers*each)
	}
}
