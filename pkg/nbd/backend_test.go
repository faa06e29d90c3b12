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
	const size = 3*DirectAlign + 100
	_, b := sparseImage(t, size, os.O_RDONLY)
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

// Aligned writes of DirectWriteMin or more go around the page cache, and
// buffered and direct I/O on the same blocks see each other both ways:
// a direct write replaces what a buffered write left dirty in the cache,
// and a direct read returns a buffered write not yet written back.
// Unaligned or small writes stay buffered, and a direct descriptor opened
// read-only makes a large write fall back to the page cache.
func TestFileBackend_LargeAlignedWrites_GoDirect_AndSeeBufferedIO(t *testing.T) {
	const size = 4 << 20
	path, b := sparseImage(t, size, os.O_RDWR)
	fill := func(c byte, n int) []byte {
		p := alignedBuf(n)
		for i := range p {
			p[i] = c ^ byte(i/DirectAlign)
		}
		return p
	}
	want := make([]byte, size)
	write := func(p []byte, off int, direct bool) {
		t.Helper()
		before := directWrites.Load()
		if n, err := b.WriteAt(p, int64(off)); n != len(p) || err != nil {
			t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", len(p), off, n, err)
		}
		if got := directWrites.Load() - before; got != map[bool]int64{false: 0, true: 1}[direct] {
			t.Fatalf("WriteAt(%d bytes at %d): %d direct writes; want direct %v", len(p), off, got, direct)
		}
		copy(want[off:], p)
	}
	check := func(what string) {
		t.Helper()
		got := alignedBuf(size)
		if _, err := b.ReadAt(got, 0); err != nil { // aligned: through Direct
			t.Fatalf("%s: direct read: %v", what, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: a direct read returned other bytes than written", what)
		}
		if _, err := b.F.ReadAt(got, 0); err != nil {
			t.Fatalf("%s: buffered read: %v", what, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: a buffered read returned other bytes than written", what)
		}
	}

	write(fill('a', DirectAlign), 2*DirectAlign, false) // small: dirty in the page cache
	write(fill('b', 1<<20), 0, true)                    // covers it
	check("direct write over a dirty buffered block")
	write(fill('c', DirectAlign), 3*DirectAlign, false)
	check("buffered write inside a direct one")
	write(fill('d', DirectWriteMin)[:DirectWriteMin-512], 1<<20, false) // length not aligned
	write(fill('e', DirectWriteMin), 2<<20+512, false)                  // offset not aligned
	write(fill('f', DirectWriteMin), 3<<20, true)
	check("unaligned large writes beside direct ones")

	ro, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	b.Direct = ro
	write(fill('g', 1<<20), 1<<20, false) // EBADF from the direct descriptor: written buffered
	check("large write with a read-only direct descriptor")
}

// sparseImage makes an image file of size bytes and returns a FileBackend
// on it, its direct descriptor opened with directFlag|O_DIRECT. It skips
// the test where the temporary directory's file system refuses O_DIRECT.
func sparseImage(t *testing.T, size int64, directFlag int) (path string, b FileBackend) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "img")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	d, err := os.OpenFile(path, directFlag|syscall.O_DIRECT, 0)
	if err != nil {
		t.Skipf("no O_DIRECT on %s: %v", filepath.Dir(path), err)
	}
	t.Cleanup(func() { d.Close() })
	return path, FileBackend{F: f, Direct: d}
}
