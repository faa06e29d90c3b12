package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// copyChunk bounds each copy step so a long copy notices a canceled context.
const copyChunk = 64 << 20

// clone makes dst (empty, new) hold the first size bytes of src: shared
// extents in reflink mode, a sparse copy otherwise. dst ends up size bytes.
func (p *Pool) clone(ctx context.Context, dst, src *os.File, size int64) error {
	if p.mode == CloneReflink {
		if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
			return fmt.Errorf("FICLONE %s to %s: %w", src.Name(), dst.Name(), err)
		}
		return nil
	}
	return sparseCopy(ctx, dst, src, size)
}

// sparseCopy copies only the data regions of src, found with SEEK_DATA and
// SEEK_HOLE, so holes stay holes in dst and a mostly empty image copies in
// time proportional to its data, not its size.
func sparseCopy(ctx context.Context, dst, src *os.File, size int64) error {
	if err := dst.Truncate(size); err != nil {
		return fmt.Errorf("size %s: %w", dst.Name(), err)
	}
	fd := int(src.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if errors.Is(err, unix.EINVAL) {
			// No SEEK_DATA support: everything counts as data.
			return copyRange(ctx, dst, src, off, size-off)
		}
		if err != nil {
			return fmt.Errorf("SEEK_DATA in %s at %d: %w", src.Name(), off, err)
		}
		if data >= size {
			return nil
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("SEEK_HOLE in %s at %d: %w", src.Name(), data, err)
		}
		hole = min(hole, size)
		if err := copyRange(ctx, dst, src, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyRange copies [off, off+n) of src to the same offsets in dst, in the
// kernel (copy_file_range) where possible.
func copyRange(ctx context.Context, dst, src *os.File, off, n int64) error {
	end := off + n
	for off < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		want := int(min(end-off, copyChunk))
		roff, woff := off, off
		copied, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, want, 0)
		if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) ||
			errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			return copyRangeUser(ctx, dst, src, off, end-off)
		}
		if err != nil {
			return fmt.Errorf("copy_file_range %s to %s at %d: %w", src.Name(), dst.Name(), off, err)
		}
		if copied == 0 {
			return nil // src shrank under us; the rest reads as zeros anyway
		}
		off += int64(copied)
	}
	return nil
}

// copyRangeUser is copyRange through a user-space buffer.
func copyRangeUser(ctx context.Context, dst, src *os.File, off, n int64) error {
	buf := make([]byte, 1<<20)
	end := off + n
	for off < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(int64(len(buf)), end-off)]
		r, err := src.ReadAt(b, off)
		if r > 0 {
			if _, werr := dst.WriteAt(b[:r], off); werr != nil {
				return fmt.Errorf("write %s at %d: %w", dst.Name(), off, werr)
			}
			off += int64(r)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s at %d: %w", src.Name(), off, err)
		}
	}
	return nil
}
