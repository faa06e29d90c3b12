// Package crash proves that a Stowage process killed in the middle of an
// operation leaves nothing behind: the real binary is run as a child with
// STOWAGE_CRASH_AT set, SIGKILLs itself at that point, is restarted, the
// client retries, and the pool, the metadata and the node must agree again.
package crash

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/faults"
	"github.com/stowage-io/stowage/internal/testutil/loopfs"
	"github.com/stowage-io/stowage/internal/testutil/stack"
	"github.com/stowage-io/stowage/pkg/loopdev"
)

// binary is the stowage binary built once for all tests.
var binary string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "stwcrash-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "stowage")
		build := exec.Command("go", "build", "-o", binary, "./cmd/stowage")
		build.Dir = "../.."
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build stowage: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}())
}

// lockedBuffer collects a child's output while it runs.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is a stowage child process.
type proc struct {
	name  string
	cmd   *exec.Cmd
	out   *lockedBuffer
	done  chan struct{}
	state *os.ProcessState
}

// startProc starts the binary with args; crashAt arms a crash point. The
// process is stopped by its PID in t.Cleanup, whatever happens.
func startProc(t *testing.T, name, crashAt string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, faults.EnvVar+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if crashAt != "" {
		cmd.Env = append(cmd.Env, faults.EnvVar+"="+crashAt)
	}
	p := &proc{name: name, cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("output of %s (pid %d):\n%s", name, cmd.Process.Pid, p.out)
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process to stop and kills it if it does not.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// waitCrashed waits for the process to die of the SIGKILL it sent itself.
func (p *proc) waitCrashed(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not crash", p.name)
	}
	ws, ok := p.state.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("%s ended with %v, want killed by SIGKILL at the crash point; output:\n%s", p.name, p.state, p.out)
	}
	if !strings.Contains(p.out.String(), "crashing on purpose") {
		t.Errorf("%s died without reaching its crash point; output:\n%s", p.name, p.out)
	}
}

// crashEnv is one test's scratch space: an xfs pool on a loop device, and a
// short directory for sockets, metadata and node state.
type crashEnv struct {
	dir     string
	poolDir string
}

func newCrashEnv(t *testing.T) *crashEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
	mnt := loopfs.New(t, "xfs", 4<<30)
	// Unix socket paths must stay under 108 bytes: not under t.TempDir.
	dir, err := os.MkdirTemp("", "stwcrash")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &crashEnv{dir: dir, poolDir: filepath.Join(mnt, "pool")}
	// Runs after the processes are stopped and before the pool is unmounted:
	// whatever a crash left mounted or attached goes.
	t.Cleanup(func() { stack.CleanupUnder(t, dir, mnt) })
	return e
}

func (e *crashEnv) apiSocket() string { return filepath.Join(e.dir, "api.sock") }

// handoffSocket is the server's local handoff, which the node plugin is
// given (the default, under /run, is the machine's).
func (e *crashEnv) handoffSocket() string { return filepath.Join(e.dir, "handoff.sock") }

func (e *crashEnv) startServer(t *testing.T, crashAt string) *proc {
	t.Helper()
	p := startProc(t, "stowage server", crashAt, "server",
		"--data-dir", filepath.Join(e.dir, "data"),
		"--listen", "unix://"+e.apiSocket(),
		"--local-handoff", e.handoffSocket(),
		"--node", "node-a",
		"--pool", "name=p,dir="+e.poolDir+",zone=zone-a,node=node-a")
	waitReady(t, p, func(ctx context.Context) error {
		_, err := e.api(t).pools.ListPools(ctx, &pb.ListPoolsRequest{})
		return err
	})
	return p
}

// waitReady polls until ready succeeds, failing early if the process ends.
func waitReady(t *testing.T, p *proc, ready func(context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := ready(ctx)
		cancel()
		if err == nil {
			return
		}
		if p.exited() {
			t.Fatalf("%s exited before it was ready (%v); output:\n%s", p.name, p.state, p.out)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready: %v; output:\n%s", p.name, err, p.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type apiClients struct {
	volumes   pb.VolumeServiceClient
	snapshots pb.SnapshotServiceClient
	pools     pb.PoolServiceClient
	fs        pb.FileSystemServiceClient
	aps       pb.AccessPointServiceClient
}

func dialUnix(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// api opens a fresh connection, so that no call reuses one to a dead server.
func (e *crashEnv) api(t *testing.T) *apiClients {
	conn := dialUnix(t, e.apiSocket())
	return &apiClients{pb.NewVolumeServiceClient(conn), pb.NewSnapshotServiceClient(conn), pb.NewPoolServiceClient(conn),
		pb.NewFileSystemServiceClient(conn), pb.NewAccessPointServiceClient(conn)}
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func volumesNamed(t *testing.T, a *apiClients, name string) []*pb.Volume {
	t.Helper()
	resp, err := a.volumes.ListVolumes(callCtx(t), &pb.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var out []*pb.Volume
	for _, v := range resp.Volumes {
		if v.Name == name {
			out = append(out, v)
		}
	}
	return out
}

func wantOneAvailable(t *testing.T, a *apiClients, name string) {
	t.Helper()
	vs := volumesNamed(t, a, name)
	if len(vs) != 1 || vs[0].State != pb.VolumeState_VOLUME_STATE_AVAILABLE {
		t.Fatalf("volumes named %q: %v, want exactly one, available", name, vs)
	}
}

// checkPool asserts the pool holds exactly the images the metadata knows and
// no temp files.
func checkPool(t *testing.T, e *crashEnv, a *apiClients) {
	t.Helper()
	vols, err := a.volumes.ListVolumes(callCtx(t), &pb.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := a.snapshots.ListSnapshots(callCtx(t), &pb.ListSnapshotsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var wantVols, wantSnaps []string
	for _, v := range vols.Volumes {
		wantVols = append(wantVols, v.Id+".img")
		// An image of another size than the record's is half an operation.
		if fi, err := os.Stat(filepath.Join(e.poolDir, "volumes", v.Id+".img")); err == nil && fi.Size() != v.SizeGib<<30 {
			t.Errorf("image of %s is %d bytes; its record says %d GiB", v.Id, fi.Size(), v.SizeGib)
		}
	}
	for _, s := range snaps.Snapshots {
		wantSnaps = append(wantSnaps, s.Id+".img")
	}
	for _, d := range []struct {
		sub  string
		want []string
	}{{"volumes", wantVols}, {"snapshots", wantSnaps}, {"tmp", nil}} {
		entries, err := os.ReadDir(filepath.Join(e.poolDir, d.sub))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, en := range entries {
			got = append(got, en.Name())
		}
		if fmt.Sprint(sortedCopy(got)) != fmt.Sprint(sortedCopy(d.want)) {
			t.Errorf("pool %s/ holds %v, the metadata knows %v", d.sub, got, d.want)
		}
	}
}

// poolImages lists the files in the pool's volumes/ directory.
func poolImages(t *testing.T, e *crashEnv) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.poolDir, "volumes"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	return names
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestServerCrash_RestartAndRetry_NothingOrphaned(t *testing.T) {
	type crashCase struct {
		point string
		// setup runs on the armed server before the operation that dies;
		// it returns the id the operation works on.
		setup func(t *testing.T, a *apiClients) string
		// op is the operation the server dies in, retried unchanged after
		// the restart.
		op    func(ctx context.Context, a *apiClients, id string) error
		check func(t *testing.T, a *apiClients, id string)
		// crashed, if set, checks the pool as the crash left it, before
		// the restart: that the point is where the case says it is.
		crashed func(t *testing.T, e *crashEnv, id string)
	}
	// withSnapshot makes a source volume and a snapshot of it; it
	// returns the snapshot's id, whose volume is named crash-src.
	withSnapshot := func(t *testing.T, a *apiClients) string {
		v, err := a.volumes.CreateVolume(callCtx(t), &pb.CreateVolumeRequest{Name: "crash-src", SizeGib: 1})
		if err != nil {
			t.Fatal(err)
		}
		sn, err := a.snapshots.CreateSnapshot(callCtx(t), &pb.CreateSnapshotRequest{Name: "crash-snap", VolumeId: v.Id})
		if err != nil {
			t.Fatal(err)
		}
		return sn.Id
	}
	withVolume := func(name string) func(t *testing.T, a *apiClients) string {
		return func(t *testing.T, a *apiClients) string {
			v, err := a.volumes.CreateVolume(callCtx(t), &pb.CreateVolumeRequest{Name: name, SizeGib: 1})
			if err != nil {
				t.Fatal(err)
			}
			return v.Id
		}
	}
	restore := func(ctx context.Context, a *apiClients, snapID string) error {
		_, err := a.volumes.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "crash-restored", SizeGib: 1, SnapshotId: snapID})
		return err
	}
	restored := func(t *testing.T, a *apiClients, snapID string) {
		wantOneAvailable(t, a, "crash-restored")
		wantOneAvailable(t, a, "crash-src")
		if _, err := a.snapshots.DescribeSnapshot(callCtx(t), &pb.DescribeSnapshotRequest{SnapshotId: snapID}); err != nil {
			t.Errorf("source snapshot after the restore: %v", err)
		}
	}
	clone := func(ctx context.Context, a *apiClients, srcID string) error {
		_, err := a.volumes.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "crash-clone", SizeGib: 1, SourceVolumeId: srcID})
		return err
	}
	cloned := func(t *testing.T, a *apiClients, _ string) {
		wantOneAvailable(t, a, "crash-clone")
		wantOneAvailable(t, a, "crash-src")
	}
	snapshotted := func(t *testing.T, a *apiClients, id string) {
		wantOneAvailable(t, a, "crash-src")
		snaps, err := a.snapshots.ListSnapshots(callCtx(t), &pb.ListSnapshotsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var named []*pb.Snapshot
		for _, s := range snaps.Snapshots {
			if s.Name == "crash-snap" {
				named = append(named, s)
			}
		}
		if len(named) != 1 || named[0].State != pb.SnapshotState_SNAPSHOT_STATE_COMPLETED || named[0].VolumeId != id {
			t.Errorf("snapshots named crash-snap: %v, want one completed snapshot of %s", named, id)
		}
	}
	createVolume := func(ctx context.Context, a *apiClients, _ string) error {
		_, err := a.volumes.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "crash-vol", SizeGib: 1, Tags: map[string]string{"t": "1"}})
		return err
	}
	// A create makes the image, then records the volume available in one
	// commit: dying at image-created leaves an image no record knows (the
	// restart removes it, checkPool proves it), at recorded a finished
	// volume that the retry finds by name. A delete removes the record in
	// one commit, then the image: dying at forgotten leaves an unrecorded
	// image that the restart removes.
	tests := []crashCase{
		{point: "create-volume:image-created", op: createVolume,
			crashed: func(t *testing.T, e *crashEnv, _ string) {
				if imgs := poolImages(t, e); len(imgs) != 1 {
					t.Errorf("after the crash the pool holds images %v, want the one unrecorded image", imgs)
				}
			},
			check: func(t *testing.T, a *apiClients, _ string) { wantOneAvailable(t, a, "crash-vol") }},
		{point: "create-volume:recorded", op: createVolume,
			check: func(t *testing.T, a *apiClients, _ string) { wantOneAvailable(t, a, "crash-vol") }},
		{point: "delete-volume:forgotten",
			setup: func(t *testing.T, a *apiClients) string {
				v, err := a.volumes.CreateVolume(callCtx(t), &pb.CreateVolumeRequest{Name: "crash-vol", SizeGib: 1})
				if err != nil {
					t.Fatal(err)
				}
				return v.Id
			},
			op: func(ctx context.Context, a *apiClients, id string) error {
				_, err := a.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: id})
				return err
			},
			crashed: func(t *testing.T, e *crashEnv, id string) {
				if imgs := poolImages(t, e); len(imgs) != 1 || imgs[0] != id+".img" {
					t.Errorf("after the crash the pool holds images %v, want %s.img, whose record is gone", imgs, id)
				}
			},
			check: func(t *testing.T, a *apiClients, id string) {
				_, err := a.volumes.DescribeVolume(callCtx(t), &pb.DescribeVolumeRequest{VolumeId: id})
				if status.Code(err) != codes.NotFound {
					t.Errorf("deleted volume %s: %v, want NotFound", id, err)
				}
				if vs := volumesNamed(t, a, "crash-vol"); len(vs) != 0 {
					t.Errorf("volumes named crash-vol after the delete: %v", vs)
				}
			}},
		{point: "create-snapshot:recorded",
			setup: func(t *testing.T, a *apiClients) string {
				v, err := a.volumes.CreateVolume(callCtx(t), &pb.CreateVolumeRequest{Name: "crash-src", SizeGib: 1})
				if err != nil {
					t.Fatal(err)
				}
				return v.Id
			},
			op: func(ctx context.Context, a *apiClients, id string) error {
				_, err := a.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{Name: "crash-snap", VolumeId: id})
				return err
			},
			check: snapshotted},
	}
	tests = append(tests,
		crashCase{point: "restore-volume:recorded", setup: withSnapshot, op: restore, check: restored},
		crashCase{point: "restore-volume:image-created", setup: withSnapshot, op: restore, check: restored},
		crashCase{point: "clone-volume:recorded", setup: withVolume("crash-src"), op: clone, check: cloned},
		crashCase{point: "clone-volume:image-created", setup: withVolume("crash-src"), op: clone, check: cloned},
		crashCase{point: "resize-volume:image-grown", setup: withVolume("crash-vol"),
			op: func(ctx context.Context, a *apiClients, id string) error {
				_, err := a.volumes.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeId: id, SizeGib: 2})
				return err
			},
			check: func(t *testing.T, a *apiClients, id string) {
				v, err := a.volumes.DescribeVolume(callCtx(t), &pb.DescribeVolumeRequest{VolumeId: id})
				if err != nil {
					t.Fatal(err)
				}
				if v.SizeGib != 2 || v.State != pb.VolumeState_VOLUME_STATE_AVAILABLE {
					t.Errorf("resized volume is %d GiB, %s; want 2 GiB, available", v.SizeGib, v.State.Word())
				}
			}},
		crashCase{point: "create-snapshot:image-created", setup: withVolume("crash-src"),
			op: func(ctx context.Context, a *apiClients, id string) error {
				_, err := a.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{Name: "crash-snap", VolumeId: id})
				return err
			},
			check: snapshotted},
		crashCase{point: "delete-snapshot:marked", setup: withSnapshot,
			op: func(ctx context.Context, a *apiClients, id string) error {
				_, err := a.snapshots.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{SnapshotId: id})
				return err
			},
			check: func(t *testing.T, a *apiClients, id string) {
				_, err := a.snapshots.DescribeSnapshot(callCtx(t), &pb.DescribeSnapshotRequest{SnapshotId: id})
				if status.Code(err) != codes.NotFound {
					t.Errorf("deleted snapshot %s: %v, want NotFound", id, err)
				}
				wantOneAvailable(t, a, "crash-src")
			}},
	)
	// File systems and access points (no NFS server in these runs).
	for _, fc := range fileCrashCases() {
		tests = append(tests, crashCase{point: fc.point, setup: fc.setup, op: fc.op, check: fc.check})
	}
	t.Run("every crash point has a case", func(t *testing.T) {
		covered := map[string]bool{}
		for _, tt := range tests {
			covered[tt.point] = true
		}
		for _, p := range rotationCrashPoints {
			covered[p] = true
		}
		for _, p := range faults.Points {
			if !covered[p] {
				t.Errorf("crash point %s has no case here", p)
			}
		}
	})
	e := newCrashEnv(t)
	for i, tt := range tests {
		t.Run(tt.point, func(t *testing.T) {
			// Each case gets its own pool and metadata on the shared file system.
			ce := &crashEnv{dir: filepath.Join(e.dir, fmt.Sprint(i)), poolDir: filepath.Join(e.poolDir, fmt.Sprint(i))}
			if err := os.MkdirAll(ce.dir, 0o700); err != nil {
				t.Fatal(err)
			}
			armed := ce.startServer(t, tt.point)
			a := ce.api(t)
			id := ""
			if tt.setup != nil {
				id = tt.setup(t, a)
			}
			err := tt.op(callCtx(t), a, id)
			if err == nil {
				t.Fatalf("the operation succeeded; the server should have died at %s", tt.point)
			}
			armed.waitCrashed(t)
			if tt.crashed != nil {
				tt.crashed(t, ce, id)
			}

			ce.startServer(t, "")
			a = ce.api(t)
			if err := tt.op(callCtx(t), a, id); err != nil {
				t.Fatalf("retry after restart: %v", err)
			}
			// And once more: the retry itself is idempotent.
			if err := tt.op(callCtx(t), a, id); err != nil {
				t.Fatalf("second retry: %v", err)
			}
			tt.check(t, a, id)
			checkPool(t, ce, a)
			checkFileTrees(t, ce, a)
		})
	}
}

// loopDevicesOf lists the loop devices whose backing file is image.
func loopDevicesOf(t *testing.T, image string) []string {
	t.Helper()
	loops, err := loopdev.List()
	if err != nil {
		t.Fatal(err)
	}
	var devs []string
	for _, l := range loops {
		if l.BackingFile == image {
			devs = append(devs, l.Path)
		}
	}
	return devs
}

func TestNodePluginCrash_AfterAttach_RetryStagesAndUnstageLeavesNothing(t *testing.T) {
	e := newCrashEnv(t)
	e.startServer(t, "")
	a := e.api(t)
	ctx := callCtx(t)
	v, err := a.volumes.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "crash-node", SizeGib: 1})
	if err != nil {
		t.Fatal(err)
	}
	att, err := a.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	if att.LocalTarget == "" {
		t.Fatalf("attachment on the pool's node %+v: want a local target", att)
	}
	// The test runs on the storage host and knows its pool's layout; the
	// API names no path.
	image := filepath.Join(e.poolDir, "volumes", v.Id+".img")
	staging := filepath.Join(e.dir, "staging")
	if err := os.Mkdir(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	csiSock := filepath.Join(e.dir, "csi.sock")
	stateDir := filepath.Join(e.dir, "node-state")
	startNode := func(crashAt string) (*proc, csi.NodeClient) {
		p := startProc(t, "stowage csi node", crashAt, "csi", "node",
			"--endpoint", "unix://"+csiSock, "--api", "unix://"+e.apiSocket(),
			"--node-id", "node-a", "--zone", "zone-a", "--state-dir", stateDir, "--limits-interval", "1h",
			"--local-handoff", e.handoffSocket())
		conn := dialUnix(t, csiSock)
		waitReady(t, p, func(ctx context.Context) error {
			_, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
			return err
		})
		return p, csi.NewNodeClient(conn)
	}
	stageReq := &csi.NodeStageVolumeRequest{
		VolumeId: v.Id, StagingTargetPath: staging,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
	}

	armed, node := startNode("node-stage:attached")
	if _, err := node.NodeStageVolume(ctx, stageReq); err == nil {
		t.Fatal("NodeStageVolume succeeded; the node plugin should have died after attaching")
	}
	armed.waitCrashed(t)
	if devs := loopDevicesOf(t, image); len(devs) != 1 {
		t.Fatalf("after the crash the image is on loop devices %v, want the one the crash left", devs)
	}
	if m, _ := mountinfo.Mounted(staging); m {
		t.Fatal("staging path is mounted although the crash came before the mount")
	}

	_, node = startNode("")
	if _, err := node.NodeStageVolume(ctx, stageReq); err != nil {
		t.Fatalf("NodeStageVolume after restart: %v", err)
	}
	devs := loopDevicesOf(t, image)
	if len(devs) != 1 {
		t.Fatalf("after the retried stage the image is on loop devices %v, want exactly one", devs)
	}
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(staging))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 1 || mounts[0].Source != devs[0] || mounts[0].FSType != "ext4" {
		t.Fatalf("mounts at the staging path: %+v, want %s as ext4", mounts, devs[0])
	}

	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.Id, StagingTargetPath: staging}); err != nil {
		t.Fatalf("NodeUnstageVolume: %v", err)
	}
	if devs := loopDevicesOf(t, image); len(devs) != 0 {
		t.Errorf("after unstage the image is still on loop devices %v", devs)
	}
	if m, err := mountinfo.Mounted(staging); m || (err != nil && !errors.Is(err, os.ErrNotExist)) {
		t.Errorf("staging path still mounted (err %v)", err)
	}
	if left, _ := os.ReadDir(stateDir); len(left) != 0 {
		var names []string
		for _, l := range left {
			names = append(names, l.Name())
		}
		t.Errorf("node state directory still holds %v", names)
	}
	if _, err := a.volumes.DetachVolume(ctx, &pb.DetachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: v.Id}); err != nil {
		t.Fatal(err)
	}
	checkPool(t, e, a)
}
