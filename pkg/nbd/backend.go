package nbd

import (
	"io"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Backend is what an export reads and writes: positional I/O that is safe
// for concurrent use, as *os.File's is.
type Backend interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Sync makes every completed write durable (FLUSH, FUA).
	Sync() error
	// Trim discards a range; reads of it may return anything until written.
	Trim(off, length int64) error
	// WriteZeroes makes a range read as zeroes; with noHole it stays
	// allocated.
	WriteZeroes(off, length int64, noHole bool) error
}

// FileBackend is a Backend on a file, typically a volume's sparse image.
type FileBackend struct {
	F *os.File
	// Direct, if set, is the same file opened O_DIRECT (O_RDWR for a
	// writable export). Reads whose offset, length and buffer are aligned
	// to DirectAlign go through it, as a local loop device's do: a block
	// device's random reads through the page cache cost a page-cache
	// insertion per miss (about twice the CPU of a direct read here) for a
	// cache the node's own page cache above the device already is. So do
	// aligned writes of at least DirectWriteMin: copying them into the page
	// cache and writing them back later costs more CPU than the disk's own
	// DMA, and a cache of them helps nobody. Smaller writes stay buffered,
	// where the page cache merges them until a FLUSH. The kernel writes
	// back dirty pages of a range before direct I/O on it and drops them
	// after a direct write, so the two kinds of I/O see each other.
	Direct *os.File
}

// DirectAlign is the alignment FileBackend.Direct's reads need (the
// logical block size of any file system the images live on).
const DirectAlign = 4096

// DirectWriteMin is the smallest write FileBackend sends around the page
// cache.
const DirectWriteMin = 128 << 10

// directWrites counts writes that went around the page cache, for tests.
var directWrites atomic.Int64

// aligned reports whether p at off can go through an O_DIRECT descriptor.
func aligned(p []byte, off int64) bool {
	return len(p) > 0 && off%DirectAlign == 0 && len(p)%DirectAlign == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(p)))%DirectAlign == 0
}

func (b FileBackend) ReadAt(p []byte, off int64) (int, error) {
	if b.Direct == nil || !aligned(p, off) {
		return b.F.ReadAt(p, off)
	}
	var n int
	var err error
	if a := sharedAIO(); a != nil {
		var ok bool
		if n, ok, err = a.readAt(b.Direct, p, off); ok && err == nil && n == len(p) {
			return n, nil
		} else if !ok {
			n, err = b.Direct.ReadAt(p, off)
		} else if err == nil {
			err = io.EOF // short: the image ends inside p
		}
	} else {
		n, err = b.Direct.ReadAt(p, off)
	}
	if err == nil {
		return n, nil
	}
	// A short read at the image's end leaves an unaligned rest (EINVAL);
	// whatever else direct I/O refused is tried through the page cache.
	m, err := b.F.ReadAt(p[n:], off+int64(n))
	return n + m, err
}

func (b FileBackend) WriteAt(p []byte, off int64) (int, error) {
	if b.Direct == nil || len(p) < DirectWriteMin || !aligned(p, off) {
		return b.F.WriteAt(p, off)
	}
	n, err := b.Direct.WriteAt(p, off)
	if err == nil {
		directWrites.Add(1)
		return n, nil
	}
	// What direct I/O refused (a descriptor opened read-only, a file
	// system that takes O_DIRECT at open but not for this range) goes
	// through the page cache; so does a short write's rest, whose error
	// (ENOSPC) the buffered write then reports.
	m, err := b.F.WriteAt(p[n:], off+int64(n))
	return n + m, err
}

// Sync is fdatasync: the image's size never changes through NBD, so its
// metadata need not be written.
func (b FileBackend) Sync() error { return unix.Fdatasync(int(b.F.Fd())) }

// Trim punches a hole, giving the space back to the pool.
func (b FileBackend) Trim(off, length int64) error {
	return unix.Fallocate(int(b.F.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

func (b FileBackend) WriteZeroes(off, length int64, noHole bool) error {
	mode := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
	if noHole {
		mode = unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
	}
	if err := unix.Fallocate(int(b.F.Fd()), mode, off, length); err == nil {
		return nil
	}
	// File systems without the fallocate mode: write the zeroes.
	zero := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(zero)))
		if _, err := b.F.WriteAt(zero[:n], off); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}
