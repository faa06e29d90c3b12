package stack

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stowage-io/stowage/pkg/loopdev"
)

// A test that fails after deleting a volume whose image is still attached
// leaves a device whose backing file the kernel reports with " (deleted)".
// CleanupUnder must detach it too.
func TestCleanupUnder_DeletedImage_Detached(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches a real loop device")
	}
	dir := t.TempDir()
	pool := filepath.Join(dir, "pool")
	if err := os.MkdirAll(pool, 0o700); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(pool, "vol.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = loopdev.Detach(context.Background(), img) })
	if _, err := loopdev.Attach(context.Background(), img); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(img); err != nil {
		t.Fatal(err)
	}
	CleanupUnder(t, dir, pool)
	if left, err := loopdev.Under(pool); err != nil || len(left) != 0 {
		t.Fatalf("after CleanupUnder, loop devices under %s: %+v (err %v), want none", pool, left, err)
	}
}
