// Package agent is the storage host side of Stowage: a pool of volume images
// on a local file system, one sparse image file per volume, with snapshots
// and clones that share blocks with their source (reflink) where the file
// system can, and fall back to a sparse copy where it cannot.
//
// Every image is written under Dir/tmp and renamed into place only when
// complete, so a crash never leaves a half-made image under its final name;
// Open removes whatever a crash left in tmp. Renames never replace an
// existing image, which is what makes creation idempotent and safe against
// a concurrent creator of the same id.
package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/internal/keylock"
)

var (
	// ErrNotFound means the volume image or snapshot does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists means an image or snapshot with that id exists with a
	// different size or source.
	ErrExists = errors.New("already exists with different parameters")
	// ErrInvalid means an argument is malformed: a bad id, a size that is
	// not a positive multiple of 512, or a shrink.
	ErrInvalid = errors.New("invalid argument")
	// ErrNoSpace means the pool's file system is full. It is the kernel's
	// ENOSPC itself, so errors.Is finds it in any wrapped file-system error
	// without every write site having to translate it.
	ErrNoSpace error = unix.ENOSPC
)

// Config says where a pool lives and where it is in the cluster.
type Config struct {
	Dir  string // root of the pool; volumes, snapshots and tmp live under it
	Zone string
	// Node is the machine whose loop devices can attach these images, i.e.
	// where the local data path exists.
	Node string
	// KeepTmp leaves the pool's temporary files alone at Open: another
	// process (the leading server, for a standby) may be using them. That
	// process calls ClearTmp when it takes the pool over.
	KeepTmp bool
}

// CloneMode is how the pool makes snapshots and clones.
type CloneMode string

const (
	// CloneReflink shares blocks with the source (FICLONE): O(1) in the
	// amount of data and no extra space until either side is written.
	CloneReflink CloneMode = "reflink"
	// CloneCopy copies only the data regions of the source, keeping holes,
	// so time and space grow with the data actually written.
	CloneCopy CloneMode = "copy"
)

// Capacity is the space of the pool's file system.
type Capacity struct {
	TotalBytes, FreeBytes, UsedBytes int64
}

// Pool is the set of volume images and snapshots under one directory. Its
// methods are safe for concurrent use; operations on the same id are
// serialized. One Pool per directory: Open clears tmp, which would break
// another live Pool's creations.
type Pool struct {
	cfg   Config
	mode  CloneMode
	locks *keylock.Set
}

const (
	volumesDir   = "volumes"
	snapshotsDir = "snapshots"
	tmpDir       = "tmp"
	imageSuffix  = ".img"
)

// Open opens (creating if needed) the pool at cfg.Dir, removes leftovers of
// interrupted creations and detects whether the file system can reflink.
func Open(cfg Config) (*Pool, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("open pool: %w: empty directory", ErrInvalid)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("open pool %s: %w", cfg.Dir, err)
	}
	cfg.Dir = dir
	p := &Pool{cfg: cfg, locks: keylock.New(0)}
	for _, d := range []string{volumesDir, snapshotsDir, tmpDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			return nil, fmt.Errorf("open pool: %w", err)
		}
	}
	if !cfg.KeepTmp {
		if err := p.ClearTmp(); err != nil {
			return nil, err
		}
	}
	mode, err := probeCloneMode(filepath.Join(dir, tmpDir))
	if err != nil {
		return nil, fmt.Errorf("open pool %s: %w", dir, err)
	}
	p.mode = mode
	return p, nil
}

// ClearTmp removes what unfinished operations left in the pool's tmp
// directory. Only the one process that acts on the pool may call it.
func (p *Pool) ClearTmp() error {
	tmp := filepath.Join(p.cfg.Dir, tmpDir)
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(tmp, e.Name())); err != nil {
			return fmt.Errorf("open pool: remove leftover: %w", err)
		}
	}
	return nil
}

// probeCloneMode clones a small file in dir to learn whether the file
// system supports reflink; asking is the only reliable test (xfs without
// reflink=1, ext4 and overlayfs all refuse in different ways).
func probeCloneMode(dir string) (CloneMode, error) {
	src, err := os.CreateTemp(dir, "probe-src-*")
	if err != nil {
		return "", fmt.Errorf("reflink probe: %w", err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return "", fmt.Errorf("reflink probe: write %s: %w", src.Name(), err)
	}
	dst, err := os.CreateTemp(dir, "probe-dst-*")
	if err != nil {
		return "", fmt.Errorf("reflink probe: %w", err)
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		return CloneCopy, nil
	}
	return CloneReflink, nil
}

// CloneMode reports how this pool makes snapshots and clones.
func (p *Pool) CloneMode() CloneMode { return p.mode }

// Zone is the zone the pool's host is in.
func (p *Pool) Zone() string { return p.cfg.Zone }

// Node is the machine that can attach the pool's images locally.
func (p *Pool) Node() string { return p.cfg.Node }

// Dir is the pool's absolute root directory.
func (p *Pool) Dir() string { return p.cfg.Dir }

// ImagePath is where the image of volumeID lives. It is "" for an invalid
// id, so a bad id can never name a file outside the pool.
func (p *Pool) ImagePath(volumeID string) string {
	if validateID(volumeID) != nil {
		return ""
	}
	return filepath.Join(p.cfg.Dir, volumesDir, volumeID+imageSuffix)
}

// OpenImage opens volumeID's image, read-only if readOnly, for a caller
// of this machine that is handed the descriptor instead of the path (the
// local handoff). It does not follow a symlink in place of the image.
func (p *Pool) OpenImage(volumeID string, readOnly bool) (*os.File, error) {
	if err := validateID(volumeID); err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(p.ImagePath(volumeID), flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("volume %s: %w", volumeID, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open image of volume %s: %w", volumeID, err)
	}
	return f, nil
}

// SnapshotPath is where snapshot snapshotID lives; "" for an invalid id.
func (p *Pool) SnapshotPath(snapshotID string) string {
	if validateID(snapshotID) != nil {
		return ""
	}
	return filepath.Join(p.cfg.Dir, snapshotsDir, snapshotID+imageSuffix)
}

// ImageSize returns the logical size of volumeID's image.
func (p *Pool) ImageSize(volumeID string) (int64, error) {
	if err := validateID(volumeID); err != nil {
		return 0, fmt.Errorf("size of volume: %w", err)
	}
	return fileSize("volume "+volumeID, p.ImagePath(volumeID))
}

// SnapshotSize returns the logical size of snapshot snapshotID.
func (p *Pool) SnapshotSize(snapshotID string) (int64, error) {
	if err := validateID(snapshotID); err != nil {
		return 0, fmt.Errorf("size of snapshot: %w", err)
	}
	return fileSize("snapshot "+snapshotID, p.SnapshotPath(snapshotID))
}

func fileSize(what, path string) (int64, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return fi.Size(), nil
}

// ListImages returns the ids of all volume images, sorted, so callers can
// reconcile them against what the control plane knows.
func (p *Pool) ListImages() ([]string, error) {
	return listIDs(filepath.Join(p.cfg.Dir, volumesDir))
}

// ListSnapshots returns the ids of all snapshots, sorted.
func (p *Pool) ListSnapshots() ([]string, error) {
	return listIDs(filepath.Join(p.cfg.Dir, snapshotsDir))
}

func listIDs(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	ids := []string{}
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), imageSuffix)
		if ok && e.Type().IsRegular() && validateID(id) == nil {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// Capacity reports the pool file system's size and free space. Free is what
// an unprivileged writer can still use (f_bavail).
func (p *Pool) Capacity() (Capacity, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(p.cfg.Dir, &st); err != nil {
		return Capacity{}, fmt.Errorf("capacity of %s: %w", p.cfg.Dir, err)
	}
	bs := int64(st.Bsize)
	return Capacity{
		TotalBytes: int64(st.Blocks) * bs,
		FreeBytes:  int64(st.Bavail) * bs,
		UsedBytes:  int64(st.Blocks-st.Bfree) * bs,
	}, nil
}

const maxIDLen = 128

// validateID admits only [a-z0-9-], not starting with '-', so an id is
// always a plain file name: no separators, no dots, nothing a tool could
// mistake for a flag.
func validateID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("%w: id %q must be 1-%d characters", ErrInvalid, id, maxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0) {
			return fmt.Errorf("%w: id %q may hold only a-z, 0-9 and '-' (not first)", ErrInvalid, id)
		}
	}
	return nil
}

// validateSize requires whole 512-byte sectors: a loop device ignores a
// trailing partial sector, which would silently lose data.
func validateSize(size int64) error {
	if size <= 0 || size%512 != 0 {
		return fmt.Errorf("%w: size %d must be a positive multiple of 512 bytes", ErrInvalid, size)
	}
	return nil
}
