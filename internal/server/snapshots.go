package server

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/block"
	"github.com/stowage-io/stowage/internal/faults"
	"github.com/stowage-io/stowage/internal/store"
)

// CreateSnapshot captures a crash-consistent point-in-time copy of a volume,
// attached or not. It is idempotent by name.
func (s *Server) CreateSnapshot(ctx context.Context, req *pb.CreateSnapshotRequest) (*pb.Snapshot, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume id is required")
	}
	if len(req.Name) > maxNameLen {
		return nil, status.Errorf(codes.InvalidArgument, "snapshot name is %d characters long; at most %d are allowed", len(req.Name), maxNameLen)
	}
	keys := []string{}
	if req.Name != "" {
		keys = append(keys, "snapshot-name/"+req.Name)
	}
	unlock, err := s.lock(ctx, "volume "+req.VolumeId, append(keys, req.VolumeId)...)
	if err != nil {
		return nil, err
	}
	defer unlock()

	if req.Name != "" {
		existing, err := s.snapshotByName(ctx, req.Name)
		if err != nil {
			return nil, err
		}
		if existing != nil {
			if existing.VolumeID != req.VolumeId {
				return nil, status.Errorf(codes.AlreadyExists, "snapshot name %q is already used by %s of volume %s, not of volume %s",
					req.Name, existing.ID, existing.VolumeID, req.VolumeId)
			}
			return existing.toProto(), nil
		}
	}
	v, err := s.getVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	if v.State != StateAvailable && v.State != StateInUse {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is %s; only available or in-use volumes can be snapshotted", v.ID, v.State.Word())
	}
	p, err := s.pool(v.Pool)
	if err != nil {
		return nil, err
	}
	id := newID("snap")
	// Locked until the create ends, so that a delete of the pending snapshot
	// cannot be undone by this create writing its record back.
	unlockID, err := s.lock(ctx, "snapshot "+id, id)
	if err != nil {
		return nil, err
	}
	defer unlockID()
	sn := &snapshotRecord{
		ID: id, Name: req.Name, VolumeID: v.ID, Pool: v.Pool, Zone: v.Zone,
		SizeGiB: v.SizeGiB, SizeBytes: v.SizeGiB * block.GiB, State: SnapshotPending,
		Tags: req.Tags, Description: req.Description, Encryption: v.Encryption, Created: time.Now().UTC(),
	}
	err = s.store.Update(ctx, func(tx store.Tx) error {
		if sn.Name != "" {
			if err := tx.Put(bucketSnapshotNames, sn.Name, []byte(sn.ID)); err != nil {
				return err
			}
		}
		return store.PutJSON(tx, bucketSnapshots, sn.ID, sn)
	})
	if err != nil {
		return nil, internal(err, "record snapshot %s", sn.ID)
	}
	faults.Point("create-snapshot:recorded")
	start := time.Now()
	if err := p.SnapshotImage(ctx, v.ID, sn.ID); err != nil {
		s.rollbackSnapshot(sn)
		return nil, s.poolError(err, v.Pool, "snapshot image of volume %s", v.ID)
	}
	faults.Point("create-snapshot:image-created")
	took := time.Since(start)
	sn.State = SnapshotCompleted
	if err := s.putSnapshot(ctx, sn); err != nil {
		s.rollbackSnapshot(sn)
		return nil, err
	}
	s.log.Info("snapshot created", "snapshot", sn.ID, "name", sn.Name, "volume", v.ID, "mode", p.CloneMode(), "took", took)
	return sn.toProto(), nil
}

func (s *Server) putSnapshot(ctx context.Context, sn *snapshotRecord) error {
	return putRecord(ctx, s.store, bucketSnapshots, "snapshot", sn.ID, sn)
}

func (s *Server) rollbackSnapshot(sn *snapshotRecord) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if p, ok := s.pools.lookup(sn.Pool); ok {
		if err := p.DeleteSnapshot(ctx, sn.ID); err != nil {
			s.log.Error("rollback: delete snapshot image failed; the next start removes it", "snapshot", sn.ID, "err", err)
			return
		}
	}
	if err := s.forgetSnapshot(ctx, sn); err != nil {
		s.log.Error("rollback: delete snapshot record failed; the next start removes it", "snapshot", sn.ID, "err", err)
	}
}

func (s *Server) forgetSnapshot(ctx context.Context, sn *snapshotRecord) error {
	return s.store.Update(ctx, func(tx store.Tx) error { return forget(tx, bucketSnapshots, bucketSnapshotNames, sn.ID, sn.Name) })
}

func (s *Server) snapshotByName(ctx context.Context, name string) (*snapshotRecord, error) {
	return byName[snapshotRecord](ctx, s.store, bucketSnapshots, bucketSnapshotNames, name)
}

func (s *Server) DescribeSnapshot(ctx context.Context, req *pb.DescribeSnapshotRequest) (*pb.Snapshot, error) {
	if req.SnapshotId == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	sn, err := s.getSnapshot(ctx, req.SnapshotId)
	if err != nil {
		return nil, err
	}
	return sn.toProto(), nil
}

func (s *Server) ListSnapshots(ctx context.Context, req *pb.ListSnapshotsRequest) (*pb.ListSnapshotsResponse, error) {
	if req.PageSize < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "page size %d is negative", req.PageSize)
	}
	if req.PageToken != "" && !strings.HasPrefix(req.PageToken, "snap-") {
		return nil, status.Errorf(codes.Aborted, "page token %q is not one this server issued", req.PageToken)
	}
	limit := int(req.PageSize)
	if limit == 0 {
		limit = defaultPageSize
	}
	ids := map[string]bool{}
	for _, id := range req.SnapshotIds {
		ids[id] = true
	}
	resp := &pb.ListSnapshotsResponse{}
	err := s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketSnapshots, "", req.PageToken, func(key string, value []byte) error {
			var sn snapshotRecord
			if err := json.Unmarshal(value, &sn); err != nil {
				return fmt.Errorf("snapshot %s: %w", key, err)
			}
			if (len(ids) > 0 && !ids[sn.ID]) || (req.VolumeId != "" && sn.VolumeID != req.VolumeId) {
				return nil
			}
			if len(resp.Snapshots) == limit {
				resp.NextPageToken = resp.Snapshots[len(resp.Snapshots)-1].Id
				return store.ErrStopScan
			}
			resp.Snapshots = append(resp.Snapshots, sn.toProto())
			return nil
		})
	})
	if err != nil {
		return nil, internal(err, "list snapshots")
	}
	return resp, nil
}

func (s *Server) DeleteSnapshot(ctx context.Context, req *pb.DeleteSnapshotRequest) (*pb.DeleteSnapshotResponse, error) {
	if req.SnapshotId == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	unlock, err := s.lock(ctx, "snapshot "+req.SnapshotId, req.SnapshotId)
	if err != nil {
		return nil, err
	}
	defer unlock()
	sn, err := s.getSnapshot(ctx, req.SnapshotId)
	if status.Code(err) == codes.NotFound {
		return &pb.DeleteSnapshotResponse{Deleted: false}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := s.deleteSnapshot(ctx, sn); err != nil {
		return nil, err
	}
	s.log.Info("snapshot deleted", "snapshot", sn.ID, "volume", sn.VolumeID)
	return &pb.DeleteSnapshotResponse{Deleted: true}, nil
}

func (s *Server) deleteSnapshot(ctx context.Context, sn *snapshotRecord) error {
	sn.State = SnapshotDeleting
	if err := s.putSnapshot(ctx, sn); err != nil {
		return err
	}
	faults.Point("delete-snapshot:marked")
	if p, ok := s.pools.lookup(sn.Pool); ok {
		if err := p.DeleteSnapshot(ctx, sn.ID); err != nil {
			return s.poolError(err, sn.Pool, "delete image of snapshot %s", sn.ID)
		}
	}
	if err := s.forgetSnapshot(ctx, sn); err != nil {
		return internal(err, "delete record of snapshot %s", sn.ID)
	}
	return nil
}
