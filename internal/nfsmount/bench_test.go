package nfsmount

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMeasure prints the numbers docs/file-systems.md quotes: a 1 MiB
// sequential dd and a small-file create loop through the mount and in the
// local (backing) directory. Runs only with STOWAGE_NFS_MEASURE=1.
func TestMeasure(t *testing.T) {
	if os.Getenv("STOWAGE_NFS_MEASURE") == "" {
		t.Skip("set STOWAGE_NFS_MEASURE=1 to measure")
	}
	e := newEnv(t, false)
	mnt := e.mount("m", false)
	local := filepath.Join(e.ex.Path, "local")
	if err := os.Mkdir(local, 0o755); err != nil {
		t.Fatal(err)
	}
	through := filepath.Join(mnt, "nfs")
	if err := os.Mkdir(through, 0o755); err != nil {
		t.Fatal(err)
	}
	dd := func(args ...string) string {
		out, err := exec.Command("dd", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("dd %v: %v: %s", args, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		return lines[len(lines)-1]
	}
	creates := func(dir string, n int) float64 {
		data := []byte("small file\n")
		start := time.Now()
		for i := 0; i < n; i++ {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%05d", i)), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return float64(n) / time.Since(start).Seconds()
	}
	for _, d := range []struct{ name, dir string }{{"local", local}, {"fuse-nfs", through}} {
		f := filepath.Join(d.dir, "big")
		w := dd("if=/dev/zero", "of="+f, "bs=1M", "count=1024", "conv=fsync")
		_ = exec.Command("sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches").Run()
		r := dd("if="+f, "of=/dev/null", "bs=1M")
		c := creates(d.dir, 3000)
		t.Logf("%-8s write 1 GiB bs=1M conv=fsync: %s", d.name, w)
		t.Logf("%-8s read  1 GiB bs=1M (caches dropped): %s", d.name, r)
		t.Logf("%-8s small-file creates (os.WriteFile of 11 bytes, 3000 files): %.0f/s", d.name, c)
	}
}
