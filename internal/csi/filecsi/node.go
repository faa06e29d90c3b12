package filecsi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// NodeConfig says who the node is and how it mounts.
type NodeConfig struct {
	NodeID string
	// Zone is the node's zone (TopologyKeyZone): the volumes of a One Zone
	// file system are scheduled to its zone's nodes.
	Zone string
	// CheckInterval is how often the node checks its mounts (a FUSE client
	// that died leaves a dead mount: the node says which volume).
	CheckInterval time.Duration
}

// NodeService mounts access points into pods: one NFS mount per
// NodePublishVolume (no staging), by the kernel's NFS client where the node
// has one and by Stowage's FUSE NFS client where it has not. The mounts
// live outside this process (the kernel's, or a FUSE client process each),
// so restarting the node plugin leaves them alone.
type NodeService struct {
	csi.UnimplementedNodeServer
	cfg          NodeConfig
	mounter      Mounter
	fileSystems  pb.FileSystemServiceClient
	accessPoints pb.AccessPointServiceClient

	mu      sync.Mutex
	targets map[string]chan struct{} // per-target locks
}

// NewNodeService returns a node plugin mounting with m; fileSystems and
// accessPoints resolve static volumes, whose context does not say where to
// mount from.
func NewNodeService(cfg NodeConfig, m Mounter, fileSystems pb.FileSystemServiceClient, accessPoints pb.AccessPointServiceClient) *NodeService {
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = 10 * time.Second
	}
	return &NodeService{cfg: cfg, mounter: m, fileSystems: fileSystems, accessPoints: accessPoints, targets: map[string]chan struct{}{}}
}

// Mount is one NFS mount of a volume at a target path.
type Mount struct {
	VolumeID string
	Target   string
	Server   string // host:port
	Export   string // NFSv4 path: the access point's pseudo path and the sub path
	ReadOnly bool
}

// Mounter makes, removes and checks NFS mounts (fuse.go, kernel.go).
type Mounter interface {
	// Mount mounts m and returns once the mount serves.
	Mount(ctx context.Context, m Mount) error
	// Unmount removes the mount at target; nothing mounted is not an error.
	Unmount(ctx context.Context, target string) error
	// Mounted reports the volume mounted at target, "" when none.
	Mounted(target string) (volumeID string, err error)
	// Check says what is wrong with the mount at target, nil when healthy.
	Check(ctx context.Context, target string) error
	// Mounts lists the mounts this node made: target -> volume id.
	Mounts() (map[string]string, error)
}

func (n *NodeService) lockTarget(ctx context.Context, target string) (func(), error) {
	n.mu.Lock()
	ch, ok := n.targets[target]
	if !ok {
		ch = make(chan struct{}, 1)
		n.targets[target] = ch
	}
	n.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, status.Errorf(codes.Aborted, "another operation on target %s is still running", target)
	}
}

func (n *NodeService) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	resp := &csi.NodeGetInfoResponse{NodeId: n.cfg.NodeID}
	if n.cfg.Zone != "" {
		resp.AccessibleTopology = &csi.Topology{Segments: map[string]string{TopologyKeyZone: n.cfg.Zone}}
	}
	return resp, nil
}

func (n *NodeService) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_VOLUME_CONDITION,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (n *NodeService) NodeStageVolume(context.Context, *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	return nil, status.Error(codes.Unimplemented, "the file driver does not stage volumes: each pod's mount is made at publish")
}

func (n *NodeService) NodeUnstageVolume(context.Context, *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	return nil, status.Error(codes.Unimplemented, "the file driver does not stage volumes: each pod's mount is made at publish")
}

// mountOptions the EFS CSI driver's users put in a PV or StorageClass.
// accesspoint= names the access point of a static volume; the others are
// about EFS's TLS tunnel and IAM, or NFS tuning, which the kernel client
// takes and the FUSE client has no use for.
var ignoredMountOptions = map[string]bool{
	"tls": true, "iam": true, "noresvport": true, "hard": true, "soft": false, "nfsvers": true, "vers": true,
	"rsize": true, "wsize": true, "timeo": true, "retrans": true, "_netdev": true, "nosuid": true, "nodev": true, "noatime": true,
	"relatime": true, "rw": true, "lookupcache": true, "actimeo": true, "port": true, "awscredsuri": true, "awsprofile": true,
}

// readOnlyOption checks the mount options left after the access point
// (ApplyMountOptions) and says whether they ask for a read-only mount.
func readOnlyOption(options []string) (bool, error) {
	readOnly := false
	for _, f := range options {
		for _, o := range strings.Split(f, ",") {
			o = strings.TrimSpace(o)
			key, _, _ := strings.Cut(o, "=")
			switch {
			case o == "":
			case o == "ro":
				readOnly = true
			case key == "soft":
				return false, fmt.Errorf("mount option soft is not supported: file volumes are hard mounts (I/O waits for the server and never fails with EIO on a timeout)")
			case ignoredMountOptions[key]:
			default:
				return false, fmt.Errorf("mount option %q is not supported; supported: accesspoint=fsap-…, ro, and the EFS/NFS options %s", o, strings.Join(sortedKeys(ignoredMountOptions), ", "))
			}
		}
	}
	return readOnly, nil
}

// splitOptions splits "a,b" entries: a PV's mountOptions may hold several
// options in one.
func splitOptions(flags []string) []string {
	var out []string
	for _, f := range flags {
		out = append(out, strings.Split(f, ",")...)
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k, v := range m {
		if v {
			out = append(out, k)
		}
	}
	slicesSort(out)
	return out
}

// source works out where volume id is mounted from: the volume context the
// controller wrote, or (static volumes) the access point the handle or the
// mount options name, looked up in the Stowage API.
func (n *NodeService) source(ctx context.Context, volumeID string, vc map[string]string, flags []string) (server, export string, readOnly bool, err error) {
	h, err := ParseVolumeHandle(volumeID)
	if err != nil {
		return "", "", false, status.Errorf(codes.InvalidArgument, "NodePublishVolume: %v", err)
	}
	h, rest, err := ApplyMountOptions(h, splitOptions(flags))
	if err != nil {
		return "", "", false, status.Errorf(codes.InvalidArgument, "NodePublishVolume %s: %v", volumeID, err)
	}
	readOnly, err = readOnlyOption(rest)
	if err != nil {
		return "", "", false, status.Errorf(codes.InvalidArgument, "NodePublishVolume %s: %v", volumeID, err)
	}
	ap := h.AccessPointID
	if ap == "" {
		// The whole file system (or a directory in it), as each client user.
		got, err := n.fileSystems.DescribeFileSystem(ctx, &pb.DescribeFileSystemRequest{FileSystemId: h.FileSystemID})
		if status.Code(err) == codes.NotFound {
			return "", "", false, status.Errorf(codes.NotFound, "NodePublishVolume %s: file system %s does not exist", volumeID, h.FileSystemID)
		}
		if err != nil {
			return "", "", false, apiError(err, "NodePublishVolume %s: describe file system %s", volumeID, h.FileSystemID)
		}
		if got.NfsAddress == "" || got.NfsExportPath == "" {
			return "", "", false, status.Errorf(codes.FailedPrecondition, "NodePublishVolume %s: file system %s is not served over NFS (the Stowage server runs without --nfs-listen)", volumeID, h.FileSystemID)
		}
		server, export = got.NfsAddress, got.NfsExportPath
		if h.SubPath != "" {
			export = path.Join(export, h.SubPath)
		}
		return server, export, readOnly, nil
	}
	server, export = vc[ContextNFSServer], vc[ContextNFSExportPath]
	if server == "" || export == "" || vc[ContextAccessPointID] != ap {
		got, err := n.accessPoints.DescribeAccessPoint(ctx, &pb.DescribeAccessPointRequest{AccessPointId: ap})
		if status.Code(err) == codes.NotFound {
			return "", "", false, status.Errorf(codes.NotFound, "NodePublishVolume %s: access point %s does not exist", volumeID, ap)
		}
		if err != nil {
			return "", "", false, apiError(err, "NodePublishVolume %s: describe access point %s", volumeID, ap)
		}
		if got.FileSystemId != h.FileSystemID {
			return "", "", false, status.Errorf(codes.InvalidArgument, "NodePublishVolume %s: access point %s is in file system %s, not %s", volumeID, ap, got.FileSystemId, h.FileSystemID)
		}
		if got.NfsAddress == "" {
			return "", "", false, status.Errorf(codes.FailedPrecondition, "NodePublishVolume %s: access point %s is not served over NFS (the Stowage server runs without --nfs-listen)", volumeID, ap)
		}
		server, export = got.NfsAddress, got.NfsExportPath
	}
	if h.SubPath != "" {
		export = path.Join(export, h.SubPath)
	}
	return server, export, readOnly, nil
}

func (n *NodeService) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "NodePublishVolume: volume id is required")
	case target == "":
		return nil, status.Errorf(codes.InvalidArgument, "NodePublishVolume %s: target path is required", id)
	case req.GetVolumeCapability() == nil:
		return nil, status.Errorf(codes.InvalidArgument, "NodePublishVolume %s: volume capability is required", id)
	}
	vc := req.GetVolumeCapability()
	if err := validateCapabilities([]*csi.VolumeCapability{vc}); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "NodePublishVolume %s: %v", id, err)
	}
	server, export, roOption, err := n.source(ctx, id, req.GetVolumeContext(), vc.GetMount().GetMountFlags())
	if err != nil {
		return nil, err
	}
	mode := vc.GetAccessMode().GetMode()
	readOnly := req.GetReadonly() || roOption || mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY || mode == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY

	unlock, err := n.lockTarget(ctx, target)
	if err != nil {
		return nil, err
	}
	defer unlock()
	mounted, err := n.mounter.Mounted(target)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: %v", id, err)
	}
	if mounted != "" {
		if mounted != id {
			return nil, status.Errorf(codes.FailedPrecondition, "NodePublishVolume %s: target %s already has volume %s mounted", id, target, mounted)
		}
		if err := n.mounter.Check(ctx, target); err == nil {
			return &csi.NodePublishVolumeResponse{}, nil
		} else {
			// A dead mount (its FUSE client died): make it again.
			klog.InfoS("NodePublishVolume: the mount at the target is not healthy; mounting again", "volume", id, "target", target, "problem", err.Error())
			if err := n.mounter.Unmount(ctx, target); err != nil {
				return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: remove the dead mount at %s: %v", id, target, err)
			}
		}
	}
	if mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		// ReadWriteOncePod: one mount of the volume on the node at a time.
		mounts, err := n.mounter.Mounts()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: %v", id, err)
		}
		for other, vol := range mounts {
			if vol == id && other != filepath.Clean(target) {
				return nil, status.Errorf(codes.FailedPrecondition, "NodePublishVolume %s: the volume is single-writer (ReadWriteOncePod) and already mounted at %s", id, other)
			}
		}
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: make target %s: %v", id, target, err)
	}
	m := Mount{VolumeID: id, Target: target, Server: server, Export: export, ReadOnly: readOnly}
	if err := n.mounter.Mount(ctx, m); err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return nil, status.Errorf(codes.DeadlineExceeded, "NodePublishVolume %s: mount %s:%s at %s: %v", id, server, export, target, err)
		}
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: mount %s:%s at %s: %v", id, server, export, target, err)
	}
	klog.InfoS("NodePublishVolume: mounted", "volume", id, "target", target, "server", server, "export", export, "readOnly", readOnly)
	return &csi.NodePublishVolumeResponse{}, nil
}

func (n *NodeService) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "NodeUnpublishVolume: volume id is required")
	case target == "":
		return nil, status.Errorf(codes.InvalidArgument, "NodeUnpublishVolume %s: target path is required", id)
	}
	unlock, err := n.lockTarget(ctx, target)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := n.mounter.Unmount(ctx, target); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeUnpublishVolume %s: unmount %s: %v", id, target, err)
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "NodeUnpublishVolume %s: remove target %s: %v", id, target, err)
	}
	klog.InfoS("NodeUnpublishVolume: unmounted", "volume", id, "target", target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func (n *NodeService) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, p := req.GetVolumeId(), req.GetVolumePath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "NodeGetVolumeStats: volume id is required")
	case p == "":
		return nil, status.Errorf(codes.InvalidArgument, "NodeGetVolumeStats %s: volume path is required", id)
	}
	mounted, err := n.mounter.Mounted(p)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodeGetVolumeStats %s: %v", id, err)
	}
	if mounted == "" {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			return nil, status.Errorf(codes.NotFound, "NodeGetVolumeStats %s: volume path %s does not exist", id, p)
		}
		return nil, status.Errorf(codes.NotFound, "NodeGetVolumeStats %s: volume %s is not mounted at %s", id, id, p)
	}
	if mounted != id {
		return nil, status.Errorf(codes.NotFound, "NodeGetVolumeStats %s: %s has volume %s mounted, not %s", id, p, mounted, id)
	}
	if err := n.mounter.Check(ctx, p); err != nil {
		return &csi.NodeGetVolumeStatsResponse{VolumeCondition: &csi.VolumeCondition{Abnormal: true,
			Message: fmt.Sprintf("volume %s at %s: %v", id, p, err)}}, nil
	}
	st, err := statfs(ctx, p)
	if err != nil {
		return &csi.NodeGetVolumeStatsResponse{VolumeCondition: &csi.VolumeCondition{Abnormal: true,
			Message: fmt.Sprintf("volume %s at %s: statfs: %v", id, p, err)}}, nil
	}
	bytes := &csi.VolumeUsage{Unit: csi.VolumeUsage_BYTES, Total: st.total, Available: st.avail, Used: st.total - st.free}
	inodes := &csi.VolumeUsage{Unit: csi.VolumeUsage_INODES, Total: st.files, Available: st.filesFree, Used: st.files - st.filesFree}
	// An access point's own usage, and its quota as the total when it has
	// one; statfs through NFS tells only the whole pool's.
	if h, err := ParseVolumeHandle(id); err == nil && h.AccessPointID != "" && h.SubPath == "" {
		if ap, err := n.accessPoints.DescribeAccessPoint(ctx, &pb.DescribeAccessPointRequest{AccessPointId: h.AccessPointID}); err == nil {
			bytes.Used, inodes.Used = ap.SizeUsedBytes, ap.InodesUsed
			if q := ap.QuotaBytes; q > 0 {
				bytes.Total, bytes.Available = q, max(0, min(q-ap.SizeUsedBytes, st.avail))
			}
		} else {
			klog.InfoS("NodeGetVolumeStats: access point usage unknown; reporting the pool's", "volume", id, "err", err.Error())
		}
	}
	return &csi.NodeGetVolumeStatsResponse{
		Usage:           []*csi.VolumeUsage{bytes, inodes},
		VolumeCondition: &csi.VolumeCondition{Message: "mounted and serving"},
	}, nil
}

// Watch checks every mount of this node until ctx ends and logs, naming
// the volume, each one that stopped serving (once per problem).
func (n *NodeService) Watch(ctx context.Context) {
	t := time.NewTicker(n.cfg.CheckInterval)
	defer t.Stop()
	reported := map[string]string{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		mounts, err := n.mounter.Mounts()
		if err != nil {
			klog.ErrorS(err, "list file volume mounts")
			continue
		}
		for target, vol := range mounts {
			err := n.mounter.Check(ctx, target)
			switch {
			case err != nil && reported[target] != err.Error():
				klog.ErrorS(err, "file volume mount is not serving; its pods' I/O fails until the pod is started again", "volume", vol, "target", target)
				reported[target] = err.Error()
			case err == nil && reported[target] != "":
				klog.InfoS("file volume mount serves again", "volume", vol, "target", target)
				delete(reported, target)
			}
		}
		for target := range reported {
			if _, ok := mounts[target]; !ok {
				delete(reported, target)
			}
		}
	}
}
