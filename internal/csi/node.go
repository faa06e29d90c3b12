package csi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/attach"
	"github.com/stowage-io/stowage/internal/faults"
	"github.com/stowage-io/stowage/internal/fscrypt"
	"github.com/stowage-io/stowage/internal/keylock"
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
	// BlkioRoot is the cgroup v1 blkio mount (default /sys/fs/cgroup/blkio).
	BlkioRoot string
}

// NodeService is the CSI node plugin of the block driver.
type NodeService struct {
	csi.UnimplementedNodeServer
	cfg     NodeConfig
	volumes pb.VolumeServiceClient
	nodes   pb.NodeServiceClient
	mounter *mount.SafeFormatAndMount
	locks   *keylock.Set
}

// NewNodeService returns a node plugin for cfg.NodeID.
func NewNodeService(cfg NodeConfig, volumes pb.VolumeServiceClient, nodes pb.NodeServiceClient) (*NodeService, error) {
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
	return &NodeService{
		cfg: cfg, volumes: volumes, nodes: nodes,
		mounter: mount.NewSafeFormatAndMount(mount.New(""), utilexec.New()),
		locks:   keylock.New(2 * time.Second),
	}, nil
}

// Register tells the Stowage server that this node exists, retrying until
// the server answers or ctx ends.
func (n *NodeService) Register(ctx context.Context) error {
	for {
		_, err := n.nodes.RegisterNode(ctx, &pb.RegisterNodeRequest{Id: n.cfg.NodeID, Zone: n.cfg.Zone, MaxVolumes: int32(n.cfg.MaxVolumes)})
		if err == nil {
			klog.InfoS("node registered with the Stowage server", "node", n.cfg.NodeID, "zone", n.cfg.Zone)
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
		if err := n.applyLimits(st, limitsOf(v)); err != nil {
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
	VolumeID    string `json:"volumeId"`
	ImagePath   string `json:"imagePath"`
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
	if id == "" || staging == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeStageVolume: volume id and staging target path are required")
	}
	if req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "NodeStageVolume: volume capability is required")
	}
	if err := validateCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "NodeStageVolume %s: %v", id, err)
	}
	unlock, err := n.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()

	// The node works only on volumes the API says are attached to it: the
	// image path comes from the attachment record, never from the caller.
	v, err := n.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: id})
	if err != nil {
		return nil, apiError(err, "NodeStageVolume %s", id)
	}
	var att *pb.Attachment
	for _, a := range v.Attachments {
		if a.NodeId == n.cfg.NodeID {
			att = a
		}
	}
	if att == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not attached to node %s (attached to: %s); ControllerPublishVolume must attach it first",
			id, n.cfg.NodeID, attachedNodes(v))
	}
	if fi, err := os.Stat(staging); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "NodeStageVolume %s: staging path %s: %v", id, staging, err)
	} else if !fi.IsDir() {
		return nil, status.Errorf(codes.InvalidArgument, "NodeStageVolume %s: staging path %s is not a directory", id, staging)
	}

	isBlock := req.GetVolumeCapability().GetBlock() != nil
	if v.Encrypted && isBlock {
		return nil, status.Errorf(codes.FailedPrecondition, "NodeStageVolume %s: the volume is encrypted, and Stowage encrypts at the file-system level (ext4 fscrypt; this node has no device-mapper for dm-crypt), so it cannot be used as a raw block device", id)
	}
	st := &stagedVolume{VolumeID: id, ImagePath: att.ImagePath, StagingPath: staging, Block: isBlock}
	// A raw block volume is staged once its loop device exists; a file
	// system once it is mounted at the staging path. A stage that fails
	// undoes its own work: the kubelet takes the error as "not staged" and
	// never calls NodeUnstageVolume, so nobody else would detach the loop
	// device, which would then hold the image after the volume is deleted.
	// A volume that was staged before this call stays as it was.
	_, wasAttached, _ := attach.Find(att.ImagePath)
	wasStaged := wasAttached && isBlock
	if wasAttached && !isBlock {
		notMnt, err := n.mounter.IsLikelyNotMountPoint(staging)
		wasStaged = err == nil && !notMnt
	}
	mountedHere := false
	defer func() {
		if retErr != nil && !wasStaged {
			n.abandonStage(st, mountedHere)
		}
	}()
	// Write the state before attaching: if we crash right after the attach,
	// a retry or an unstage still knows which image to detach.
	if err := n.writeState(st); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: save node state: %v", id, err)
	}
	device, err := attach.Attach(ctx, att.ImagePath)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: attach image %s as a loop device: %v", id, att.ImagePath, err)
	}
	st.Device = device
	if err := n.writeState(st); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: save node state: %v", id, err)
	}
	faults.Point("node-stage:attached")
	if err := n.applyLimits(st, limitsOf(v)); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: apply IOPS/throughput limits to %s: %v", id, device, err)
	}
	if isBlock {
		klog.InfoS("NodeStageVolume: raw block volume attached", "volumeID", id, "device", device)
		return &csi.NodeStageVolumeResponse{}, nil
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
		return nil, status.Errorf(codes.FailedPrecondition, "NodeStageVolume %s: the volume is encrypted, which Stowage does with ext4 encryption; file system %s cannot carry it", id, fsType)
	}
	notMnt, err := n.mounter.IsLikelyNotMountPoint(staging)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: check mount point %s: %v", id, staging, err)
	}
	if !notMnt {
		dev, _, err := mount.GetDeviceNameFromMount(n.mounter, staging)
		if err != nil || dev != device {
			return nil, status.Errorf(codes.AlreadyExists, "NodeStageVolume %s: staging path %s already has %s mounted, not %s", id, staging, dev, device)
		}
	} else {
		if err := n.growExtOffline(ctx, device); err != nil {
			return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: %v", id, err)
		}
		opts := mountOptions(fsType, mnt.GetMountFlags(), false)
		fopts := formatOptions(fsType, req.GetVolumeContext())
		if v.Encrypted {
			fopts = append(fopts, "-O", "encrypt")
		}
		if err := n.mounter.FormatAndMountSensitiveWithFormatOptions(device, staging, fsType, opts, nil, fopts); err != nil {
			return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: format and mount %s (%s) at %s: %v", id, device, fsType, staging, err)
		}
		mountedHere = true
	}
	if v.Encrypted {
		dir, err := n.unlock(ctx, id, staging)
		if err != nil {
			return nil, err
		}
		st.DataDir = dir
		if err := n.writeState(st); err != nil {
			return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: save node state: %v", id, err)
		}
	}
	klog.InfoS("NodeStageVolume: staged", "volumeID", id, "device", device, "fsType", fsType, "stagingPath", staging)
	return &csi.NodeStageVolumeResponse{}, nil
}

// abandonStage undoes what a failed NodeStageVolume did: the mount it made,
// the volume's limits, its loop device and its node state. It runs with a
// context of its own, since the caller's may be what ran out.
func (n *NodeService) abandonStage(st *stagedVolume, mounted bool) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := klog.LoggerWithValues(klog.Background(), "volumeID", st.VolumeID, "image", st.ImagePath)
	if mounted {
		if err := n.mounter.Unmount(st.StagingPath); err != nil {
			log.Error(err, "NodeStageVolume failed; unmounting what it mounted failed too", "stagingPath", st.StagingPath)
			return // the device stays attached under the mount; unstage cleans up
		}
	}
	if err := n.release(ctx, st); err != nil {
		log.Error(err, "NodeStageVolume failed; undoing its attach failed too")
		return
	}
	log.Info("NodeStageVolume failed; detached the loop device it attached", "device", st.Device)
}

// release lets go of a volume's loop device once nothing is mounted from
// it: clears its limits, detaches it and forgets the node state.
func (n *NodeService) release(ctx context.Context, st *stagedVolume) error {
	if st.Device != "" {
		if err := attach.ClearLimits(st.Device); err != nil {
			klog.ErrorS(err, "clear volume limits", "volumeID", st.VolumeID, "device", st.Device)
		}
	}
	if err := attach.Detach(ctx, st.ImagePath); err != nil {
		return fmt.Errorf("detach loop device of %s: %w", st.ImagePath, err)
	}
	if err := os.Remove(n.statePath(st.VolumeID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove node state: %w", err)
	}
	return nil
}

// isExt reports whether device holds an ext2/3/4 file system.
func (n *NodeService) isExt(device string) bool {
	f, err := n.mounter.GetDiskFormat(device)
	return err == nil && strings.HasPrefix(f, "ext")
}

// growExtOffline grows an unmounted ext file system to fill its (grown)
// device. Offline growth needs no capability, so a volume expanded while
// online growth was impossible gets its space at the next stage.
func (n *NodeService) growExtOffline(ctx context.Context, device string) error {
	if !n.isExt(device) {
		return nil
	}
	devSize, err := deviceSize(device)
	if err != nil {
		return fmt.Errorf("size of %s: %w", device, err)
	}
	out, err := exec.CommandContext(ctx, "dumpe2fs", "-h", device).Output()
	if err != nil {
		return fmt.Errorf("read ext4 superblock of %s: %w", device, err)
	}
	var blocks, blockSize int64
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Block count":
			blocks, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		case "Block size":
			blockSize, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if blocks == 0 || blockSize == 0 || devSize-blocks*blockSize < 8<<20 {
		return nil
	}
	// resize2fs insists on a freshly checked file system when offline.
	if out, err := exec.CommandContext(ctx, "e2fsck", "-f", "-p", device).CombinedOutput(); err != nil {
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() > 1 {
			return fmt.Errorf("check %s before growing it: %v: %s", device, err, strings.TrimSpace(string(out)))
		}
	}
	if out, err := exec.CommandContext(ctx, "resize2fs", device).CombinedOutput(); err != nil {
		return fmt.Errorf("grow the file system on %s: %v: %s", device, err, strings.TrimSpace(string(out)))
	}
	klog.InfoS("grew ext file system offline", "device", device, "fromBytes", blocks*blockSize, "toBytes", devSize)
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
	if err := mount.CleanupMountPoint(staging, n.mounter, true); err != nil {
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
	notMnt, err := n.mounter.IsLikelyNotMountPoint(target)
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
	if err := n.mounter.Mount(source, target, fsType, opts); err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: bind mount %s at %s: %v", id, source, target, err)
	}
	if st.Targets == nil {
		st.Targets = map[string]bool{}
	}
	st.Targets[target] = singleWriter
	if err := n.writeState(st); err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: save node state: %v", id, err)
	}
	// The pod's cgroup exists by now (the kubelet publishes after creating
	// the pod sandbox), so its I/O limits can be set right away.
	if v, err := n.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: id}); err == nil {
		if err := n.applyLimits(st, limitsOf(v)); err != nil {
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
	if err := mount.CleanupMountPoint(target, n.mounter, true); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeUnpublishVolume %s: unmount %s: %v", id, target, err)
	}
	if st, err := n.readState(id); err == nil && st != nil && st.Targets != nil {
		delete(st.Targets, target)
		if err := n.writeState(st); err != nil {
			return nil, status.Errorf(codes.Internal, "NodeUnpublishVolume %s: save node state: %v", id, err)
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
	size, err := attach.Refresh(st.Device)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodeExpandVolume %s: make %s see the new size: %v", id, st.Device, err)
	}
	isBlock := st.Block || req.GetVolumeCapability().GetBlock() != nil
	if !isBlock {
		mountPath := st.StagingPath
		if mountPath == "" {
			mountPath = path
		}
		if _, err := mount.NewResizeFs(utilexec.New()).Resize(st.Device, mountPath); err != nil {
			if strings.Contains(err.Error(), "exit status 1") && n.isExt(st.Device) {
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
	if _, found, err := attach.Find(st.ImagePath); err != nil || !found {
		return &csi.VolumeCondition{Abnormal: true, Message: fmt.Sprintf("the loop device of volume %s (%s) is gone", st.VolumeID, st.ImagePath)}
	}
	if isDir {
		if notMnt, err := n.mounter.IsLikelyNotMountPoint(path); err != nil || notMnt {
			return &csi.VolumeCondition{Abnormal: true, Message: fmt.Sprintf("volume %s is not mounted at %s", st.VolumeID, path)}
		}
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

func (n *NodeService) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             n.cfg.NodeID,
		MaxVolumesPerNode:  n.cfg.MaxVolumes,
		AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyZoneKey: n.cfg.Zone, TopologyNodeKey: n.cfg.NodeID}},
	}, nil
}
