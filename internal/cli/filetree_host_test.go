package cli

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

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/testutil/libnfs"
)

// freeAddr is a loopback host:port nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// A storage host owns a file-tree pool as it owns its block pool: the
// server makes its file systems and access points there through the agent
// API (ids and paths inside the file system only), the agent's own
// nfs-ganesha serves them at the address the server hands out, an access
// point forces its user, the agent keeps its exports across its own
// restart, and the storage host cannot be deregistered while a file system
// is in it.
func TestStorageHostFileTree_ServedByItsOwnNFS_KeptAcrossAgentRestart(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: nfs-ganesha serves the storage host's tree and forces the access point's user (chown)")
	}
	for _, tool := range []string{"ganesha.nfsd", "nfs-cp", "nfs-cat"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (hack/setup.sh installs nfs-ganesha and libnfs-utils): %v", tool, err)
		}
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	agentToken := writeToken(t, "the-clusters-agent-token")
	sock := filepath.Join(dir, "api.sock")
	// The server has no file-tree pool of its own: every file system is on
	// the storage host.
	so := serverOptions{dataDir: dir, listen: "unix://" + sock, zone: "zone-a", node: "node-a", agentTokenFile: agentToken,
		pools: []string{"name=pool-a,zone=zone-a,node=node-a"},
		auth:  authOptions{bootstrapTokensDir: tokens, bootstrapStorageHosts: []string{"pool-r"}}}
	stopServer := startServer(t, so)
	hostToken := filepath.Join(tokens, "storage-host@pool-r")
	waitFile(t, hostToken)

	hostDir := filepath.Join(dir, "host")
	nfsAddr := freeAddr(t)
	_, nfsPort, _ := net.SplitHostPort(nfsAddr)
	ao := agentOptions{listen: freeAddr(t), nbdListen: "127.0.0.1:0", tokenFile: agentToken, dataDir: hostDir,
		pool:     "name=pool-r,dir=" + filepath.Join(hostDir, "pool") + ",zone=zone-b,node=storage-1",
		filePool: "dir=" + filepath.Join(hostDir, "files"), nfsListen: nfsAddr, nfsGraceless: true,
		server: "unix://" + sock, serverTokenFile: hostToken, registerInterval: time.Hour}
	startHost := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		ready := make(chan struct{})
		go func() { done <- runAgent(ctx, ao, func(string, string) { close(ready) }) }()
		select {
		case <-ready:
		case err := <-done:
			cancel()
			t.Fatalf("agent did not start: %v", err)
		case <-time.After(30 * time.Second):
			cancel()
			t.Fatal("agent did not start in 30 s")
		}
		stopped := false
		stop = func() {
			if !stopped {
				stopped = true
				cancel()
				if err := <-done; err != nil {
					t.Errorf("agent: %v", err)
				}
			}
		}
		t.Cleanup(stop)
		return stop
	}
	stopHost := startHost()

	admin, err := dial("unix://"+sock, filepath.Join(tokens, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	waitPool(t, pb.NewPoolServiceClient(admin), "pool-r")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fsc, apc := pb.NewFileSystemServiceClient(admin), pb.NewAccessPointServiceClient(admin)

	// A Standard file system goes to the only file-tree pool there is;
	// a One Zone one in another zone is refused by name.
	if _, err := fsc.CreateFileSystem(ctx, &pb.CreateFileSystemRequest{AvailabilityZone: "zone-c"}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "pool-r (zone zone-b)") {
		t.Fatalf("a file system in zone-c, where no storage host has a tree: %v; want INVALID_ARGUMENT naming pool-r (zone zone-b)", err)
	}
	f, err := fsc.CreateFileSystem(ctx, &pb.CreateFileSystemRequest{Name: "shared", AvailabilityZone: "zone-b"})
	if err != nil {
		t.Fatalf("create a file system in the storage host's zone: %v", err)
	}
	if f.Pool != "pool-r" || f.Node != "storage-1" || f.NfsAddress != nfsAddr || f.NfsExportPath != "/"+f.Id {
		t.Fatalf("file system %s: pool %q node %q nfs %s%s; want pool-r on storage-1, served at %s/%s", f.Id, f.Pool, f.Node, f.NfsAddress, f.NfsExportPath, nfsAddr, f.Id)
	}
	treeDir := filepath.Join(hostDir, "files", "filesystems", f.Id)
	if _, err := os.Stat(treeDir); err != nil {
		t.Fatalf("the file system's tree is not on the storage host: %v", err)
	}
	a, err := apc.CreateAccessPoint(ctx, &pb.CreateAccessPointRequest{FileSystemId: f.Id,
		PosixUser:     &pb.PosixUser{Uid: 1000, Gid: 1000},
		RootDirectory: &pb.RootDirectory{Path: "/dynamic_provisioning/pvc-1", CreationInfo: &pb.CreationInfo{OwnerUid: 1000, OwnerGid: 1000, Permissions: "750"}}})
	if err != nil {
		t.Fatalf("create an access point on the storage host: %v", err)
	}
	if a.NfsAddress != nfsAddr || a.NfsExportPath != "/"+a.Id {
		t.Fatalf("access point served at %s%s, want %s/%s", a.NfsAddress, a.NfsExportPath, nfsAddr, a.Id)
	}
	root := filepath.Join(treeDir, "dynamic_provisioning", "pvc-1")
	if fi, err := os.Stat(root); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("the access point's root on the storage host: %v %v, want mode 0750", fi, err)
	}

	src := filepath.Join(dir, "src.txt")
	if err := os.WriteFile(src, []byte("through the storage host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	url := func(export, name string, uid int) string {
		return fmt.Sprintf("nfs://127.0.0.1/%s/%s?version=4&nfsport=%s&uid=%d&gid=%d", export, name, nfsPort, uid, uid)
	}
	libnfs.Run(t, "nfs-cp", src, url(a.Id, "f.txt", 4321))
	var sb syscall.Stat_t
	if err := syscall.Stat(filepath.Join(root, "f.txt"), &sb); err != nil {
		t.Fatalf("written through the access point, not in the storage host's tree: %v", err)
	}
	if sb.Uid != 1000 || sb.Gid != 1000 {
		t.Errorf("written as uid 4321, stored as %d:%d; the access point forces 1000:1000", sb.Uid, sb.Gid)
	}
	// The whole file system's export sees the same file, unsquashed.
	if out := libnfs.Run(t, "nfs-cat", url(f.Id, "dynamic_provisioning/pvc-1/f.txt", 0)); !strings.Contains(out, "through the storage host") {
		t.Errorf("the file system's own export reads %q", out)
	}

	// The storage host stays while a file system is in it.
	_, err = pb.NewPoolServiceClient(admin).DeregisterStorageHost(ctx, &pb.DeregisterStorageHostRequest{Pool: "pool-r"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), f.Id) {
		t.Fatalf("deregister with a file system in the pool: %v; want FAILED_PRECONDITION naming %s", err, f.Id)
	}

	// The agent restarts; it serves its exports again by itself (the
	// server does not register it anew: its connection just comes back).
	stopHost()
	if exec.Command("nfs-cat", url(a.Id, "f.txt", 1)).Run() == nil {
		t.Fatal("the access point is still served with the agent stopped")
	}
	stopHost = startHost()
	if out := libnfs.Run(t, "nfs-cat", url(a.Id, "f.txt", 1)); !strings.Contains(out, "through the storage host") {
		t.Errorf("after the agent's restart the access point reads %q", out)
	}

	// The server restarts while the storage host is away: it starts, its
	// records stay, and a change to the tree is refused as UNAVAILABLE
	// naming the host (not done on the records alone, with the tree left
	// behind); once the host is back the server reconnects by itself.
	stopHost()
	stopServer()
	startServer(t, so)
	admin.Close()
	if admin, err = dial("unix://"+sock, filepath.Join(tokens, "admin")); err != nil {
		t.Fatal(err)
	}
	fsc, apc = pb.NewFileSystemServiceClient(admin), pb.NewAccessPointServiceClient(admin)
	var away error
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, away = apc.DeleteAccessPoint(ctx, &pb.DeleteAccessPointRequest{AccessPointId: a.Id}, grpc.WaitForReady(true))
		if status.Code(away) != codes.Unavailable || strings.Contains(away.Error(), "storage host storage-1") || time.Now().After(deadline) {
			break // (UNAVAILABLE without the host's name: the server's socket is not up yet)
		}
	}
	if status.Code(away) != codes.Unavailable || !strings.Contains(away.Error(), "storage host storage-1") {
		t.Fatalf("delete an access point while its storage host is away: %v; want UNAVAILABLE naming storage-1", away)
	}
	if d, err := fsc.DescribeFileSystem(ctx, &pb.DescribeFileSystemRequest{FileSystemId: f.Id}); err != nil || d.State != pb.FileSystemState_FILE_SYSTEM_STATE_AVAILABLE {
		t.Fatalf("the file system's record while its host is away: %v %v; want it kept, available", d, err)
	}
	startHost()
	if out := libnfs.Run(t, "nfs-cat", url(a.Id, "f.txt", 1)); !strings.Contains(out, "through the storage host") {
		t.Errorf("after both restarted the access point reads %q", out)
	}

	// Deleting the access point ends its export on the storage host; the
	// file system's delete removes its tree there.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, err := apc.DeleteAccessPoint(ctx, &pb.DeleteAccessPointRequest{AccessPointId: a.Id})
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("delete the access point once its storage host is back: %v", err)
		}
	}
	for deadline := time.Now().Add(15 * time.Second); exec.Command("nfs-cat", url(a.Id, "f.txt", 1)).Run() == nil; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a deleted access point is still served by the storage host")
		}
	}
	if _, err := fsc.DeleteFileSystem(ctx, &pb.DeleteFileSystemRequest{FileSystemId: f.Id}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(treeDir); !os.IsNotExist(err) {
		t.Errorf("the deleted file system's tree is still on the storage host: %v", err)
	}
	if _, err := pb.NewPoolServiceClient(admin).DeregisterStorageHost(ctx, &pb.DeregisterStorageHostRequest{Pool: "pool-r"}); err != nil {
		t.Errorf("deregister once the pool is empty: %v", err)
	}
}
