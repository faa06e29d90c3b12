package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/bench/benchkit"
	"github.com/stowage-io/stowage/internal/testutil/loopfs"
	"github.com/stowage-io/stowage/pkg/loopdev"
)

const (
	benchZone = "zone-a"
	benchNode = "node-a"
	benchPool = "pool-a"
)

// stack is a running Stowage as it is deployed on one machine: the real
// `stowage server` and `stowage csi all` binaries as separate processes,
// talking over unix sockets, with an xfs (reflink) pool on a loop device.
// Running the binaries rather than the packages in-process means the gRPC,
// logging and process boundaries a user pays for are in every figure.
type stack struct {
	work    string // sockets, server data, node state, staging and target paths
	poolDir string // the pool's mounted xfs
	logDir  string

	api       *grpc.ClientConn
	volumes   pb.VolumeServiceClient
	snapshots pb.SnapshotServiceClient
	pools     pb.PoolServiceClient
	csiConn   *grpc.ClientConn
	ctrl      csi.ControllerClient
	node      csi.NodeClient
}

// startStack brings the stack up. Every step registers its undo on u before
// it can fail half-way, so the caller's u.Run() leaves no process, mount or
// loop device behind whatever happened.
func startStack(ctx context.Context, u *undoStack, stowage, logDir string, poolSize int64) (*stack, error) {
	// Unix socket paths are limited to 108 bytes: keep the work dir short.
	work, err := os.MkdirTemp("", "stwb")
	if err != nil {
		return nil, err
	}
	u.Push("remove "+work, func() error { return os.RemoveAll(work) })
	poolBase, err := os.MkdirTemp("", "stwb-pool")
	if err != nil {
		return nil, err
	}
	u.Push("remove "+poolBase, func() error { return os.RemoveAll(poolBase) })

	progress("pool: %d GiB sparse xfs (reflink=1) on a loop device under %s", poolSize>>30, poolBase)
	poolDir, cleanupPool, err := loopfs.Make(poolBase, "xfs", poolSize)
	if err != nil {
		return nil, err
	}
	u.Push("unmount and detach the pool", cleanupPool)
	// Runs before the pool is unmounted: whatever the CSI teardown missed
	// (a crash, an interrupt) is unmounted and detached here.
	u.Push("unmount and detach leftovers", func() error { return cleanupUnder(work, poolDir) })

	s := &stack{work: work, poolDir: poolDir, logDir: logDir}
	apiSock := filepath.Join(work, "api.sock")
	csiSock := filepath.Join(work, "csi.sock")

	progress("starting `stowage server` (log: %s)", filepath.Join(logDir, "server.log"))
	if err := s.daemon(u, "server", stowage, "server",
		"--data-dir", filepath.Join(work, "server"), "--listen", "unix://"+apiSock,
		"--zone", benchZone, "--node", benchNode,
		"--pool", fmt.Sprintf("name=%s,dir=%s,zone=%s,node=%s", benchPool, poolDir, benchZone, benchNode)); err != nil {
		return nil, err
	}
	if s.api, err = dialUnix(apiSock); err != nil {
		return nil, err
	}
	u.Push("close API connection", s.api.Close)
	s.volumes, s.snapshots, s.pools = pb.NewVolumeServiceClient(s.api), pb.NewSnapshotServiceClient(s.api), pb.NewPoolServiceClient(s.api)
	if err := waitReady(ctx, "Stowage API", func(ctx context.Context) error {
		_, err := s.pools.ListPools(ctx, &pb.ListPoolsRequest{})
		return err
	}); err != nil {
		return nil, err
	}

	progress("starting `stowage csi all` (log: %s)", filepath.Join(logDir, "csi.log"))
	if err := s.daemon(u, "csi", stowage, "csi", "all",
		"--endpoint", "unix://"+csiSock, "--api", "unix://"+apiSock,
		"--node-id", benchNode, "--zone", benchZone, "--state-dir", filepath.Join(work, "csi-node")); err != nil {
		return nil, err
	}
	if s.csiConn, err = dialUnix(csiSock); err != nil {
		return nil, err
	}
	u.Push("close CSI connection", s.csiConn.Close)
	s.ctrl, s.node = csi.NewControllerClient(s.csiConn), csi.NewNodeClient(s.csiConn)
	ident := csi.NewIdentityClient(s.csiConn)
	if err := waitReady(ctx, "CSI driver", func(ctx context.Context) error {
		_, err := ident.Probe(ctx, &csi.ProbeRequest{})
		return err
	}); err != nil {
		return nil, err
	}
	return s, nil
}

// poolDevice is the loop device under the pool and whether it does direct
// I/O; if it did not, the host's page cache would serve both the baseline
// and the volumes.
func (s *stack) poolDevice() (dev, dio string) {
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(s.poolDir))
	if err != nil || len(ms) == 0 {
		return "unknown", "unknown"
	}
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(ms[0].Source), "loop", "dio"))
	if err != nil {
		return ms[0].Source, "unknown"
	}
	return ms[0].Source, strings.TrimSpace(string(b))
}

// settle flushes the pool and waits until its device is idle, so one
// benchmark's leftovers (writeback of a copy, xfs freeing a deleted
// fragmented image in the background) are not billed to the next.
func (s *stack) settle(ctx context.Context) error {
	d, err := os.Open(s.poolDir)
	if err != nil {
		return err
	}
	err = unix.Syncfs(int(d.Fd()))
	d.Close()
	if err != nil {
		return fmt.Errorf("syncfs %s: %w", s.poolDir, err)
	}
	dev, _ := s.poolDevice()
	waited, err := waitIdle(ctx, dev, 2*time.Second, time.Minute)
	progress("pool %s idle after %s", dev, waited.Round(time.Millisecond))
	return err
}

// daemon starts one stowage process (benchkit.Daemon) with its log in the
// log directory.
func (s *stack) daemon(u *undoStack, name, bin string, args ...string) error {
	_, err := benchkit.Daemon(u, name, filepath.Join(s.logDir, name+".log"), bin, args...)
	return err
}

var dialUnix = func(sock string) (*grpc.ClientConn, error) { return benchkit.DialUnix(sock) }

func waitReady(ctx context.Context, what string, probe func(context.Context) error) error {
	return benchkit.WaitReady(ctx, what, 20*time.Second, probe)
}

// cleanupUnder is stack.CleanupUnder without a testing.TB: it unmounts
// everything below dir and detaches every loop device backed by a file
// below poolDir.
func cleanupUnder(dir, poolDir string) error {
	var errs []error
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		errs = append(errs, fmt.Errorf("read mounts: %w", err))
	}
	for i := len(mounts) - 1; i >= 0; i-- { // deepest first
		if err := unix.Unmount(mounts[i].Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mounts[i].Mountpoint, err))
		} else {
			progress("cleanup: unmounted leftover %s", mounts[i].Mountpoint)
		}
	}
	loops, err := loopdev.Under(poolDir)
	if err != nil {
		errs = append(errs, fmt.Errorf("list loop devices: %w", err))
	}
	for _, l := range loops {
		if err := loopdev.Detach(context.Background(), l.BackingFile); err != nil {
			errs = append(errs, err)
		} else {
			progress("cleanup: detached leftover loop device of %s", l.BackingFile)
		}
	}
	return errors.Join(errs...)
}
