// Package loopfs gives tests and benchmarks a real, throwaway file system
// (xfs with reflink, ext4 or btrfs) on a loop device, so behaviour that
// depends on the file system — reflink, holes, statfs — is exercised for real
// rather than against whatever the host's /tmp happens to be.
package loopfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/pkg/loopdev"
)

// mkfsArgs are the commands that make each supported file system; xfs gets
// reflink explicitly because older xfsprogs default it off.
var mkfsArgs = map[string][]string{
	"xfs":   {"mkfs.xfs", "-q", "-f", "-m", "reflink=1"},
	"ext4":  {"mkfs.ext4", "-q", "-F"},
	"btrfs": {"mkfs.btrfs", "-q", "-f"},
}

// New makes a file system of fstype ("xfs", "ext4" or "btrfs") on a sparse
// image of size bytes and returns where it is mounted. Everything lives under
// t.TempDir and is unmounted and detached in t.Cleanup. It skips the test
// when not root, since loop devices and mounts need it.
func New(t testing.TB, fstype string, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a loop device and mounts it")
	}
	if _, ok := mkfsArgs[fstype]; ok {
		if _, err := exec.LookPath(mkfsArgs[fstype][0]); err != nil {
			t.Skipf("needs %s for a %s test file system", mkfsArgs[fstype][0], fstype)
		}
	}
	// TempDir first: its removal is registered first, so it runs after the
	// unmount and detach below.
	dir := t.TempDir()
	mnt, cleanup, err := Make(dir, fstype, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cleanup(); err != nil {
			t.Errorf("loopfs cleanup: %v", err)
		}
	})
	return mnt
}

// Make is New for callers without a testing.TB (benchmark commands): it puts
// the image and mount point under dir and returns a cleanup that unmounts,
// detaches and removes both. On error nothing is left behind.
func Make(dir, fstype string, size int64) (mountDir string, cleanup func() error, err error) {
	mkfs, ok := mkfsArgs[fstype]
	if !ok {
		return "", nil, fmt.Errorf("loopfs: unsupported file system %q (want xfs, ext4 or btrfs)", fstype)
	}
	if size <= 0 {
		return "", nil, fmt.Errorf("loopfs: size %d is not positive", size)
	}
	img := filepath.Join(dir, fstype+".img")
	mnt := filepath.Join(dir, fstype+".mnt")

	var undo []func() error
	cleanup = func() error {
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			if err := undo[i](); err != nil {
				errs = append(errs, err)
			}
		}
		undo = nil
		return errors.Join(errs...)
	}
	fail := func(err error) (string, func() error, error) {
		return "", nil, errors.Join(err, cleanup())
	}

	f, err := os.OpenFile(img, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fail(fmt.Errorf("loopfs: create image: %w", err))
	}
	undo = append(undo, func() error { return removeIfExists(img) })
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(fmt.Errorf("loopfs: size image %s: %w", img, err))
	}

	ctx := context.Background()
	dev, err := loopdev.Attach(ctx, img)
	undo = append(undo, func() error { return loopdev.Detach(ctx, img) })
	if err != nil {
		return fail(fmt.Errorf("loopfs: %w", err))
	}
	args := append(append([]string(nil), mkfs[1:]...), dev)
	if out, err := exec.Command(mkfs[0], args...).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("loopfs: %s %v: %w: %s", mkfs[0], args, err, out))
	}

	if err := os.Mkdir(mnt, 0o755); err != nil {
		return fail(fmt.Errorf("loopfs: %w", err))
	}
	undo = append(undo, func() error { return removeIfExists(mnt) })
	if err := unix.Mount(dev, mnt, fstype, 0, ""); err != nil {
		return fail(fmt.Errorf("loopfs: mount %s (%s) on %s: %w", dev, fstype, mnt, err))
	}
	undo = append(undo, func() error { return unmount(mnt) })
	return mnt, cleanup, nil
}

// unmount retries while the mount is briefly busy (a just-closed file, a
// test's stray working directory) and only then falls back to a lazy
// unmount, so the loop device can still be detached afterwards.
func unmount(mnt string) error {
	var err error
	for range 50 {
		err = unix.Unmount(mnt, 0)
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // EINVAL: not a mount point any more
		}
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("loopfs: unmount %s: %w", mnt, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if lerr := unix.Unmount(mnt, unix.MNT_DETACH); lerr != nil {
		return fmt.Errorf("loopfs: unmount %s: %w (lazy unmount: %v)", mnt, err, lerr)
	}
	return fmt.Errorf("loopfs: unmount %s: %w; unmounted lazily, something still uses it", mnt, err)
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("loopfs: %w", err)
	}
	return nil
}
