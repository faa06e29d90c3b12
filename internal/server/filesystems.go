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
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/faults"
	"github.com/stowage-io/stowage/internal/files"
	"github.com/stowage-io/stowage/internal/store"
)

// FilePool is a file-tree pool as the server uses it: *files.Tree
// in-process, or a storage host's tree through the agent API
// (agentapi.FileTree). File systems are named by id and directories by
// their path inside the file system, never by a path of the storage host.
type FilePool interface {
	Zone() string
	Node() string
	Quotas() bool
	CreateFileSystem(ctx context.Context, id string) error
	DeleteFileSystem(ctx context.Context, id string) error
	ListFileSystems() ([]string, error)
	Usage(id string) (int64, error)
	// Capacity is the size and free space of the pool's file system.
	Capacity() (total, free int64, err error)
	RootUsage(id, path string) (bytes, inodes int64, err error)
	PlanRoot(id, path string) ([]string, error)
	MakeRoot(ctx context.Context, id string, root files.RootDirectory, quotaBytes int64) error
	SetQuota(id, path string, quotaBytes int64) error
	RemoveDirs(id string, dirs []string) error
	RemoveRoot(id, path string) error
}

// DefaultAccessPointLimit is how many access points a file system may have
// unless Config says otherwise: ten times EFS's long-standing 1,000, which
// capped how many claims one file system could serve.
const DefaultAccessPointLimit = 10000

const (
	bucketFileSystems        = "file-systems"
	bucketFileSystemNames    = "file-system-names"
	bucketAccessPoints       = "access-points"
	bucketAccessPointNames   = "access-point-names"
	bucketFileSystemAPs      = "file-system-access-points" // fsID/apID -> ""
	bucketExportIDs          = "export-ids"                // pool/NNNNN -> apID
	maxAccessPointsListedInE = 10
)

type fileSystemRecord struct {
	ID               string             `json:"id"`
	Name             string             `json:"name,omitempty"`
	RequestKey       string             `json:"requestKey,omitempty"`
	Pool             string             `json:"pool"`
	Node             string             `json:"node"`
	Zone             string             `json:"zone,omitempty"` // One Zone; empty is Standard
	PerformanceMode  string             `json:"performanceMode"`
	ThroughputMode   string             `json:"throughputMode"`
	ProvisionedMiBps int64              `json:"provisionedMiBps,omitempty"`
	State            pb.FileSystemState `json:"state"`
	StateReason      string             `json:"stateReason,omitempty"`
	KMSKeyID         string             `json:"kmsKeyId,omitempty"`
	AccessPoints     int                `json:"accessPoints"`
	AccessPointLimit int                `json:"accessPointLimit"`
	Tags             map[string]string  `json:"tags,omitempty"`
	Created          time.Time          `json:"created"`
	// ExportID is the NFS export of the whole file system (static volumes
	// `fs-…[:/sub/path]` mount it), from the access points' id space.
	ExportID uint16 `json:"exportId,omitempty"`
}

// pseudo is the NFSv4 pseudo path of the whole file system's export.
func (f *fileSystemRecord) pseudo() string { return "/" + f.ID }

// export is the whole file system, without squashing: as an EFS file
// system mounted without an access point, every client user is itself.
func (f *fileSystemRecord) export() files.Export {
	return files.Export{ID: f.ExportID, AccessPointID: f.ID, FileSystemID: f.ID, Dir: "/", Pseudo: f.pseudo()}
}

// exportFileSystem serves f's tree over NFS when its pool is exported.
func (s *Server) exportFileSystem(ctx context.Context, f *fileSystemRecord) error {
	_, pok := s.files.pool(f.Pool)
	ex, eok := s.files.exporter(f.Pool)
	if !pok || !eok || f.ExportID == 0 {
		return nil
	}
	return ex.Export(ctx, f.export())
}

// File system and access point states.
const (
	fsCreating  = pb.FileSystemState_FILE_SYSTEM_STATE_CREATING
	fsAvailable = pb.FileSystemState_FILE_SYSTEM_STATE_AVAILABLE
	fsDeleting  = pb.FileSystemState_FILE_SYSTEM_STATE_DELETING

	apCreating  = pb.AccessPointState_ACCESS_POINT_STATE_CREATING
	apAvailable = pb.AccessPointState_ACCESS_POINT_STATE_AVAILABLE
	apDeleting  = pb.AccessPointState_ACCESS_POINT_STATE_DELETING
)

func (f *fileSystemRecord) toProto(usedBytes int64) *pb.FileSystem {
	class := files.StorageStandard
	if f.Zone != "" {
		class = files.StorageOneZone
	}
	return &pb.FileSystem{
		Id: f.ID, Name: f.Name, State: f.State, StateReason: f.StateReason,
		AvailabilityZone: f.Zone, StorageClass: class, PerformanceMode: f.PerformanceMode,
		ThroughputMode: f.ThroughputMode, ProvisionedThroughputMibps: f.ProvisionedMiBps,
		SizeUsedBytes: usedBytes, Encrypted: f.KMSKeyID != "", KmsKeyId: f.KMSKeyID,
		AccessPointCount: int32(f.AccessPoints), AccessPointLimit: int32(f.AccessPointLimit),
		Tags: f.Tags, CreateTime: timestamppb.New(f.Created), Pool: f.Pool, Node: f.Node,
	}
}

// fsProto adds where the file system and its access points are served
// over NFS (the whole file system at /<fs id>).
func (s *Server) fsProto(f *pb.FileSystem) *pb.FileSystem {
	if _, ok := s.files.exporter(f.Pool); ok {
		f.NfsAddress = s.files.address(f.Pool)
		f.NfsExportPath = "/" + f.Id
	}
	return f
}

func fileSystemRequestKey(r *pb.CreateFileSystemRequest, m files.Modes) string {
	tags := make([]string, 0, len(r.Tags))
	for k, v := range r.Tags {
		tags = append(tags, k+"="+v)
	}
	sort.Strings(tags)
	return fmt.Sprintf("zone=%s perf=%s tput=%s prov=%d enc=%t kms=%s tags=%q",
		r.AvailabilityZone, m.Performance, m.Throughput, m.ProvisionedMi, r.Encrypted, r.KmsKeyId, tags)
}

// CreateFileSystem makes an empty tree in a file-tree pool: of the zone for
// a One Zone file system, any for a Standard one.
func (s *Server) CreateFileSystem(ctx context.Context, req *pb.CreateFileSystemRequest) (*pb.FileSystem, error) {
	if len(req.Name) > maxNameLen {
		return nil, status.Errorf(codes.InvalidArgument, "file system name is %d characters long; at most %d are allowed", len(req.Name), maxNameLen)
	}
	modes, err := files.ResolveModes(req.PerformanceMode, req.ThroughputMode, req.ProvisionedThroughputMibps)
	if err != nil {
		return nil, filesError(err)
	}
	if req.Encrypted || req.KmsKeyId != "" {
		// Recording a key without encrypting would be a lie: the file-tree
		// pool (btrfs) has no fscrypt in this kernel.
		return nil, status.Error(codes.Unimplemented,
			"encryption at rest is not implemented for file systems yet (the file-tree pool is btrfs, which has no per-directory encryption here); create the file system without encrypted/kmsKeyId")
	}
	if len(s.files.list()) == 0 {
		return nil, status.Error(codes.FailedPrecondition, "this server has no file-tree pool (give it --file-pool, or run a storage host with stowage agent --file-pool), so it cannot make file systems")
	}
	if req.Name != "" {
		unlock, err := s.lock(ctx, "file system name "+req.Name, "fs-name/"+req.Name)
		if err != nil {
			return nil, err
		}
		defer unlock()
		existing, err := byName[fileSystemRecord](ctx, s.store, bucketFileSystems, bucketFileSystemNames, req.Name)
		if err != nil {
			return nil, err
		}
		if existing != nil {
			if existing.RequestKey != fileSystemRequestKey(req, modes) {
				return nil, status.Errorf(codes.AlreadyExists,
					"file system name %q is already used by %s, created with other parameters (%s)", req.Name, existing.ID, existing.RequestKey)
			}
			return s.fsProto(existing.toProto(s.fileSystemUsage(existing))), nil
		}
	}
	poolName, err := s.placeFileSystem(req.AvailabilityZone)
	if err != nil {
		return nil, err
	}
	p, _ := s.files.pool(poolName)
	id := newID("fs")
	unlockID, err := s.lock(ctx, "file system "+id, id)
	if err != nil {
		return nil, err
	}
	defer unlockID()
	f := &fileSystemRecord{
		ID: id, Name: req.Name, RequestKey: fileSystemRequestKey(req, modes), Pool: poolName, Node: p.Node(),
		Zone: req.AvailabilityZone, PerformanceMode: modes.Performance, ThroughputMode: modes.Throughput,
		ProvisionedMiBps: modes.ProvisionedMi, State: fsCreating, AccessPointLimit: s.apLimit,
		Tags: req.Tags, Created: time.Now().UTC(),
	}
	// Record first, in state creating: a crash before the tree exists
	// leaves a record that Reconcile rolls back, never an unknown tree.
	err = s.store.Update(ctx, func(tx store.Tx) error {
		if f.Name != "" {
			if err := tx.Put(bucketFileSystemNames, f.Name, []byte(f.ID)); err != nil {
				return err
			}
		}
		return store.PutJSON(tx, bucketFileSystems, f.ID, f)
	})
	if err != nil {
		return nil, internal(err, "record file system %s", f.ID)
	}
	faults.Point("create-fs:recorded")
	if err := p.CreateFileSystem(ctx, f.ID); err != nil {
		s.rollbackFileSystem(f)
		return nil, internal(err, "create tree of file system %s in pool %s", f.ID, poolName)
	}
	faults.Point("create-fs:tree-created")
	f.State = fsAvailable
	err = s.store.Update(ctx, func(tx store.Tx) error {
		if _, exported := s.files.exporter(f.Pool); exported {
			eid, err := allocateExportID(tx, exportNamespace, f.ID)
			if err != nil {
				return err
			}
			f.ExportID = eid
		}
		return store.PutJSON(tx, bucketFileSystems, f.ID, f)
	})
	if err != nil {
		s.rollbackFileSystem(f)
		return nil, internal(err, "record file system %s", f.ID)
	}
	// Available before exported: a crash between the two is mended by
	// Reconcile, which exports every available file system.
	if err := s.exportFileSystem(ctx, f); err != nil {
		return nil, internal(err, "export file system %s", f.ID)
	}
	s.log.Info("file system created", "fileSystem", f.ID, "name", f.Name, "pool", poolName, "zone", f.Zone,
		"performanceMode", f.PerformanceMode, "throughputMode", f.ThroughputMode)
	return s.fsProto(f.toProto(0)), nil
}

// placeFileSystem picks the file-tree pool of zone (any zone when empty)
// with the most free space, as the block pools' placement does; ties go
// to the first by name. A pool whose free space cannot be read (its
// storage host is away) is passed over while another can take it.
func (s *Server) placeFileSystem(zone string) (string, error) {
	var have []string
	best, bestFree := "", int64(-1)
	var unreadable error
	for _, name := range s.files.list() {
		p, ok := s.files.pool(name)
		if !ok {
			continue
		}
		if zone != "" && p.Zone() != zone {
			have = append(have, fmt.Sprintf("%s (zone %s)", name, p.Zone()))
			continue
		}
		_, free, err := p.Capacity()
		if err != nil {
			s.log.Warn("file-tree pool passed over in placement: its free space cannot be read", "pool", name, "err", err)
			if unreadable == nil {
				unreadable = status.Errorf(codes.Unavailable, "file-tree pool %s of zone %s: its free space cannot be read (%v); try again", name, p.Zone(), err)
			}
			continue
		}
		if free > bestFree {
			best, bestFree = name, free
		}
	}
	if best != "" {
		return best, nil
	}
	if unreadable != nil {
		return "", unreadable
	}
	return "", status.Errorf(codes.InvalidArgument, "no file-tree pool is in availability zone %q; pools: %s", zone, strings.Join(have, ", "))
}

func (s *Server) rollbackFileSystem(f *fileSystemRecord) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.deleteFileSystem(ctx, f); err != nil {
		s.log.Error("rollback of file system create failed; the next start finishes it", "fileSystem", f.ID, "err", err)
	}
}

func (s *Server) getFileSystem(ctx context.Context, id string) (*fileSystemRecord, error) {
	return getRecord[fileSystemRecord](ctx, s.store, bucketFileSystems, "file system", id)
}

func (s *Server) putFileSystem(ctx context.Context, f *fileSystemRecord) error {
	return putRecord(ctx, s.store, bucketFileSystems, "file system", f.ID, f)
}

func (s *Server) fileSystemUsage(f *fileSystemRecord) int64 {
	p, ok := s.files.pool(f.Pool)
	if !ok || f.State != fsAvailable {
		return 0
	}
	n, err := p.Usage(f.ID)
	if err != nil {
		s.log.Warn("could not measure file system usage", "fileSystem", f.ID, "err", err)
		return 0
	}
	return n
}

func (s *Server) DescribeFileSystem(ctx context.Context, req *pb.DescribeFileSystemRequest) (*pb.FileSystem, error) {
	if req.FileSystemId == "" {
		return nil, status.Error(codes.InvalidArgument, "file system id is required")
	}
	f, err := s.getFileSystem(ctx, req.FileSystemId)
	if err != nil {
		return nil, err
	}
	return s.fsProto(f.toProto(s.fileSystemUsage(f))), nil
}

func (s *Server) ListFileSystems(ctx context.Context, req *pb.ListFileSystemsRequest) (*pb.ListFileSystemsResponse, error) {
	limit, err := pageLimit(req.PageSize, req.PageToken, "fs-")
	if err != nil {
		return nil, err
	}
	var recs []fileSystemRecord
	resp := &pb.ListFileSystemsResponse{}
	err = s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketFileSystems, "", req.PageToken, func(key string, value []byte) error {
			var f fileSystemRecord
			if err := json.Unmarshal(value, &f); err != nil {
				return fmt.Errorf("file system %s: %w", key, err)
			}
			if len(recs) == limit {
				resp.NextPageToken = recs[len(recs)-1].ID
				return store.ErrStopScan
			}
			recs = append(recs, f)
			return nil
		})
	})
	if err != nil {
		return nil, internal(err, "list file systems")
	}
	for i := range recs {
		resp.FileSystems = append(resp.FileSystems, s.fsProto(recs[i].toProto(s.fileSystemUsage(&recs[i]))))
	}
	return resp, nil
}

// pageLimit checks a page size and token (the id of the last object of
// the previous page, so it has the object's id prefix).
func pageLimit(size int32, token, prefix string) (int, error) {
	if size < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "page size %d is negative", size)
	}
	if token != "" && !strings.HasPrefix(token, prefix) {
		return 0, status.Errorf(codes.Aborted, "page token %q is not one this server issued", token)
	}
	if size == 0 {
		return defaultPageSize, nil
	}
	return int(size), nil
}

// DeleteFileSystem removes a file system and all its files. One that still
// has access points is refused, naming them, as EFS does.
func (s *Server) DeleteFileSystem(ctx context.Context, req *pb.DeleteFileSystemRequest) (*pb.DeleteFileSystemResponse, error) {
	if req.FileSystemId == "" {
		return nil, status.Error(codes.InvalidArgument, "file system id is required")
	}
	unlock, err := s.lock(ctx, "file system "+req.FileSystemId, req.FileSystemId)
	if err != nil {
		return nil, err
	}
	defer unlock()
	f, err := s.getFileSystem(ctx, req.FileSystemId)
	if status.Code(err) == codes.NotFound {
		return &pb.DeleteFileSystemResponse{Deleted: false}, nil
	}
	if err != nil {
		return nil, err
	}
	aps, err := s.accessPointIDs(ctx, f.ID)
	if err != nil {
		return nil, err
	}
	if len(aps) > 0 {
		listed := aps
		more := ""
		if len(listed) > maxAccessPointsListedInE {
			listed, more = listed[:maxAccessPointsListedInE], fmt.Sprintf(" and %d more", len(aps)-maxAccessPointsListedInE)
		}
		return nil, status.Errorf(codes.FailedPrecondition, "file system %s still has %d access point(s): %s%s; delete them first",
			f.ID, len(aps), strings.Join(listed, ", "), more)
	}
	if err := s.deleteFileSystem(ctx, f); err != nil {
		return nil, err
	}
	s.log.Info("file system deleted", "fileSystem", f.ID, "name", f.Name, "pool", f.Pool)
	return &pb.DeleteFileSystemResponse{Deleted: true}, nil
}

// deleteFileSystem marks the record deleting, removes the tree, then the
// record; Reconcile finishes it after a crash.
func (s *Server) deleteFileSystem(ctx context.Context, f *fileSystemRecord) error {
	if err := s.fileTreeAway(ctx, f.Pool); err != nil {
		return err
	}
	f.State = fsDeleting
	if err := s.putFileSystem(ctx, f); err != nil {
		return err
	}
	faults.Point("delete-fs:marked")
	if ex, ok := s.files.exporter(f.Pool); ok {
		if err := ex.Unexport(ctx, f.ID); err != nil {
			return internal(err, "unexport file system %s", f.ID)
		}
	}
	if p, ok := s.files.pool(f.Pool); ok {
		if err := p.DeleteFileSystem(ctx, f.ID); err != nil {
			return internal(err, "delete tree of file system %s", f.ID)
		}
	}
	err := s.store.Update(ctx, func(tx store.Tx) error {
		if err := freeExportID(tx, f.ExportID, f.ID); err != nil {
			return err
		}
		return forget(tx, bucketFileSystems, bucketFileSystemNames, f.ID, f.Name)
	})
	if err != nil {
		return internal(err, "delete record of file system %s", f.ID)
	}
	return nil
}

// accessPointIDs lists the access points of file system fsID, sorted.
func (s *Server) accessPointIDs(ctx context.Context, fsID string) ([]string, error) {
	var ids []string
	err := s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketFileSystemAPs, fsID+"/", "", func(key string, _ []byte) error {
			ids = append(ids, strings.TrimPrefix(key, fsID+"/"))
			return nil
		})
	})
	if err != nil {
		return nil, internal(err, "list access points of %s", fsID)
	}
	return ids, nil
}

// filesError maps an error of package files to a gRPC status.
func filesError(err error) error {
	switch {
	case errors.Is(err, files.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, files.ErrQuotaUnsupported), errors.Is(err, files.ErrQuotaNeedsNewDirectory):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, files.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	}
	return internal(err, "file system")
}
