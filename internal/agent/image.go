package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// sourceXattr records what an image or snapshot was made from, so a repeated
// request with the same id but a different source is told ErrExists instead
// of silently getting the other data.
const sourceXattr = "user.stowage.source"

// CreateImage makes an empty sparse image of size bytes for volumeID.
// An existing image of the same size and no source is success; anything
// else under that id is ErrExists.
func (p *Pool) CreateImage(ctx context.Context, volumeID string, size int64) error {
	if err := validateID(volumeID); err != nil {
		return fmt.Errorf("create volume image: %w", err)
	}
	if err := validateSize(size); err != nil {
		return fmt.Errorf("create volume image %s: %w", volumeID, err)
	}
	return p.makeVolume(ctx, volumeID, size, "", func(f *os.File) error {
		return f.Truncate(size)
	})
}

// CreateImageFromSnapshot makes volumeID's image from snapshotID, sharing
// blocks where the pool can reflink, then grows it to size. size must not
// be smaller than the snapshot.
func (p *Pool) CreateImageFromSnapshot(ctx context.Context, volumeID, snapshotID string, size int64) error {
	if err := validateID(snapshotID); err != nil {
		return fmt.Errorf("create volume image %s from snapshot: %w", volumeID, err)
	}
	return p.cloneVolume(ctx, volumeID, size, "snapshot "+snapshotID, "snapshot:"+snapshotID, p.SnapshotPath(snapshotID))
}

// CloneImage makes volumeID's image as a copy of sourceVolumeID's current
// data, sharing blocks where the pool can reflink, then grows it to size.
func (p *Pool) CloneImage(ctx context.Context, volumeID, sourceVolumeID string, size int64) error {
	if err := validateID(sourceVolumeID); err != nil {
		return fmt.Errorf("clone volume image %s: %w", volumeID, err)
	}
	return p.cloneVolume(ctx, volumeID, size, "volume "+sourceVolumeID, "volume:"+sourceVolumeID, p.ImagePath(sourceVolumeID))
}

func (p *Pool) cloneVolume(ctx context.Context, volumeID string, size int64, srcName, source, srcPath string) error {
	if err := validateID(volumeID); err != nil {
		return fmt.Errorf("create volume image from %s: %w", srcName, err)
	}
	if err := validateSize(size); err != nil {
		return fmt.Errorf("create volume image %s from %s: %w", volumeID, srcName, err)
	}
	return p.makeVolume(ctx, volumeID, size, source, func(dst *os.File) error {
		src, err := os.Open(srcPath)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w", srcName, ErrNotFound)
		}
		if err != nil {
			return err
		}
		defer src.Close()
		fi, err := src.Stat()
		if err != nil {
			return err
		}
		if size < fi.Size() {
			return fmt.Errorf("%w: size %d is smaller than %s (%d bytes)", ErrInvalid, size, srcName, fi.Size())
		}
		if err := p.clone(ctx, dst, src, fi.Size()); err != nil {
			return fmt.Errorf("from %s: %w", srcName, err)
		}
		return dst.Truncate(size)
	})
}

// makeVolume is the shared create path: lock the id, accept an identical
// existing image, otherwise fill a temp file and publish it.
func (p *Pool) makeVolume(ctx context.Context, volumeID string, size int64, source string, fill func(*os.File) error) error {
	unlock, err := p.locks.Lock(ctx, "volume/"+volumeID)
	if err != nil {
		return fmt.Errorf("create volume image %s: %w", volumeID, err)
	}
	defer unlock()
	final := p.ImagePath(volumeID)
	if done, err := checkExisting(final, size, source); done {
		if err != nil {
			return fmt.Errorf("create volume image %s: %w", volumeID, err)
		}
		return nil
	}
	err = p.publish(ctx, "volume-"+volumeID, final, source, fill)
	if errors.Is(err, os.ErrExist) {
		// Someone outside this process created it meanwhile.
		if _, err := checkExisting(final, size, source); err != nil {
			return fmt.Errorf("create volume image %s: %w", volumeID, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("create volume image %s: %w", volumeID, err)
	}
	return nil
}

// ResizeImage grows volumeID's image to size; the same size is success and
// shrinking is ErrInvalid. An attached loop device sees the new size only
// after loopdev.Refresh.
func (p *Pool) ResizeImage(ctx context.Context, volumeID string, size int64) error {
	if err := validateID(volumeID); err != nil {
		return fmt.Errorf("resize volume image: %w", err)
	}
	if err := validateSize(size); err != nil {
		return fmt.Errorf("resize volume image %s: %w", volumeID, err)
	}
	// Serialized so two grows cannot interleave their check and truncate
	// into a shrink.
	unlock, err := p.locks.Lock(ctx, "volume/"+volumeID)
	if err != nil {
		return fmt.Errorf("resize volume image %s: %w", volumeID, err)
	}
	defer unlock()
	f, err := os.OpenFile(p.ImagePath(volumeID), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("resize volume image %s: %w", volumeID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("resize volume image %s: %w", volumeID, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("resize volume image %s: %w", volumeID, err)
	}
	switch {
	case size == fi.Size():
		return nil
	case size < fi.Size():
		return fmt.Errorf("resize volume image %s: %w: shrink from %d to %d bytes", volumeID, ErrInvalid, fi.Size(), size)
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("resize volume image %s: %w", volumeID, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("resize volume image %s: %w", volumeID, err)
	}
	return nil
}

// DeleteImage removes volumeID's image; a missing image is success. The
// caller must detach it first: an attached image keeps its blocks until the
// loop device lets go.
//
// The removal is not synced to disk: a crash soon after can bring the image
// back. The server removes an image only once no record knows it (a volume
// deleted, a create rolled back, an orphan), and its Reconcile removes such
// an image again at the next start, so the directory fsync would buy
// nothing but latency.
func (p *Pool) DeleteImage(ctx context.Context, volumeID string) error {
	if err := validateID(volumeID); err != nil {
		return fmt.Errorf("delete volume image: %w", err)
	}
	unlock, err := p.locks.Lock(ctx, "volume/"+volumeID)
	if err != nil {
		return fmt.Errorf("delete volume image %s: %w", volumeID, err)
	}
	defer unlock()
	if err := os.Remove(p.ImagePath(volumeID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete volume image %s: %w", volumeID, err)
	}
	return nil
}

// SnapshotImage captures a crash-consistent copy of volumeID's image, which
// may be attached and in use, as snapshotID.
//
// With reflink the capture is atomic: FICLONE flushes the source's dirty
// pages and shares its extents under the inode lock, so the snapshot is the
// image as a power cut would have left it. With copy it is not atomic;
// writes during the copy can land on either side of it, so the volume must
// be quiesced (unmounted or frozen) for a consistent snapshot.
func (p *Pool) SnapshotImage(ctx context.Context, volumeID, snapshotID string) error {
	if err := validateID(volumeID); err != nil {
		return fmt.Errorf("snapshot volume image: %w", err)
	}
	if err := validateID(snapshotID); err != nil {
		return fmt.Errorf("snapshot volume image %s: %w", volumeID, err)
	}
	unlock, err := p.locks.Lock(ctx, "snapshot/"+snapshotID)
	if err != nil {
		return fmt.Errorf("snapshot %s of volume %s: %w", snapshotID, volumeID, err)
	}
	defer unlock()
	final := p.SnapshotPath(snapshotID)
	source := "volume:" + volumeID
	if done, err := checkExisting(final, -1, source); done {
		if err != nil {
			return fmt.Errorf("snapshot %s of volume %s: %w", snapshotID, volumeID, err)
		}
		return nil
	}
	err = p.publish(ctx, "snapshot-"+snapshotID, final, source, func(dst *os.File) error {
		src, err := os.Open(p.ImagePath(volumeID))
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("volume %s: %w", volumeID, ErrNotFound)
		}
		if err != nil {
			return err
		}
		defer src.Close()
		fi, err := src.Stat()
		if err != nil {
			return err
		}
		return p.clone(ctx, dst, src, fi.Size())
	})
	if errors.Is(err, os.ErrExist) {
		if _, err := checkExisting(final, -1, source); err != nil {
			return fmt.Errorf("snapshot %s of volume %s: %w", snapshotID, volumeID, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("snapshot %s of volume %s: %w", snapshotID, volumeID, err)
	}
	return nil
}

// DeleteSnapshot removes snapshotID; a missing snapshot is success. Images
// made from it are unaffected: they share blocks, not files.
func (p *Pool) DeleteSnapshot(ctx context.Context, snapshotID string) error {
	if err := validateID(snapshotID); err != nil {
		return fmt.Errorf("delete snapshot: %w", err)
	}
	unlock, err := p.locks.Lock(ctx, "snapshot/"+snapshotID)
	if err != nil {
		return fmt.Errorf("delete snapshot %s: %w", snapshotID, err)
	}
	defer unlock()
	if err := removeDurably(p.SnapshotPath(snapshotID)); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", snapshotID, err)
	}
	return nil
}

// checkExisting reports whether final exists (done) and, if so, whether it
// matches the request (nil) or conflicts with it (ErrExists). A negative
// wantSize accepts any size. Where the file system has no xattrs the source
// cannot be compared and is not.
func checkExisting(final string, wantSize int64, wantSource string) (done bool, err error) {
	fi, err := os.Stat(final)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	source, known, err := readSource(final)
	if err != nil {
		return true, err
	}
	if (wantSize >= 0 && fi.Size() != wantSize) || (known && source != wantSource) {
		if source == "" {
			source = "nothing"
		}
		return true, fmt.Errorf("%w: %s is %d bytes made from %s", ErrExists, final, fi.Size(), source)
	}
	return true, nil
}

// publish fills a new temp file, makes it durable and renames it to final
// without replacing anything; an existing final is reported as os.ErrExist.
// The temp file is removed on every failure.
func (p *Pool) publish(ctx context.Context, name, final, source string, fill func(*os.File) error) (err error) {
	f, err := os.CreateTemp(filepath.Join(p.cfg.Dir, tmpDir), name+"-*"+imageSuffix)
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := fill(f); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if source != "" {
		if err := writeSource(f, source); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	f = nil
	if err := renameNoReplace(tmp, final); err != nil {
		return err
	}
	return syncDir(filepath.Dir(final))
}

// renameNoReplace renames without ever replacing final, falling back to
// link+unlink (also no-replace) where RENAME_NOREPLACE is unsupported.
func renameNoReplace(tmp, final string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if err = os.Link(tmp, final); err == nil {
			return os.Remove(tmp)
		}
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("link %s to %s: %w", tmp, final, os.ErrExist)
		}
		return err
	}
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("rename %s to %s: %w", tmp, final, os.ErrExist)
	}
	if err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, final, err)
	}
	return nil
}

func removeDurably(path string) error {
	if err := os.Remove(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncDir makes a rename or unlink in dir survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

func writeSource(f *os.File, source string) error {
	err := unix.Fsetxattr(int(f.Fd()), sourceXattr, []byte(source), 0)
	if errors.Is(err, unix.ENOTSUP) {
		return nil // no xattrs here: idempotency falls back to size only
	}
	if err != nil {
		return fmt.Errorf("set %s on %s: %w", sourceXattr, f.Name(), err)
	}
	return nil
}

// readSource returns what path was made from ("" for a blank image);
// known is false where the file system has no xattrs.
func readSource(path string) (source string, known bool, err error) {
	buf := make([]byte, 256)
	n, err := unix.Getxattr(path, sourceXattr, buf)
	switch {
	case errors.Is(err, unix.ENOTSUP):
		return "", false, nil
	case errors.Is(err, unix.ENODATA):
		return "", true, nil
	case err != nil:
		return "", false, fmt.Errorf("get %s of %s: %w", sourceXattr, path, err)
	}
	return string(buf[:n]), true, nil
}
