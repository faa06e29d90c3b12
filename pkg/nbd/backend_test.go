package nbd

import (
	"bytes"
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
