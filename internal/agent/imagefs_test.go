package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/moby/sys/mountinfo"

	"github.com/stowage-io/stowage/pkg/loopdev"
)

func TestMountImageFS_FreshThenReused_ReflinkPoolKeepsData(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root for loop devices and mounts")
	}
	ctx := context.Background()
	dir := t.TempDir()
	mnt, img := filepath.Join(dir, "pool"), filepath.Join(dir, "pool.img")
	t.Cleanup(func() {
		if err := UnmountImageFS(ctx, mnt, img); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	did, err := MountImageFS(ctx, mnt, img, 1<<30)
	if err != nil || !did {
		t.Fatalf("first MountImageFS = %v, %v; want mounted by us", did, err)
	}
	p, err := Open(Config{Dir: mnt, Zone: "z", Node: "n"})
	if err != nil {
		t.Fatal(err)
	}
	if p.CloneMode() != CloneReflink {
		t.Fatalf("pool on the image file system clones by %s, want reflink", p.CloneMode())
	}
	if err := os.WriteFile(filepath.Join(mnt, "marker"), []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	if did, err := MountImageFS(ctx, mnt, img, 1<<30); err != nil || did {
		t.Fatalf("MountImageFS on a mounted dir = %v, %v; want a no-op", did, err)
	}

	if err := UnmountImageFS(ctx, mnt, img); err != nil {
		t.Fatal(err)
	}
	if m, _ := mountinfo.Mounted(mnt); m {
		t.Fatal("still mounted after UnmountImageFS")
	}
	if _, found, _ := loopdev.Find(img); found {
		t.Fatal("loop device still attached after UnmountImageFS")
	}
	if _, err := MountImageFS(ctx, mnt, img, 1<<30); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "marker")); err != nil || string(b) != "kept" {
		t.Fatalf("data after remount = %q, %v; want the file written before", b, err)
	}
}
