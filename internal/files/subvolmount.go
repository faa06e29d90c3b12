package files

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// nfs-ganesha 4.3's VFS back end finds the file system an export lives on
// in the mount table, and reads the table's btrfs subvolumes only at start:
// a subvolume made later (a quota'd access point's root) is on a device of
// its own that no mount names, and exporting it fails with
// "resolve_posix_filesystem(...) returned No such file or directory". Bind
// mounting such a subvolume onto itself gives it a line in the mount table,
// which ganesha re-reads when an export names an unknown path, so the
// export works without restarting ganesha.

// needsOwnMount reports whether path is on another device than its parent
// directory (a btrfs subvolume's root) without being a mount point.
func needsOwnMount(path string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, err
	}
	if err := unix.Lstat(filepath.Dir(path), &parent); err != nil {
		return false, err
	}
	if st.Dev == parent.Dev {
		return false, nil
	}
	mounted, err := mountinfo.Mounted(path)
	if err != nil {
		return false, err
	}
	return !mounted, nil
}

// mountOnItself bind-mounts path onto itself when it needs a mount of its
// own (needsOwnMount). It reports whether path has such a mount now, made
// by this call or left by an earlier run that stopped without removing it:
// either way the caller owns it and removes it with unmountSelf.
func mountOnItself(path string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, err
	}
	if err := unix.Lstat(filepath.Dir(path), &parent); err != nil {
		return false, err
	}
	if st.Dev == parent.Dev {
		return false, nil
	}
	need, err := needsOwnMount(path)
	if err != nil {
		return false, err
	}
	if !need {
		return true, nil
	}
	if err := unix.Mount(path, path, "", unix.MS_BIND, ""); err != nil {
		return false, fmt.Errorf("bind-mount subvolume %s onto itself so that nfs-ganesha can export it: %w", path, err)
	}
	// Private: a mount made later under a kubelet or another bind must not
	// be copied into the storage tree, and this one must not leak out.
	_ = unix.Mount("", path, "", unix.MS_PRIVATE, "")
	return true, nil
}

// unmountSelf removes a bind mount mountOnItself made; a path that is not
// mounted (or is gone) is not an error.
func unmountSelf(path string) error {
	err := unix.Unmount(path, 0)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if errors.Is(err, unix.EBUSY) {
		// Still open through ganesha for a moment after the export went.
		if err := unix.Unmount(path, unix.MNT_DETACH); err == nil {
			return nil
		}
	}
	if _, serr := os.Lstat(path); errors.Is(serr, os.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("unmount %s: %w", path, err)
}
