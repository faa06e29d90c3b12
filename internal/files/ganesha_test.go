package files

import (
	"bytes"
	"errors"

	"context"
	"fmt"
	"github.com/moby/sys/mountinfo"
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

// A quota'd access point's root is a btrfs subvolume made while ganesha
// runs; ganesha 4.3 can export it only because Export gives it a mount of
// its own. The quota holds for NFS writers, and Unexport and Stop leave no
// mount behind.
func TestGanesha_QuotaSubvolumeMadeAfterStart_ExportedAndEnforced(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices, btrfs and nfs-ganesha's VFS back end")
	}
	for _, bin := range []string{"ganesha.nfsd", "nfs-cp", "nfs-ls"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (Debian nfs-ganesha, nfs-ganesha-vfs, libnfs-utils; hack/setup.sh)", bin)
		}
	}
	tr := btrfsTree(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	g, err := StartGanesha(ctx, GaneshaConfig{StateDir: filepath.Join(t.TempDir(), "ganesha"), Port: freePort(t), Graceless: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			g.Stop()
		}
		if t.Failed() {
			t.Logf("end of ganesha log:\n%s", tail(g.LogPath(), 30))
		}
	})
	const limit = 2 << 20
	root := RootDirectory{Path: "/q/claim", Creation: &CreationInfo{UID: 1234, GID: 1234, Mode: 0o750}}
	if err := tr.MakeRoot(ctx, testFS, root, limit); err != nil {
		t.Fatal(err)
	}
	path := tr.HostPath(testFS, root.Path)
	e := Export{ID: 7, AccessPointID: "fsap-0000000000000007", Path: path, Pseudo: "/fsap-0000000000000007", Squash: true, AnonUID: 1234, AnonGID: 1234}
	if err := g.Export(ctx, e); err != nil {
		t.Fatal(err)
	}
	// libnfs 4.0's nfs-cp fails writing 4 KiB or more over NFSv4 to
	// ganesha ("Failed to write to dest file", on ext4 as on btrfs), so the
	// NFS writes here are small and the quota is filled locally.
	small := filepath.Join(t.TempDir(), "small")
	if err := os.WriteFile(small, bytes.Repeat([]byte{1}, 100), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, true, "nfs-cp", small, nfsURL(g, e.Pseudo+"/small", 5000))
	if uid, gid, _ := owner(t, filepath.Join(path, "small")); uid != 1234 || gid != 1234 {
		t.Errorf("file written through the export is owned by %d:%d, want the access point's 1234:1234", uid, gid)
	}
	fill, err := os.Create(filepath.Join(path, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{2}, 256<<10)
	for n := 0; ; n++ {
		_, err := fill.Write(chunk)
		if err == nil {
			err = fill.Sync()
		}
		if errors.Is(err, syscall.EDQUOT) {
			break
		}
		if err != nil || n > 4*limit/len(chunk) {
			t.Fatalf("filling the %d-byte quota locally: %v after %d chunks", limit, err, n)
		}
	}
	fill.Close()
	if out := eventually(t, false, "nfs-cp", small, nfsURL(g, e.Pseudo+"/past-quota", 5000)); !strings.Contains(out, "DQUOT") {
		t.Errorf("an NFS create past the quota failed with %q, want NFS4ERR_DQUOT", out)
	}

	if err := g.Unexport(ctx, e.AccessPointID); err != nil {
		t.Fatal(err)
	}
	if m, err := mountinfo.Mounted(path); err != nil || m {
		t.Errorf("after Unexport, %s mounted = %t (%v); want its own mount gone", path, m, err)
	}
	if err := g.Export(ctx, e); err != nil {
		t.Fatal(err)
	}
	eventually(t, true, "nfs-ls", nfsURL(g, e.Pseudo, 1))
	g.Stop()
	stopped = true
	if m, err := mountinfo.Mounted(path); err != nil || m {
		t.Errorf("after Stop, %s mounted = %t (%v); want its own mount gone", path, m, err)
	}
}

// TreeExporter is what stands between the agent API and a storage host's
// paths: an export names a file system by id and a directory inside it;
// anything that is not a file system id or a canonical path inside it is
// refused before ganesha sees it, and a good one is served from the tree.
func TestTreeExporter_ResolvesInsideTheTree_RefusesWhatWouldLeaveIt(t *testing.T) {
	if _, err := exec.LookPath("ganesha.nfsd"); err != nil {
		t.Skipf("nfs-ganesha is not installed (hack/setup.sh installs it): %v", err)
	}
	tree, err := Open(Config{Dir: t.TempDir(), Zone: "zone-a", Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewGanesha(GaneshaConfig{StateDir: t.TempDir()}) // not started: exports go to its configuration
	if err != nil {
		t.Fatal(err)
	}
	x := TreeExporter{Tree: tree, NFS: g}
	ctx := context.Background()
	const fs = "fs-0123456789abcdef"
	for _, e := range []Export{
		{ID: 2, AccessPointID: "fsap-1", FileSystemID: "../../etc", Dir: "/", Pseudo: "/fsap-1"},
		{ID: 2, AccessPointID: "fsap-2", FileSystemID: fs, Dir: "/a/../../..", Pseudo: "/fsap-2"},
		{ID: 2, AccessPointID: "fsap-3", FileSystemID: fs, Dir: "a/b", Pseudo: "/fsap-3"},
		{ID: 2, AccessPointID: "fsap-4", FileSystemID: fs, Dir: "/a//b/", Pseudo: "/fsap-4"},
	} {
		if err := x.Export(ctx, e); !errors.Is(err, ErrInvalid) {
			t.Errorf("Export(%+v) = %v, want ErrInvalid", e, err)
		}
	}
	if len(g.exports) != 0 {
		t.Fatalf("refused exports reached ganesha: %v", g.exports)
	}
	if err := tree.CreateFileSystem(ctx, fs); err != nil {
		t.Fatal(err)
	}
	if err := tree.MakeRoot(ctx, fs, RootDirectory{Path: "/dynamic_provisioning/pvc-1", Creation: &CreationInfo{Mode: 0o750}}, 0); err != nil {
		t.Fatal(err)
	}
	if err := x.Export(ctx, Export{ID: 3, AccessPointID: "fsap-5", FileSystemID: fs, Dir: "/dynamic_provisioning/pvc-1", Path: "/etc", Pseudo: "/fsap-5"}); err != nil { // a Path given is not trusted: Dir wins
		t.Fatal(err)
	}
	if got, want := g.exports["fsap-5"].Path, tree.HostPath(fs, "/dynamic_provisioning/pvc-1"); got != want || !strings.HasPrefix(got, tree.Dir()+"/") {
		t.Errorf("exported path %q, want %q inside the tree %s", got, want, tree.Dir())
	}
	if err := x.Unexport(ctx, "fsap-5"); err != nil || len(g.exports) != 0 {
		t.Errorf("unexport: %v, left %v", err, g.exports)
	}
}
