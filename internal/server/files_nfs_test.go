package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/files"
	"github.com/stowage-io/stowage/internal/store/boltstore"
	"github.com/stowage-io/stowage/internal/testutil/libnfs"
)

func TestAccessPoint_ServedByGanesha_ForcesItsUser_ReexportedAfterRestart(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, bin := range []string{"ganesha.nfsd", "nfs-cp", "nfs-cat"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (hack/setup.sh)", bin)
		}
	}
	dir := t.TempDir()
	st, err := boltstore.Open(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// start is one server process: a file-tree pool, a fresh ganesha with
	// no exports, and the server reconciled.
	start := func() (*Server, *files.Ganesha) {
		tree, err := files.Open(files.Config{Dir: filepath.Join(dir, "files"), Zone: "zone-a", Node: "node-a"})
		if err != nil {
			t.Fatal(err)
		}
		g, err := files.StartGanesha(ctx, files.GaneshaConfig{StateDir: filepath.Join(dir, "ganesha"), Port: port, Graceless: true, Logger: logger}, nil)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := New(Config{Store: st, Pools: map[string]Pool{}, FilePools: map[string]FilePool{"files-a": tree},
			Exporters: map[string]Exporter{"files-a": files.TreeExporter{Tree: tree, NFS: g}}, Logger: logger})
		if err != nil {
			g.Stop()
			t.Fatal(err)
		}
		if err := srv.Reconcile(ctx); err != nil {
			g.Stop()
			t.Fatal(err)
		}
		return srv, g
	}
	srv, g := start()
	defer func() { g.Stop() }()

	f, err := srv.CreateFileSystem(ctx, &pb.CreateFileSystemRequest{Name: "shared"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := srv.CreateAccessPoint(ctx, ap(f.Id, "/dynamic_provisioning/pvc-1", 1000))
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "src.txt")
	if err := os.WriteFile(src, []byte("through the access point\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	url := func(name string, uid int) string {
		return fmt.Sprintf("nfs://127.0.0.1/%s/%s?version=4&nfsport=%d&uid=%d&gid=%d", a.Id, name, port, uid, uid)
	}
	libnfs.Run(t, "nfs-cp", src, url("f.txt", 4321))
	var sb syscall.Stat_t
	host := filepath.Join(dir, "files", "filesystems", f.Id, "dynamic_provisioning", "pvc-1", "f.txt")
	if err := syscall.Stat(host, &sb); err != nil {
		t.Fatal(err)
	}
	if sb.Uid != 1000 || sb.Gid != 1000 {
		t.Errorf("written as uid 4321, stored as %d:%d; the access point forces 1000:1000", sb.Uid, sb.Gid)
	}

	// A restart of the whole process: ganesha comes back empty and the
	// reconcile exports the access point again.
	g.Stop()
	srv, g = start()
	if out := libnfs.Run(t, "nfs-cat", url("f.txt", 1)); !strings.Contains(out, "through the access point") {
		t.Errorf("after restart read %q", out)
	}
	if _, err := srv.DeleteAccessPoint(ctx, &pb.DeleteAccessPointRequest{AccessPointId: a.Id}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if exec.Command("nfs-cat", url("f.txt", 1)).Run() != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a deleted access point is still served")
		}
	}
}
