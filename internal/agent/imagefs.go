package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/pkg/loopdev"
)

// MountImageFS makes mountDir an xfs file system with reflinks, backed by a
// sparse image file of size bytes on a loop device, so that a pool gets O(1)
// snapshots on any host file system. It is idempotent: an image that exists
// is reused with its data, and a mountDir that is already mounted is left
// as it is. It reports whether it mounted the file system itself.
func MountImageFS(ctx context.Context, mountDir, imagePath string, size int64) (bool, error) {
	if mounted, err := mountinfo.Mounted(mountDir); err == nil && mounted {
		return false, nil
	}
	return true, mountImageFS(ctx, mountDir, imagePath, size, "xfs", "-q", "-m", "reflink=1")
}

// MountBtrfsImageFS is MountImageFS with btrfs: what a file-tree pool needs
// for per-access-point quotas (quota groups), since this kernel has no xfs
// or ext4 quotas.
func MountBtrfsImageFS(ctx context.Context, mountDir, imagePath string, size int64) (bool, error) {
	if mounted, err := mountinfo.Mounted(mountDir); err == nil && mounted {
		return false, nil
	}
	return true, mountImageFS(ctx, mountDir, imagePath, size, "btrfs", "-q")
}

func mountImageFS(ctx context.Context, mountDir, imagePath string, size int64, fstype string, mkfsArgs ...string) error {
	if err := os.MkdirAll(mountDir, 0o700); err != nil {
		return fmt.Errorf("create pool mount point %s: %w", mountDir, err)
	}
	if err := os.MkdirAll(filepath.Dir(imagePath), 0o700); err != nil {
		return fmt.Errorf("create directory of pool image %s: %w", imagePath, err)
	}
	fresh := false
	if _, err := os.Stat(imagePath); errors.Is(err, os.ErrNotExist) {
		f, err := os.OpenFile(imagePath, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("create pool image %s: %w", imagePath, err)
		}
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(imagePath)
			return fmt.Errorf("size pool image %s to %d bytes: %w", imagePath, size, err)
		}
		fresh = true
	} else if err != nil {
		return fmt.Errorf("pool image %s: %w", imagePath, err)
	}
	dev, err := loopdev.Attach(ctx, imagePath)
	if err != nil {
		return fmt.Errorf("attach pool image %s: %w", imagePath, err)
	}
	if fresh || !hasFS(ctx, dev) {
		out, err := exec.CommandContext(ctx, "mkfs."+fstype, append(mkfsArgs, dev)...).CombinedOutput()
		if err != nil {
			_ = loopdev.Detach(ctx, imagePath)
			return fmt.Errorf("mkfs.%s on %s (are xfsprogs and btrfs-progs installed? run hack/setup.sh): %v: %s", fstype, dev, err, strings.TrimSpace(string(out)))
		}
	}
	if err := unix.Mount(dev, mountDir, fstype, 0, ""); err != nil {
		_ = loopdev.Detach(ctx, imagePath)
		return fmt.Errorf("mount pool file system %s at %s: %w", dev, mountDir, err)
	}
	return nil
}

// UnmountImageFS undoes MountImageFS, keeping the image and its data.
func UnmountImageFS(ctx context.Context, mountDir, imagePath string) error {
	if mounted, err := mountinfo.Mounted(mountDir); err == nil && mounted {
		if err := unix.Unmount(mountDir, 0); err != nil {
			return fmt.Errorf("unmount pool %s: %w", mountDir, err)
		}
	}
	return loopdev.Detach(ctx, imagePath)
}

func hasFS(ctx context.Context, dev string) bool {
	out, err := exec.CommandContext(ctx, "blkid", "-o", "value", "-s", "TYPE", dev).Output()
	return err == nil && strings.TrimSpace(string(out)) != ""
}
