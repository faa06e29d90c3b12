package csi

import (
	"context"
	"fmt"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/block"
)

// defaultSizeGiB is what a claim without a size gets, as with the EBS driver.
const defaultSizeGiB = 100

// ControllerService is the CSI controller of the block driver: it turns CSI
// calls into Stowage API calls.
type ControllerService struct {
	csi.UnimplementedControllerServer
	volumes   pb.VolumeServiceClient
	snapshots pb.SnapshotServiceClient
	pools     pb.PoolServiceClient
}

// NewControllerService returns a controller that calls the Stowage API through the given clients.
func NewControllerService(v pb.VolumeServiceClient, s pb.SnapshotServiceClient, p pb.PoolServiceClient) *ControllerService {
	return &ControllerService{volumes: v, snapshots: s, pools: p}
}

var controllerCaps = []csi.ControllerServiceCapability_RPC_Type{
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
	csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
	csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	csi.ControllerServiceCapability_RPC_PUBLISH_READONLY,
	csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES_PUBLISHED_NODES,
	csi.ControllerServiceCapability_RPC_VOLUME_CONDITION,
	csi.ControllerServiceCapability_RPC_GET_VOLUME,
	csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.ControllerServiceCapability_RPC_MODIFY_VOLUME,
	csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
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

func (c *ControllerService) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "CreateVolume: name is required")
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: %v", req.GetName(), err)
	}
	p, err := parseCreateParams(req.GetParameters())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: %v", req.GetName(), err)
	}
	apiReq := &p.req
	// A VolumeAttributesClass named at creation overrides the StorageClass
	// for the parameters it sets, as with the EBS driver.
	if len(req.GetMutableParameters()) > 0 {
		m, err := parseMutableParams(req.GetMutableParameters())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: VolumeAttributesClass: %v", req.GetName(), err)
		}
		if m.Type != "" {
			apiReq.Type = m.Type
		}
		if m.Iops != 0 {
			apiReq.Iops, apiReq.IopsPerGb = m.Iops, 0
		}
		if m.ThroughputMibps != 0 {
			apiReq.ThroughputMibps = m.ThroughputMibps
		}
		for k, v := range m.AddTags {
			apiReq.Tags[k] = v
		}
	}
	if apiReq.Encrypted || apiReq.KmsKeyId != "" {
		if err := encryptable(req.GetVolumeCapabilities(), p.context[contextFSType]); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: %v", req.GetName(), err)
		}
	}
	apiReq.Name = req.GetName()
	apiReq.Tags[tagCSIVolumeName] = req.GetName()
	apiReq.SizeGib, err = sizeGiB(req.GetCapacityRange(), apiReq.Type)
	if err != nil {
		return nil, err
	}
	if src := req.GetVolumeContentSource(); src != nil {
		switch {
		case src.GetSnapshot() != nil:
			apiReq.SnapshotId = src.GetSnapshot().GetSnapshotId()
		case src.GetVolume() != nil:
			apiReq.SourceVolumeId = src.GetVolume().GetVolumeId()
		default:
			return nil, status.Error(codes.InvalidArgument, "CreateVolume: the content source must be a snapshot or a volume")
		}
	}
	apiReq.Requisite = placements(req.GetAccessibilityRequirements().GetRequisite())
	apiReq.Preferred = placements(req.GetAccessibilityRequirements().GetPreferred())

	v, err := c.volumes.CreateVolume(ctx, apiReq)
	if err != nil {
		return nil, apiError(err, "CreateVolume %s", req.GetName())
	}
	klog.InfoS("CreateVolume: created", "name", req.GetName(), "volumeID", v.Id, "zone", v.Zone, "sizeGiB", v.SizeGib, "type", v.Type)
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId:           v.Id,
		CapacityBytes:      v.SizeGib * block.GiB,
		VolumeContext:      p.context,
		ContentSource:      req.GetVolumeContentSource(),
		AccessibleTopology: []*csi.Topology{volumeTopology(v)},
	}}, nil
}

// sizeGiB turns a CSI capacity range into whole GiB (volumes are sized in
// GiB, as on EBS), rounding up.
func sizeGiB(r *csi.CapacityRange, volumeType string) (int64, error) {
	required, limit := r.GetRequiredBytes(), r.GetLimitBytes()
	if required < 0 || limit < 0 {
		return 0, status.Error(codes.InvalidArgument, "capacity range must not be negative")
	}
	if limit > 0 && required > limit {
		return 0, status.Errorf(codes.InvalidArgument, "required bytes %d exceed limit bytes %d", required, limit)
	}
	if required == 0 {
		size := int64(defaultSizeGiB)
		if t, err := block.ParseType(volumeType); err == nil {
			lo, hi := block.SizeRange(t)
			size = max(lo, min(size, hi))
		}
		if limit > 0 && size*block.GiB > limit {
			size = limit / block.GiB
		}
		if size == 0 {
			return 0, status.Errorf(codes.OutOfRange, "limit of %d bytes is below the 1 GiB volume granularity", limit)
		}
		return size, nil
	}
	size := block.BytesToGiB(required)
	// size > limit/GiB is size*GiB > limit without the overflow.
	if limit > 0 && size > limit/block.GiB {
		return 0, status.Errorf(codes.OutOfRange, "volumes are sized in whole GiB: %d bytes rounds up to %d GiB, above the limit of %d bytes", required, size, limit)
	}
	return size, nil
}

func placements(ts []*csi.Topology) []*pb.Placement {
	var out []*pb.Placement
	for _, t := range ts {
		seg := t.GetSegments()
		zone := seg[TopologyZoneKey]
		if zone == "" {
			zone = seg[WellKnownZoneKey]
		}
		out = append(out, &pb.Placement{Zone: zone, Node: seg[TopologyNodeKey]})
	}
	return out
}

// volumeTopology is where the volume can be used: any node of its zone
// when its storage host exports it over the network, its node otherwise.
func volumeTopology(v *pb.Volume) *csi.Topology {
	if v.Zonal {
		return &csi.Topology{Segments: map[string]string{TopologyZoneKey: v.Zone}}
	}
	return &csi.Topology{Segments: map[string]string{TopologyZoneKey: v.Zone, TopologyNodeKey: v.Node}}
}

func (c *ControllerService) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "DeleteVolume: volume id is required")
	}
	resp, err := c.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: req.GetVolumeId()})
	if err != nil {
		return nil, apiError(err, "DeleteVolume %s", req.GetVolumeId())
	}
	klog.InfoS("DeleteVolume", "volumeID", req.GetVolumeId(), "existed", resp.Deleted)
	return &csi.DeleteVolumeResponse{}, nil
}

func (c *ControllerService) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetNodeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "ControllerPublishVolume: volume id and node id are required")
	}
	if req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "ControllerPublishVolume: volume capability is required")
	}
	if err := validateCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "ControllerPublishVolume %s: %v", req.GetVolumeId(), err)
	}
	a, err := c.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: req.GetVolumeId(), NodeId: req.GetNodeId(), ReadOnly: req.GetReadonly()})
	if err != nil {
		return nil, apiError(err, "ControllerPublishVolume %s to node %s", req.GetVolumeId(), req.GetNodeId())
	}
	klog.InfoS("ControllerPublishVolume: attached", "volumeID", req.GetVolumeId(), "nodeID", req.GetNodeId())
	return &csi.ControllerPublishVolumeResponse{PublishContext: map[string]string{"attachedAt": a.AttachTime.AsTime().Format("2006-01-02T15:04:05Z")}}, nil
}

func (c *ControllerService) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "ControllerUnpublishVolume: volume id is required")
	}
	nodes := []string{req.GetNodeId()}
	if req.GetNodeId() == "" {
		v, err := c.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: req.GetVolumeId()})
		if status.Code(err) == codes.NotFound {
			return &csi.ControllerUnpublishVolumeResponse{}, nil
		}
		if err != nil {
			return nil, apiError(err, "ControllerUnpublishVolume %s", req.GetVolumeId())
		}
		nodes = nodes[:0]
		for _, a := range v.Attachments {
			nodes = append(nodes, a.NodeId)
		}
	}
	for _, n := range nodes {
		_, err := c.volumes.DetachVolume(ctx, &pb.DetachVolumeRequest{VolumeId: req.GetVolumeId(), NodeId: n})
		// A volume that no longer exists is detached everywhere (CSI: return OK).
		if err != nil && status.Code(err) != codes.NotFound {
			return nil, apiError(err, "ControllerUnpublishVolume %s from node %s", req.GetVolumeId(), n)
		}
	}
	klog.InfoS("ControllerUnpublishVolume: detached", "volumeID", req.GetVolumeId(), "nodes", nodes)
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

func (c *ControllerService) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "ValidateVolumeCapabilities: volume id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "ValidateVolumeCapabilities: volume capabilities are required")
	}
	if _, err := c.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: req.GetVolumeId()}); err != nil {
		return nil, apiError(err, "ValidateVolumeCapabilities %s", req.GetVolumeId())
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters(),
	}}, nil
}

func (c *ControllerService) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	resp, err := c.volumes.ListVolumes(ctx, &pb.ListVolumesRequest{PageSize: req.GetMaxEntries(), PageToken: req.GetStartingToken()})
	if err != nil {
		return nil, apiError(err, "ListVolumes")
	}
	out := &csi.ListVolumesResponse{NextToken: resp.NextPageToken}
	for _, v := range resp.Volumes {
		out.Entries = append(out.Entries, &csi.ListVolumesResponse_Entry{Volume: csiVolume(v), Status: volumeStatus(v)})
	}
	return out, nil
}

func (c *ControllerService) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "ControllerGetVolume: volume id is required")
	}
	v, err := c.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: req.GetVolumeId()})
	if err != nil {
		return nil, apiError(err, "ControllerGetVolume %s", req.GetVolumeId())
	}
	return &csi.ControllerGetVolumeResponse{Volume: csiVolume(v), Status: &csi.ControllerGetVolumeResponse_VolumeStatus{
		PublishedNodeIds: volumeStatus(v).PublishedNodeIds, VolumeCondition: volumeCondition(v),
	}}, nil
}

func csiVolume(v *pb.Volume) *csi.Volume {
	return &csi.Volume{VolumeId: v.Id, CapacityBytes: v.SizeGib * block.GiB, AccessibleTopology: []*csi.Topology{volumeTopology(v)}}
}

func volumeStatus(v *pb.Volume) *csi.ListVolumesResponse_VolumeStatus {
	st := &csi.ListVolumesResponse_VolumeStatus{VolumeCondition: volumeCondition(v)}
	for _, a := range v.Attachments {
		st.PublishedNodeIds = append(st.PublishedNodeIds, a.NodeId)
	}
	return st
}

func volumeCondition(v *pb.Volume) *csi.VolumeCondition {
	if v.State == pb.VolumeState_VOLUME_STATE_ERROR {
		return &csi.VolumeCondition{Abnormal: true, Message: fmt.Sprintf("volume %s is in state error: %s", v.Id, v.StateReason)}
	}
	return &csi.VolumeCondition{Message: fmt.Sprintf("volume %s is %s", v.Id, v.State.Word())}
}

// GetCapacity reports the free space of the pools in the requested
// topology. Pools are thin: a volume's image takes space only as it is
// written, and CreateVolume accepts any size its type allows, so the
// maximum volume size is the type's largest (the scheduler compares a
// claim against it when CSIStorageCapacity is published), while the
// available capacity is the pools' real free space, for operators.
func (c *ControllerService) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	typ, err := block.ParseType(req.GetParameters()[paramType])
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "GetCapacity: %v", err)
	}
	var zone, node string
	if seg := req.GetAccessibleTopology().GetSegments(); seg != nil {
		zone, node = seg[TopologyZoneKey], seg[TopologyNodeKey]
		if zone == "" {
			zone = seg[WellKnownZoneKey]
		}
	}
	resp, err := c.pools.ListPools(ctx, &pb.ListPoolsRequest{Zone: zone, Node: node})
	if err != nil {
		return nil, apiError(err, "GetCapacity")
	}
	out := &csi.GetCapacityResponse{}
	for _, p := range resp.Pools {
		out.AvailableCapacity += p.FreeBytes
	}
	if len(resp.Pools) > 0 {
		_, maxGiB := block.SizeRange(typ)
		out.MaximumVolumeSize = wrapperInt64(maxGiB << 30)
	}
	return out, nil
}

func (c *ControllerService) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" || req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "CreateSnapshot: name and source volume id are required")
	}
	tags := map[string]string{tagCSIVolumeName: req.GetName()}
	for k, v := range req.GetParameters() {
		lk := strings.ToLower(k)
		switch {
		case strings.HasPrefix(lk, tagSpecPrefix):
			tk, tv, ok := strings.Cut(v, "=")
			if !ok {
				return nil, status.Errorf(codes.InvalidArgument, "CreateSnapshot: parameter %s: %q is not a tag; write it as key=value", k, v)
			}
			tags[tk] = tv
		case strings.HasPrefix(lk, k8sParamPrefix):
		default:
			return nil, status.Errorf(codes.InvalidArgument, "CreateSnapshot: unknown VolumeSnapshotClass parameter %q; known: tagSpecification_<n>", k)
		}
	}
	sn, err := c.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{Name: req.GetName(), VolumeId: req.GetSourceVolumeId(), Tags: tags})
	if err != nil {
		return nil, apiError(err, "CreateSnapshot %s of volume %s", req.GetName(), req.GetSourceVolumeId())
	}
	klog.InfoS("CreateSnapshot: created", "name", req.GetName(), "snapshotID", sn.Id, "volumeID", sn.VolumeId)
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(sn)}, nil
}

func csiSnapshot(sn *pb.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId: sn.Id, SourceVolumeId: sn.VolumeId, SizeBytes: sn.SizeGib * block.GiB,
		CreationTime: timestamppb.New(sn.CreateTime.AsTime()), ReadyToUse: sn.State == pb.SnapshotState_SNAPSHOT_STATE_COMPLETED,
	}
}

func (c *ControllerService) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "DeleteSnapshot: snapshot id is required")
	}
	if _, err := c.snapshots.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{SnapshotId: req.GetSnapshotId()}); err != nil {
		return nil, apiError(err, "DeleteSnapshot %s", req.GetSnapshotId())
	}
	klog.InfoS("DeleteSnapshot", "snapshotID", req.GetSnapshotId())
	return &csi.DeleteSnapshotResponse{}, nil
}

func (c *ControllerService) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "GetSnapshot: snapshot id is required")
	}
	sn, err := c.snapshots.DescribeSnapshot(ctx, &pb.DescribeSnapshotRequest{SnapshotId: req.GetSnapshotId()})
	if err != nil {
		return nil, apiError(err, "GetSnapshot %s", req.GetSnapshotId())
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(sn)}, nil
}

func (c *ControllerService) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	apiReq := &pb.ListSnapshotsRequest{VolumeId: req.GetSourceVolumeId(), PageSize: req.GetMaxEntries(), PageToken: req.GetStartingToken()}
	if req.GetSnapshotId() != "" {
		apiReq.SnapshotIds = []string{req.GetSnapshotId()}
	}
	resp, err := c.snapshots.ListSnapshots(ctx, apiReq)
	if err != nil {
		return nil, apiError(err, "ListSnapshots")
	}
	out := &csi.ListSnapshotsResponse{NextToken: resp.NextPageToken}
	for _, sn := range resp.Snapshots {
		out.Entries = append(out.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(sn)})
	}
	return out, nil
}

func (c *ControllerService) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "ControllerExpandVolume: volume id is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "ControllerExpandVolume: capacity range is required")
	}
	if req.GetVolumeCapability() != nil {
		if err := validateCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "ControllerExpandVolume %s: %v", req.GetVolumeId(), err)
		}
	}
	size, err := sizeGiB(req.GetCapacityRange(), "")
	if err != nil {
		return nil, err
	}
	cur, err := c.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: req.GetVolumeId()})
	if err != nil {
		return nil, apiError(err, "ControllerExpandVolume %s", req.GetVolumeId())
	}
	if size < cur.SizeGib {
		// Kubernetes may ask for less than the volume already has (rounding):
		// it is already big enough.
		size = cur.SizeGib
	}
	v, err := c.volumes.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeId: req.GetVolumeId(), SizeGib: size})
	if err != nil {
		return nil, apiError(err, "ControllerExpandVolume %s", req.GetVolumeId())
	}
	klog.InfoS("ControllerExpandVolume: resized", "volumeID", v.Id, "sizeGiB", v.SizeGib)
	// The node always has work to do: the loop device must see the new size,
	// and a file system must grow into it.
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: v.SizeGib * block.GiB, NodeExpansionRequired: true}, nil
}

func (c *ControllerService) ControllerModifyVolume(ctx context.Context, req *csi.ControllerModifyVolumeRequest) (*csi.ControllerModifyVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "ControllerModifyVolume: volume id is required")
	}
	mreq, err := parseMutableParams(req.GetMutableParameters())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "ControllerModifyVolume %s: %v", req.GetVolumeId(), err)
	}
	mreq.VolumeId = req.GetVolumeId()
	v, err := c.volumes.ModifyVolume(ctx, mreq)
	if err != nil {
		return nil, apiError(err, "ControllerModifyVolume %s", req.GetVolumeId())
	}
	klog.InfoS("ControllerModifyVolume: modified", "volumeID", v.Id, "type", v.Type, "iops", v.Iops, "throughputMiBps", v.ThroughputMibps)
	return &csi.ControllerModifyVolumeResponse{}, nil
}

// encryptable refuses what Stowage's file-level encryption (ext4 fscrypt)
// cannot carry: raw block volumes and other file systems.
func encryptable(caps []*csi.VolumeCapability, paramFS string) error {
	for _, c := range caps {
		if c.GetBlock() != nil {
			return fmt.Errorf("encrypted volumes cannot be raw block (volumeMode: Block): Stowage encrypts with ext4 file-system encryption, as its nodes have no device-mapper for dm-crypt")
		}
		fs := strings.ToLower(c.GetMount().GetFsType())
		if fs == "" {
			fs = paramFS
		}
		if fs != "" && fs != "ext4" {
			return fmt.Errorf("encrypted volumes must use ext4 (csi.storage.k8s.io/fstype: ext4), not %s: Stowage encrypts with ext4 file-system encryption", fs)
		}
	}
	return nil
}
