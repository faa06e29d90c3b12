package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/attach"
	"github.com/stowage-io/stowage/internal/handoff"
	"github.com/stowage-io/stowage/pkg/loopdev"
)

// These tests drive the node RPCs through hand-written fakes of the API,
// the loop devices, the mounts and the limits, so every branch runs
// without root. stage_test.go and its neighbours do the same on real loop
// devices and mounts.

type fakeVolumes struct {
	pb.VolumeServiceClient // nil: a call the fake does not expect panics
	vol                    *pb.Volume
}

func (f *fakeVolumes) DescribeVolume(_ context.Context, in *pb.DescribeVolumeRequest, _ ...grpc.CallOption) (*pb.Volume, error) {
	if f.vol == nil || in.VolumeId != f.vol.Id {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", in.VolumeId)
	}
	return f.vol, nil
}

func (f *fakeVolumes) GetAttachmentSecret(_ context.Context, in *pb.GetAttachmentSecretRequest, _ ...grpc.CallOption) (*pb.AttachmentSecret, error) {
	for _, a := range f.vol.GetAttachments() {
		if a.NodeId == in.NodeId {
			return &pb.AttachmentSecret{VolumeId: f.vol.Id, NodeId: a.NodeId, ExportName: a.ExportName, Generation: a.Generation, LocalTarget: a.LocalTarget, Secret: fakeSecret}, nil
		}
	}
	return nil, status.Errorf(codes.PermissionDenied, "volume %s is not attached to node %s", in.VolumeId, in.NodeId)
}

const fakeSecret = "fake-attachment-secret-0123456789abcdef"

// fakeNetwork is attach.FUSELoop without processes: a device per export.
type fakeNetwork struct {
	devices   map[string]string // export -> device
	secrets   []string          // the secrets Attach was given
	attachErr error
	detached  []string
	refreshed []string // the exports Refresh was asked for
	size      int64    // what Refresh returns
}

func (f *fakeNetwork) Attach(_ context.Context, t attach.Target) (string, error) {
	if f.attachErr != nil {
		return "", f.attachErr
	}
	f.secrets = append(f.secrets, t.Secret)
	dev := "/dev/loop9" + string(rune('0'+len(f.devices)))
	f.devices[t.AttachmentID] = dev
	return dev, nil
}

func (f *fakeNetwork) Detach(_ context.Context, t attach.Target) error {
	if _, ok := f.devices[t.AttachmentID]; ok {
		f.detached = append(f.detached, t.AttachmentID)
	}
	delete(f.devices, t.AttachmentID)
	return nil
}

func (f *fakeNetwork) Device(t attach.Target) (string, bool) {
	dev, ok := f.devices[t.AttachmentID]
	return dev, ok
}

func (f *fakeNetwork) Refresh(_ context.Context, t attach.Target) (int64, error) {
	if _, ok := f.devices[t.AttachmentID]; !ok {
		return 0, fmt.Errorf("fuse-loop refresh %s: not attached", t.AttachmentID)
	}
	f.refreshed = append(f.refreshed, t.AttachmentID)
	return f.size, nil
}

// fakeLoops is the loop driver: a device per image, attached by an open
// file (keyed by its path, found by its device and inode as the kernel
// would) or, for volumes staged by older node plugins, found by path.
type fakeLoops struct {
	devices   map[string]string // image path -> device
	backings  map[loopdev.Backing]string
	attachErr error
	detachErr error
	detached  []string
}

func (f *fakeLoops) AttachFile(_ context.Context, img *os.File) (string, error) {
	if f.attachErr != nil {
		return "", f.attachErr
	}
	b, err := loopdev.BackingOf(img)
	if err != nil {
		return "", err
	}
	if f.backings == nil {
		f.backings = map[loopdev.Backing]string{}
	}
	f.backings[b] = img.Name()
	if dev, ok := f.devices[img.Name()]; ok {
		return dev, nil
	}
	dev := "/dev/loop" + string(rune('0'+len(f.devices)))
	f.devices[img.Name()] = dev
	return dev, nil
}

func (f *fakeLoops) FindFile(b loopdev.Backing) (string, bool, error) {
	dev, ok := f.devices[f.backings[b]]
	return dev, ok && !b.IsZero(), nil
}

func (f *fakeLoops) DetachFile(ctx context.Context, b loopdev.Backing) error {
	if b.IsZero() {
		return nil
	}
	return f.Detach(ctx, f.backings[b])
}

func (f *fakeLoops) Detach(_ context.Context, image string) error {
	if f.detachErr != nil {
		return f.detachErr
	}
	if _, ok := f.devices[image]; ok {
		f.detached = append(f.detached, image)
	}
	delete(f.devices, image)
	return nil
}

func (f *fakeLoops) Find(image string) (string, bool, error) {
	dev, ok := f.devices[image]
	return dev, ok, nil
}

// fakeHandoff is the local handoff of the machine: it opens the image of
// the fixture's local attachment for the right target and secret.
type fakeHandoff struct {
	image  string
	target string
	asked  []handoff.Request
	err    error
}

func (f *fakeHandoff) Open(_ context.Context, r handoff.Request) (*os.File, bool, error) {
	f.asked = append(f.asked, r)
	if f.err != nil {
		return nil, false, f.err
	}
	if r.Target != f.target || r.Secret != fakeSecret {
		return nil, false, status.Errorf(codes.PermissionDenied, "local handoff: not this attachment's target or secret")
	}
	img, err := os.OpenFile(f.image, os.O_RDWR, 0)
	return img, false, err
}

func (f *fakeLoops) Refresh(string) (int64, error) { return 3 << 30, nil }

type fakeMounts struct {
	mounted   map[string]string // path -> source
	formatted []string
	mountErr  error
	// lim, when set, lets FormatAndMount note the devices that were
	// formatted with their throttle already on (formattedLimited).
	lim              *fakeLimiter
	formattedLimited []string
	// smallFS makes every file system smaller than its device (a restore
	// into a larger size); resized lists the devices Resize grew.
	smallFS bool
	resized []string
}

func (f *fakeMounts) IsLikelyNotMountPoint(path string) (bool, error) {
	if _, ok := f.mounted[path]; ok {
		return false, nil
	}
	if _, err := os.Stat(path); err != nil {
		return true, err
	}
	return true, nil
}

func (f *fakeMounts) MountedDevice(path string) (string, error) { return f.mounted[path], nil }

func (f *fakeMounts) FormatAndMount(device, target, _ string, _, _ []string) error {
	if f.mountErr != nil {
		return f.mountErr
	}
	f.formatted = append(f.formatted, device)
	if f.lim != nil {
		if _, ok := f.lim.applied[device]; ok {
			f.formattedLimited = append(f.formattedLimited, device)
		}
	}
	f.mounted[target] = device
	return nil
}

func (f *fakeMounts) Mount(source, target, _ string, _ []string) error {
	if f.mountErr != nil {
		return f.mountErr
	}
	f.mounted[target] = source
	return nil
}

func (f *fakeMounts) Unmount(path string) error { delete(f.mounted, path); return nil }

func (f *fakeMounts) Cleanup(path string) error {
	delete(f.mounted, path)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (f *fakeMounts) IsExt(string) bool                         { return false }
func (f *fakeMounts) GrowOffline(context.Context, string) error { return nil }
func (f *fakeMounts) Resize(device, _ string) error {
	f.resized = append(f.resized, device)
	return nil
}
func (f *fakeMounts) NeedResize(device, _ string) (bool, error) {
	return f.smallFS && !slices.Contains(f.resized, device), nil
}
func (f *fakeMounts) mountedAt(path string) (source string, ok bool) {
	s, ok := f.mounted[path]
	return s, ok
}

type fakeLimiter struct {
	enforced bool
	applyErr error
	applied  map[string]attach.Limits // device -> limits
	pods     map[string][]string      // device -> pods of the last Apply
}

func (f *fakeLimiter) Apply(device string, l attach.Limits, pods []string) error {
	if f.applyErr != nil {
		return f.applyErr
	}
	f.applied[device], f.pods[device] = l, pods
	return nil
}

func (f *fakeLimiter) Clear(device string, _ []string) error { delete(f.applied, device); return nil }
func (f *fakeLimiter) Enforced() bool                        { return f.enforced }
func (f *fakeLimiter) String() string                        { return "fake" }

type nodeFixture struct {
	n       *NodeService
	vols    *fakeVolumes
	loops   *fakeLoops
	images  *fakeHandoff
	network *fakeNetwork
	mounts  *fakeMounts
	lim     *fakeLimiter
	image   string
	staging string
	target  string
}

const fakeVolumeID = "vol-1"

func newNodeFixture(t *testing.T) *nodeFixture {
	t.Helper()
	dir := t.TempDir()
	f := &nodeFixture{
		vols: &fakeVolumes{vol: &pb.Volume{Id: fakeVolumeID, Iops: 3000, ThroughputMibps: 125,
			Attachments: []*pb.Attachment{{NodeId: "node-a", LocalTarget: fakeLocalTarget}}}},
		loops:   &fakeLoops{devices: map[string]string{}},
		images:  &fakeHandoff{image: filepath.Join(dir, "vol-1.img"), target: fakeLocalTarget},
		network: &fakeNetwork{devices: map[string]string{}},
		mounts:  &fakeMounts{mounted: map[string]string{}},
		lim:     &fakeLimiter{enforced: true, applied: map[string]attach.Limits{}, pods: map[string][]string{}},
		image:   filepath.Join(dir, "vol-1.img"),
		staging: filepath.Join(dir, "staging"),
		// A kubelet publish path, so that the pod's UID is found.
		target: filepath.Join(dir, "pods", "uid-1", "volumes", "kubernetes.io~csi", "pvc-1", "mount"),
	}
	f.mounts.lim = f.lim
	if err := os.MkdirAll(f.staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := NodeConfig{NodeID: "node-a", StateDir: filepath.Join(dir, "state")}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	f.n = newNodeService(cfg, f.vols, nil, f.loops, f.network, f.mounts, f.lim)
	f.n.images = f.images
	return f
}

const fakeLocalTarget = "lat-1"

// backing is the identity of the fixture's image.
func (f *nodeFixture) backing(t *testing.T) loopdev.Backing {
	t.Helper()
	img, err := os.Open(f.image)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b, err := loopdev.BackingOf(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *nodeFixture) stageReq(c *csi.VolumeCapability) *csi.NodeStageVolumeRequest {
	return &csi.NodeStageVolumeRequest{VolumeId: fakeVolumeID, StagingTargetPath: f.staging, VolumeCapability: c}
}

func (f *nodeFixture) publishReq(target string, c *csi.VolumeCapability) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{VolumeId: fakeVolumeID, StagingTargetPath: f.staging, TargetPath: target, VolumeCapability: c}
}

func (f *nodeFixture) state(t *testing.T) *stagedVolume {
	t.Helper()
	st, err := f.n.readState(fakeVolumeID)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// stage stages the volume as a file system and fails the test if it cannot.
func (f *nodeFixture) stage(t *testing.T) {
	t.Helper()
	if _, err := f.n.NodeStageVolume(context.Background(), f.stageReq(fsCap("xfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER))); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
}

func (f *nodeFixture) publish(t *testing.T, target string, mode csi.VolumeCapability_AccessMode_Mode) {
	t.Helper()
	if _, err := f.n.NodePublishVolume(context.Background(), f.publishReq(target, fsCap("xfs", mode))); err != nil {
		t.Fatalf("NodePublishVolume %s: %v", target, err)
	}
}

func fsCap(fs string, mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func TestNodeStageVolume_Branches(t *testing.T) {
	rwo := csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, f *nodeFixture)
		req   func(f *nodeFixture) *csi.NodeStageVolumeRequest
		code  codes.Code
		check func(t *testing.T, f *nodeFixture)
	}{
		{
			name: "FileSystem_FormattedMountedLimited",
			check: func(t *testing.T, f *nodeFixture) {
				dev := f.loops.devices[f.image]
				if src, ok := f.mounts.mountedAt(f.staging); !ok || src != dev {
					t.Errorf("staging path has %q mounted, want %s", src, dev)
				}
				if want := limitsOf(f.vols.vol); f.lim.applied[dev] != want {
					t.Errorf("limits on %s = %+v, want %+v", dev, f.lim.applied[dev], want)
				}
				// mkfs zeroes the file system's log; under the volume's
				// throttle that took half a second of every stage.
				if len(f.mounts.formattedLimited) > 0 {
					t.Errorf("%v formatted with the volume's limits already on; they go on after mkfs", f.mounts.formattedLimited)
				}
				if st := f.state(t); st.Device != dev || st.ImagePath != "" || st.Local == nil || *st.Local != (localRef{Target: fakeLocalTarget, Backing: f.backing(t)}) {
					t.Errorf("node state %+v (local %+v), want device %s and the local target with the image's device and inode", st, st.Local, dev)
				}
				if len(f.images.asked) != 1 || f.images.asked[0] != (handoff.Request{VolumeID: fakeVolumeID, NodeID: "node-a", Target: fakeLocalTarget, Secret: fakeSecret}) {
					t.Errorf("local handoff asked %+v", f.images.asked)
				}
			},
		},
		{
			// Restored from a snapshot into a larger claim: the file
			// system is grown while staged (xfs grows only mounted).
			name:  "FileSystemSmallerThanDevice_GrownAtStage",
			setup: func(t *testing.T, f *nodeFixture) { f.mounts.smallFS = true },
			check: func(t *testing.T, f *nodeFixture) {
				if dev := f.loops.devices[f.image]; !slices.Equal(f.mounts.resized, []string{dev}) {
					t.Errorf("grown at stage: %v, want [%s]", f.mounts.resized, dev)
				}
			},
		},
		{
			name: "FileSystem_NotGrownWhenItFills",
			check: func(t *testing.T, f *nodeFixture) {
				if len(f.mounts.resized) != 0 {
					t.Errorf("a file system that fills its device was grown: %v", f.mounts.resized)
				}
			},
		},
		{
			name: "RawBlock_AttachedNotMounted",
			req:  func(f *nodeFixture) *csi.NodeStageVolumeRequest { return f.stageReq(blockCap()) },
			check: func(t *testing.T, f *nodeFixture) {
				if len(f.mounts.mounted) != 0 || len(f.mounts.formatted) != 0 {
					t.Errorf("a raw block stage mounted %v / formatted %v", f.mounts.mounted, f.mounts.formatted)
				}
				if st := f.state(t); st == nil || !st.Block || st.Device == "" {
					t.Errorf("node state %+v, want a block volume with its device", st)
				}
			},
		},
		{
			name:  "NotAttachedToThisNode_FailedPrecondition",
			setup: func(t *testing.T, f *nodeFixture) { f.vols.vol.Attachments[0].NodeId = "node-b" },
			code:  codes.FailedPrecondition,
			check: func(t *testing.T, f *nodeFixture) {
				if len(f.loops.devices) != 0 {
					t.Error("a volume attached elsewhere got a loop device here")
				}
			},
		},
		{
			name:  "StagingPathMissing_InvalidArgument",
			setup: func(t *testing.T, f *nodeFixture) { os.Remove(f.staging) },
			code:  codes.InvalidArgument,
		},
		{
			name:  "EncryptedAsRawBlock_FailedPrecondition",
			setup: func(t *testing.T, f *nodeFixture) { f.vols.vol.Encrypted = true },
			req:   func(f *nodeFixture) *csi.NodeStageVolumeRequest { return f.stageReq(blockCap()) },
			code:  codes.FailedPrecondition,
		},
		{
			name:  "AttachFails_Internal_NoStateLeft",
			setup: func(t *testing.T, f *nodeFixture) { f.loops.attachErr = errors.New("no free loop device") },
			code:  codes.Internal,
			check: func(t *testing.T, f *nodeFixture) {
				if st := f.state(t); st != nil {
					t.Errorf("a failed attach left node state %+v", st)
				}
			},
		},
		{
			name:  "MountFails_Internal_LoopDeviceDetached",
			setup: func(t *testing.T, f *nodeFixture) { f.mounts.mountErr = errors.New("bad option") },
			code:  codes.Internal,
			check: func(t *testing.T, f *nodeFixture) {
				if len(f.loops.devices) != 0 || !slices.Equal(f.loops.detached, []string{f.image}) {
					t.Errorf("after a failed mount: devices %v, detached %v; want the image detached", f.loops.devices, f.loops.detached)
				}
				if st := f.state(t); st != nil {
					t.Errorf("a failed stage left node state %+v", st)
				}
			},
		},
		{
			name:  "LimitsFail_Internal_LoopDeviceDetached",
			setup: func(t *testing.T, f *nodeFixture) { f.lim.applyErr = errors.New("write refused") },
			code:  codes.Internal,
			check: func(t *testing.T, f *nodeFixture) {
				if len(f.loops.devices) != 0 {
					t.Errorf("after failed limits the image is still attached: %v", f.loops.devices)
				}
			},
		},
		{
			name:  "NoLimitsOnThisNode_StillStages",
			setup: func(t *testing.T, f *nodeFixture) { f.lim.enforced = false },
			check: func(t *testing.T, f *nodeFixture) {
				if _, ok := f.mounts.mountedAt(f.staging); !ok {
					t.Error("a node without limits did not stage the volume")
				}
			},
		},
		{
			name: "StagingHasAnotherDevice_AlreadyExists_NothingUndone",
			setup: func(t *testing.T, f *nodeFixture) {
				// Staged before (the node recorded the image it was
				// handed), and the staging path has another device.
				f.loops.devices[f.image] = "/dev/loop0"
				f.loops.backings = map[loopdev.Backing]string{f.backing(t): f.image}
				f.n.writeState(&stagedVolume{VolumeID: fakeVolumeID, Local: &localRef{Target: fakeLocalTarget, Backing: f.backing(t)}, StagingPath: f.staging, Device: "/dev/loop0"})
				f.mounts.mounted[f.staging] = "/dev/loop9"
			},
			code: codes.AlreadyExists,
			check: func(t *testing.T, f *nodeFixture) {
				if len(f.loops.detached) != 0 || f.mounts.mounted[f.staging] != "/dev/loop9" {
					t.Errorf("a refused stage undid what it had not done: detached %v, mounts %v", f.loops.detached, f.mounts.mounted)
				}
			},
		},
		{
			name: "Repeated_KeepsTargetsAndDataDir",
			setup: func(t *testing.T, f *nodeFixture) {
				f.stage(t)
				f.publish(t, f.target, rwo)
				if _, err := f.n.updateState(fakeVolumeID, func(st *stagedVolume) { st.DataDir = "/kept" }); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, f *nodeFixture) {
				st := f.state(t)
				if _, ok := st.Targets[f.target]; !ok || st.DataDir != "/kept" {
					t.Errorf("after a repeated stage the node state is %+v; want target %s and data dir kept", st, f.target)
				}
				if len(f.mounts.formatted) != 1 {
					t.Errorf("formatted %d times, want once", len(f.mounts.formatted))
				}
				if pods := f.lim.pods[st.Device]; !slices.Equal(pods, []string{"uid-1"}) {
					t.Errorf("a repeated stage applied limits for pods %v, want [uid-1]", pods)
				}
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newNodeFixture(t)
			if tt.setup != nil {
				tt.setup(t, f)
			}
			req := f.stageReq(fsCap("xfs", rwo))
			if tt.req != nil {
				req = tt.req(f)
			}
			_, err := f.n.NodeStageVolume(context.Background(), req)
			if status.Code(err) != tt.code {
				t.Fatalf("NodeStageVolume = %v, want code %s", err, tt.code)
			}
			if tt.check != nil {
				tt.check(t, f)
			}
		})
	}
}

func TestNodePublishVolume_Branches(t *testing.T) {
	rwo := csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	rwop := csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, f *nodeFixture)
		mode  csi.VolumeCapability_AccessMode_Mode
		code  codes.Code
		check func(t *testing.T, f *nodeFixture)
	}{
		{
			name: "Staged_BindMountedTargetRecordedPodLimited",
			mode: rwo,
			setup: func(t *testing.T, f *nodeFixture) {
				f.stage(t)
			},
			check: func(t *testing.T, f *nodeFixture) {
				if src, _ := f.mounts.mountedAt(f.target); src != f.staging {
					t.Errorf("target has %q mounted, want the staging path", src)
				}
				st := f.state(t)
				if single, ok := st.Targets[f.target]; !ok || single {
					t.Errorf("targets %v, want %s as a shared writer", st.Targets, f.target)
				}
				if pods := f.lim.pods[st.Device]; !slices.Equal(pods, []string{"uid-1"}) {
					t.Errorf("limits applied for pods %v, want [uid-1]", pods)
				}
			},
		},
		{
			name: "NotStaged_FailedPrecondition",
			mode: rwo,
			code: codes.FailedPrecondition,
		},
		{
			name: "SingleWriterBesideAnotherTarget_FailedPrecondition",
			mode: rwop,
			setup: func(t *testing.T, f *nodeFixture) {
				f.stage(t)
				f.publish(t, filepath.Join(filepath.Dir(f.staging), "other"), rwo)
			},
			code: codes.FailedPrecondition,
			check: func(t *testing.T, f *nodeFixture) {
				if _, ok := f.mounts.mountedAt(f.target); ok {
					t.Error("a refused publish mounted the target")
				}
			},
		},
		{
			name: "AlreadyPublished_NoSecondMount",
			mode: rwo,
			setup: func(t *testing.T, f *nodeFixture) {
				f.stage(t)
				f.publish(t, f.target, rwo)
				f.mounts.mountErr = errors.New("would mount twice")
			},
		},
		{
			name: "MountFails_Internal_TargetNotRecorded",
			mode: rwo,
			setup: func(t *testing.T, f *nodeFixture) {
				f.stage(t)
				f.mounts.mountErr = errors.New("bind refused")
			},
			code: codes.Internal,
			check: func(t *testing.T, f *nodeFixture) {
				if st := f.state(t); len(st.Targets) != 0 {
					t.Errorf("a failed publish recorded targets %v", st.Targets)
				}
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newNodeFixture(t)
			if tt.setup != nil {
				tt.setup(t, f)
			}
			_, err := f.n.NodePublishVolume(context.Background(), f.publishReq(f.target, fsCap("xfs", tt.mode)))
			if status.Code(err) != tt.code {
				t.Fatalf("NodePublishVolume = %v, want code %s", err, tt.code)
			}
			if tt.check != nil {
				tt.check(t, f)
			}
		})
	}
}

func TestNodeUnpublishVolume_Branches(t *testing.T) {
	t.Run("Published_UnmountedAndForgotten", func(t *testing.T) {
		f := newNodeFixture(t)
		f.stage(t)
		f.publish(t, f.target, csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
		if _, err := f.n.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: fakeVolumeID, TargetPath: f.target}); err != nil {
			t.Fatal(err)
		}
		if _, ok := f.mounts.mountedAt(f.target); ok {
			t.Error("target still mounted")
		}
		if st := f.state(t); len(st.Targets) != 0 || st.Device == "" {
			t.Errorf("node state after unpublish %+v, want no targets and the device kept", st)
		}
	})
	t.Run("UnknownVolume_OKAndNoRecordMade", func(t *testing.T) {
		f := newNodeFixture(t)
		if _, err := f.n.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: fakeVolumeID, TargetPath: f.target}); err != nil {
			t.Fatal(err)
		}
		if st := f.state(t); st != nil {
			t.Errorf("unpublish of an unknown volume made node state %+v", st)
		}
	})
}

func TestNodeUnstageVolume_Branches(t *testing.T) {
	t.Run("Staged_UnmountedDetachedLimitsClearedForgotten", func(t *testing.T) {
		f := newNodeFixture(t)
		f.stage(t)
		dev := f.state(t).Device
		if _, err := f.n.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: fakeVolumeID, StagingTargetPath: f.staging}); err != nil {
			t.Fatal(err)
		}
		if _, ok := f.mounts.mountedAt(f.staging); ok || len(f.loops.devices) != 0 {
			t.Errorf("after unstage: mounts %v, loop devices %v", f.mounts.mounted, f.loops.devices)
		}
		if _, ok := f.lim.applied[dev]; ok {
			t.Errorf("limits of %s not cleared", dev)
		}
		if st := f.state(t); st != nil {
			t.Errorf("node state left: %+v", st)
		}
	})
	t.Run("DetachBusy_InternalAndStateKept", func(t *testing.T) {
		f := newNodeFixture(t)
		f.stage(t)
		f.loops.detachErr = errors.New("loop device in use")
		_, err := f.n.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: fakeVolumeID, StagingTargetPath: f.staging})
		if status.Code(err) != codes.Internal {
			t.Fatalf("NodeUnstageVolume = %v, want Internal", err)
		}
		if st := f.state(t); st == nil {
			t.Error("a failed unstage forgot the volume; a retry could not detach it")
		}
	})
	t.Run("NeverStaged_OK", func(t *testing.T) {
		f := newNodeFixture(t)
		if _, err := f.n.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: fakeVolumeID, StagingTargetPath: f.staging}); err != nil {
			t.Fatal(err)
		}
	})
}

// A node that cannot enforce limits says so in the volume's condition,
// without calling the volume abnormal: it works, only unthrottled.
func TestNodeGetVolumeStats_NoLimits_ConditionSaysSo(t *testing.T) {
	for _, enforced := range []bool{true, false} {
		f := newNodeFixture(t)
		f.lim.enforced = enforced
		f.stage(t)
		resp, err := f.n.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: fakeVolumeID, VolumePath: f.staging})
		if err != nil {
			t.Fatal(err)
		}
		c := resp.VolumeCondition
		if c.Abnormal || strings.Contains(c.Message, "not enforced") == enforced {
			t.Errorf("limits enforced %v: condition %+v", enforced, c)
		}
		if f.n.LimitsEnforced() != enforced {
			t.Errorf("LimitsEnforced() = %v, want %v", f.n.LimitsEnforced(), enforced)
		}
	}
}

// networkFixture is a node whose volume is attached over the network: the
// API names an NBD export, not an image.
func networkFixture(t *testing.T) *nodeFixture {
	f := newNodeFixture(t)
	f.vols.vol.Zonal = true
	f.vols.vol.Attachments = []*pb.Attachment{{NodeId: "node-a", ExportAddress: "198.51.100.1:10809", ExportName: "vol-1.g3.node-a", Generation: 3}}
	return f
}

func TestNodeStageVolume_NetworkAttachment_AttachedWithSecretRememberedWithout(t *testing.T) {
	f := networkFixture(t)
	f.stage(t)
	dev := f.network.devices["vol-1.g3.node-a"]
	if dev == "" || len(f.loops.devices) != 0 {
		t.Fatalf("network devices %v, loop devices %v: want the export attached over the network only", f.network.devices, f.loops.devices)
	}
	if !slices.Equal(f.network.secrets, []string{fakeSecret}) {
		t.Errorf("attacher got secrets %v, want the attachment's", f.network.secrets)
	}
	if src, ok := f.mounts.mountedAt(f.staging); !ok || src != dev {
		t.Errorf("staging has %q mounted, want %s", src, dev)
	}
	st := f.state(t)
	if st.Export == nil || *st.Export != (exportRef{Name: "vol-1.g3.node-a", Address: "198.51.100.1:10809", Generation: 3}) || st.ImagePath != "" || st.Device != dev {
		t.Errorf("node state %+v (export %+v)", st, st.Export)
	}
	b, err := os.ReadFile(f.n.statePath(fakeVolumeID))
	if err != nil || strings.Contains(string(b), fakeSecret) {
		t.Errorf("node state file holds the attachment secret (or is unreadable: %v)", err)
	}
	// Staged again: the same device, no second attach.
	f.stage(t)
	if len(f.network.secrets) != 1 {
		t.Errorf("a repeated stage attached again (%d attaches)", len(f.network.secrets))
	}
	resp, err := f.n.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: fakeVolumeID, VolumePath: f.staging})
	if err != nil || resp.VolumeCondition.Abnormal {
		t.Errorf("volume stats %v, %v; want a normal condition", resp, err)
	}
	// Expand: the network device is refreshed (not a loop device of an
	// image), then the file system on it grows.
	f.network.size = 2 << 30
	exp, err := f.n.NodeExpandVolume(context.Background(), &csi.NodeExpandVolumeRequest{VolumeId: fakeVolumeID, VolumePath: f.staging})
	if err != nil || exp.CapacityBytes != 2<<30 {
		t.Errorf("NodeExpandVolume of a network attachment = %v, %v; want 2 GiB", exp, err)
	}
	if !slices.Equal(f.network.refreshed, []string{"vol-1.g3.node-a"}) || !slices.Equal(f.mounts.resized, []string{dev}) {
		t.Errorf("expand refreshed %v and grew the file systems on %v; want the export and %s", f.network.refreshed, f.mounts.resized, dev)
	}
	if _, err := f.n.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: fakeVolumeID, StagingTargetPath: f.staging}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.network.detached, []string{"vol-1.g3.node-a"}) || f.state(t) != nil {
		t.Errorf("after unstage: detached %v, state %+v", f.network.detached, f.state(t))
	}
}

func TestNodeStageVolume_NetworkAttachment_Failures(t *testing.T) {
	t.Run("StorageHostUnreachable_UnavailableNamingIt", func(t *testing.T) {
		f := networkFixture(t)
		f.network.attachErr = errors.New("dial tcp 198.51.100.1:10809: connect: no route to host")
		_, err := f.n.NodeStageVolume(context.Background(), f.stageReq(fsCap("xfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)))
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "198.51.100.1:10809") || !strings.Contains(err.Error(), "vol-1.g3.node-a") {
			t.Fatalf("stage = %v, want Unavailable naming the storage host and the export", err)
		}
		if f.state(t) != nil {
			t.Errorf("a failed stage left node state %+v", f.state(t))
		}
	})
	t.Run("MountFails_NetworkDeviceDetached", func(t *testing.T) {
		f := networkFixture(t)
		f.mounts.mountErr = errors.New("mount: wrong fs type")
		if _, err := f.n.NodeStageVolume(context.Background(), f.stageReq(fsCap("xfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER))); err == nil {
			t.Fatal("stage succeeded with a failing mount")
		}
		if len(f.network.devices) != 0 || !slices.Equal(f.network.detached, []string{"vol-1.g3.node-a"}) {
			t.Errorf("after a failed stage: devices %v, detached %v", f.network.devices, f.network.detached)
		}
	})
	t.Run("AttachmentChanged_Aborted", func(t *testing.T) {
		f := networkFixture(t)
		real := f.vols.vol
		f.vols.vol = &pb.Volume{Id: real.Id, Attachments: []*pb.Attachment{{NodeId: "node-a", ExportAddress: "198.51.100.1:10809", ExportName: "vol-1.g4.node-a", Generation: 4}}}
		// The node read generation 3; the server now says 4.
		_, err := f.n.attachNetwork(context.Background(), fakeVolumeID, exportOf(real.Attachments[0]))
		if status.Code(err) != codes.Aborted {
			t.Fatalf("attach with a stale generation = %v, want Aborted", err)
		}
	})
}
