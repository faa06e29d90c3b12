package nbd

import (
	"os"

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
type FileBackend struct{ F *os.File }

func (b FileBackend) ReadAt(p []byte, off int64) (int, error)  { return b.F.ReadAt(p, off) }
func (b FileBackend) WriteAt(p []byte, off int64) (int, error) { return b.F.WriteAt(p, off) }

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
