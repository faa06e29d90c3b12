package files

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// nfsURL is a libnfs URL for path through an export, as user uid:gid.
func nfsURL(g *Ganesha, path string, uid int) string {
	return fmt.Sprintf("nfs://127.0.0.1%s?version=4&nfsport=%d&uid=%d&gid=%d", path, g.cfg.Port, uid, uid)
}

// eventually runs the independent libnfs client until it succeeds: an
// export appears a moment after the SIGHUP that adds it.
func eventually(t *testing.T, want bool, name string, args ...string) string {
	t.Helper()
	var out []byte
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err = exec.CommandContext(ctx, name, args...).CombinedOutput()
		cancel()
		if (err == nil) == want {
			if !want {
				t.Logf("%s refused as expected: %v: %s", name, err, strings.TrimSpace(string(out)))
			}
			return string(out)
		}
	}
	t.Fatalf("%s %s: want success=%t, got %v: %s", name, strings.Join(args, " "), want, err, out)
	return ""
}

func TestGanesha_ExportForcesAccessPointUser_AddRemoveWithoutRestart(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: nfs-ganesha's VFS back end opens files by handle")
	}
	for _, bin := range []string{"ganesha.nfsd", "nfs-cp", "nfs-ls", "nfs-cat"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (Debian nfs-ganesha, nfs-ganesha-vfs, libnfs-utils; hack/setup.sh)", bin)
		}
	}
	dir := t.TempDir()
	mkRoot := func(name string, uid, gid int) string {
		p := filepath.Join(dir, "tree", name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o750); err != nil {
			t.Fatal(err)
		}
		return p
	}
	one := Export{ID: 1, AccessPointID: "fsap-0000000000000001", Path: mkRoot("one", 1234, 2345), Pseudo: "/fsap-0000000000000001",
		Squash: true, AnonUID: 1234, AnonGID: 2345}
	two := Export{ID: 2, AccessPointID: "fsap-0000000000000002", Path: mkRoot("two", 3000, 3000), Pseudo: "/fsap-0000000000000002",
		Squash: true, AnonUID: 3000, AnonGID: 3000}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	g, err := StartGanesha(ctx, GaneshaConfig{StateDir: filepath.Join(dir, "ganesha"), Port: freePort(t), Graceless: true}, []Export{one})
	if err != nil {
		t.Fatal(err)
	}
	pid := g.PID()
	t.Cleanup(func() {
		g.Stop()
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("nfs-ganesha (pid %d) still runs after Stop", pid)
		}
		if t.Failed() {
			t.Logf("end of ganesha log:\n%s", tail(g.LogPath(), 30))
		}
	})

	src := filepath.Join(dir, "src.txt")
	if err := os.WriteFile(src, []byte("written as uid 5000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Written as uid 5000; the access point forces its own user.
	eventually(t, true, "nfs-cp", src, nfsURL(g, one.Pseudo+"/hello.txt", 5000))
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(one.Path, "hello.txt"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 1234 || st.Gid != 2345 {
		t.Errorf("file written through the export is owned by %d:%d, want the access point's 1234:2345", st.Uid, st.Gid)
	}
	if out := eventually(t, true, "nfs-ls", nfsURL(g, one.Pseudo, 5000)); !strings.Contains(out, "1234") || !strings.Contains(out, "2345") {
		t.Errorf("nfs-ls shows %q, want owner 1234:2345", out)
	}

	// Adding a second export is a reload, not a restart; the first keeps
	// serving.
	if err := g.Export(ctx, two); err != nil {
		t.Fatal(err)
	}
	eventually(t, true, "nfs-cp", src, nfsURL(g, two.Pseudo+"/b.txt", 7))
	if err := syscall.Stat(filepath.Join(two.Path, "b.txt"), &st); err != nil || st.Uid != 3000 {
		t.Errorf("second export's file: uid %d, %v; want 3000", st.Uid, err)
	}
	if out := eventually(t, true, "nfs-cat", nfsURL(g, one.Pseudo+"/hello.txt", 1)); !strings.Contains(out, "written as uid 5000") {
		t.Errorf("first export after adding the second: %q", out)
	}

	// Removing the first leaves the second alone.
	if err := g.Unexport(ctx, one.AccessPointID); err != nil {
		t.Fatal(err)
	}
	eventually(t, false, "nfs-ls", nfsURL(g, one.Pseudo, 1))
	eventually(t, true, "nfs-ls", nfsURL(g, two.Pseudo, 1))
	if g.PID() != pid {
		t.Errorf("nfs-ganesha was restarted (pid %d -> %d); exports must change by reload", pid, g.PID())
	}
}

func TestGanesha_BadExport_RefusedNamingIt(t *testing.T) {
	for _, e := range []Export{
		{ID: 0, AccessPointID: "fsap-a", Path: "/x", Pseudo: "/fsap-a"},
		{ID: 1, AccessPointID: "fsap-b", Path: "/x\"; Squash = None", Pseudo: "/fsap-b"},
		{ID: 1, AccessPointID: "fsap-c", Path: "relative", Pseudo: "/fsap-c"},
	} {
		if err := checkExport(e); err == nil || !strings.Contains(err.Error(), e.AccessPointID) {
			t.Errorf("checkExport(%+v) = %v, want an error naming %s", e, err, e.AccessPointID)
		}
	}
}
