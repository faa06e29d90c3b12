// Package loopdev turns files into block devices: it attaches a file (by
// path, or an open file handed over without one) to a loop device (with
// direct I/O, so data is not cached twice), finds and lists loop devices
// by their backing files (path, or device and inode), detaches them and
// makes them see a grown file. The CSI node plugin attaches volume images with it, the
// storage host its pool image, and tests and "stowage down" find and
// detach what is left.
//
// Everything is done with ioctls and sysfs rather than by running losetup,
// so errors are precise and callers can be concurrent: the kernel, not a
// parsed listing, decides which loop device is free.
package loopdev

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrBusy means a loop device could not be detached because something still
// holds it (a mount, or a process with it open).
var ErrBusy = errors.New("loop device in use")

// Variables rather than constants so tests can point them elsewhere.
var (
	sysBlock    = "/sys/block"
	sysDevBlock = "/sys/dev/block"
	devDir      = "/dev"
	loopControl = "/dev/loop-control"
	blkioRoot   = "/sys/fs/cgroup/blkio"
)

// configureAttempts bounds the LOOP_CTL_GET_FREE/LOOP_CONFIGURE race: each
// lost race means another caller bound a device, so running out requires that
// many concurrent binders.
const configureAttempts = 128

// detachWait is how long Detach waits for the kernel to release a device after
// LOOP_CLR_FD before deciding another opener is keeping it.
const detachWait = 2 * time.Second

// Attach attaches backingFile to a free loop device with direct I/O on and
// returns the device path (/dev/loopN). If the file system of backingFile
// refuses direct I/O the device is configured buffered instead.
//
// Attach is idempotent: if backingFile is already attached, its device is
// returned. Concurrent callers, in this process or others using Attach, are
// serialized per file with a flock on the backing file, so the same file
// never ends up on two devices.
func Attach(ctx context.Context, backingFile string) (string, error) {
	path, err := resolve(backingFile)
	if err != nil {
		return "", fmt.Errorf("attach %s: %w", backingFile, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("attach: open backing file: %w", err)
	}
	defer f.Close()
	return attachOnce(ctx, f, path, func() (string, bool, error) { return Find(path) })
}

// attachOnce attaches f (named name) unless find finds its device, under
// f's flock, so that one file never ends up on two devices.
func attachOnce(ctx context.Context, f *os.File, name string, find func() (string, bool, error)) (string, error) {
	unlock, err := lockFile(ctx, f)
	if err != nil {
		return "", fmt.Errorf("attach %s: %w", name, err)
	}
	defer unlock()
	if dev, found, err := find(); err != nil {
		return "", fmt.Errorf("attach %s: %w", name, err)
	} else if found {
		return dev, nil
	}
	return attachFree(ctx, f, name)
}

// attachFree binds f (named path in messages) to a free loop device; the
// caller holds f's lock and found no device of it.
func attachFree(ctx context.Context, f *os.File, path string) (string, error) {
	ctl, err := os.OpenFile(loopControl, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("attach %s: %w", path, err)
	}
	defer ctl.Close()
	for attempt := 0; attempt < configureAttempts; attempt++ {
		if err := ctx.Err(); err != nil {
			return "", fmt.Errorf("attach %s: %w", path, err)
		}
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("attach %s: LOOP_CTL_GET_FREE on %s: %w", path, loopControl, err)
		}
		dev, err := configure(n, f, path)
		if errors.Is(err, unix.EBUSY) {
			// Another caller bound loopN between GET_FREE and CONFIGURE.
			continue
		}
		if err != nil {
			return "", fmt.Errorf("attach %s: %w", path, err)
		}
		clearStaleThrottle(dev)
		return dev, nil
	}
	return "", fmt.Errorf("attach %s: no free loop device after %d attempts (every LOOP_CONFIGURE lost a race)", path, configureAttempts)
}

// Backing identifies a backing file by its inode rather than its path: the
// device and inode numbers fstat reports (st_dev, st_ino), which the
// kernel keeps for a loop device as lo_device and lo_inode
// (LOOP_GET_STATUS64). A node that was handed an open image, not its path,
// finds and detaches its loop device by them.
type Backing struct {
	Dev   uint64 `json:"dev"`
	Inode uint64 `json:"inode"`
}

// IsZero reports whether b names no file.
func (b Backing) IsZero() bool { return b == Backing{} }

func (b Backing) String() string {
	return fmt.Sprintf("inode %d on device %d:%d", b.Inode, unix.Major(b.Dev), unix.Minor(b.Dev))
}

// BackingOf returns the identity of the open file f.
func BackingOf(f *os.File) (Backing, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Backing{}, fmt.Errorf("fstat %s: %w", f.Name(), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return Backing{}, fmt.Errorf("%s is not a regular file", f.Name())
	}
	return Backing{Dev: uint64(st.Dev), Inode: st.Ino}, nil
}

// AttachFile is Attach of a file the caller has open (it may have been
// handed over by another process, without a path): it attaches f to a
// free loop device with direct I/O and returns the device. A file opened
// read-only gives a read-only device (the kernel's rule). AttachFile is
// idempotent like Attach: a file already attached (found by its Backing)
// gets its device back; callers are serialized with the same flock on the
// file as Attach. The caller keeps f and closes it; the device keeps its
// own reference.
func AttachFile(ctx context.Context, f *os.File) (string, error) {
	b, err := BackingOf(f)
	if err != nil {
		return "", fmt.Errorf("attach: %w", err)
	}
	return attachOnce(ctx, f, f.Name(), func() (string, bool, error) { return FindFile(b) })
}

// FindFile returns the loop device whose backing file is b, if any. A
// device whose backing file was deleted is not a match (as for Find).
func FindFile(b Backing) (device string, found bool, err error) {
	devs, err := devicesOf(b, false)
	if err != nil || len(devs) == 0 {
		return "", false, err
	}
	return devs[0].Path, true, nil
}

// DetachFile detaches every loop device whose backing file is b, deleted
// since or not; none is no error. A mounted device is refused with ErrBusy,
// as by Detach.
func DetachFile(ctx context.Context, b Backing) error {
	devs, err := devicesOf(b, true)
	if err != nil {
		return fmt.Errorf("detach %s: %w", b, err)
	}
	var errs []error
	for _, d := range devs {
		errs = append(errs, detachDevice(ctx, d.Number, d.BackingFile))
	}
	return errors.Join(errs...)
}

// devicesOf returns the bound loop devices backed by b (the kernel's
// lo_device and lo_inode), with deleted backing files if withDeleted.
func devicesOf(b Backing, withDeleted bool) ([]Device, error) {
	if b.IsZero() {
		return nil, nil
	}
	loops, err := List()
	if err != nil {
		return nil, err
	}
	var out []Device
	for _, l := range loops {
		if l.Deleted && !withDeleted {
			continue
		}
		got, err := backingOfDevice(l.Number)
		if errors.Is(err, unix.ENXIO) || errors.Is(err, fs.ErrNotExist) {
			continue // unbound meanwhile
		}
		if err != nil {
			return nil, err
		}
		if got == b {
			l.Path, err = ensureNode(l.Number)
			if err != nil {
				return nil, err
			}
			out = append(out, l)
		}
	}
	return out, nil
}

// BackingOfDevice is what LOOP_GET_STATUS64 says loop device n's backing
// file is: its identity stays known when its path no longer names it (a
// file on a FUSE mount that went away).
func BackingOfDevice(n int) (Backing, error) { return backingOfDevice(n) }

// backingOfDevice is what LOOP_GET_STATUS64 says loop device n's backing
// file is.
func backingOfDevice(n int) (Backing, error) {
	dev, err := ensureNode(n)
	if err != nil {
		return Backing{}, err
	}
	lf, err := os.OpenFile(dev, os.O_RDONLY, 0)
	if err != nil {
		return Backing{}, err
	}
	defer lf.Close()
	info, err := unix.IoctlLoopGetStatus64(int(lf.Fd()))
	if err != nil {
		return Backing{}, fmt.Errorf("LOOP_GET_STATUS64 %s: %w", dev, err)
	}
	return Backing{Dev: info.Device, Inode: info.Inode}, nil
}

// BlockSize is the logical sector size of every volume's loop device.
const BlockSize = 4096

// configure binds loop device n to backing with LOOP_CONFIGURE, which sets
// file, flags and size in one step so no one sees a half-configured device.
func configure(n int, backing *os.File, path string) (string, error) {
	dev, err := ensureNode(n)
	if err != nil {
		return "", err
	}
	lf, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", dev, err)
	}
	defer lf.Close()

	cfg := unix.LoopConfig{Fd: uint32(backing.Fd())}
	// The name is informational (losetup shows it); sysfs has the real path.
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], path)
	cfg.Info.Flags = unix.LO_FLAGS_DIRECT_IO
	// A fixed sector size, never the kernel's pick: with direct I/O the
	// kernel picks the backing file's I/O alignment, which on xfs becomes
	// 4096 once the file shares extents (a snapshot or a clone). A volume
	// whose sector size changed after its first snapshot could no longer
	// mount an xfs made with the old one.
	cfg.Size = BlockSize // struct loop_config.block_size
	err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
	if errors.Is(err, unix.EINVAL) {
		// Kernels that validate direct I/O up front reject it here when the
		// backing file system or its alignment cannot do it.
		cfg.Info.Flags &^= unix.LO_FLAGS_DIRECT_IO
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
	}
	if err != nil {
		return "", fmt.Errorf("LOOP_CONFIGURE %s with %s: %w", dev, path, err)
	}
	return dev, nil
}

// Find returns the loop device backed by backingFile, if any. A device whose
// backing file has since been deleted is not a match: it holds old data, not
// the file now at that path.
func Find(backingFile string) (device string, found bool, err error) {
	path, err := resolve(backingFile)
	if err != nil {
		return "", false, fmt.Errorf("find loop device of %s: %w", backingFile, err)
	}
	loops, err := List()
	if err != nil {
		return "", false, fmt.Errorf("find loop device of %s: %w", path, err)
	}
	for _, l := range loops {
		if l.BackingFile == path && !l.Deleted {
			dev, err := ensureNode(l.Number)
			if err != nil {
				return "", false, fmt.Errorf("find loop device of %s: %w", path, err)
			}
			return dev, true, nil
		}
	}
	return "", false, nil
}

// Detach detaches every loop device backed by backingFile, including devices
// whose backing file was deleted after attaching. A file that is not attached
// (or does not exist) is not an error.
//
// A mounted device is refused with an error wrapping ErrBusy and stays
// attached, rather than being silently left for the kernel to detach at
// unmount. A device merely held open by a process cannot be refused that
// way: the kernel detaches it at that process's last close, and Detach
// reports ErrBusy meanwhile.
func Detach(ctx context.Context, backingFile string) error {
	path, err := resolve(backingFile)
	if err != nil {
		return fmt.Errorf("detach %s: %w", backingFile, err)
	}
	loops, err := List()
	if err != nil {
		return fmt.Errorf("detach %s: %w", path, err)
	}
	var errs []error
	for _, l := range loops {
		if l.BackingFile != path {
			continue
		}
		if err := detachDevice(ctx, l.Number, path); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func detachDevice(ctx context.Context, n int, path string) error {
	dev, err := ensureNode(n)
	if err != nil {
		return fmt.Errorf("detach %s: %w", path, err)
	}
	// O_EXCL fails while a file system has the device claimed, which is the
	// case we must refuse rather than turn into a deferred detach.
	lf, err := os.OpenFile(dev, os.O_RDWR|unix.O_EXCL, 0)
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("detach %s from %s: %w (mounted or claimed exclusively)", dev, path, ErrBusy)
	}
	if err != nil {
		return fmt.Errorf("detach %s from %s: %w", dev, path, err)
	}
	clearStaleThrottle(dev)
	err = unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0)
	lf.Close()
	if errors.Is(err, unix.ENXIO) {
		return nil // already unbound by someone else
	}
	if err != nil {
		return fmt.Errorf("detach %s from %s: LOOP_CLR_FD: %w", dev, path, err)
	}
	// The kernel unbinds on the last close; if another opener remains it
	// has only set autoclear.
	deadline := time.Now().Add(detachWait)
	for {
		bound, err := isBound(n)
		if err != nil {
			return fmt.Errorf("detach %s from %s: %w", dev, path, err)
		}
		if !bound {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("detach %s from %s: %w (held open; it will detach on last close)", dev, path, ErrBusy)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("detach %s from %s: %w", dev, path, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Refresh makes device pick up a grown backing file (LOOP_SET_CAPACITY) and
// returns the device's new size in bytes.
func Refresh(device string) (int64, error) {
	lf, err := os.OpenFile(device, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("refresh: %w", err)
	}
	defer lf.Close()
	if err := unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return 0, fmt.Errorf("refresh %s: LOOP_SET_CAPACITY: %w", device, err)
	}
	majmin, err := DeviceNumber(device)
	if err != nil {
		return 0, fmt.Errorf("refresh: %w", err)
	}
	sizeFile := filepath.Join(sysDevBlock, majmin, "size")
	b, err := os.ReadFile(sizeFile)
	if err != nil {
		return 0, fmt.Errorf("refresh %s: %w", device, err)
	}
	sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("refresh %s: parse %s: %w", device, sizeFile, err)
	}
	// sysfs counts 512-byte sectors whatever the logical block size.
	return sectors * 512, nil
}

// Device is a loop device that has a backing file.
type Device struct {
	// Path is /dev/loopN. Its node may not exist yet where there is no udev;
	// Find creates it.
	Path   string
	Number int
	// BackingFile is the absolute path of the file, as the kernel reports it
	// without the " (deleted)" it appends once the file is deleted.
	BackingFile string
	// Deleted means the file was deleted (or replaced) after attaching: the
	// device holds the old data, not the file now at BackingFile.
	Deleted bool
}

// List returns the loop devices that have a backing file, lowest number
// first.
func List() ([]Device, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, err
	}
	var loops []Device
	for _, e := range entries {
		n, ok := loopNumber(e.Name())
		if !ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(sysBlock, e.Name(), "loop", "backing_file"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // unbound; the loop directory only exists while bound
		}
		if err != nil {
			return nil, err
		}
		d := Device{Path: filepath.Join(devDir, e.Name()), Number: n, BackingFile: strings.TrimSuffix(string(b), "\n")}
		if s, ok := strings.CutSuffix(d.BackingFile, " (deleted)"); ok {
			d.BackingFile, d.Deleted = s, true
		}
		loops = append(loops, d)
	}
	sort.Slice(loops, func(i, j int) bool { return loops[i].Number < loops[j].Number })
	return loops, nil
}

// Under returns the loop devices whose backing file is dir or below it,
// deleted or not.
func Under(dir string) ([]Device, error) {
	loops, err := List()
	if err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	var out []Device
	for _, l := range loops {
		if l.BackingFile == dir || strings.HasPrefix(l.BackingFile, dir+"/") {
			out = append(out, l)
		}
	}
	return out, nil
}

// DetachUnder detaches every loop device whose backing file is dir or
// below it, without touching the backing files (which may be on a file
// system that no longer answers, like a FUSE mount whose server died).
func DetachUnder(ctx context.Context, dir string) error {
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		dir = r
	}
	loops, err := Under(dir)
	if err != nil {
		return fmt.Errorf("detach loop devices under %s: %w", dir, err)
	}
	var errs []error
	for _, l := range loops {
		errs = append(errs, detachDevice(ctx, l.Number, l.BackingFile))
	}
	return errors.Join(errs...)
}

func isBound(n int) (bool, error) {
	_, err := os.Stat(filepath.Join(sysBlock, "loop"+strconv.Itoa(n), "loop", "backing_file"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

func loopNumber(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, "loop")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= 0
}

// ensureNode returns /dev/loopN, creating the node when there is no udev to do
// it (the kernel creates loop devices beyond loop7 on demand, sysfs only).
func ensureNode(n int) (string, error) {
	dev := filepath.Join(devDir, "loop"+strconv.Itoa(n))
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFBLK {
			return "", fmt.Errorf("%s exists but is not a block device", dev)
		}
		return dev, nil
	} else if !errors.Is(err, unix.ENOENT) {
		return "", fmt.Errorf("stat %s: %w", dev, err)
	}
	devFile := filepath.Join(sysBlock, "loop"+strconv.Itoa(n), "dev")
	b, err := os.ReadFile(devFile)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", dev, err)
	}
	var major, minor uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &major, &minor); err != nil {
		return "", fmt.Errorf("create %s: parse %s %q: %w", dev, devFile, b, err)
	}
	err = unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(major, minor)))
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return "", fmt.Errorf("mknod %s (%d:%d): %w", dev, major, minor, err)
	}
	return dev, nil
}

// resolve gives the absolute, symlink-free path the kernel reports in
// backing_file. For a missing file only the directory is resolved, so a
// device whose backing file was deleted can still be found and detached.
func resolve(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return abs, nil
	}
	return filepath.Join(dir, filepath.Base(abs)), nil
}

// lockFile takes an exclusive flock on f, giving up when ctx is done. flock
// locks belong to the open file, so two goroutines of one process with their
// own opens exclude each other as well as other processes.
func lockFile(ctx context.Context, f *os.File) (unlock func(), err error) {
	fd := int(f.Fd())
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = unix.Flock(fd, unix.LOCK_UN) }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("lock %s: %w", f.Name(), ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// DeviceNumber returns "MAJ:MIN" of a block device node.
func DeviceNumber(device string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(device, &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", device, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", fmt.Errorf("%s: %w", device, ErrNotBlock)
	}
	return fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)), nil
}

// ErrNotBlock means a path is not a block device node.
var ErrNotBlock = errors.New("not a block device")

// blkioThrottleFiles are the cgroup v1 blkio throttle rules of a device.
var blkioThrottleFiles = []string{
	"blkio.throttle.read_iops_device",
	"blkio.throttle.write_iops_device",
	"blkio.throttle.read_bps_device",
	"blkio.throttle.write_bps_device",
}

// clearStaleThrottle removes the root cgroup v1 blkio throttle rules of
// device. The kernel keys them by device number, so they outlive the
// binding: a rule left by the device's previous user (a volume's IOPS limit)
// would throttle whatever is attached next. Writing 0 removes a rule and is
// accepted when there is none. cgroup v2 has no rules in its root, and on
// hosts without v1 blkio there is nothing to clear.
func clearStaleThrottle(device string) {
	majmin, err := DeviceNumber(device)
	if err != nil {
		return
	}
	for _, name := range blkioThrottleFiles {
		f, err := os.OpenFile(filepath.Join(blkioRoot, name), os.O_WRONLY, 0)
		if err != nil {
			return
		}
		_, _ = f.WriteString(majmin + " 0")
		f.Close()
	}
}
