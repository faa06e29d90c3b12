package csi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/attach"
	"github.com/stowage-io/stowage/internal/faults"
	"github.com/stowage-io/stowage/internal/fscrypt"
	"github.com/stowage-io/stowage/internal/handoff"
	"github.com/stowage-io/stowage/internal/keylock"
	"github.com/stowage-io/stowage/internal/runner"
	"github.com/stowage-io/stowage/pkg/loopdev"
)

// NodeConfig is what a node plugin is built from.
type NodeConfig struct {
	NodeID     string
	Zone       string
	MaxVolumes int64
	// StateDir keeps one small file per staged volume, so that unstage and
	// the limits loop find the loop device even after a restart.
	StateDir string
	// LimitsInterval is how often the performance limits of attached volumes
	// are re-read from the API and applied (ModifyVolume of a live volume).
	LimitsInterval time.Duration
	// NBDAttach is the command that attaches a volume exported over the
	// network on a node without a kernel NBD client (attach.FUSELoop.Command);
	// default: this executable's nbd-attach.
	NBDAttach []string
	// LocalHandoff is the unix socket of this machine's local handoff
	// (served by the Stowage server whose pools are on this node): where
	// the node gets the images of its local attachments, as open
	// descriptors. Empty: local attachments cannot be staged (the error
	// says so); a node without pools of its own needs none.
	LocalHandoff string
	// CgroupRoot is where I/O limits are written: a cgroup v1 blkio
	// hierarchy or a cgroup v2 mount with the io controller. Empty means
	// detect it (see detectLimiter).
	CgroupRoot string
	// Starter starts the FUSE block devices of network attachments (the
	// node runner of a plugin in a pod); nil: the plugin starts them.
	Starter runner.Starter
}

// NodeService is the CSI node plugin of the block driver.
type NodeService struct {
	csi.UnimplementedNodeServer
	cfg     NodeConfig
	volumes pb.VolumeServiceClient
	nodes   pb.NodeServiceClient
	locks   *keylock.Set
	// The host operations, behind interfaces so that the branches of the
	// node RPCs can be tested without root (node_fakes_test.go).
	loops   loopDevices
	images  localImages
	network networkAttacher
	mounts  mounter
	limits  limiter
	// nodeTopology: report the node key as well as the zone (some pool on
	// this node attaches only here), as the server said at Register. Until
	// then, and for a server that does not say, true: the node key never
	// hides a volume that needs it.
	nodeTopology atomic.Bool
}

// NewNodeService returns a node plugin for cfg.NodeID. Its network
// attacher is the kernel's NBD client where the node has one, else
// `stowage nbd-attach` (attach.Select).
func NewNodeService(cfg NodeConfig, volumes pb.VolumeServiceClient, nodes pb.NodeServiceClient) (*NodeService, error) {
	return newHostNodeService(cfg, volumes, nodes, attach.Select)
}

// newHostNodeService is NewNodeService with the choice of network attacher
// given (tests inject attach.SelectWith with a probe of their own).
func newHostNodeService(cfg NodeConfig, volumes pb.VolumeServiceClient, nodes pb.NodeServiceClient,
	selectNetwork func(nodeStateDir string, fuseCommand []string) attach.Selection) (*NodeService, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("node plugin: node id is required")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("node plugin: state directory is required")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("node plugin: create state directory: %w", err)
	}
	if cfg.LimitsInterval == 0 {
		cfg.LimitsInterval = 2 * time.Second
	}
	lim, err := detectLimiter(cfg.CgroupRoot)
	if err != nil {
		return nil, fmt.Errorf("node plugin: %w", err)
	}
	if lim.Enforced() {
		klog.InfoS("node plugin: IOPS and throughput limits enforced", "limits", lim)
	} else {
		klog.InfoS("node plugin: WARNING: IOPS and throughput limits are NOT enforced on this node; volumes stage without them", "limits", lim)
	}
	sel := selectNetwork(cfg.StateDir, cfg.NBDAttach)
	if fl, ok := sel.Attacher.(attach.FUSELoop); ok && cfg.Starter != nil {
		fl.Starter = cfg.Starter
		sel.Attacher = fl
	}
	klog.InfoS("node plugin: network attachments use "+sel.Name, "attacher", sel.Name, "reason", sel.Reason)
	n := newNodeService(cfg, volumes, nodes, hostLoops{}, sel.Attacher, newHostMounts(), lim)
	n.images = hostHandoff{socket: cfg.LocalHandoff}
	return n, nil
}

func newNodeService(cfg NodeConfig, volumes pb.VolumeServiceClient, nodes pb.NodeServiceClient, loops loopDevices, network networkAttacher, mounts mounter, lim limiter) *NodeService {
	n := &NodeService{
		cfg: cfg, volumes: volumes, nodes: nodes,
		locks: keylock.New(2 * time.Second),
		loops: loops, images: hostHandoff{socket: cfg.LocalHandoff}, network: network, mounts: mounts, limits: lim,
	}
	n.nodeTopology.Store(true)
	return n
}

// LimitsEnforced reports whether this node can enforce the IOPS and
// throughput of the volumes it stages (it has a cgroup v1 blkio or v2 io
// controller to write rules to).
func (n *NodeService) LimitsEnforced() bool { return n.limits.Enforced() }

// Register tells the Stowage server that this node exists, retrying until
// the server answers or ctx ends.
func (n *NodeService) Register(ctx context.Context) error {
	for {
		node, err := n.nodes.RegisterNode(ctx, &pb.RegisterNodeRequest{Id: n.cfg.NodeID, Zone: n.cfg.Zone, MaxVolumes: int32(n.cfg.MaxVolumes)})
		if err == nil {
			n.nodeTopology.Store(node.GetNodeLocalPools())
			klog.InfoS("node registered with the Stowage server", "node", n.cfg.NodeID, "zone", n.cfg.Zone, "nodeLocalPools", node.GetNodeLocalPools())
			return nil
		}
		klog.ErrorS(err, "cannot register node with the Stowage server; retrying", "node", n.cfg.NodeID)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// RunLimits keeps the data-path limits of staged volumes equal to what the
// API says (a ModifyVolume changes them on a live volume) until ctx ends.
func (n *NodeService) RunLimits(ctx context.Context) {
	t := time.NewTicker(n.cfg.LimitsInterval)
	defer t.Stop()
	for {
		n.applyAllLimits(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (n *NodeService) applyAllLimits(ctx context.Context) {
	if !n.limits.Enforced() {
		return
	}
	entries, err := os.ReadDir(n.cfg.StateDir)
	if err != nil {
		klog.ErrorS(err, "read node state directory", "dir", n.cfg.StateDir)
		return
	}
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		st, err := n.readState(id)
		if err != nil || st == nil || st.Device == "" {
			continue
		}
		v, err := n.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: id})
		if err != nil {
			continue
		}
		if err := n.limits.Apply(st.Device, limitsOf(v), n.podsOf(st)); err != nil {
			klog.ErrorS(err, "apply volume limits", "volumeID", id, "device", st.Device)
		}
	}
}

// limitsOf turns EBS-style IOPS and throughput into block-layer throttles.
// EBS counts reads and writes together; the kernel throttles each
// direction separately, so each direction may use the volume's full budget.
func limitsOf(v *pb.Volume) attach.Limits {
	bps := v.ThroughputMibps << 20
	return attach.Limits{ReadIOPS: v.Iops, WriteIOPS: v.Iops, ReadBPS: bps, WriteBPS: bps}
}

// stagedVolume is what the node remembers about a staged volume.
type stagedVolume struct {
	VolumeID string `json:"volumeId"`
	// Local is a volume attached locally (this node holds its pool),
	// Export one attached over the network; one of the two is set.
	Local  *localRef  `json:"local,omitempty"`
	Export *exportRef `json:"export,omitempty"`
	// ImagePath is what node plugins before the local handoff recorded
	// for a local attachment: the image's path, from the API. It is read,
	// never written, so that a volume staged by such a plugin is found and
	// unstaged after an upgrade (upgrades keep volumes mounted).
	ImagePath   string `json:"imagePath,omitempty"`
	Device      string `json:"device,omitempty"`
	StagingPath string `json:"stagingPath"`
	Block       bool   `json:"block,omitempty"`
	// DataDir is the encrypted directory of an encrypted volume, the one
	// pods see; empty for unencrypted volumes (pods see the file system root).
	DataDir string `json:"dataDir,omitempty"`
	// Targets are the paths the volume is published at, with whether that
	// publish asked for a single writer (ReadWriteOncePod).
	Targets map[string]bool `json:"targets,omitempty"`
}

// exportRef is a network attachment as the node remembers it: everything
// but its secret, which is asked for again when needed.
type exportRef struct {
	Name       string `json:"name"`
	Address    string `json:"address"`
	Generation uint64 `json:"generation"`
}

// localRef is a local attachment as the node remembers it: its opaque
// target, and the identity (device and inode, from fstat) of the image the
// local handoff gave for it, by which its loop device is found and
// detached after a restart. Backing is zero until the image was handed
// over (nothing is attached then).
type localRef struct {
	Target  string          `json:"target"`
	Backing loopdev.Backing `json:"backing"`
}

func localOf(a *pb.Attachment) *localRef {
	if a.LocalTarget == "" {
		return nil
	}
	return &localRef{Target: a.LocalTarget}
}

func exportOf(a *pb.Attachment) *exportRef {
	if a.ExportName == "" {
		return nil
	}
	return &exportRef{Name: a.ExportName, Address: a.ExportAddress, Generation: a.Generation}
}

func (e *exportRef) target() attach.Target {
	return attach.Target{AttachmentID: e.Name, Address: e.Address, Generation: e.Generation}
}

// source says what the volume's device is made from, for messages.
func (st *stagedVolume) source() string {
	switch {
	case st.Export != nil:
		return fmt.Sprintf("NBD export %s at %s", st.Export.Name, st.Export.Address)
	case st.Local != nil:
		return fmt.Sprintf("local attachment %s (image: %s)", st.Local.Target, st.Local.Backing)
	}
	return "image " + st.ImagePath
}

// targets is nil-safe: a volume without a record has no targets.
func (st *stagedVolume) targets() map[string]bool {
	if st == nil {
		return nil
	}
	return st.Targets
}

func (n *NodeService) statePath(volumeID string) string {
	return filepath.Join(n.cfg.StateDir, filepath.Base(volumeID)+".json")
}

func (n *NodeService) readState(volumeID string) (*stagedVolume, error) {
	b, err := os.ReadFile(n.statePath(volumeID))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st stagedVolume
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("node state of volume %s is corrupt: %w", volumeID, err)
	}
	return &st, nil
}

// updateState is the one way the node changes a volume's record: it reads
// the record (an empty one for a volume it does not know), lets change
// modify it and writes it back, so that a step that sets one field keeps
// the others (a repeated stage keeps the targets that publish recorded and
// the data directory that unlocking found). Callers hold the volume's lock.
func (n *NodeService) updateState(volumeID string, change func(*stagedVolume)) (*stagedVolume, error) {
	st, err := n.readState(volumeID)
	if err != nil {
		return nil, err
	}
	if st == nil {
		st = &stagedVolume{VolumeID: volumeID}
	}
	change(st)
	if err := n.writeState(st); err != nil {
		return nil, fmt.Errorf("save node state of volume %s: %w", volumeID, err)
	}
	return st, nil
}

func (n *NodeService) writeState(st *stagedVolume) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := n.statePath(st.VolumeID) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, n.statePath(st.VolumeID))
}

func (n *NodeService) lock(ctx context.Context, volumeID string) (func(), error) {
	unlock, err := n.locks.Lock(ctx, volumeID)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "another operation on volume %s is in progress on node %s; retry later", volumeID, n.cfg.NodeID)
	}
	return unlock, nil
}

func (n *NodeService) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (_ *csi.NodeStageVolumeResponse, retErr error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if err := validateStage(req); err != nil {
		return nil, err
	}
	unlock, err := n.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, att, err := n.attachmentHere(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := checkStagingDir(id, staging); err != nil {
		return nil, err
	}
	spec, err := stageSpecOf(req, v)
	if err != nil {
		return nil, err
	}

	// A stage that fails undoes its own work: the kubelet takes the error
	// as "not staged" and never calls NodeUnstageVolume, so nobody else
	// would detach the loop device, which would then hold the image after
	// the volume is deleted. A volume that was staged before this call
	// stays as it was.
	st, err := n.stageSource(id, att, staging)
	if err != nil {
		return nil, err
	}
	wasStaged := n.isStaged(st, spec.block)
	mountedHere := false
	defer func() {
		if retErr != nil && !wasStaged {
			n.abandonStage(st, mountedHere)
		}
	}()
	attached, err := n.attachDevice(ctx, st, spec.block)
	if attached != nil {
		st = attached
	}
	if err != nil {
		return nil, err
	}
	faults.Point("node-stage:attached")
	if spec.block {
		if err := n.applyStageLimits(id, st, v); err != nil {
			return nil, err
		}
		klog.InfoS("NodeStageVolume: raw block volume attached", "volumeID", id, "device", st.Device)
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if mountedHere, err = n.mountStaging(ctx, id, st.Device, staging, spec, att.ReadOnly); err != nil {
		return nil, err
	}
	if v.Encrypted {
		dir, err := n.unlock(ctx, id, staging)
		if err != nil {
			return nil, err
		}
		if st, err = n.updateState(id, func(st *stagedVolume) { st.DataDir = dir }); err != nil {
			return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: %v", id, err)
		}
	}
	// The limits go on after mkfs: making a file system zeroes its log
	// (64 MiB for xfs), which a gp3 volume's 125 MiB/s throttle made take
	// half a second of every stage. No pod uses the volume before its
	// publish, so nothing runs unthrottled.
	if err := n.applyStageLimits(id, st, v); err != nil {
		return nil, err
	}
	klog.InfoS("NodeStageVolume: staged", "volumeID", id, "device", st.Device, "fsType", spec.fsType, "stagingPath", staging)
	return &csi.NodeStageVolumeResponse{}, nil
}

// applyStageLimits puts the volume's IOPS and throughput limits on its
// device, and says so when this node cannot enforce them.
func (n *NodeService) applyStageLimits(id string, st *stagedVolume, v *pb.Volume) error {
	if err := n.limits.Apply(st.Device, limitsOf(v), n.podsOf(st)); err != nil {
		return status.Errorf(codes.Internal, "NodeStageVolume %s: apply IOPS/throughput limits to %s: %v", id, st.Device, err)
	}
	if !n.limits.Enforced() {
		klog.InfoS("NodeStageVolume: IOPS and throughput limits are not enforced on this node", "volumeID", id, "limits", n.limits)
	}
	return nil
}

func validateStage(req *csi.NodeStageVolumeRequest) error {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" || staging == "" {
		return status.Error(codes.InvalidArgument, "NodeStageVolume: volume id and staging target path are required")
	}
	if req.GetVolumeCapability() == nil {
		return status.Error(codes.InvalidArgument, "NodeStageVolume: volume capability is required")
	}
	if err := validateCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}); err != nil {
		return status.Errorf(codes.InvalidArgument, "NodeStageVolume %s: %v", id, err)
	}
	return nil
}

// stageSource is what the volume's device is to be made from: the
// attachment's NBD export or local target, with what the node recorded of
// it before (the identity of a local image it was handed). A volume a
// node plugin before the local handoff staged by its image path, whose
// device is still there, stays as it is.
func (n *NodeService) stageSource(id string, att *pb.Attachment, staging string) (*stagedVolume, error) {
	st := &stagedVolume{VolumeID: id, Local: localOf(att), Export: exportOf(att), StagingPath: staging}
	old, err := n.readState(id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: %v", id, err)
	}
	switch {
	case old != nil && old.Export == nil && old.Local == nil && old.ImagePath != "" && st.Export == nil:
		if _, found := n.device(old); found {
			st.Local, st.ImagePath = nil, old.ImagePath
		}
	case old != nil && old.Local != nil && st.Local != nil && old.Local.Target == st.Local.Target:
		st.Local.Backing = old.Local.Backing
	}
	if st.Local == nil && st.Export == nil && st.ImagePath == "" {
		return nil, status.Errorf(codes.FailedPrecondition,
			"NodeStageVolume %s: its attachment to node %s has neither an NBD export nor a local target (it was made by an older Stowage server); ControllerPublishVolume again gives it one", id, n.cfg.NodeID)
	}
	return st, nil
}

// attachmentHere returns the volume and its attachment to this node. The
// node works only on volumes the API says are attached to it: what it
// attaches (an NBD export, a local target) comes from the attachment
// record, never from the caller.
func (n *NodeService) attachmentHere(ctx context.Context, id string) (*pb.Volume, *pb.Attachment, error) {
	v, err := n.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: id})
	if err != nil {
		return nil, nil, apiError(err, "NodeStageVolume %s", id)
	}
	for _, a := range v.Attachments {
		if a.NodeId == n.cfg.NodeID {
			return v, a, nil
		}
	}
	return nil, nil, status.Errorf(codes.FailedPrecondition, "volume %s is not attached to node %s (attached to: %s); ControllerPublishVolume must attach it first",
		id, n.cfg.NodeID, attachedNodes(v))
}

func checkStagingDir(id, staging string) error {
	fi, err := os.Stat(staging)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "NodeStageVolume %s: staging path %s: %v", id, staging, err)
	}
	if !fi.IsDir() {
		return status.Errorf(codes.InvalidArgument, "NodeStageVolume %s: staging path %s is not a directory", id, staging)
	}
	return nil
}

// stageSpec is how a volume is to be staged: as a raw device, or as a file
// system of fsType mounted with flags.
type stageSpec struct {
	block      bool
	fsType     string
	flags      []string
	formatOpts []string
}

func stageSpecOf(req *csi.NodeStageVolumeRequest, v *pb.Volume) (stageSpec, error) {
	id := req.GetVolumeId()
	if req.GetVolumeCapability().GetBlock() != nil {
		if v.Encrypted {
			return stageSpec{}, status.Errorf(codes.FailedPrecondition, "NodeStageVolume %s: the volume is encrypted, and Stowage encrypts at the file-system level (ext4 fscrypt; this node has no device-mapper for dm-crypt), so it cannot be used as a raw block device", id)
		}
		return stageSpec{block: true}, nil
	}
	mnt := req.GetVolumeCapability().GetMount()
	fsType := strings.ToLower(mnt.GetFsType())
	if fsType == "" {
		fsType = req.GetVolumeContext()[contextFSType]
	}
	if fsType == "" {
		fsType = defaultFSType
	}
	if v.Encrypted && fsType != "ext4" {
		return stageSpec{}, status.Errorf(codes.FailedPrecondition, "NodeStageVolume %s: the volume is encrypted, which Stowage does with ext4 encryption; file system %s cannot carry it", id, fsType)
	}
	fopts := formatOptions(fsType, req.GetVolumeContext())
	if v.Encrypted {
		fopts = append(fopts, "-O", "encrypt")
	}
	return stageSpec{fsType: fsType, flags: mnt.GetMountFlags(), formatOpts: fopts}, nil
}

// isStaged reports whether the volume is staged already: a raw block
// volume once its device exists, a file system once it is mounted at
// staging.
func (n *NodeService) isStaged(st *stagedVolume, block bool) bool {
	if _, attached := n.device(st); !attached {
		return false
	}
	if block {
		return true
	}
	notMnt, err := n.mounts.IsLikelyNotMountPoint(st.StagingPath)
	return err == nil && !notMnt
}

// device returns the volume's block device on this node, if it has one:
// the loop device of its image, or the device of its network attachment.
func (n *NodeService) device(st *stagedVolume) (string, bool) {
	var dev string
	var found bool
	var err error
	switch {
	case st.Export != nil:
		return n.network.Device(st.Export.target())
	case st.Local != nil:
		dev, found, err = n.loops.FindFile(st.Local.Backing)
	case st.ImagePath != "":
		dev, found, err = n.loops.Find(st.ImagePath)
	}
	return dev, err == nil && found
}

// attachDevice makes the volume's block device (a loop device of the image
// the local handoff gives, or its network attachment) and records it in
// the volume's node state, keeping what the record already holds (the
// targets of a staged volume that is staged again).
func (n *NodeService) attachDevice(ctx context.Context, want *stagedVolume, block bool) (*stagedVolume, error) {
	id := want.VolumeID
	// Record the source before attaching: if we crash right after the
	// attach, a retry or an unstage still knows what to detach.
	if _, err := n.updateState(id, func(st *stagedVolume) {
		st.ImagePath, st.Local, st.Export, st.StagingPath, st.Block = want.ImagePath, want.Local, want.Export, want.StagingPath, block
	}); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: %v", id, err)
	}
	var device string
	var err error
	switch {
	case want.Export != nil:
		device, err = n.attachNetwork(ctx, id, want.Export)
	case want.Local != nil:
		device, err = n.attachLocal(ctx, id, want)
	default:
		// Staged by a node plugin before the local handoff, and its loop
		// device is there (stageSource): it stays.
		var found bool
		if device, found, err = n.loops.Find(want.ImagePath); err == nil && !found {
			err = fmt.Errorf("loop device of %s is gone", want.ImagePath)
		}
		if err != nil {
			err = status.Errorf(codes.Internal, "NodeStageVolume %s: %v", id, err)
		}
	}
	if err != nil {
		return nil, err
	}
	st, err := n.updateState(id, func(st *stagedVolume) { st.Device = device })
	if err != nil {
		done := *want
		done.Device = device
		return &done, status.Errorf(codes.Internal, "NodeStageVolume %s: %v", id, err)
	}
	return st, nil
}

// attachLocal makes the loop device of a locally attached volume: its
// image comes from the local handoff of this machine as an open
// descriptor, given the attachment's secret, and the loop device is found
// again (a repeated stage, a restart) by the image's device and inode,
// which are recorded (in want.Local and the node state) before the loop
// device is made, so that a crash right after leaves it findable.
func (n *NodeService) attachLocal(ctx context.Context, id string, want *stagedVolume) (string, error) {
	l := want.Local
	if dev, found, err := n.loops.FindFile(l.Backing); err == nil && found {
		return dev, nil
	}
	sec, err := n.volumes.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: id, NodeId: n.cfg.NodeID})
	if err != nil {
		return "", apiError(err, "NodeStageVolume %s: get the secret of its local attachment", id)
	}
	if sec.LocalTarget != l.Target {
		return "", status.Errorf(codes.Aborted, "NodeStageVolume %s: the attachment changed while staging (local target %s, now %q); retry", id, l.Target, sec.LocalTarget)
	}
	img, readOnly, err := n.images.Open(ctx, handoff.Request{VolumeID: id, NodeID: n.cfg.NodeID, Target: l.Target, Secret: sec.Secret})
	if err != nil {
		return "", status.Errorf(status.Code(err), "NodeStageVolume %s: get the image of its local attachment %s from this machine's local handoff: %s", id, l.Target, status.Convert(err).Message())
	}
	defer img.Close()
	b, err := loopdev.BackingOf(img)
	if err != nil {
		return "", status.Errorf(codes.Internal, "NodeStageVolume %s: the image the local handoff gave: %v", id, err)
	}
	l.Backing = b
	if _, err := n.updateState(id, func(st *stagedVolume) { st.Local = &localRef{Target: l.Target, Backing: b} }); err != nil {
		return "", status.Errorf(codes.Internal, "NodeStageVolume %s: %v", id, err)
	}
	dev, err := n.loops.AttachFile(ctx, img)
	if err != nil {
		return "", status.Errorf(codes.Internal, "NodeStageVolume %s: attach the image of local attachment %s (%s) as a loop device: %v", id, l.Target, b, err)
	}
	klog.InfoS("NodeStageVolume: attached locally", "volumeID", id, "localTarget", l.Target, "image", b.String(), "readOnly", readOnly, "device", dev)
	return dev, nil
}

// attachNetwork attaches a volume exported over NBD by its storage host,
// with the secret the server gives this node for the attachment.
func (n *NodeService) attachNetwork(ctx context.Context, id string, e *exportRef) (string, error) {
	if dev, ok := n.network.Device(e.target()); ok {
		return dev, nil
	}
	sec, err := n.volumes.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: id, NodeId: n.cfg.NodeID})
	if err != nil {
		return "", apiError(err, "NodeStageVolume %s: get the secret of its network attachment", id)
	}
	if sec.ExportName != e.Name || sec.Generation != e.Generation {
		return "", status.Errorf(codes.Aborted, "NodeStageVolume %s: the attachment changed while staging (export %s generation %d, now %s generation %d); retry",
			id, e.Name, e.Generation, sec.ExportName, sec.Generation)
	}
	t := e.target()
	t.Secret = sec.Secret
	dev, err := n.network.Attach(ctx, t)
	if err != nil {
		return "", status.Errorf(codes.Unavailable, "NodeStageVolume %s: attach NBD export %s of the storage host at %s: %v", id, e.Name, e.Address, err)
	}
	klog.InfoS("NodeStageVolume: attached over the network", "volumeID", id, "export", e.Name, "storageHost", e.Address, "generation", e.Generation, "device", dev)
	return dev, nil
}

// mountStaging puts a file system on device, if it has none, and mounts it
// at staging; it reports whether it mounted (false when it was mounted).
func (n *NodeService) mountStaging(ctx context.Context, id, device, staging string, spec stageSpec, readOnly bool) (bool, error) {
	notMnt, err := n.mounts.IsLikelyNotMountPoint(staging)
	if err != nil {
		return false, status.Errorf(codes.Internal, "NodeStageVolume %s: check mount point %s: %v", id, staging, err)
	}
	if !notMnt {
		// Mount flags apply when the volume is first mounted; a repeated
		// stage of a volume mounted from the right device succeeds as it is.
		dev, err := n.mounts.MountedDevice(staging)
		if err != nil || dev != device {
			return false, status.Errorf(codes.AlreadyExists, "NodeStageVolume %s: staging path %s already has %s mounted, not %s", id, staging, dev, device)
		}
		return false, nil
	}
	if err := n.mounts.GrowOffline(ctx, device); err != nil {
		return false, status.Errorf(codes.Internal, "NodeStageVolume %s: %v", id, err)
	}
	opts := mountOptions(spec.fsType, spec.flags, readOnly)
	if err := n.mounts.FormatAndMount(device, staging, spec.fsType, opts, spec.formatOpts); err != nil {
		return false, status.Errorf(codes.Internal, "NodeStageVolume %s: format and mount %s (%s) at %s: %v", id, device, spec.fsType, staging, err)
	}
	// A volume restored or cloned into a larger size, or expanded while it
	// was not staged, has a file system smaller than its device. ext was
	// grown above, before the mount; xfs grows only mounted, here.
	if need, err := n.mounts.NeedResize(device, staging); err != nil {
		return true, status.Errorf(codes.Internal, "NodeStageVolume %s: compare the file system at %s with %s: %v", id, staging, device, err)
	} else if need {
		if err := n.mounts.Resize(device, staging); err != nil {
			return true, status.Errorf(codes.Internal, "NodeStageVolume %s: grow the file system at %s to fill %s: %v", id, staging, device, err)
		}
		klog.InfoS("NodeStageVolume: grew the file system to fill its device", "volumeID", id, "device", device, "stagingPath", staging)
	}
	return true, nil
}

// abandonStage undoes what a failed NodeStageVolume did: the mount it made,
// the volume's limits, its loop device and its node state. It runs with a
// context of its own, since the caller's may be what ran out.
func (n *NodeService) abandonStage(st *stagedVolume, mounted bool) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := klog.LoggerWithValues(klog.Background(), "volumeID", st.VolumeID, "source", st.source())
	if mounted {
		if err := n.mounts.Unmount(st.StagingPath); err != nil {
			log.Error(err, "NodeStageVolume failed; unmounting what it mounted failed too", "stagingPath", st.StagingPath)
			return // the device stays attached under the mount; unstage cleans up
		}
	}
	if err := n.release(ctx, st); err != nil {
		log.Error(err, "NodeStageVolume failed; undoing its attach failed too")
		return
	}
	log.Info("NodeStageVolume failed; detached the device it attached", "device", st.Device)
}

// release lets go of a volume's loop device once nothing is mounted from
// it: clears its limits, detaches it and forgets the node state.
func (n *NodeService) release(ctx context.Context, st *stagedVolume) error {
	if st.Device != "" {
		if err := n.limits.Clear(st.Device, n.podsOf(st)); err != nil {
			klog.ErrorS(err, "clear volume limits", "volumeID", st.VolumeID, "device", st.Device)
		}
	}
	var err error
	switch {
	case st.Export != nil:
		err = n.network.Detach(ctx, st.Export.target())
	case st.Local != nil:
		err = n.loops.DetachFile(ctx, st.Local.Backing)
	case st.ImagePath != "":
		err = n.loops.Detach(ctx, st.ImagePath)
	}
	if err != nil {
		return fmt.Errorf("detach the device of %s: %w", st.source(), err)
	}
	if err := os.Remove(n.statePath(st.VolumeID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove node state: %w", err)
	}
	return nil
}

// encryptedDirName is the directory of an encrypted volume's file system
// that holds the pod's files; the root cannot carry an encryption policy.
const encryptedDirName = "data"

// unlock gives the staged file system the volume's data key, which the
// server releases only to the node the volume is attached to, and makes
// sure the pod's directory is encrypted with it.
func (n *NodeService) unlock(ctx context.Context, id, staging string) (string, error) {
	k, err := n.volumes.GetVolumeDataKey(ctx, &pb.GetVolumeDataKeyRequest{VolumeId: id, NodeId: n.cfg.NodeID})
	if err != nil {
		return "", apiError(err, "NodeStageVolume %s: get the volume's data key", id)
	}
	defer clear(k.Key)
	keyID, err := fscrypt.AddKey(staging, k.Key)
	if err != nil {
		return "", status.Errorf(codes.Internal, "NodeStageVolume %s: %v", id, err)
	}
	dir := filepath.Join(staging, encryptedDirName)
	if err := fscrypt.EnsureDir(dir, keyID); err != nil {
		return "", status.Errorf(codes.Internal, "NodeStageVolume %s: %v", id, err)
	}
	klog.InfoS("NodeStageVolume: encrypted volume unlocked", "volumeID", id, "kmsKey", k.KmsKeyId, "dir", dir)
	return dir, nil
}

// mountOptions adds what a cloned or restored xfs needs: its UUID equals the
// source's, and xfs refuses to mount a duplicate UUID without nouuid.
func mountOptions(fsType string, flags []string, readOnly bool) []string {
	opts := slices.Clone(flags)
	if fsType == "xfs" && !slices.Contains(opts, "nouuid") {
		opts = append(opts, "nouuid")
	}
	if readOnly {
		opts = append(opts, "ro")
	}
	return opts
}

func attachedNodes(v *pb.Volume) string {
	var ns []string
	for _, a := range v.Attachments {
		ns = append(ns, a.NodeId)
	}
	if len(ns) == 0 {
		return "no node"
	}
	return strings.Join(ns, ", ")
}

func (n *NodeService) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" || staging == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeUnstageVolume: volume id and staging target path are required")
	}
	unlock, err := n.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := n.mounts.Cleanup(staging); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeUnstageVolume %s: unmount %s: %v", id, staging, err)
	}
	st, err := n.readState(id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodeUnstageVolume %s: %v", id, err)
	}
	if st != nil {
		if err := n.release(ctx, st); err != nil {
			return nil, status.Errorf(codes.Internal, "NodeUnstageVolume %s: %v", id, err)
		}
	}
	klog.InfoS("NodeUnstageVolume: unstaged", "volumeID", id, "stagingPath", staging)
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (n *NodeService) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, staging := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath()
	if id == "" || target == "" {
		return nil, status.Error(codes.InvalidArgument, "NodePublishVolume: volume id and target path are required")
	}
	if staging == "" {
		return nil, status.Error(codes.InvalidArgument, "NodePublishVolume: staging target path is required (the volume must be staged first)")
	}
	if req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "NodePublishVolume: volume capability is required")
	}
	if err := validateCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "NodePublishVolume %s: %v", id, err)
	}
	unlock, err := n.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := n.readState(id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: %v", id, err)
	}
	if st == nil || st.Device == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "NodePublishVolume %s: the volume is not staged on node %s; NodeStageVolume must run first", id, n.cfg.NodeID)
	}

	singleWriter := req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	for other, otherSingle := range st.Targets {
		if other != target && (singleWriter || otherSingle) {
			return nil, status.Errorf(codes.FailedPrecondition,
				"NodePublishVolume %s: the volume is already published at %s and one of the two asks for a single writer (ReadWriteOncePod)", id, other)
		}
	}
	readOnly := req.GetReadonly() || req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	source, fsType := staging, ""
	if req.GetVolumeCapability().GetBlock() != nil {
		source = st.Device
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: create %s: %v", id, filepath.Dir(target), err)
		}
		f, err := os.OpenFile(target, os.O_CREATE, 0o640)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: create block target file %s: %v", id, target, err)
		}
		f.Close()
	} else {
		if st.DataDir != "" {
			source = st.DataDir
		}
		fsType = strings.ToLower(req.GetVolumeCapability().GetMount().GetFsType())
		if err := os.MkdirAll(target, 0o750); err != nil {
			return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: create target %s: %v", id, target, err)
		}
	}
	notMnt, err := n.mounts.IsLikelyNotMountPoint(target)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: check mount point %s: %v", id, target, err)
	}
	if !notMnt {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	opts := []string{"bind"}
	if readOnly {
		opts = append(opts, "ro")
	}
	if mnt := req.GetVolumeCapability().GetMount(); mnt != nil {
		opts = append(opts, mnt.GetMountFlags()...)
	}
	if err := n.mounts.Mount(source, target, fsType, opts); err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: bind mount %s at %s: %v", id, source, target, err)
	}
	st, err = n.updateState(id, func(st *stagedVolume) {
		if st.Targets == nil {
			st.Targets = map[string]bool{}
		}
		st.Targets[target] = singleWriter
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: %v", id, err)
	}
	// The pod's cgroup exists by now (the kubelet publishes after creating
	// the pod sandbox), so its I/O limits can be set right away.
	if v, err := n.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: id}); err == nil {
		if err := n.limits.Apply(st.Device, limitsOf(v), n.podsOf(st)); err != nil {
			klog.ErrorS(err, "apply volume limits", "volumeID", id, "device", st.Device)
		}
	}
	klog.InfoS("NodePublishVolume: published", "volumeID", id, "target", target, "readOnly", readOnly)
	return &csi.NodePublishVolumeResponse{}, nil
}

func (n *NodeService) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if id == "" || target == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeUnpublishVolume: volume id and target path are required")
	}
	unlock, err := n.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := n.mounts.Cleanup(target); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeUnpublishVolume %s: unmount %s: %v", id, target, err)
	}
	// updateState would create a record for a volume the node does not
	// know; an unpublish of such a volume has nothing to forget.
	if st, err := n.readState(id); err == nil && len(st.targets()) > 0 {
		if _, err := n.updateState(id, func(st *stagedVolume) { delete(st.Targets, target) }); err != nil {
			return nil, status.Errorf(codes.Internal, "NodeUnpublishVolume %s: %v", id, err)
		}
	}
	klog.InfoS("NodeUnpublishVolume: unpublished", "volumeID", id, "target", target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func (n *NodeService) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" || path == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeExpandVolume: volume id and volume path are required")
	}
	unlock, err := n.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := n.readState(id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodeExpandVolume %s: %v", id, err)
	}
	if st == nil || st.Device == "" {
		return nil, status.Errorf(codes.NotFound, "NodeExpandVolume %s: the volume is not staged on node %s", id, n.cfg.NodeID)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, status.Errorf(codes.NotFound, "NodeExpandVolume %s: volume path %s: %v", id, path, err)
	}
	var size int64
	if st.Export != nil {
		// The storage host's exports already serve the grown image
		// (ControllerExpandVolume); the device asks for the new size.
		if size, err = n.network.Refresh(ctx, st.Export.target()); err != nil {
			return nil, status.Errorf(codes.Unavailable, "NodeExpandVolume %s: make %s on node %s see the new size of %s: %v", id, st.Device, n.cfg.NodeID, st.source(), err)
		}
	} else if size, err = n.loops.Refresh(st.Device); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeExpandVolume %s: make %s see the new size: %v", id, st.Device, err)
	}
	isBlock := st.Block || req.GetVolumeCapability().GetBlock() != nil
	if !isBlock {
		mountPath := st.StagingPath
		if mountPath == "" {
			mountPath = path
		}
		if err := n.mounts.Resize(st.Device, mountPath); err != nil {
			if strings.Contains(err.Error(), "exit status 1") && n.mounts.IsExt(st.Device) {
				// The kernel grows a mounted ext4 only for a caller with
				// CAP_SYS_RESOURCE; sandboxes often drop it even for root.
				return nil, status.Errorf(codes.FailedPrecondition,
					"NodeExpandVolume %s: the volume grew to %d bytes, but its ext4 file system cannot grow while mounted: online ext4 resize needs CAP_SYS_RESOURCE, which the node plugin does not have here. It grows the next time the volume is staged (restart the pod), or use xfs, which grows online", id, size)
			}
			return nil, status.Errorf(codes.Internal, "NodeExpandVolume %s: grow the file system on %s: %v", id, st.Device, err)
		}
	}
	klog.InfoS("NodeExpandVolume: expanded", "volumeID", id, "device", st.Device, "bytes", size, "block", isBlock)
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

func (n *NodeService) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" || path == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeGetVolumeStats: volume id and volume path are required")
	}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "NodeGetVolumeStats %s: volume path %s does not exist", id, path)
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodeGetVolumeStats %s: %v", id, err)
	}
	st, err := n.readState(id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodeGetVolumeStats %s: %v", id, err)
	}
	if st == nil {
		return nil, status.Errorf(codes.NotFound, "NodeGetVolumeStats %s: the volume is not staged on node %s", id, n.cfg.NodeID)
	}
	cond := n.condition(st, path, fi.IsDir())
	if !fi.IsDir() {
		size, err := deviceSize(path)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "NodeGetVolumeStats %s: size of block device %s: %v", id, path, err)
		}
		return &csi.NodeGetVolumeStatsResponse{
			Usage:           []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}},
			VolumeCondition: cond,
		}, nil
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeGetVolumeStats %s: statfs %s: %v", id, path, err)
	}
	bs := int64(sfs.Bsize)
	return &csi.NodeGetVolumeStatsResponse{
		Usage: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: int64(sfs.Blocks) * bs, Available: int64(sfs.Bavail) * bs, Used: int64(sfs.Blocks-sfs.Bfree) * bs},
			{Unit: csi.VolumeUsage_INODES, Total: int64(sfs.Files), Available: int64(sfs.Ffree), Used: int64(sfs.Files - sfs.Ffree)},
		},
		VolumeCondition: cond,
	}, nil
}

// condition reports an abnormal volume when its loop device is gone or its
// file system is no longer mounted where the pod expects it.
func (n *NodeService) condition(st *stagedVolume, path string, isDir bool) *csi.VolumeCondition {
	if _, found := n.device(st); !found {
		return &csi.VolumeCondition{Abnormal: true, Message: fmt.Sprintf("the block device of volume %s (%s) is gone", st.VolumeID, st.source())}
	}
	if isDir {
		if notMnt, err := n.mounts.IsLikelyNotMountPoint(path); err != nil || notMnt {
			return &csi.VolumeCondition{Abnormal: true, Message: fmt.Sprintf("volume %s is not mounted at %s", st.VolumeID, path)}
		}
	}
	if !n.limits.Enforced() {
		// Not abnormal in the CSI sense (the volume is usable and works),
		// but it runs without its IOPS and throughput limits: say so where
		// kubectl and the health monitor show it.
		return &csi.VolumeCondition{Message: fmt.Sprintf("healthy, but its IOPS and throughput limits are not enforced on node %s: %s", n.cfg.NodeID, n.limits)}
	}
	return &csi.VolumeCondition{Message: "healthy"}
}

func deviceSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	size, err := f.Seek(0, 2)
	if err != nil {
		return 0, err
	}
	return size, nil
}

func (n *NodeService) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	resp := &csi.NodeGetCapabilitiesResponse{}
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_VOLUME_CONDITION,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		resp.Capabilities = append(resp.Capabilities, &csi.NodeServiceCapability{
			Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}},
		})
	}
	return resp, nil
}

// topology is the node's: its zone, and itself when some pool on it
// attaches only here. Where every pool of the zone is exported over the
// network a volume's topology is its zone alone, and so is the node's, so
// that the provisioner publishes one CSIStorageCapacity per zone, as EBS.
func (n *NodeService) topology() *csi.Topology {
	seg := map[string]string{TopologyZoneKey: n.cfg.Zone}
	if n.nodeTopology.Load() {
		seg[TopologyNodeKey] = n.cfg.NodeID
	}
	return &csi.Topology{Segments: seg}
}

func (n *NodeService) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             n.cfg.NodeID,
		MaxVolumesPerNode:  n.cfg.MaxVolumes,
		AccessibleTopology: n.topology(),
	}, nil
}
