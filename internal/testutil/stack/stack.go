// Package stack starts a real Stowage stack inside a test: the API server
// with a bbolt store and an xfs (reflink) pool on a loop device, and the
// block CSI driver (controller and node) on a unix socket. Everything it
// starts is stopped, unmounted and detached in t.Cleanup, even on failure.
package stack

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/attach"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/blockexport"
	"github.com/stowage-io/stowage/internal/csi"
	"github.com/stowage-io/stowage/internal/csi/filecsi"
	"github.com/stowage-io/stowage/internal/files"
	"github.com/stowage-io/stowage/internal/handoff"
	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/server"
	"github.com/stowage-io/stowage/internal/store/boltstore"
	"github.com/stowage-io/stowage/internal/testutil/loopfs"
	"github.com/stowage-io/stowage/pkg/loopdev"
)

// Options tune the stack; zero values give a 32 GiB sparse xfs pool in zone
// "zone-a" on node "node-a".
type Options struct {
	PoolFS     string // xfs (default), ext4, btrfs
	PoolSize   int64
	Zone, Node string
	MaxVolumes int64
	// NoDriver skips the CSI driver (API-only tests).
	NoDriver bool
	// FileDriver serves file systems for real: the file-tree pool is btrfs
	// (quotas), nfs-ganesha exports access points, and the file CSI driver
	// (controller and node, mounting with the FUSE client MountHelper, a
	// stowage binary: BuildStowage) serves at FileCSIEndpoint.
	FileDriver  bool
	MountHelper string
	// StorageNode, when not Node, puts the pool on a storage host of that
	// name: the server exports volumes over NBD on loopback, and the node
	// attaches them with `stowage nbd-attach` (the stowage binary
	// MountHelper, a FUSE file with a loop device on top).
	StorageNode string
}

// Stack is a running Stowage for one test.
type Stack struct {
	Dir         string // the test's scratch directory
	PoolDir     string
	FilePoolDir string // the file-tree pool (file systems)
	APIEndpoint string // unix:///…
	CSIEndpoint string // unix:///…
	// LocalHandoff is the server's local handoff socket, the node
	// plugin's --local-handoff.
	LocalHandoff string
	StateDir     string
	Node, Zone   string
	// FileCSIEndpoint and FileStateDir are the file driver's (FileDriver).
	FileCSIEndpoint string
	FileStateDir    string
	NFSAddress      string
	Server          *server.Server
	Conn            *grpc.ClientConn
	Volumes         pb.VolumeServiceClient
	Snapshots       pb.SnapshotServiceClient
}

// Start brings a stack up or fails the test. It needs root.
func Start(t testing.TB, o Options) *Stack {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root for loop devices and mounts")
	}
	if o.PoolFS == "" {
		o.PoolFS = "xfs"
	}
	if o.PoolSize == 0 {
		o.PoolSize = 32 << 30
	}
	if o.Zone == "" {
		o.Zone = "zone-a"
	}
	if o.Node == "" {
		o.Node = "node-a"
	}
	if o.MaxVolumes == 0 {
		o.MaxVolumes = 32
	}
	// Unix socket paths are limited to 108 bytes: keep them short.
	dir, err := os.MkdirTemp("", "stw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	poolDir := loopfs.New(t, o.PoolFS, o.PoolSize)
	// Registered after loopfs.New, so it runs before the pool is unmounted.
	t.Cleanup(func() { CleanupUnder(t, dir, poolDir) })

	s := &Stack{Dir: dir, PoolDir: poolDir, Node: o.Node, Zone: o.Zone,
		APIEndpoint: "unix://" + filepath.Join(dir, "api.sock"), CSIEndpoint: "unix://" + filepath.Join(dir, "csi.sock"),
		StateDir: filepath.Join(dir, "node-state"), LocalHandoff: filepath.Join(dir, "handoff.sock")}
	st, err := boltstore.Open(filepath.Join(dir, "meta", "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if o.StorageNode == "" {
		o.StorageNode = o.Node
	}
	pool, err := agent.Open(agent.Config{Dir: poolDir, Zone: o.Zone, Node: o.StorageNode})
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	keys, err := kms.Open(st, filepath.Join(dir, "meta", "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	// A file-tree pool of plain directories (no quotas) for file systems;
	// with the file driver, btrfs with quota groups, exported over NFS.
	fileDir := filepath.Join(dir, "files")
	if o.FileDriver {
		fileDir = filepath.Join(loopfs.New(t, "btrfs", 4<<30), "files")
		// After loopfs.New: unmount what is mounted in the pool (an
		// exported subvolume's own mount) before the pool goes.
		t.Cleanup(func() { CleanupUnder(t, fileDir, fileDir) })
	}
	filePool, err := files.Open(files.Config{Dir: fileDir, Zone: o.Zone, Node: o.Node})
	if err != nil {
		t.Fatal(err)
	}
	s.FilePoolDir = filePool.Dir()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var exporters map[string]server.Exporter
	if o.FileDriver {
		g, err := files.StartGanesha(ctx, files.GaneshaConfig{StateDir: filepath.Join(dir, "ganesha"), Port: freePort(t), Graceless: true, Logger: logger}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.Stop)
		exporters = map[string]server.Exporter{"files-a": files.TreeExporter{Tree: filePool, NFS: g}}
		s.NFSAddress = g.Address()
	}
	var blockExports map[string]server.BlockExporter
	if o.StorageNode != o.Node {
		if o.MountHelper == "" {
			t.Fatal("stack: StorageNode needs MountHelper (stack.BuildStowage)")
		}
		blockExports = map[string]server.BlockExporter{"pool-a": startBlockExporter(t, pool, logger)}
	}
	authz := auth.New(st, nil, logger)
	s.Server, err = server.New(server.Config{Store: st, Pools: map[string]server.Pool{"pool-a": pool}, Logger: logger, KMS: keys,
		FilePools: map[string]server.FilePool{"files-a": filePool}, Exporters: exporters, NFSAddress: s.NFSAddress, Auth: authz,
		BlockExports: blockExports})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Server.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	stopHandoff, err := handoff.Start(s.LocalHandoff, s.Server.OpenLocalImage, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopHandoff)
	lis, err := csi.Listen(s.APIEndpoint)
	if err != nil {
		t.Fatal(err)
	}
	// The tests run as root: over the unix socket they are the administrator.
	g := grpc.NewServer(authz.ServerOptions()...)
	s.Server.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)

	s.Conn, err = grpc.NewClient(s.APIEndpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Conn.Close() })
	s.Volumes, s.Snapshots = pb.NewVolumeServiceClient(s.Conn), pb.NewSnapshotServiceClient(s.Conn)
	if o.FileDriver {
		s.startFileDriver(t, ctx, o)
	}
	if o.NoDriver {
		return s
	}

	ctrl := csi.NewControllerService(s.Volumes, s.Snapshots, pb.NewPoolServiceClient(s.Conn))
	cfg := csi.NodeConfig{NodeID: o.Node, Zone: o.Zone, MaxVolumes: o.MaxVolumes, StateDir: s.StateDir, LimitsInterval: time.Second, LocalHandoff: s.LocalHandoff}
	if blockExports != nil {
		cfg.NBDAttach = []string{o.MountHelper, "nbd-attach"}
		// Before the pool's cleanup: a network device holds no image
		// open, but its FUSE mount is under the test's directory.
		t.Cleanup(func() { cleanupNetworkAttachments(t, s.StateDir) })
	}
	node, err := csi.NewNodeService(cfg, s.Volumes, pb.NewNodeServiceClient(s.Conn))
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	if err := node.Register(rctx); err != nil {
		t.Fatal(err)
	}
	go node.RunLimits(ctx)
	d := csi.NewDriver(ctrl, node)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := d.Serve(ctx, s.CSIEndpoint); err != nil {
			t.Errorf("CSI driver: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitForSocket(t, strings.TrimPrefix(s.CSIEndpoint, "unix://"))
	return s
}

// startBlockExporter serves pool's volumes over NBD on a loopback port.
func startBlockExporter(t testing.TB, pool server.LocalPool, logger *slog.Logger) server.LocalBlockExporter {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x := blockexport.New(logger)
	go x.Serve(l)
	t.Cleanup(func() { x.Close() })
	return server.LocalBlockExporter{Exporter: x, Pool: pool, Addr: l.Addr().String()}
}

// cleanupNetworkAttachments detaches the network attachments a failed
// test left under the node plugin's state directory: it stops the
// `stowage nbd-attach` processes (by the pids their state directories
// name; each detaches its loop device and unmounts its FUSE file as it
// goes) and disconnects kernel NBD devices.
func cleanupNetworkAttachments(t testing.TB, nodeStateDir string) {
	if n, err := attach.DetachAllNetwork(context.Background(), nodeStateDir); err != nil {
		t.Errorf("cleanup: %v", err)
	} else if n > 0 {
		t.Logf("cleanup: stopped %d network attachments a test left", n)
	}
}

func waitForSocket(t testing.TB, path string) {
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("socket %s did not appear", path)
}

// CleanupUnder unmounts everything mounted below dir and detaches every
// loop device whose backing file is below poolDir, so a failed test leaves
// no kernel state behind.
func CleanupUnder(t testing.TB, dir, poolDir string) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Errorf("cleanup: read mounts: %v", err)
	}
	// Deepest first.
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := unix.Unmount(mounts[i].Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("cleanup: unmount %s: %v", mounts[i].Mountpoint, err)
		}
	}
	loops, err := loopdev.Under(poolDir)
	if err != nil {
		t.Errorf("cleanup: list loop devices: %v", err)
	}
	for _, l := range loops {
		if err := loopdev.Detach(context.Background(), l.BackingFile); err != nil {
			t.Errorf("cleanup: detach %s: %v", l.BackingFile, err)
		}
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startFileDriver serves the file CSI driver, controller and node, with
// the FUSE NFS client o.MountHelper.
func (s *Stack) startFileDriver(t testing.TB, ctx context.Context, o Options) {
	if o.MountHelper == "" {
		t.Fatal("stack: FileDriver needs MountHelper (stack.BuildStowage)")
	}
	s.FileCSIEndpoint = "unix://" + filepath.Join(s.Dir, "file-csi.sock")
	s.FileStateDir = filepath.Join(s.Dir, "file-node-state")
	m := &filecsi.FUSEMounter{Helper: o.MountHelper, StateDir: s.FileStateDir, NodeID: o.Node}
	ctrl := filecsi.NewControllerService(pb.NewFileSystemServiceClient(s.Conn), pb.NewAccessPointServiceClient(s.Conn))
	node := filecsi.NewNodeService(filecsi.NodeConfig{NodeID: o.Node, Zone: o.Zone, CheckInterval: time.Second}, m, pb.NewFileSystemServiceClient(s.Conn), pb.NewAccessPointServiceClient(s.Conn))
	dctx, cancel := context.WithCancel(ctx)
	go node.Watch(dctx)
	d := filecsi.NewDriver(ctrl, node)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := d.Serve(dctx, s.FileCSIEndpoint); err != nil {
			t.Errorf("file CSI driver: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		// FUSE clients a failed test left running: stop them (by the pids
		// their records name) so their mounts go.
		mounts, _ := m.Mounts()
		for target := range mounts {
			if err := m.Unmount(context.Background(), target); err != nil {
				t.Errorf("cleanup: unmount %s: %v", target, err)
			}
		}
	})
	waitForSocket(t, strings.TrimPrefix(s.FileCSIEndpoint, "unix://"))
}

// BuildStowage builds the stowage binary into a temporary directory (the
// FUSE NFS client, `stowage nfs-mount`, runs as a process of its own).
func BuildStowage(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "stowage")
	cmd := exec.Command("go", "build", "-o", out, "github.com/stowage-io/stowage/cmd/stowage")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build stowage: %v\n%s", err, b)
	}
	return out
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// CheckPath tells csi-sanity what is at path (its Config.CheckPath).
func CheckPath(path string) (sanity.PathKind, error) {
	fi, err := os.Stat(path)
	switch {
	case os.IsNotExist(err):
		return sanity.PathIsNotFound, nil
	case err != nil:
		return sanity.PathIsOther, err
	case fi.IsDir():
		return sanity.PathIsDir, nil
	case fi.Mode().IsRegular():
		return sanity.PathIsFile, nil
	}
	return sanity.PathIsOther, nil
}
