package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/block"
	"github.com/stowage-io/stowage/internal/faults"
	"github.com/stowage-io/stowage/internal/store"
)

const maxNameLen = 128

// CreateVolume makes a sparse image in a pool of the requested zone, from
// nothing, from a snapshot, or as a clone of another volume.
func (s *Server) CreateVolume(ctx context.Context, req *pb.CreateVolumeRequest) (*pb.Volume, error) {
	if len(req.Name) > maxNameLen {
		return nil, status.Errorf(codes.InvalidArgument, "volume name is %d characters long; at most %d are allowed", len(req.Name), maxNameLen)
	}
	if req.SnapshotId != "" && req.SourceVolumeId != "" {
		return nil, status.Error(codes.InvalidArgument, "give a snapshot id or a source volume id, not both")
	}
	if (req.Encrypted || req.KmsKeyId != "") && s.kms == nil {
		return nil, status.Error(codes.FailedPrecondition,
			"this server runs without a KMS, so it cannot make encrypted volumes: remove encrypted/kmsKeyId from the request or StorageClass")
	}
	perf, err := block.Resolve(block.Request{
		Type: req.Type, SizeGiB: req.SizeGib, IOPS: req.Iops, IOPSPerGB: req.IopsPerGb,
		AllowAutoIOPSPerGBIncrease: req.AllowAutoIopsPerGbIncrease, ThroughputMiBps: req.ThroughputMibps,
	})
	if err != nil {
		return nil, invalid(err)
	}

	if req.Name != "" {
		unlock, err := s.lock(ctx, "volume name "+req.Name, "volume-name/"+req.Name)
		if err != nil {
			return nil, err
		}
		defer unlock()
		if existing, err := s.volumeByName(ctx, req.Name); err != nil {
			return nil, err
		} else if existing != nil {
			if existing.RequestKey != requestKey(req) {
				return nil, status.Errorf(codes.AlreadyExists,
					"volume name %q is already used by %s, created with other parameters (%s)", req.Name, existing.ID, existing.RequestKey)
			}
			return s.volumeProto(existing), nil
		}
	}

	// The source of a restore or clone is locked until the copy is made, so
	// that a delete of the snapshot or volume cannot remove it under the
	// copy. Lock order is name, then source, then the new id: every other
	// operation takes at most one of these before the others.
	switch {
	case req.SnapshotId != "":
		unlockSrc, err := s.lock(ctx, "snapshot "+req.SnapshotId, req.SnapshotId)
		if err != nil {
			return nil, err
		}
		defer unlockSrc()
	case req.SourceVolumeId != "":
		unlockSrc, err := s.lock(ctx, "volume "+req.SourceVolumeId, req.SourceVolumeId)
		if err != nil {
			return nil, err
		}
		defer unlockSrc()
	}

	poolName, source, err := s.placeVolume(ctx, req, perf.SizeGiB)
	if err != nil {
		return nil, err
	}
	enc, err := s.volumeEncryption(ctx, req)
	if err != nil {
		return nil, err
	}
	p := s.pools.get(poolName)
	id := newID("vol")
	// The new id is locked until the create ends. Nothing else knows the id
	// before the record is in; the lock keeps it so should that change.
	unlockID, err := s.lock(ctx, "volume "+id, id)
	if err != nil {
		return nil, err
	}
	defer unlockID()
	v := &volumeRecord{
		ID: id, Name: req.Name, RequestKey: requestKey(req), Pool: poolName, Zone: p.Zone(), Node: p.Node(),
		SizeGiB: perf.SizeGiB, Type: string(perf.Type), IOPS: perf.IOPS, Throughput: perf.ThroughputMiBps,
		State: StateAvailable, Tags: req.Tags, SnapshotID: req.SnapshotId, SourceVolumeID: req.SourceVolumeId,
		MultiAttach: req.MultiAttach, Encryption: enc, Created: time.Now().UTC(),
	}
	// Restores and clones have crash points of their own: their copy is a
	// different step from making an empty image.
	op := "create-volume"
	switch {
	case req.SnapshotId != "":
		op = "restore-volume"
	case req.SourceVolumeId != "":
		op = "clone-volume"
	}

	// Write order: the image first, then one commit that records the volume
	// available. The pool fills the image under a temp name in its tmp/
	// directory, fsyncs it, renames it to the final id-based name and
	// fsyncs the directory, so once this returns the image and its name are
	// durable. A crash before the commit leaves an image that no record
	// knows (removed by Reconcile at the next start) or a temp file (removed
	// by agent.Open); a crash after it leaves a finished volume, which the
	// retry finds by name.
	size := perf.SizeGiB * block.GiB
	switch {
	case req.SnapshotId != "":
		err = p.CreateImageFromSnapshot(ctx, v.ID, source, size)
	case req.SourceVolumeId != "":
		err = p.CloneImage(ctx, v.ID, source, size)
	default:
		err = p.CreateImage(ctx, v.ID, size)
	}
	if err != nil {
		if !errors.Is(err, agent.ErrExists) {
			// A failed fill removes its temp file itself, but a failed sync
			// of the directory leaves the image under its final name.
			s.discardImage(p, v)
		}
		return nil, s.poolError(err, poolName, "create image for volume %s in pool %s", v.ID, poolName)
	}
	faults.Point(op + ":image-created")

	err = s.store.Update(ctx, func(tx store.Tx) error {
		if v.Name != "" {
			// The name lock serialises creates of one name in this server;
			// this keeps the name index one-to-one whoever else writes.
			cur, err := tx.Get(bucketVolumeNames, v.Name)
			switch {
			case err == nil:
				if _, err := tx.Get(bucketVolumes, string(cur)); err == nil {
					return status.Errorf(codes.Aborted, "another create of volume name %q finished first (as %s); retry", v.Name, cur)
				} else if !errors.Is(err, store.ErrNotFound) {
					return err
				}
			case !errors.Is(err, store.ErrNotFound):
				return err
			}
			if err := tx.Put(bucketVolumeNames, v.Name, []byte(v.ID)); err != nil {
				return err
			}
		}
		return store.PutJSON(tx, bucketVolumes, v.ID, v)
	})
	if err != nil {
		s.rollbackUnrecorded(p, v)
		return nil, internal(err, "record volume %s", v.ID)
	}
	faults.Point(op + ":recorded")
	s.log.Info("volume created", "volume", v.ID, "name", v.Name, "pool", poolName, "zone", v.Zone,
		"sizeGiB", v.SizeGiB, "type", v.Type, "iops", v.IOPS, "throughputMiBps", v.Throughput,
		"snapshot", v.SnapshotID, "sourceVolume", v.SourceVolumeID)
	return s.volumeProto(v), nil
}

// rollbackUnrecorded removes the image of a create whose commit failed. A
// failed Update does not always mean nothing was written (a store can lose
// its connection after the commit went through), so the image goes only
// when the record is certainly absent; otherwise it stays, and either the
// record owns it or the next start's Reconcile removes it. It runs on a
// fresh context because the request's may be what failed.
func (s *Server) rollbackUnrecorded(p Pool, v *volumeRecord) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.getVolume(ctx, v.ID); status.Code(err) != codes.NotFound {
		s.log.Error("rollback: cannot tell whether the record was written; the image stays for the next start's reconcile",
			"volume", v.ID, "err", err)
		return
	}
	s.discardImage(p, v)
}

// discardImage removes the image of a volume that has no record; a failure
// is logged and left to the next start's Reconcile, which removes images
// that no record knows.
func (s *Server) discardImage(p Pool, v *volumeRecord) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.DeleteImage(ctx, v.ID); err != nil {
		s.log.Error("delete image of an unrecorded volume failed; the next start's reconcile removes it",
			"volume", v.ID, "pool", v.Pool, "err", err)
	}
}

func (s *Server) forgetVolume(ctx context.Context, v *volumeRecord) error {
	return s.store.Update(ctx, func(tx store.Tx) error { return forget(tx, bucketVolumes, bucketVolumeNames, v.ID, v.Name) })
}

func (s *Server) volumeByName(ctx context.Context, name string) (*volumeRecord, error) {
	return byName[volumeRecord](ctx, s.store, bucketVolumes, bucketVolumeNames, name)
}

// placeVolume picks the pool for a new volume and resolves its source.
// Restores and clones stay in the pool of their source: that is what makes
// them O(1) reflinks.
func (s *Server) placeVolume(ctx context.Context, req *pb.CreateVolumeRequest, sizeGiB int64) (pool, source string, err error) {
	switch {
	case req.SnapshotId != "":
		sn, err := s.getSnapshot(ctx, req.SnapshotId)
		if err != nil {
			return "", "", err
		}
		if sn.State != SnapshotCompleted {
			return "", "", status.Errorf(codes.FailedPrecondition, "snapshot %s is %s, not completed", sn.ID, sn.State.Word())
		}
		if sizeGiB < sn.SizeGiB {
			return "", "", status.Errorf(codes.InvalidArgument, "volume size %d GiB is smaller than snapshot %s (%d GiB)", sizeGiB, sn.ID, sn.SizeGiB)
		}
		return sn.Pool, sn.ID, s.checkSourcePool(req, sn.Pool, "snapshot "+sn.ID)
	case req.SourceVolumeId != "":
		src, err := s.getVolume(ctx, req.SourceVolumeId)
		if err != nil {
			return "", "", err
		}
		if src.State != StateAvailable && src.State != StateInUse {
			return "", "", status.Errorf(codes.FailedPrecondition, "source volume %s is %s", src.ID, src.State.Word())
		}
		if sizeGiB < src.SizeGiB {
			return "", "", status.Errorf(codes.InvalidArgument, "volume size %d GiB is smaller than source volume %s (%d GiB)", sizeGiB, src.ID, src.SizeGiB)
		}
		return src.Pool, src.ID, s.checkSourcePool(req, src.Pool, "volume "+src.ID)
	}
	candidates := s.candidatePools(req)
	if len(candidates) == 0 {
		return "", "", s.noPoolError(req)
	}
	return candidates[0], "", nil
}

func (s *Server) checkSourcePool(req *pb.CreateVolumeRequest, pool, what string) error {
	if _, err := s.pool(pool); err != nil {
		return err
	}
	if !s.allowed(req, pool) {
		p := s.pools.get(pool)
		return status.Errorf(codes.ResourceExhausted,
			"%s is stored in zone %s on node %s, outside the requested placement; restore or clone it there (cross-zone copies need the network data path)",
			what, p.Zone(), p.Node())
	}
	return nil
}

// allowed reports whether pool satisfies the zone/node/requisite constraints of req.
func (s *Server) allowed(req *pb.CreateVolumeRequest, pool string) bool {
	if !s.placementMatches(&pb.Placement{Zone: req.Zone, Node: req.Node}, pool) {
		return false
	}
	if len(req.Requisite) == 0 {
		return true
	}
	for _, pl := range req.Requisite {
		if s.placementMatches(pl, pool) {
			return true
		}
	}
	return false
}

// placementMatches reports whether a volume of pool can be used where pl
// says: in its zone, and on its node, or on any node of the zone when
// the pool exports its volumes over the network.
func (s *Server) placementMatches(pl *pb.Placement, pool string) bool {
	p := s.pools.get(pool)
	_, zonal := s.pools.exporter(pool)
	return (pl.Zone == "" || pl.Zone == p.Zone()) && (pl.Node == "" || pl.Node == p.Node() || zonal)
}

// candidatePools lists the allowed pools, preferred ones first, then by free
// space.
func (s *Server) candidatePools(req *pb.CreateVolumeRequest) []string {
	type cand struct {
		name string
		rank int
		free int64
	}
	var cs []cand
	for _, name := range s.pools.list() {
		if !s.allowed(req, name) {
			continue
		}
		rank := len(req.Preferred)
		for i, pl := range req.Preferred {
			if s.placementMatches(pl, name) {
				rank = i
				break
			}
		}
		cs = append(cs, cand{name: name, rank: rank})
	}
	// Free space only breaks ties, so a lone pool is not asked (a statfs
	// per create).
	if len(cs) > 1 {
		for i := range cs {
			if c, err := s.pools.get(cs[i].name).Capacity(); err == nil {
				cs[i].free = c.FreeBytes
			}
		}
	}
	sort.SliceStable(cs, func(i, j int) bool {
		if cs[i].rank != cs[j].rank {
			return cs[i].rank < cs[j].rank
		}
		return cs[i].free > cs[j].free
	})
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.name
	}
	return out
}

func (s *Server) noPoolError(req *pb.CreateVolumeRequest) error {
	var have []string
	for _, name := range s.pools.list() {
		p := s.pools.get(name)
		have = append(have, fmt.Sprintf("%s (zone %s, node %s)", name, p.Zone(), p.Node()))
	}
	want := []string{}
	if req.Zone != "" {
		want = append(want, "zone "+req.Zone)
	}
	if req.Node != "" {
		want = append(want, "node "+req.Node)
	}
	for _, pl := range req.Requisite {
		want = append(want, fmt.Sprintf("one of zone %q/node %q", pl.Zone, pl.Node))
	}
	code := codes.ResourceExhausted
	if req.Zone != "" && len(req.Requisite) == 0 {
		code = codes.InvalidArgument
	}
	return status.Errorf(code, "no storage pool matches %s; pools: %s", strings.Join(want, ", "), strings.Join(have, "; "))
}

func (s *Server) DescribeVolume(ctx context.Context, req *pb.DescribeVolumeRequest) (*pb.Volume, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	v, err := s.getVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	return s.volumeProto(v), nil
}

const defaultPageSize = 100

func (s *Server) ListVolumes(ctx context.Context, req *pb.ListVolumesRequest) (*pb.ListVolumesResponse, error) {
	if req.PageSize < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "page size %d is negative", req.PageSize)
	}
	limit := int(req.PageSize)
	if limit == 0 {
		limit = defaultPageSize
	}
	if req.PageToken != "" {
		if _, err := s.getVolume(ctx, req.PageToken); status.Code(err) == codes.NotFound {
			// A token is the id of the last volume of the previous page; if that
			// volume is gone the page still continues after it, which Scan does.
		} else if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(req.PageToken, "vol-") {
			return nil, status.Errorf(codes.Aborted, "page token %q is not one this server issued", req.PageToken)
		}
	}
	ids := map[string]bool{}
	for _, id := range req.VolumeIds {
		ids[id] = true
	}
	resp := &pb.ListVolumesResponse{}
	err := s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketVolumes, "", req.PageToken, func(key string, value []byte) error {
			var v volumeRecord
			if err := json.Unmarshal(value, &v); err != nil {
				return fmt.Errorf("volume %s: %w", key, err)
			}
			if !volumeMatches(&v, req, ids) {
				return nil
			}
			if len(resp.Volumes) == limit {
				resp.NextPageToken = resp.Volumes[len(resp.Volumes)-1].Id
				return store.ErrStopScan
			}
			resp.Volumes = append(resp.Volumes, s.volumeProto(&v))
			return nil
		})
	})
	if err != nil {
		return nil, internal(err, "list volumes")
	}
	return resp, nil
}

func volumeMatches(v *volumeRecord, req *pb.ListVolumesRequest, ids map[string]bool) bool {
	if len(ids) > 0 && !ids[v.ID] {
		return false
	}
	if req.Zone != "" && v.Zone != req.Zone {
		return false
	}
	if req.State != pb.VolumeState_VOLUME_STATE_UNSPECIFIED && v.State != req.State {
		return false
	}
	if req.Node != "" {
		if _, ok := v.attachment(req.Node); !ok {
			return false
		}
	}
	for k, want := range req.Tags {
		if got, ok := v.Tags[k]; !ok || (want != "" && got != want) {
			return false
		}
	}
	return true
}

func (s *Server) DeleteVolume(ctx context.Context, req *pb.DeleteVolumeRequest) (*pb.DeleteVolumeResponse, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	unlock, err := s.lock(ctx, "volume "+req.VolumeId, req.VolumeId)
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := s.getVolume(ctx, req.VolumeId)
	if status.Code(err) == codes.NotFound {
		return &pb.DeleteVolumeResponse{Deleted: false}, nil
	}
	if err != nil {
		return nil, err
	}
	if len(v.Attachments) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is attached to node %s; detach it first",
			v.ID, strings.Join(v.attachedNodes(), ", "))
	}
	if err := s.deleteVolume(ctx, v); err != nil {
		return nil, err
	}
	s.log.Info("volume deleted", "volume", v.ID, "name", v.Name, "pool", v.Pool)
	return &pb.DeleteVolumeResponse{Deleted: true}, nil
}

// deleteVolume removes the record (one commit), then the image. The
// commit is the delete: once it is in, the volume is gone for every caller
// and its name is free. A crash after it leaves an image that no record
// knows, which the next start's Reconcile removes; so does a failure to
// remove the image, which is logged and not returned, because a retry would
// find no record and could not do better (a delete of a missing volume
// succeeds).
func (s *Server) deleteVolume(ctx context.Context, v *volumeRecord) error {
	if err := s.forgetVolume(ctx, v); err != nil {
		return internal(err, "delete record of volume %s", v.ID)
	}
	faults.Point("delete-volume:forgotten")
	if p, ok := s.pools.lookup(v.Pool); ok {
		if err := p.DeleteImage(ctx, v.ID); err != nil {
			s.log.Error("volume deleted, but removing its image failed; the next start's reconcile removes it",
				"volume", v.ID, "pool", v.Pool, "err", err)
		}
	}
	if e, ok := s.pools.exporter(v.Pool); ok {
		if f, ok := e.(volumeForgetter); ok {
			f.Forget(v.ID)
		}
	}
	return nil
}

func (s *Server) AttachVolume(ctx context.Context, req *pb.AttachVolumeRequest) (*pb.Attachment, error) {
	if req.VolumeId == "" || req.NodeId == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and node id are required")
	}
	// The node's lock too: the attach limit counts the node's volumes, and two
	// attaches of different volumes must not both see room for one more.
	unlockNode, err := s.lock(ctx, "node "+req.NodeId, "node/"+req.NodeId)
	if err != nil {
		return nil, err
	}
	defer unlockNode()
	v, unlock, err := s.lockVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	defer unlock()
	node, err := s.getNode(ctx, req.NodeId)
	if err != nil {
		return nil, err
	}
	p, err := s.pool(v.Pool)
	if err != nil {
		return nil, err
	}
	if a, ok := v.attachment(node.ID); ok {
		if a.ReadOnly != req.ReadOnly {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is already attached to node %s with read-only=%t", v.ID, node.ID, a.ReadOnly)
		}
		// The exporter forgets its exports when it restarts; declaring
		// again is how a retried publish repairs that.
		if err := s.export(ctx, v, a); err != nil {
			return nil, err
		}
		if !a.network() && a.LocalTarget == "" {
			// Recorded by a server from before the local handoff: the
			// node needs a target and a secret to get the image.
			if a, err = s.upgradeLocalAttachment(ctx, v, node.ID); err != nil {
				return nil, err
			}
		}
		return s.attachmentProto(v, a), nil
	}
	if v.State != StateAvailable && v.State != StateInUse {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is %s and cannot be attached", v.ID, v.State.Word())
	}
	if len(v.Attachments) > 0 && !v.MultiAttach {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %s is already attached to node %s (a block volume is attached to one node at a time); detach it there first",
			v.ID, strings.Join(v.attachedNodes(), ", "))
	}
	_, networked := s.pools.exporter(v.Pool)
	_, inProcess := p.(LocalPool)
	local := p.Node() == node.ID && inProcess
	if p.Node() == node.ID && !inProcess && !networked {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %s is in pool %s on the storage host of node %s (stowage agent), which exports nothing (no --nbd-listen): a storage host's images are never handed over by path, so its volumes attach over NBD only, even on its own node; start the agent with --nbd-listen",
			v.ID, v.Pool, p.Node())
	}
	if !local {
		if !networked {
			return nil, status.Errorf(codes.FailedPrecondition,
				"volume %s is stored on node %s, whose storage host does not export volumes over the network (its server has no --nbd-listen), so it can only be attached there, not on node %s",
				v.ID, p.Node(), node.ID)
		}
		if node.Zone != "" && node.Zone != v.Zone {
			return nil, status.Errorf(codes.FailedPrecondition,
				"volume %s is in zone %s and node %s in zone %s: a volume attaches only to nodes of its own zone", v.ID, v.Zone, node.ID, node.Zone)
		}
	}
	if node.MaxVolumes > 0 {
		n, err := s.countAttached(ctx, node.ID)
		if err != nil {
			return nil, err
		}
		if n >= int(node.MaxVolumes) {
			return nil, status.Errorf(codes.ResourceExhausted, "node %s already has %d volumes attached, its limit", node.ID, n)
		}
	}
	a := attachmentRecord{NodeID: node.ID, ReadOnly: req.ReadOnly, Attached: time.Now().UTC()}
	if local {
		err = s.newLocalAttachment(v.ID, &a)
	} else {
		err = s.newNetworkAttachment(v, &a)
	}
	if err != nil {
		return nil, err
	}
	// The export first: a crash after it leaves an export no record
	// names, which ends with the exporter; a record whose export failed
	// would send the node to an export that is not there.
	if err := s.export(ctx, v, a); err != nil {
		return nil, err
	}
	v.Attachments = append(v.Attachments, a)
	v.State = StateInUse
	if err := s.putVolume(ctx, v); err != nil {
		s.unexport(v, a)
		return nil, err
	}
	if a.network() {
		s.log.Info("volume attached over the network", "volume", v.ID, "node", node.ID, "readOnly", req.ReadOnly,
			"export", a.ExportName, "generation", a.Generation, "storageHost", p.Node())
	} else {
		s.log.Info("volume attached", "volume", v.ID, "node", node.ID, "readOnly", req.ReadOnly)
	}
	return s.attachmentProto(v, a), nil
}

// upgradeLocalAttachment gives the local attachment of v to node, made by
// a server from before the local handoff, its target and secret.
func (s *Server) upgradeLocalAttachment(ctx context.Context, v *volumeRecord, node string) (attachmentRecord, error) {
	for i := range v.Attachments {
		if v.Attachments[i].NodeID == node {
			if err := s.newLocalAttachment(v.ID, &v.Attachments[i]); err != nil {
				return attachmentRecord{}, err
			}
			if err := s.putVolume(ctx, v); err != nil {
				return attachmentRecord{}, err
			}
			return v.Attachments[i], nil
		}
	}
	return attachmentRecord{}, status.Errorf(codes.Internal, "volume %s has no attachment to node %s", v.ID, node)
}

func (s *Server) DetachVolume(ctx context.Context, req *pb.DetachVolumeRequest) (*pb.DetachVolumeResponse, error) {
	if req.VolumeId == "" || req.NodeId == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and node id are required")
	}
	v, unlock, err := s.lockVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	defer unlock()
	gone, ok := v.attachment(req.NodeId)
	if !ok {
		return &pb.DetachVolumeResponse{Detached: false}, nil
	}
	kept := v.Attachments[:0]
	for _, a := range v.Attachments {
		if a.NodeID != req.NodeId {
			kept = append(kept, a)
		}
	}
	v.Attachments = kept
	if len(kept) == 0 && v.State == StateInUse {
		v.State = StateAvailable
	}
	// The export ends first: once the record says detached, the node may
	// be attached elsewhere, and nothing of this attachment may still write.
	if err := s.unexport(v, gone); err != nil {
		return nil, err
	}
	if err := s.putVolume(ctx, v); err != nil {
		return nil, err
	}
	s.log.Info("volume detached", "volume", v.ID, "node", req.NodeId)
	return &pb.DetachVolumeResponse{Detached: true}, nil
}

func (s *Server) ResizeVolume(ctx context.Context, req *pb.ResizeVolumeRequest) (*pb.Volume, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	v, unlock, err := s.lockVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if v.State != StateAvailable && v.State != StateInUse {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is %s and cannot be resized", v.ID, v.State.Word())
	}
	if req.SizeGib == v.SizeGiB {
		return s.volumeProto(v), nil
	}
	if req.SizeGib < v.SizeGiB {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s is %d GiB; it can grow but not shrink to %d GiB", v.ID, v.SizeGiB, req.SizeGib)
	}
	perf, err := block.Resize(v.perf(), req.SizeGib)
	if err != nil {
		return nil, invalid(err)
	}
	p, err := s.pool(v.Pool)
	if err != nil {
		return nil, err
	}
	if err := p.ResizeImage(ctx, v.ID, perf.SizeGiB*block.GiB); err != nil {
		return nil, s.poolError(err, v.Pool, "grow image of volume %s", v.ID)
	}
	// A crash here leaves the image larger than the record says; the
	// retry (the resizer's, or the user's) grows it to the same size, which
	// is success, and records it.
	faults.Point("resize-volume:image-grown")
	// Before the record: if this fails, the retry grows the image to the
	// same size and gets here again.
	if err := s.refreshExports(ctx, v); err != nil {
		return nil, err
	}
	old := v.SizeGiB
	v.setPerf(perf)
	if err := s.putVolume(ctx, v); err != nil {
		return nil, err
	}
	s.log.Info("volume resized", "volume", v.ID, "fromGiB", old, "toGiB", v.SizeGiB, "iops", v.IOPS)
	return s.volumeProto(v), nil
}

func (s *Server) ModifyVolume(ctx context.Context, req *pb.ModifyVolumeRequest) (*pb.Volume, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	v, unlock, err := s.lockVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	defer unlock()
	perf, err := block.Modify(v.perf(), req.Type, req.Iops, req.ThroughputMibps)
	if err != nil {
		return nil, invalid(err)
	}
	old := v.perf()
	v.setPerf(perf)
	if len(req.AddTags) > 0 && v.Tags == nil {
		v.Tags = map[string]string{}
	}
	for k, val := range req.AddTags {
		v.Tags[k] = val
	}
	if err := s.putVolume(ctx, v); err != nil {
		return nil, err
	}
	// Network attachments get the new limits from their exporter (the
	// node's throttle does not see their I/O).
	for _, a := range v.Attachments {
		if err := s.export(ctx, v, a); err != nil {
			s.log.Error("volume modified, but its exporter could not apply the new limits", "volume", v.ID, "node", a.NodeID, "err", err)
		}
	}
	s.log.Info("volume modified", "volume", v.ID, "fromType", old.Type, "toType", v.Type,
		"fromIOPS", old.IOPS, "toIOPS", v.IOPS, "fromThroughput", old.ThroughputMiBps, "toThroughput", v.Throughput)
	return s.volumeProto(v), nil
}

// lockVolume takes the volume's lock and then reads it, so the record cannot
// change under the caller until it unlocks.
func (s *Server) lockVolume(ctx context.Context, id string) (*volumeRecord, func(), error) {
	unlock, err := s.lock(ctx, "volume "+id, id)
	if err != nil {
		return nil, nil, err
	}
	v, err := s.getVolume(ctx, id)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return v, unlock, nil
}

func (v *volumeRecord) perf() block.Performance {
	return block.Performance{Type: block.Type(v.Type), SizeGiB: v.SizeGiB, IOPS: v.IOPS, ThroughputMiBps: v.Throughput}
}

func (v *volumeRecord) setPerf(p block.Performance) {
	v.Type, v.SizeGiB, v.IOPS, v.Throughput = string(p.Type), p.SizeGiB, p.IOPS, p.ThroughputMiBps
}

func (s *Server) countAttached(ctx context.Context, node string) (int, error) {
	n := 0
	err := s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketVolumes, "", "", func(_ string, value []byte) error {
			var v volumeRecord
			if err := json.Unmarshal(value, &v); err != nil {
				return err
			}
			if _, ok := v.attachment(node); ok {
				n++
			}
			return nil
		})
	})
	if err != nil {
		return 0, internal(err, "count attachments of node %s", node)
	}
	return n, nil
}
