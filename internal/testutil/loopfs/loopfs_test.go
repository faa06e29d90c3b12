package loopfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/pkg/loopdev"
)

func TestNew_MountsRequestedFileSystem(t *testing.T) {
	tests := []struct {
		fstype      string
		wantReflink bool
	}{
		{"xfs", true},
		{"ext4", false},
		{"btrfs", true},
	}
	for _, tt := range tests {
		t.Run(tt.fstype, func(t *testing.T) {
			mnt := New(t, tt.fstype, 512<<20)
			if got := mountedType(t, mnt); got != tt.fstype {
				t.Fatalf("%s is mounted as %q, want %q", mnt, got, tt.fstype)
			}
			if got := canReflink(t, mnt); got != tt.wantReflink {
				t.Fatalf("reflink on %s: %v, want %v", tt.fstype, got, tt.wantReflink)
			}
		})
	}
}

func TestMake_Cleanup_LeavesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a loop device and mounts it")
	}
	dir := t.TempDir()
	mnt, cleanup, err := Make(dir, "ext4", 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "ext4.img")
	if err := cleanup(); err != nil {
		t.Fatal(err)
	}
	if got := mountedType(t, mnt); got != "" {
		t.Fatalf("%s still mounted (%s) after cleanup", mnt, got)
	}
	if dev, found, err := loopdev.Find(img); err != nil || found {
		t.Fatalf("after cleanup, %s still attached to %s (%v)", img, dev, err)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Fatalf("after cleanup %s holds %v (%v), want nothing", dir, entries, err)
	}
}

func TestMake_InvalidInput_ErrorAndNoLeftovers(t *testing.T) {
	tests := []struct {
		name   string
		fstype string
		size   int64
	}{
		{"UnsupportedFileSystem", "vfat", 64 << 20},
		{"ZeroSize", "ext4", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, _, err := Make(dir, tt.fstype, tt.size); err == nil {
				t.Fatalf("Make(%q, %d) succeeded", tt.fstype, tt.size)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("failed Make left %v in %s", entries, dir)
			}
		})
	}
}

func TestMake_MkfsFails_CleansUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a loop device")
	}
	dir := t.TempDir()
	// Far below mkfs.xfs's minimum size, so mkfs fails after the attach.
	if _, _, err := Make(dir, "xfs", 1<<20); err == nil {
		t.Fatal("Make of a 1 MiB xfs succeeded")
	}
	if dev, found, _ := loopdev.Find(filepath.Join(dir, "xfs.img")); found {
		t.Fatalf("failed Make left the image attached to %s", dev)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("failed Make left %v in %s", entries, dir)
	}
}

// mountedType returns the file system type mounted exactly at dir, or "".
func mountedType(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) >= 3 && f[1] == dir {
			return f[2]
		}
	}
	return ""
}

func canReflink(t *testing.T, dir string) bool {
	t.Helper()
	src, err := os.Create(filepath.Join(dir, "src"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	dst, err := os.Create(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())) == nil
}
