package files

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Config says where a file-tree pool lives and where it is in the cluster.
type Config struct {
	Dir  string
	Zone string
	Node string // the storage host that serves the pool's exports
}

// Tree is a pool of file system trees under one directory: Dir/filesystems
// holds one tree per file system, Dir/tmp what is being made. Trees are made
// in tmp and renamed into place, so a crash never leaves a half-made tree
// under its final name.
//
// On btrfs with quota groups (what this kernel can enforce; see
// docs/file-systems.md for why not xfs project quotas) an access point with
// a quota gets its root directory as a subvolume whose quota group carries
// the limit; a writer past it gets EDQUOT. On any other file system trees are plain directories and
// quotas are refused with ErrQuotaUnsupported.
//
// A Tree does not serialise calls on one file system; its caller (the
// server, with per-file-system locks) does.
type Tree struct {
	cfg    Config
	quotas bool
}

const (
	fileSystemsDir = "filesystems"
	treeTmpDir     = "tmp"
	// tmpPrefix names directories being made inside a file system; such
	// names are refused in access-point paths (CleanRootPath).
	tmpPrefix = ".stowage-tmp-"
)

var fileSystemIDPattern = regexp.MustCompile(`^fs-[0-9a-f]{8,32}$`)

// Open opens (creating if needed) the pool at cfg.Dir, removes leftovers of
// interrupted creations and turns quota groups on when the pool is btrfs.
func Open(cfg Config) (*Tree, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("open file-tree pool: %w: empty directory", ErrInvalid)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("open file-tree pool %s: %w", cfg.Dir, err)
	}
	cfg.Dir = dir
	t := &Tree{cfg: cfg}
	for _, d := range []string{fileSystemsDir, treeTmpDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("open file-tree pool: %w", err)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil, fmt.Errorf("open file-tree pool %s: %w", dir, err)
	}
	if st.Type == unix.BTRFS_SUPER_MAGIC {
		if err := enableQuota(dir); err != nil {
			return nil, fmt.Errorf("open file-tree pool %s: turn on btrfs quota groups: %w", dir, err)
		}
		t.quotas = true
	}
	if err := t.clearTmp(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Tree) Dir() string  { return t.cfg.Dir }
func (t *Tree) Zone() string { return t.cfg.Zone }
func (t *Tree) Node() string { return t.cfg.Node }

// Quotas reports whether the pool can enforce per-access-point quotas.
func (t *Tree) Quotas() bool { return t.quotas }

func (t *Tree) clearTmp() error {
	tmp := filepath.Join(t.cfg.Dir, treeTmpDir)
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return fmt.Errorf("open file-tree pool: %w", err)
	}
	for _, e := range entries {
		if err := removeTree(filepath.Join(tmp, e.Name())); err != nil {
			return fmt.Errorf("open file-tree pool: remove leftover %s: %w", e.Name(), err)
		}
	}
	return nil
}

func checkFileSystemID(id string) error {
	if !fileSystemIDPattern.MatchString(id) {
		return fmt.Errorf("%w: %q is not a file system id (fs-…)", ErrInvalid, id)
	}
	return nil
}

// FileSystemDir is where file system id's tree is on the storage host.
func (t *Tree) FileSystemDir(id string) string {
	return filepath.Join(t.cfg.Dir, fileSystemsDir, id)
}

// HostPath is where root directory path (canonical) of file system id is
// on the storage host: what an export serves.
func (t *Tree) HostPath(id, path string) string {
	return filepath.Join(t.FileSystemDir(id), filepath.FromSlash(strings.TrimPrefix(path, "/")))
}

// CreateFileSystem makes the (empty) tree of file system id, owned by root
// with mode 0755 as an EFS file system's root is. It is idempotent.
func (t *Tree) CreateFileSystem(ctx context.Context, id string) error {
	if err := checkFileSystemID(id); err != nil {
		return err
	}
	final := t.FileSystemDir(id)
	if fi, err := os.Lstat(final); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("file system tree %s exists and is not a directory", final)
		}
		return nil
	}
	tmpParent, err := os.Open(filepath.Join(t.cfg.Dir, treeTmpDir))
	if err != nil {
		return fmt.Errorf("create file system %s: %w", id, err)
	}
	defer tmpParent.Close()
	tmpName := id + "." + randomSuffix()
	// A plain directory even on btrfs: nfs-ganesha 4.3 (FSAL VFS) learns a
	// btrfs file system's subvolumes only when it starts, and cannot export
	// a path in a subvolume made later (see docs/file-systems.md).
	if err := t.mkdir(int(tmpParent.Fd()), tmpName, 0o755, false); err != nil {
		return fmt.Errorf("create file system %s: %w", id, err)
	}
	tmp := filepath.Join(t.cfg.Dir, treeTmpDir, tmpName)
	if err := os.Chown(tmp, 0, 0); err != nil {
		removeTree(tmp)
		return fmt.Errorf("create file system %s: %w", id, err)
	}
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) {
		// A concurrent create of the same id won; its tree is as good.
		removeTree(tmp)
		return nil
	}
	if err != nil {
		removeTree(tmp)
		return fmt.Errorf("create file system %s: move tree into place: %w", id, err)
	}
	return syncDir(filepath.Dir(final))
}

// DeleteFileSystem removes the tree of file system id and everything in it.
// A missing tree is not an error. The tree is first renamed into tmp, so a
// crash halfway leaves nothing under its name (Open finishes the removal).
func (t *Tree) DeleteFileSystem(ctx context.Context, id string) error {
	if err := checkFileSystemID(id); err != nil {
		return err
	}
	final := t.FileSystemDir(id)
	doomed := filepath.Join(t.cfg.Dir, treeTmpDir, id+".deleting."+randomSuffix())
	if err := os.Rename(final, doomed); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("delete file system %s: %w", id, err)
	}
	if err := removeTree(doomed); err != nil {
		return fmt.Errorf("delete file system %s: %w", id, err)
	}
	return nil
}

// ListFileSystems returns the ids of the trees in the pool, sorted.
func (t *Tree) ListFileSystems() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(t.cfg.Dir, fileSystemsDir))
	if err != nil {
		return nil, fmt.Errorf("list file systems: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if fileSystemIDPattern.MatchString(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// Capacity is the size and the free space (what an unprivileged writer
// may still use) of the file system the tree is on.
func (t *Tree) Capacity() (total, free int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(t.cfg.Dir, &st); err != nil {
		return 0, 0, fmt.Errorf("file tree %s: statfs: %w", t.cfg.Dir, err)
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize, nil
}

// Usage is the space file system id's files take (allocated blocks, each
// hard-linked inode once).
func (t *Tree) Usage(id string) (int64, error) {
	if err := checkFileSystemID(id); err != nil {
		return 0, err
	}
	bytes, _, err := usageOf(t.FileSystemDir(id))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("file system %s: %w", id, ErrNotFound)
	}
	return bytes, err
}

// RootUsage is what the tree under root directory path of file system id
// takes: bytes allocated and inodes (files, directories, links), each hard
// link counted once. It walks the tree, so it costs a stat per entry.
func (t *Tree) RootUsage(id, path string) (bytes, inodes int64, err error) {
	if err := checkFileSystemID(id); err != nil {
		return 0, 0, err
	}
	bytes, inodes, err = usageOf(t.HostPath(id, path))
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, fmt.Errorf("root directory %s of %s: %w", path, id, ErrNotFound)
	}
	return bytes, inodes, err
}

// usageOf walks dir (following no symbolic link) and adds up allocated
// bytes and inodes.
func usageOf(dir string) (int64, int64, error) {
	var total, inodes int64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && p != dir {
				return nil
			}
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return err
		}
		if st.Nlink > 1 && !d.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		total += st.Blocks * 512
		inodes++
		return nil
	})
	return total, inodes, err
}

// components splits a canonical root path into its names.
func components(path string) []string {
	if path == "/" || path == "" {
		return nil
	}
	return strings.Split(strings.TrimPrefix(path, "/"), "/")
}

// openFileSystem opens the root of file system id's tree.
func (t *Tree) openFileSystem(id string) (int, error) {
	if err := checkFileSystemID(id); err != nil {
		return -1, err
	}
	fd, err := unix.Open(t.FileSystemDir(id), unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return -1, fmt.Errorf("file system %s has no tree on this pool: %w", id, ErrNotFound)
	}
	if err != nil {
		return -1, fmt.Errorf("open file system %s: %w", id, err)
	}
	return fd, nil
}

// openChild opens directory name in dirfd without following a symbolic
// link, so that no path component can lead out of the tree.
func openChild(dirfd int, name, path, sofar string) (int, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	switch {
	case err == nil:
		return fd, nil
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR):
		// O_DIRECTORY|O_NOFOLLOW on a symbolic link gives ENOTDIR: tell the
		// two apart for the message.
		var st unix.Stat_t
		if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return -1, fmt.Errorf("%w: root directory %q: %s is a symbolic link; access point paths may not go through symbolic links", ErrUnsafePath, path, sofar)
		}
		return -1, fmt.Errorf("%w: root directory %q: %s is not a directory", ErrUnsafePath, path, sofar)
	}
	return -1, err
}

// PlanRoot returns the directories (canonical paths, parents first) that
// making root directory path in file system id would create; none when it
// exists. It refuses a path through a symbolic link or a non-directory.
func (t *Tree) PlanRoot(id, path string) ([]string, error) {
	fd, err := t.openFileSystem(id)
	if err != nil {
		return nil, err
	}
	defer func() { unix.Close(fd) }()
	names := components(path)
	sofar := ""
	for i, name := range names {
		sofar += "/" + name
		next, err := openChild(fd, name, path, sofar)
		if errors.Is(err, unix.ENOENT) {
			var missing []string
			p := strings.TrimSuffix(sofar, "/"+name)
			for _, n := range names[i:] {
				p += "/" + n
				missing = append(missing, p)
			}
			return missing, nil
		}
		if err != nil {
			return nil, err
		}
		unix.Close(fd)
		fd = next
	}
	return nil, nil
}

// MakeRoot makes root directory path of file system id: missing parents
// owned by root with mode 0755, and the directory itself with the creation
// info's owner and mode. The directory is made under a temporary name and
// renamed into place complete, so nobody sees it with the wrong owner. With
// quotaBytes > 0 the directory must not exist yet; it is made as a tree
// with that hard limit. An existing directory is left as it is.
func (t *Tree) MakeRoot(ctx context.Context, id string, root RootDirectory, quotaBytes int64) error {
	if quotaBytes > 0 && !t.quotas {
		return fmt.Errorf("access point quota of %d bytes: %w (pool %s is not btrfs with quota groups)", quotaBytes, ErrQuotaUnsupported, t.cfg.Dir)
	}
	fd, err := t.openFileSystem(id)
	if err != nil {
		return err
	}
	defer func() { unix.Close(fd) }()
	names := components(root.Path)
	if len(names) == 0 {
		if quotaBytes > 0 {
			return fmt.Errorf("root directory / of %s: %w", id, ErrQuotaNeedsNewDirectory)
		}
		return nil
	}
	sofar := ""
	for i, name := range names {
		sofar += "/" + name
		last := i == len(names)-1
		next, err := openChild(fd, name, root.Path, sofar)
		if err == nil {
			unix.Close(fd)
			fd = next
			if last && quotaBytes > 0 {
				return fmt.Errorf("root directory %s of %s exists: %w", root.Path, id, ErrQuotaNeedsNewDirectory)
			}
			continue
		}
		if !errors.Is(err, unix.ENOENT) {
			return err
		}
		if last {
			if root.Creation == nil {
				return fmt.Errorf("%w: root directory %s does not exist in %s and no creation info (owner, permissions) was given to make it", ErrInvalid, root.Path, id)
			}
			return t.makeFinal(fd, name, *root.Creation, quotaBytes, sofar)
		}
		if err := unix.Mkdirat(fd, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("make parent %s of root directory %s: %w", sofar, root.Path, err)
		}
		next, err = openChild(fd, name, root.Path, sofar)
		if err != nil {
			return err
		}
		// Mkdirat's mode is masked by the umask; parents are exactly 0755.
		if err := unix.Fchown(next, 0, 0); err != nil {
			unix.Close(next)
			return fmt.Errorf("own parent %s: %w", sofar, err)
		}
		if err := unix.Fchmod(next, 0o755); err != nil {
			unix.Close(next)
			return fmt.Errorf("set mode of parent %s: %w", sofar, err)
		}
		unix.Close(fd)
		fd = next
	}
	return nil
}

func (t *Tree) makeFinal(parent int, name string, ci CreationInfo, quotaBytes int64, path string) error {
	tmpName := tmpPrefix + randomSuffix()
	if err := t.mkdir(parent, tmpName, 0o700, quotaBytes > 0); err != nil {
		return fmt.Errorf("make root directory %s: %w", path, err)
	}
	fd, err := unix.Openat(parent, tmpName, unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("make root directory %s: %w", path, err)
	}
	defer unix.Close(fd)
	undo := func() { rmdirAt(parent, tmpName) }
	if err := unix.Fchown(fd, int(ci.UID), int(ci.GID)); err != nil {
		undo()
		return fmt.Errorf("own root directory %s by %d:%d: %w", path, ci.UID, ci.GID, err)
	}
	if err := unix.Fchmod(fd, ci.Mode); err != nil {
		undo()
		return fmt.Errorf("set mode %04o on root directory %s: %w", ci.Mode, path, err)
	}
	if quotaBytes > 0 {
		if err := setQuota(fd, quotaBytes); err != nil {
			undo()
			return fmt.Errorf("set quota of %d bytes on root directory %s: %w", quotaBytes, path, err)
		}
	}
	err = unix.Renameat2(parent, tmpName, parent, name, unix.RENAME_NOREPLACE)
	if err != nil {
		undo()
		if errors.Is(err, unix.EEXIST) && quotaBytes > 0 {
			return fmt.Errorf("root directory %s appeared meanwhile: %w", path, ErrQuotaNeedsNewDirectory)
		}
		if errors.Is(err, unix.EEXIST) {
			return nil
		}
		return fmt.Errorf("move root directory %s into place: %w", path, err)
	}
	return unix.Fsync(parent)
}

// SetQuota changes the hard limit of a root directory that was made with a
// quota; 0 removes the limit. A missing directory is not an error.
func (t *Tree) SetQuota(id, path string, quotaBytes int64) error {
	if !t.quotas {
		if quotaBytes == 0 {
			return nil
		}
		return fmt.Errorf("access point quota: %w", ErrQuotaUnsupported)
	}
	fd, err := t.openFileSystem(id)
	if err != nil {
		return err
	}
	defer func() { unix.Close(fd) }()
	sofar := ""
	for _, name := range components(path) {
		sofar += "/" + name
		next, err := openChild(fd, name, path, sofar)
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		if err != nil {
			return err
		}
		unix.Close(fd)
		fd = next
	}
	return setQuota(fd, quotaBytes)
}

// RemoveDirs removes the directories (canonical paths, parents first, as
// PlanRoot returned them) that are empty, children first: what rolling back
// an access point's create needs. Missing or non-empty ones are left.
func (t *Tree) RemoveDirs(id string, dirs []string) error {
	root := t.FileSystemDir(id)
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := CleanRootPath(dirs[i]); err != nil || dirs[i] == "/" {
			errs = append(errs, fmt.Errorf("refusing to remove %q: %v", dirs[i], err))
			continue
		}
		p := t.HostPath(id, dirs[i])
		if !strings.HasPrefix(p, root+string(filepath.Separator)) {
			continue
		}
		err := unix.Rmdir(p)
		if err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			continue
		}
		errs = append(errs, fmt.Errorf("remove %s of %s: %w", dirs[i], id, err))
	}
	return errors.Join(errs...)
}

// mkdir makes name in dirfd: a btrfs subvolume when subvolume is set (its
// own quota group), else a directory.
func (t *Tree) mkdir(dirfd int, name string, mode uint32, subvolume bool) error {
	if !subvolume {
		if err := unix.Mkdirat(dirfd, name, mode); err != nil {
			return err
		}
		return nil
	}
	if err := createSubvolume(dirfd, name); err != nil {
		return fmt.Errorf("create btrfs subvolume %s: %w", name, err)
	}
	return nil
}

func rmdirAt(dirfd int, name string) {
	_ = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// removeTree is os.RemoveAll that also removes btrfs subvolumes inside
// (an empty subvolume goes with rmdir, as the kernel allows root since 4.18).
func removeTree(p string) error {
	err := os.RemoveAll(p)
	if err == nil || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func randomSuffix() string {
	b := make([]byte, 6)
	f, err := os.Open("/dev/urandom")
	if err == nil {
		_, err = f.Read(b)
		f.Close()
	}
	if err != nil {
		return fmt.Sprint(os.Getpid())
	}
	return fmt.Sprintf("%x", b)
}

// btrfs ioctls (linux/btrfs.h); x/sys/unix does not define them.
const (
	btrfsIocSubvolCreate = 0x5000940e // _IOW(0x94, 14, struct btrfs_ioctl_vol_args)
	btrfsIocQuotaCtl     = 0xc0109428 // _IOWR(0x94, 40, struct btrfs_ioctl_quota_ctl_args)
	btrfsIocQgroupLimit  = 0x8030942b // _IOR(0x94, 43, struct btrfs_ioctl_qgroup_limit_args)

	btrfsQuotaCtlEnable    = 1
	btrfsQgroupLimitMaxRfr = 1 << 0
)

type btrfsVolArgs struct {
	Fd   int64
	Name [4088]byte
}

type btrfsQuotaCtlArgs struct {
	Cmd, Status uint64
}

type btrfsQgroupLimitArgs struct {
	QgroupID uint64
	Flags    uint64
	MaxRfer  uint64
	MaxExcl  uint64
	RsvRfer  uint64
	RsvExcl  uint64
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

func createSubvolume(dirfd int, name string) error {
	var a btrfsVolArgs
	if len(name) >= len(a.Name) {
		return syscall.ENAMETOOLONG
	}
	copy(a.Name[:], name)
	return ioctl(dirfd, btrfsIocSubvolCreate, unsafe.Pointer(&a))
}

func enableQuota(dir string) error {
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	a := btrfsQuotaCtlArgs{Cmd: btrfsQuotaCtlEnable}
	return ioctl(fd, btrfsIocQuotaCtl, unsafe.Pointer(&a))
}

// setQuota limits the referenced bytes of the subvolume fd is the root of
// (qgroup id 0 means "this subvolume"); 0 removes the limit.
func setQuota(fd int, bytes int64) error {
	// Qgroup id 0 limits the subvolume fd is in: on a plain directory that
	// would be the whole file system's. Only a subvolume's root (inode 256,
	// BTRFS_FIRST_FREE_OBJECTID) carries an access point's quota.
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Ino != 256 {
		if bytes == 0 {
			return nil
		}
		return ErrQuotaNeedsNewDirectory
	}
	a := btrfsQgroupLimitArgs{Flags: btrfsQgroupLimitMaxRfr, MaxRfer: uint64(bytes)}
	if bytes == 0 {
		a.MaxRfer = ^uint64(0) // "none", as btrfs-progs writes it
	}
	return ioctl(fd, btrfsIocQgroupLimit, unsafe.Pointer(&a))
}

// RemoveRoot removes root directory path of file system id and everything
// under it (a quota'd root, a btrfs subvolume, goes too). The walk to it
// follows no symbolic link; the directory is first renamed into tmp, so a
// crash halfway leaves nothing under its name (Open finishes the removal).
// The file system's root itself is refused; a missing directory is not an
// error.
func (t *Tree) RemoveRoot(id, path string) error {
	names := components(path)
	if len(names) == 0 {
		return fmt.Errorf("%w: root directory %q is the file system's root, which is removed only with the file system", ErrUnsafePath, path)
	}
	fd, err := t.openFileSystem(id)
	if err != nil {
		return err
	}
	defer func() { unix.Close(fd) }()
	sofar := ""
	for _, name := range names[:len(names)-1] {
		sofar += "/" + name
		next, err := openChild(fd, name, path, sofar)
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		if err != nil {
			return err
		}
		unix.Close(fd)
		fd = next
	}
	last := names[len(names)-1]
	var st unix.Stat_t
	if err := unix.Fstatat(fd, last, &st, unix.AT_SYMLINK_NOFOLLOW); errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		return fmt.Errorf("remove root directory %s of %s: %w", path, id, err)
	} else if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%w: root directory %q of %s is not a directory; not removing it", ErrUnsafePath, path, id)
	}
	tmp, err := unix.Open(filepath.Join(t.cfg.Dir, treeTmpDir), unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("remove root directory %s of %s: open tmp: %w", path, id, err)
	}
	defer unix.Close(tmp)
	doomedName := id + ".root-deleting." + randomSuffix()
	if err := unix.Renameat(fd, last, tmp, doomedName); errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		return fmt.Errorf("remove root directory %s of %s: %w", path, id, err)
	}
	if err := removeTree(filepath.Join(t.cfg.Dir, treeTmpDir, doomedName)); err != nil {
		return fmt.Errorf("remove root directory %s of %s: %w", path, id, err)
	}
	return nil
}
