package files

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/internal/testutil/loopfs"
)

const testFS = "fs-0123456789abcdef0"

// btrfsTree is a Tree on a real btrfs with quota groups on a loop device.
func btrfsTree(t *testing.T) *Tree {
	t.Helper()
	mnt := loopfs.New(t, "btrfs", 256<<20)
	tr, err := Open(Config{Dir: filepath.Join(mnt, "pool"), Zone: "zone-a", Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Quotas() {
		t.Fatal("a btrfs pool should have quotas")
	}
	if err := tr.CreateFileSystem(context.Background(), testFS); err != nil {
		t.Fatal(err)
	}
	return tr
}

func owner(t *testing.T, p string) (uid, gid, mode uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid, st.Mode & 0o7777
}

func TestMakeRoot_ParentsAreRoot0755_RootHasCreationInfo(t *testing.T) {
	tr := btrfsTree(t)
	old := unix.Umask(0o077) // the modes must not depend on the umask
	defer unix.Umask(old)
	root := RootDirectory{Path: "/dynamic/team/pvc-1", Creation: &CreationInfo{UID: 1001, GID: 2002, Mode: 0o750}}
	missing, err := tr.PlanRoot(testFS, root.Path)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/dynamic", "/dynamic/team", "/dynamic/team/pvc-1"}; strings.Join(missing, ",") != strings.Join(want, ",") {
		t.Fatalf("PlanRoot = %v, want %v", missing, want)
	}
	if err := tr.MakeRoot(context.Background(), testFS, root, 0); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/dynamic", "/dynamic/team"} {
		if u, g, m := owner(t, tr.HostPath(testFS, p)); u != 0 || g != 0 || m != 0o755 {
			t.Errorf("parent %s is %d:%d %04o, want 0:0 0755", p, u, g, m)
		}
	}
	if u, g, m := owner(t, tr.HostPath(testFS, root.Path)); u != 1001 || g != 2002 || m != 0o750 {
		t.Errorf("root directory is %d:%d %04o, want 1001:2002 0750", u, g, m)
	}
	if missing, _ := tr.PlanRoot(testFS, root.Path); len(missing) != 0 {
		t.Errorf("after MakeRoot PlanRoot still lists %v", missing)
	}
	// An existing root directory is left as it is (as on EFS: creation
	// info applies only to a directory the access point makes).
	again := RootDirectory{Path: root.Path, Creation: &CreationInfo{UID: 5, GID: 5, Mode: 0o777}}
	if err := tr.MakeRoot(context.Background(), testFS, again, 0); err != nil {
		t.Fatal(err)
	}
	if u, _, m := owner(t, tr.HostPath(testFS, root.Path)); u != 1001 || m != 0o750 {
		t.Errorf("existing root directory changed to uid %d mode %04o", u, m)
	}
}

func TestMakeRoot_UnsafePaths_RefusedNamingThePath(t *testing.T) {
	tr := btrfsTree(t)
	fsDir := tr.FileSystemDir(testFS)
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(fsDir, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(fsDir, "etc-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fsDir, "a-file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ci := &CreationInfo{UID: 1, GID: 1, Mode: 0o755}
	cases := []struct {
		name, path, want string
	}{
		{"symlink out of the tree", "/escape/x", "/escape is a symbolic link"},
		{"symlink to an absolute path", "/etc-link", "/etc-link is a symbolic link"},
		{"through a file", "/a-file/x", "/a-file is not a directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := tr.MakeRoot(context.Background(), testFS, RootDirectory{Path: c.path, Creation: ci}, 0)
			if !errors.Is(err, ErrUnsafePath) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
				t.Fatalf("err = %v, want ErrUnsafePath naming %q and %q", err, c.path, c.want)
			}
			if _, err := tr.PlanRoot(testFS, c.path); !errors.Is(err, ErrUnsafePath) {
				t.Errorf("PlanRoot err = %v, want ErrUnsafePath", err)
			}
		})
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("something was made outside the tree: %v", entries)
	}
}

func TestMakeRoot_MissingWithoutCreationInfo_Invalid(t *testing.T) {
	tr := btrfsTree(t)
	err := tr.MakeRoot(context.Background(), testFS, RootDirectory{Path: "/nope"}, 0)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "/nope") {
		t.Fatalf("err = %v, want ErrInvalid naming /nope", err)
	}
}

func TestMakeRoot_Quota_WriterPastLimitGetsEDQUOT(t *testing.T) {
	tr := btrfsTree(t)
	root := RootDirectory{Path: "/q/pvc", Creation: &CreationInfo{UID: 0, GID: 0, Mode: 0o755}}
	const limit = 4 << 20
	if err := tr.MakeRoot(context.Background(), testFS, root, limit); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(tr.HostPath(testFS, root.Path), "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte{0xab}, 256<<10)
	var written int64
	for written < 4*limit {
		n, err := f.Write(chunk)
		written += int64(n)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			if !errors.Is(err, syscall.EDQUOT) {
				t.Fatalf("after %d bytes: %v, want EDQUOT", written, err)
			}
			if written > 2*limit {
				t.Errorf("EDQUOT only after %d bytes with a %d-byte quota", written, limit)
			}
			// Raising the quota lets the writer go on.
			if err := tr.SetQuota(testFS, root.Path, 4*limit); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(chunk); err != nil {
				t.Fatalf("write after raising the quota: %v", err)
			}
			return
		}
	}
	t.Fatalf("wrote %d bytes into a %d-byte quota without EDQUOT", written, limit)
}

func TestMakeRoot_QuotaOnExistingDirectory_Refused(t *testing.T) {
	tr := btrfsTree(t)
	ci := &CreationInfo{Mode: 0o755}
	if err := tr.MakeRoot(context.Background(), testFS, RootDirectory{Path: "/shared", Creation: ci}, 0); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/shared", "/"} {
		err := tr.MakeRoot(context.Background(), testFS, RootDirectory{Path: p, Creation: ci}, 1<<20)
		if !errors.Is(err, ErrQuotaNeedsNewDirectory) {
			t.Errorf("quota on existing %s: err = %v, want ErrQuotaNeedsNewDirectory", p, err)
		}
	}
	// SetQuota on a plain directory must not limit the whole file system.
	if err := tr.SetQuota(testFS, "/shared", 1<<20); !errors.Is(err, ErrQuotaNeedsNewDirectory) {
		t.Errorf("SetQuota on a plain directory: err = %v, want ErrQuotaNeedsNewDirectory", err)
	}
}

func TestRemoveDirs_RollsBackWhatPlanRootListed_KeepsNonEmpty(t *testing.T) {
	tr := btrfsTree(t)
	ci := &CreationInfo{Mode: 0o755}
	if err := tr.MakeRoot(context.Background(), testFS, RootDirectory{Path: "/a/keep", Creation: ci}, 0); err != nil {
		t.Fatal(err)
	}
	plan, err := tr.PlanRoot(testFS, "/a/b/c")
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.MakeRoot(context.Background(), testFS, RootDirectory{Path: "/a/b/c", Creation: ci}, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := tr.RemoveDirs(testFS, plan); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tr.HostPath(testFS, "/a/b")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/a/b (made by the rolled-back create) still exists: %v", err)
	}
	if _, err := os.Stat(tr.HostPath(testFS, "/a/keep")); err != nil {
		t.Errorf("/a/keep (not in the plan) is gone: %v", err)
	}
}

func TestFileSystemTree_CreateIdempotent_DeleteRemovesQuotaTrees_OpenClearsTmp(t *testing.T) {
	tr := btrfsTree(t)
	ctx := context.Background()
	if err := tr.CreateFileSystem(ctx, testFS); err != nil {
		t.Fatalf("second create: %v", err)
	}
	if u, _, m := owner(t, tr.FileSystemDir(testFS)); u != 0 || m != 0o755 {
		t.Errorf("file system root is uid %d mode %04o, want 0 0755", u, m)
	}
	if err := tr.MakeRoot(ctx, testFS, RootDirectory{Path: "/x/y", Creation: &CreationInfo{Mode: 0o700}}, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tr.HostPath(testFS, "/x/y"), "f"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if used, err := tr.Usage(testFS); err != nil || used == 0 {
		t.Errorf("Usage = %d, %v; want > 0", used, err)
	}
	ids, err := tr.ListFileSystems()
	if err != nil || len(ids) != 1 || ids[0] != testFS {
		t.Fatalf("ListFileSystems = %v, %v", ids, err)
	}
	if err := tr.DeleteFileSystem(ctx, testFS); err != nil {
		t.Fatal(err)
	}
	if err := tr.DeleteFileSystem(ctx, testFS); err != nil {
		t.Errorf("deleting a missing file system: %v", err)
	}
	if ids, _ := tr.ListFileSystems(); len(ids) != 0 {
		t.Errorf("after delete: %v", ids)
	}
	// A crash mid-create leaves something in tmp; Open removes it.
	if err := os.MkdirAll(filepath.Join(tr.Dir(), "tmp", "fs-leftover", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Dir: tr.Dir()}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Join(tr.Dir(), "tmp")); len(entries) != 0 {
		t.Errorf("tmp after Open: %v", entries)
	}
}

func TestOpen_NotBtrfs_QuotaRefused(t *testing.T) {
	tr, err := Open(Config{Dir: filepath.Join(t.TempDir(), "pool")})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Quotas() {
		t.Skip("the temporary directory is on btrfs")
	}
	ctx := context.Background()
	if err := tr.CreateFileSystem(ctx, testFS); err != nil {
		t.Fatal(err)
	}
	err = tr.MakeRoot(ctx, testFS, RootDirectory{Path: "/q", Creation: &CreationInfo{Mode: 0o755}}, 1<<20)
	if !errors.Is(err, ErrQuotaUnsupported) {
		t.Fatalf("err = %v, want ErrQuotaUnsupported", err)
	}
}

// Capacity is the tree's file system's size and the space left on it,
// and the space left shrinks by what a file system's files take.
func TestTree_Capacity_IsItsFileSystemsAndShrinksAsFilesAreWritten(t *testing.T) {
	dir := t.TempDir()
	tr, err := Open(Config{Dir: dir, Zone: "zone-a", Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	total, free, err := tr.Capacity()
	if err != nil {
		t.Fatal(err)
	}
	if total != int64(st.Blocks)*st.Bsize || free <= 0 || free > total {
		t.Fatalf("Capacity() = %d total, %d free; statfs of %s says %d total", total, free, dir, int64(st.Blocks)*st.Bsize)
	}
	if err := tr.CreateFileSystem(context.Background(), "fs-0123456789abcdef0"); err != nil {
		t.Fatal(err)
	}
	const size = 256 << 20
	if err := os.WriteFile(filepath.Join(tr.FileSystemDir("fs-0123456789abcdef0"), "data"), bytes.Repeat([]byte{1}, size), 0o600); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	_, after, err := tr.Capacity()
	if err != nil {
		t.Fatal(err)
	}
	if free-after < size/2 {
		t.Fatalf("free space went from %d to %d after writing %d bytes", free, after, size)
	}
}
