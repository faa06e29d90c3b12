package filecsi

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// Access point tags the controller sets. tagProvisioned marks the access
// points DeleteVolume may delete; tagDeleteRoot remembers
// deleteAccessPointRootDir from creation.
const (
	tagProvisioned  = DriverName + "/provisioned"
	tagDeleteRoot   = DriverName + "/delete-root-dir"
	tagCSIName      = "CSIVolumeName"
	tagPVCName      = "kubernetes.io/created-for/pvc/name"
	tagPVCNamespace = "kubernetes.io/created-for/pvc/namespace"
	tagPVName       = "kubernetes.io/created-for/pv/name"
)

// TopologyKeyZone is the node label of a node's zone for this driver; One
// Zone file systems' volumes are constrained to it.
const TopologyKeyZone = "topology.file.csi.stowage.io/zone"

// Volume context keys: what the node plugin needs to mount the volume.
const (
	ContextFileSystemID  = "fileSystemId"
	ContextAccessPointID = "accessPointId"
	ContextRootDirectory = "rootDirectory"
	ContextNFSServer     = "nfsServer"
	ContextNFSExportPath = "nfsExportPath"
	ContextUID           = "uid"
	ContextGID           = "gid"
	ContextQuotaBytes    = "quotaBytes"
	ContextAZ            = "az"
)

// ControllerService is the CSI controller of the file driver: each volume
// is an access point, made and removed through the Stowage API.
type ControllerService struct {
	csi.UnimplementedControllerServer
	fileSystems  pb.FileSystemServiceClient
	accessPoints pb.AccessPointServiceClient

	mu sync.Mutex
	// fsLocks serialise creates in one file system: finding an existing
	// access point by name, choosing a free gid and creating must not
	// interleave with another create.
	fsLocks map[string]chan struct{}
}

// NewControllerService returns a controller calling the Stowage API.
func NewControllerService(fs pb.FileSystemServiceClient, ap pb.AccessPointServiceClient) *ControllerService {
	return &ControllerService{fileSystems: fs, accessPoints: ap, fsLocks: map[string]chan struct{}{}}
}

func (c *ControllerService) lockFileSystem(ctx context.Context, id string) (func(), error) {
	c.mu.Lock()
	ch, ok := c.fsLocks[id]
	if !ok {
		ch = make(chan struct{}, 1)
		c.fsLocks[id] = ch
	}
	c.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, status.Errorf(codes.Aborted, "another CreateVolume in file system %s is still running: %v", id, ctx.Err())
	}
}

var controllerCaps = []csi.ControllerServiceCapability_RPC_Type{
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
	csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
}

func (c *ControllerService) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	resp := &csi.ControllerGetCapabilitiesResponse{}
	for _, t := range controllerCaps {
		resp.Capabilities = append(resp.Capabilities, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}},
		})
	}
	return resp, nil
}

// File systems take any access mode: every node of every zone reaches them.
var supportedAccessModes = map[csi.VolumeCapability_AccessMode_Mode]bool{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:        true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:   true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER: true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:  true,
	csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:    true,
	csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER:  true,
	csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:   true,
}

var supportedFSTypes = map[string]bool{"": true, "nfs": true, "nfs4": true, "efs": true}

// validateCapabilities accepts mounts of any access mode; file volumes
// have no raw block form.
func validateCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return fmt.Errorf("volume capabilities are required")
	}
	for _, vc := range caps {
		if vc.GetAccessMode() == nil {
			return fmt.Errorf("a volume capability has no access mode")
		}
		if m := vc.GetAccessMode().GetMode(); !supportedAccessModes[m] {
			return fmt.Errorf("access mode %s is not supported", m)
		}
		switch {
		case vc.GetBlock() != nil:
			return fmt.Errorf("file volumes are mounted file systems; raw block access (volumeMode: Block) is not supported, use %s", "block.csi.stowage.io")
		case vc.GetMount() != nil:
			if fs := vc.GetMount().GetFsType(); !supportedFSTypes[strings.ToLower(fs)] {
				return fmt.Errorf("fsType %q is not supported; file volumes are NFS (leave fsType empty, or nfs, nfs4, efs)", fs)
			}
		default:
			return fmt.Errorf("a volume capability must be mount")
		}
	}
	return nil
}

func (c *ControllerService) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "CreateVolume: name is required")
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: %v", name, err)
	}
	if req.GetVolumeContentSource() != nil {
		return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: file volumes cannot be made from a snapshot or another volume", name)
	}
	p, err := parseCreateParams(req.GetParameters())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: %v", name, err)
	}
	required, limit := req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes()
	if required < 0 || limit < 0 || (limit > 0 && required > limit) {
		return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: capacity range of %d required and %d limit bytes is not valid", name, required, limit)
	}
	var quota int64
	if p.quota {
		if quota = required; quota == 0 {
			quota = limit
		}
		if quota == 0 {
			return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: parameter %s=true makes the claim's size a hard limit, but the claim has no size", name, paramQuota)
		}
	}
	root, err := p.rootDirectory(name)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: %v", name, err)
	}
	token := name
	if p.reuse {
		token = reuseToken(p.pvcNamespace, p.pvcName)
	}

	unlock, err := c.lockFileSystem(ctx, p.fileSystemID)
	if err != nil {
		return nil, err
	}
	defer unlock()

	fs, err := c.fileSystems.DescribeFileSystem(ctx, &pb.DescribeFileSystemRequest{FileSystemId: p.fileSystemID})
	if status.Code(err) == codes.NotFound {
		return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: parameter %s: file system %q does not exist; create it with `stowage fs create` or name one `stowage fs list` shows",
			name, paramFileSystemID, p.fileSystemID)
	}
	if err != nil {
		return nil, apiError(err, "CreateVolume %s: describe file system %s", name, p.fileSystemID)
	}
	if p.az != "" && fs.AvailabilityZone != "" && fs.AvailabilityZone != p.az {
		return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: parameter %s: %q, but file system %s is One Zone in %s; leave az out or set it to %s",
			name, paramAZ, p.az, fs.Id, fs.AvailabilityZone, fs.AvailabilityZone)
	}
	aps, err := c.listAccessPoints(ctx, fs.Id)
	if err != nil {
		return nil, apiError(err, "CreateVolume %s: list access points of %s", name, fs.Id)
	}
	for _, ap := range aps {
		if ap.Name != token {
			continue
		}
		// A retry, a concurrent call for the same name, or (reuseAccessPoint)
		// the claim's access point from before.
		if err := p.matches(ap); err != nil {
			return nil, status.Errorf(codes.AlreadyExists, "CreateVolume %s: access point %s (named %s) exists with other parameters: %v", name, ap.Id, token, err)
		}
		// A quota'd volume's size is its quota: another size is another
		// volume.
		if q := ap.QuotaBytes; q > 0 && (q < required || (limit > 0 && q > limit)) {
			return nil, status.Errorf(codes.AlreadyExists, "CreateVolume %s: access point %s (named %s) exists with a quota of %d bytes, outside the requested %d..%d bytes",
				name, ap.Id, token, q, required, limit)
		}
		klog.InfoS("CreateVolume: access point exists", "name", name, "accessPoint", ap.Id, "reused", p.reuse)
		return c.response(fs, ap, required, p), nil
	}
	uid, gid := p.uid, p.gid
	if uid < 0 || gid < 0 {
		g, err := allocateGID(fs.Id, aps, p)
		if err != nil {
			return nil, err
		}
		if uid < 0 {
			uid = g
		}
		if gid < 0 {
			gid = g
		}
	}
	tags := map[string]string{tagProvisioned: "true", tagCSIName: name}
	if p.deleteRoot {
		tags[tagDeleteRoot] = "true"
	}
	for k, v := range map[string]string{tagPVCName: p.pvcName, tagPVCNamespace: p.pvcNamespace, tagPVName: p.pvName} {
		if v != "" {
			tags[k] = v
		}
	}
	mode := p.permissions
	ap, err := c.accessPoints.CreateAccessPoint(ctx, &pb.CreateAccessPointRequest{
		Name: token, FileSystemId: fs.Id,
		PosixUser: &pb.PosixUser{Uid: uint32(uid), Gid: uint32(gid)},
		RootDirectory: &pb.RootDirectory{Path: root, CreationInfo: &pb.CreationInfo{
			OwnerUid: uint32(uid), OwnerGid: uint32(gid), Permissions: mode}},
		QuotaBytes: quota, Tags: tags,
	})
	if err != nil {
		return nil, apiError(err, "CreateVolume %s: create access point in %s", name, fs.Id)
	}
	klog.InfoS("CreateVolume: created", "name", name, "accessPoint", ap.Id, "fileSystem", fs.Id, "path", root, "uid", uid, "gid", gid, "quotaBytes", quota)
	return c.response(fs, ap, required, p), nil
}

func (c *ControllerService) listAccessPoints(ctx context.Context, fsID string) ([]*pb.AccessPoint, error) {
	var out []*pb.AccessPoint
	token := ""
	for {
		resp, err := c.accessPoints.ListAccessPoints(ctx, &pb.ListAccessPointsRequest{FileSystemId: fsID, PageSize: 1000, PageToken: token})
		if err != nil {
			return nil, err
		}
		out = append(out, resp.AccessPoints...)
		if token = resp.NextPageToken; token == "" {
			return out, nil
		}
	}
}

// allocateGID picks the lowest gid of the range no access point of the
// file system uses (as the EFS driver does: its uid too, unless given).
func allocateGID(fsID string, aps []*pb.AccessPoint, p *createParams) (int64, error) {
	used := map[int64]bool{}
	for _, ap := range aps {
		if u := ap.PosixUser; u != nil {
			used[int64(u.Gid)] = true
		}
	}
	for g := p.gidStart; g <= p.gidEnd; g++ {
		if !used[g] {
			return g, nil
		}
	}
	size := p.gidEnd - p.gidStart + 1
	inUse := 0
	for g := range used {
		if g >= p.gidStart && g <= p.gidEnd {
			inUse++
		}
	}
	return 0, status.Errorf(codes.ResourceExhausted,
		"the gid range %s=%d..%s=%d is exhausted: all %d gids are in use by access points of file system %s (%d in use in the range); widen the range or give the StorageClass another file system",
		paramGIDRangeStart, p.gidStart, paramGIDRangeEnd, p.gidEnd, size, fsID, inUse)
}

// matches says why an existing access point is not what these parameters
// would make, or nil.
func (p *createParams) matches(ap *pb.AccessPoint) error {
	root := ap.GetRootDirectory().GetPath()
	if p.basePath != "/" && root != p.basePath && !strings.HasPrefix(root, p.basePath+"/") {
		return fmt.Errorf("its root directory %s is not under %s %s", root, paramBasePath, p.basePath)
	}
	u := ap.GetPosixUser()
	if u == nil {
		return fmt.Errorf("it has no POSIX user")
	}
	inRange := func(id uint32) bool { return int64(id) >= p.gidStart && int64(id) <= p.gidEnd }
	switch {
	case p.uid >= 0 && int64(u.Uid) != p.uid:
		return fmt.Errorf("its uid is %d, the StorageClass says %s=%d", u.Uid, paramUID, p.uid)
	case p.gid >= 0 && int64(u.Gid) != p.gid:
		return fmt.Errorf("its gid is %d, the StorageClass says %s=%d", u.Gid, paramGID, p.gid)
	case p.uid < 0 && !inRange(u.Uid):
		return fmt.Errorf("its uid %d is outside the gid range %d..%d", u.Uid, p.gidStart, p.gidEnd)
	case p.gid < 0 && !inRange(u.Gid):
		return fmt.Errorf("its gid %d is outside the gid range %d..%d", u.Gid, p.gidStart, p.gidEnd)
	case p.quota && ap.QuotaBytes == 0:
		return fmt.Errorf("it has no quota, the StorageClass says %s=true", paramQuota)
	case !p.quota && ap.QuotaBytes != 0:
		return fmt.Errorf("it has a quota of %d bytes, the StorageClass has no %s", ap.QuotaBytes, paramQuota)
	}
	return nil
}

func (c *ControllerService) response(fs *pb.FileSystem, ap *pb.AccessPoint, required int64, p *createParams) *csi.CreateVolumeResponse {
	vc := map[string]string{
		ContextFileSystemID:  fs.Id,
		ContextAccessPointID: ap.Id,
		ContextRootDirectory: ap.GetRootDirectory().GetPath(),
	}
	if u := ap.GetPosixUser(); u != nil {
		vc[ContextUID], vc[ContextGID] = strconv.FormatUint(uint64(u.Uid), 10), strconv.FormatUint(uint64(u.Gid), 10)
	}
	if ap.NfsAddress != "" {
		vc[ContextNFSServer] = ap.NfsAddress
	}
	if ap.NfsExportPath != "" {
		vc[ContextNFSExportPath] = ap.NfsExportPath
	}
	capacity := required
	if ap.QuotaBytes > 0 {
		vc[ContextQuotaBytes] = strconv.FormatInt(ap.QuotaBytes, 10)
		capacity = ap.QuotaBytes
	}
	if p.az != "" {
		vc[ContextAZ] = p.az
	}
	vol := &csi.Volume{
		VolumeId:      VolumeHandle{FileSystemID: fs.Id, AccessPointID: ap.Id}.String(),
		CapacityBytes: capacity,
		VolumeContext: vc,
	}
	// A One Zone file system is reached from its zone's nodes only; a
	// Standard one from every node (no constraint).
	if z := fs.AvailabilityZone; z != "" {
		vol.AccessibleTopology = []*csi.Topology{{Segments: map[string]string{TopologyKeyZone: z}}}
	}
	return &csi.CreateVolumeResponse{Volume: vol}
}

// DeleteVolume deletes the access point behind a volume this driver
// provisioned, and its root directory too when deleteAccessPointRootDir
// was set at creation. A missing volume, or an id that is no handle of
// ours, is deleted already.
func (c *ControllerService) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "DeleteVolume: volume id is required")
	}
	h, err := ParseVolumeHandle(id)
	if err != nil {
		klog.InfoS("DeleteVolume: not a volume handle of this driver; nothing to delete", "volumeID", id, "reason", err)
		return &csi.DeleteVolumeResponse{}, nil
	}
	if h.AccessPointID == "" {
		klog.InfoS("DeleteVolume: a whole-file-system volume; the file system stays", "volumeID", id)
		return &csi.DeleteVolumeResponse{}, nil
	}
	ap, err := c.accessPoints.DescribeAccessPoint(ctx, &pb.DescribeAccessPointRequest{AccessPointId: h.AccessPointID})
	if status.Code(err) == codes.NotFound {
		klog.InfoS("DeleteVolume: access point does not exist", "volumeID", id)
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, apiError(err, "DeleteVolume %s", id)
	}
	if ap.FileSystemId != h.FileSystemID {
		klog.InfoS("DeleteVolume: the access point belongs to another file system than the handle names; leaving it", "volumeID", id, "accessPointFileSystem", ap.FileSystemId)
		return &csi.DeleteVolumeResponse{}, nil
	}
	if ap.Tags[tagProvisioned] != "true" {
		// A static PV naming an access point made by hand: the access
		// point is not the driver's to delete.
		klog.InfoS("DeleteVolume: access point was not provisioned by this driver; leaving it", "volumeID", id)
		return &csi.DeleteVolumeResponse{}, nil
	}
	deleteRoot := ap.Tags[tagDeleteRoot] == "true"
	if _, err := c.accessPoints.DeleteAccessPoint(ctx, &pb.DeleteAccessPointRequest{AccessPointId: ap.Id, DeleteRootDirectory: deleteRoot}); err != nil {
		return nil, apiError(err, "DeleteVolume %s", id)
	}
	klog.InfoS("DeleteVolume: access point deleted", "volumeID", id, "rootDirectory", ap.GetRootDirectory().GetPath(), "rootDirectoryRemoved", deleteRoot)
	return &csi.DeleteVolumeResponse{}, nil
}

// ControllerExpandVolume raises the quota of a quota'd access point; an
// elastic one (no quota) has nothing to grow. No node step is needed.
func (c *ControllerService) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "ControllerExpandVolume: volume id is required")
	}
	required, limit := req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes()
	if req.GetCapacityRange() == nil || required <= 0 || limit < 0 || (limit > 0 && required > limit) {
		return nil, status.Errorf(codes.InvalidArgument, "ControllerExpandVolume %s: a capacity range with required bytes above 0 (and not above the limit) is needed", id)
	}
	if vc := req.GetVolumeCapability(); vc != nil {
		if err := validateCapabilities([]*csi.VolumeCapability{vc}); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "ControllerExpandVolume %s: %v", id, err)
		}
	}
	h, err := ParseVolumeHandle(id)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "ControllerExpandVolume: %v", err)
	}
	if h.AccessPointID == "" {
		if _, err := c.fileSystems.DescribeFileSystem(ctx, &pb.DescribeFileSystemRequest{FileSystemId: h.FileSystemID}); err != nil {
			return nil, apiError(err, "ControllerExpandVolume %s", id)
		}
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: required}, nil
	}
	ap, err := c.accessPoints.DescribeAccessPoint(ctx, &pb.DescribeAccessPointRequest{AccessPointId: h.AccessPointID})
	if err != nil {
		return nil, apiError(err, "ControllerExpandVolume %s", id)
	}
	if ap.QuotaBytes == 0 {
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: required}, nil
	}
	if ap.QuotaBytes >= required {
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: ap.QuotaBytes}, nil
	}
	ap, err = c.accessPoints.SetAccessPointQuota(ctx, &pb.SetAccessPointQuotaRequest{AccessPointId: ap.Id, QuotaBytes: required})
	if err != nil {
		return nil, apiError(err, "ControllerExpandVolume %s: raise the quota", id)
	}
	klog.InfoS("ControllerExpandVolume: quota raised", "volumeID", id, "quotaBytes", ap.QuotaBytes)
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: ap.QuotaBytes}, nil
}

func (c *ControllerService) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "ValidateVolumeCapabilities: volume id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "ValidateVolumeCapabilities %s: volume capabilities are required", id)
	}
	h, err := ParseVolumeHandle(id)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "ValidateVolumeCapabilities: %v", err)
	}
	if _, err := c.fileSystems.DescribeFileSystem(ctx, &pb.DescribeFileSystemRequest{FileSystemId: h.FileSystemID}); err != nil {
		return nil, apiError(err, "ValidateVolumeCapabilities %s", id)
	}
	if h.AccessPointID != "" {
		ap, err := c.accessPoints.DescribeAccessPoint(ctx, &pb.DescribeAccessPointRequest{AccessPointId: h.AccessPointID})
		if err != nil {
			return nil, apiError(err, "ValidateVolumeCapabilities %s", id)
		}
		if ap.FileSystemId != h.FileSystemID {
			return nil, status.Errorf(codes.NotFound, "ValidateVolumeCapabilities %s: access point %s is in file system %s, not %s", id, ap.Id, ap.FileSystemId, h.FileSystemID)
		}
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}
