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

// Exporter serves access points over NFS from a file-tree pool's storage
// host (nfs-ganesha). Both calls are idempotent.
type Exporter interface {
	Export(ctx context.Context, e files.Export) error
	Unexport(ctx context.Context, accessPointID string) error
}

type accessPointRecord struct {
	ID            string              `json:"id"`
	Name          string              `json:"name,omitempty"`
	RequestKey    string              `json:"requestKey,omitempty"`
	FileSystemID  string              `json:"fileSystemId"`
	Pool          string              `json:"pool"`
	HasUser       bool                `json:"hasUser,omitempty"`
	UID           uint32              `json:"uid,omitempty"`
	GID           uint32              `json:"gid,omitempty"`
	SecondaryGIDs []uint32            `json:"secondaryGids,omitempty"`
	Path          string              `json:"path"`
	Creation      *files.CreationInfo `json:"creation,omitempty"`
	Permissions   string              `json:"permissions,omitempty"` // as the user wrote it
	QuotaBytes    int64               `json:"quotaBytes,omitempty"`
	// MadeDirs are the directories this access point's create makes,
	// recorded before it makes them, so a rollback removes exactly those.
	MadeDirs []string `json:"madeDirs,omitempty"`
	ExportID uint16   `json:"exportId,omitempty"`
	// DeleteRoot is set when a delete that also removes the root directory
	// starts, so that Reconcile finishes it after a crash.
	DeleteRoot  bool                `json:"deleteRoot,omitempty"`
	State       pb.AccessPointState `json:"state"`
	StateReason string              `json:"stateReason,omitempty"`
	Tags        map[string]string   `json:"tags,omitempty"`
	Created     time.Time           `json:"created"`
}

func (a *accessPointRecord) toProto() *pb.AccessPoint {
	out := &pb.AccessPoint{
		Id: a.ID, Name: a.Name, FileSystemId: a.FileSystemID, State: a.State,
		StateReason: a.StateReason, RootDirectory: &pb.RootDirectory{Path: a.Path},
		QuotaBytes: a.QuotaBytes, Tags: a.Tags, CreateTime: timestamppb.New(a.Created),
	}
	if a.HasUser {
		out.PosixUser = &pb.PosixUser{Uid: a.UID, Gid: a.GID, SecondaryGids: a.SecondaryGIDs}
	}
	if c := a.Creation; c != nil {
		out.RootDirectory.CreationInfo = &pb.CreationInfo{OwnerUid: c.UID, OwnerGid: c.GID, Permissions: fmt.Sprintf("%04o", c.Mode)}
	}
	return out
}

// apProto adds where the access point is served over NFS.
func (s *Server) apProto(a *accessPointRecord) *pb.AccessPoint {
	out := a.toProto()
	if _, ok := s.files.exporter(a.Pool); ok {
		out.NfsAddress, out.NfsExportPath = s.files.address(a.Pool), a.pseudo()
	}
	return out
}

// pseudo is the access point's NFSv4 pseudo path.
func (a *accessPointRecord) pseudo() string { return "/" + a.ID }

func (a *accessPointRecord) export() files.Export {
	return files.Export{
		ID: a.ExportID, AccessPointID: a.ID, FileSystemID: a.FileSystemID, Dir: a.Path, Pseudo: a.pseudo(),
		Squash: a.HasUser, AnonUID: a.UID, AnonGID: a.GID,
	}
}

func accessPointRequestKey(fsID string, u *pb.PosixUser, path string, c *files.CreationInfo, quota int64, tags map[string]string) string {
	ts := make([]string, 0, len(tags))
	for k, v := range tags {
		ts = append(ts, k+"="+v)
	}
	sort.Strings(ts)
	user := "-"
	if u != nil {
		user = fmt.Sprintf("%d:%d:%v", u.Uid, u.Gid, u.SecondaryGids)
	}
	ci := "-"
	if c != nil {
		ci = fmt.Sprintf("%d:%d:%04o", c.UID, c.GID, c.Mode)
	}
	return fmt.Sprintf("fs=%s user=%s path=%s creation=%s quota=%d tags=%q", fsID, user, path, ci, quota, ts)
}

// CreateAccessPoint records the access point, makes its root directory
// (parents root 0755, itself with the creation info) with its quota, and
// exports it.
func (s *Server) CreateAccessPoint(ctx context.Context, req *pb.CreateAccessPointRequest) (*pb.AccessPoint, error) {
	if len(req.Name) > maxNameLen {
		return nil, status.Errorf(codes.InvalidArgument, "access point name is %d characters long; at most %d are allowed", len(req.Name), maxNameLen)
	}
	if req.FileSystemId == "" {
		return nil, status.Error(codes.InvalidArgument, "file system id is required")
	}
	if u := req.PosixUser; u != nil {
		if err := files.CheckPOSIXUser(u.Uid, u.Gid, u.SecondaryGids); err != nil {
			return nil, filesError(err)
		}
	}
	var rootPath string
	var ci *files.CreationInfo
	if rd := req.RootDirectory; rd != nil {
		p, err := files.CleanRootPath(rd.Path)
		if err != nil {
			return nil, filesError(err)
		}
		rootPath = p
		if c := rd.CreationInfo; c != nil {
			mode, err := files.ParsePermissions(c.Permissions)
			if err != nil {
				return nil, filesError(fmt.Errorf("creation info: %w", err))
			}
			ci = &files.CreationInfo{UID: c.OwnerUid, GID: c.OwnerGid, Mode: mode}
		}
	} else {
		rootPath = "/"
	}
	if req.QuotaBytes < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "quota %d bytes is negative", req.QuotaBytes)
	}
	key := accessPointRequestKey(req.FileSystemId, req.PosixUser, rootPath, ci, req.QuotaBytes, req.Tags)

	if req.Name != "" {
		unlock, err := s.lock(ctx, "access point name "+req.Name, "fsap-name/"+req.Name)
		if err != nil {
			return nil, err
		}
		defer unlock()
		existing, err := byName[accessPointRecord](ctx, s.store, bucketAccessPoints, bucketAccessPointNames, req.Name)
		if err != nil {
			return nil, err
		}
		if existing != nil {
			if existing.RequestKey != key {
				return nil, status.Errorf(codes.AlreadyExists,
					"access point name %q is already used by %s, created with other parameters (%s)", req.Name, existing.ID, existing.RequestKey)
			}
			return s.apProto(existing), nil
		}
	}
	// The file system's lock: its access-point count, and a delete of the
	// file system, must not race this create.
	unlockFS, err := s.lock(ctx, "file system "+req.FileSystemId, req.FileSystemId)
	if err != nil {
		return nil, err
	}
	defer unlockFS()
	f, err := s.getFileSystem(ctx, req.FileSystemId)
	if err != nil {
		return nil, err
	}
	if f.State != fsAvailable {
		return nil, status.Errorf(codes.FailedPrecondition, "file system %s is %s, not available", f.ID, f.State.Word())
	}
	if f.AccessPoints >= f.AccessPointLimit {
		return nil, status.Errorf(codes.ResourceExhausted, "file system %s has %d access points, its limit; delete some or raise --access-point-limit",
			f.ID, f.AccessPoints)
	}
	p, err := s.filePool(f.Pool)
	if err != nil {
		return nil, err
	}
	if req.QuotaBytes > 0 && !p.Quotas() {
		return nil, status.Errorf(codes.FailedPrecondition, "access point quota of %d bytes: file-tree pool %s cannot enforce quotas (it is not btrfs with quota groups)", req.QuotaBytes, f.Pool)
	}
	plan, err := p.PlanRoot(f.ID, rootPath)
	if err != nil {
		return nil, filesError(err)
	}
	if len(plan) > 0 && plan[len(plan)-1] == rootPath && ci == nil {
		return nil, status.Errorf(codes.InvalidArgument,
			"root directory %s does not exist in file system %s; give creation info (owner uid, gid and permissions) to make it", rootPath, f.ID)
	}
	if req.QuotaBytes > 0 && (len(plan) == 0 || plan[len(plan)-1] != rootPath) {
		return nil, status.Errorf(codes.FailedPrecondition,
			"root directory %s exists in file system %s; a quota can only be put on a root directory the access point makes", rootPath, f.ID)
	}

	id := newID("fsap")
	a := &accessPointRecord{
		ID: id, Name: req.Name, RequestKey: key, FileSystemID: f.ID, Pool: f.Pool, HasUser: req.PosixUser != nil,
		Path: rootPath, Creation: ci, QuotaBytes: req.QuotaBytes, MadeDirs: plan,
		State: apCreating, Tags: req.Tags, Created: time.Now().UTC(),
	}
	if u := req.PosixUser; u != nil {
		a.UID, a.GID, a.SecondaryGIDs = u.Uid, u.Gid, u.SecondaryGids
	}
	// One transaction: the record (creating, with the directories it will
	// make), its indexes, its export id and the file system's count.
	err = s.store.Update(ctx, func(tx store.Tx) error {
		var cur fileSystemRecord
		if err := store.GetJSON(tx, bucketFileSystems, f.ID, &cur); err != nil {
			return err
		}
		cur.AccessPoints++
		if err := store.PutJSON(tx, bucketFileSystems, f.ID, &cur); err != nil {
			return err
		}
		if _, ok := s.files.exporter(f.Pool); ok {
			eid, err := allocateExportID(tx, exportNamespace, a.ID)
			if err != nil {
				return err
			}
			a.ExportID = eid
		}
		if a.Name != "" {
			if err := tx.Put(bucketAccessPointNames, a.Name, []byte(a.ID)); err != nil {
				return err
			}
		}
		if err := tx.Put(bucketFileSystemAPs, f.ID+"/"+a.ID, nil); err != nil {
			return err
		}
		return store.PutJSON(tx, bucketAccessPoints, a.ID, a)
	})
	if err != nil {
		return nil, internal(err, "record access point %s", a.ID)
	}
	faults.Point("create-ap:recorded")
	if err := p.MakeRoot(ctx, f.ID, files.RootDirectory{Path: rootPath, Creation: ci}, req.QuotaBytes); err != nil {
		s.rollbackAccessPoint(a)
		return nil, filesError(fmt.Errorf("access point %s in %s: %w", a.ID, f.ID, err))
	}
	faults.Point("create-ap:root-made")
	if ex, ok := s.files.exporter(f.Pool); ok {
		if err := ex.Export(ctx, a.export()); err != nil {
			s.rollbackAccessPoint(a)
			return nil, internal(err, "export access point %s", a.ID)
		}
	}
	faults.Point("create-ap:exported")
	a.State = apAvailable
	if err := s.putAccessPoint(ctx, a); err != nil {
		s.rollbackAccessPoint(a)
		return nil, err
	}
	s.log.Info("access point created", "accessPoint", a.ID, "name", a.Name, "fileSystem", f.ID, "path", a.Path,
		"uid", a.UID, "gid", a.GID, "quotaBytes", a.QuotaBytes, "madeDirs", len(plan))
	return s.apProto(a), nil
}

// exportNamespace is the set export ids are unique in: one NFS server
// serves every file-tree pool of a server process.
const exportNamespace = "host"

// allocateExportID gives access point apID the lowest free NFS export id
// of pool (ganesha's export ids are 16 bits; 0 is its root pseudo export).
func allocateExportID(tx store.Tx, pool, apID string) (uint16, error) {
	used := map[uint16]bool{}
	err := tx.Scan(bucketExportIDs, pool+"/", "", func(key string, _ []byte) error {
		var n uint16
		if _, err := fmt.Sscanf(strings.TrimPrefix(key, pool+"/"), "%05d", &n); err == nil {
			used[n] = true
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for n := uint16(1); n < 65535; n++ {
		if !used[n] {
			return n, tx.Put(bucketExportIDs, exportIDKey(pool, n), []byte(apID))
		}
	}
	return 0, status.Errorf(codes.ResourceExhausted, "the NFS server of %s serves 65534 exports, all it can", pool)
}

func exportIDKey(pool string, id uint16) string { return fmt.Sprintf("%s/%05d", pool, id) }

// freeExportID gives back export id eid when owner (an access point or a
// file system) holds it.
func freeExportID(tx store.Tx, eid uint16, owner string) error {
	if eid == 0 {
		return nil
	}
	if cur, err := tx.Get(bucketExportIDs, exportIDKey(exportNamespace, eid)); err == nil && string(cur) == owner {
		return tx.Delete(bucketExportIDs, exportIDKey(exportNamespace, eid))
	}
	return nil
}

func (s *Server) rollbackAccessPoint(a *accessPointRecord) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.removeAccessPoint(ctx, a, true); err != nil {
		s.log.Error("rollback of access point create failed; the next start finishes it", "accessPoint", a.ID, "err", err)
	}
}

func (s *Server) getAccessPoint(ctx context.Context, id string) (*accessPointRecord, error) {
	return getRecord[accessPointRecord](ctx, s.store, bucketAccessPoints, "access point", id)
}

func (s *Server) putAccessPoint(ctx context.Context, a *accessPointRecord) error {
	return putRecord(ctx, s.store, bucketAccessPoints, "access point", a.ID, a)
}

func (s *Server) filePool(name string) (FilePool, error) {
	p, ok := s.files.pool(name)
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "file-tree pool %q is not configured on this server (was it removed from --file-pool?)", name)
	}
	return p, nil
}

func (s *Server) DescribeAccessPoint(ctx context.Context, req *pb.DescribeAccessPointRequest) (*pb.AccessPoint, error) {
	if req.AccessPointId == "" {
		return nil, status.Error(codes.InvalidArgument, "access point id is required")
	}
	a, err := s.getAccessPoint(ctx, req.AccessPointId)
	if err != nil {
		return nil, err
	}
	out := s.apProto(a)
	if p, ok := s.files.pool(a.Pool); ok && a.State == apAvailable {
		// Best effort: a tree being changed while walked still gives a
		// number; a failure leaves the fields 0 and is logged.
		if b, n, err := p.RootUsage(a.FileSystemID, a.Path); err == nil {
			out.SizeUsedBytes, out.InodesUsed = b, n
		} else {
			s.log.Warn("access point usage unknown", "accessPoint", a.ID, "err", err)
		}
	}
	return out, nil
}

func (s *Server) ListAccessPoints(ctx context.Context, req *pb.ListAccessPointsRequest) (*pb.ListAccessPointsResponse, error) {
	limit, err := pageLimit(req.PageSize, req.PageToken, "fsap-")
	if err != nil {
		return nil, err
	}
	if req.FileSystemId != "" {
		if _, err := s.getFileSystem(ctx, req.FileSystemId); err != nil {
			return nil, err
		}
	}
	resp := &pb.ListAccessPointsResponse{}
	err = s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketAccessPoints, "", req.PageToken, func(key string, value []byte) error {
			var a accessPointRecord
			if err := json.Unmarshal(value, &a); err != nil {
				return fmt.Errorf("access point %s: %w", key, err)
			}
			if req.FileSystemId != "" && a.FileSystemID != req.FileSystemId {
				return nil
			}
			if len(resp.AccessPoints) == limit {
				resp.NextPageToken = resp.AccessPoints[len(resp.AccessPoints)-1].Id
				return store.ErrStopScan
			}
			resp.AccessPoints = append(resp.AccessPoints, s.apProto(&a))
			return nil
		})
	})
	if err != nil {
		return nil, internal(err, "list access points")
	}
	return resp, nil
}

// DeleteAccessPoint stops exporting the access point and forgets it; its
// root directory and files stay, as with EFS.
func (s *Server) DeleteAccessPoint(ctx context.Context, req *pb.DeleteAccessPointRequest) (*pb.DeleteAccessPointResponse, error) {
	if req.AccessPointId == "" {
		return nil, status.Error(codes.InvalidArgument, "access point id is required")
	}
	unlock, err := s.lock(ctx, "access point "+req.AccessPointId, req.AccessPointId)
	if err != nil {
		return nil, err
	}
	defer unlock()
	a, err := s.getAccessPoint(ctx, req.AccessPointId)
	if status.Code(err) == codes.NotFound {
		return &pb.DeleteAccessPointResponse{Deleted: false}, nil
	}
	if err != nil {
		return nil, err
	}
	unlockFS, err := s.lock(ctx, "file system "+a.FileSystemID, a.FileSystemID)
	if err != nil {
		return nil, err
	}
	defer unlockFS()
	if req.DeleteRootDirectory && a.Path == "/" {
		return nil, status.Errorf(codes.FailedPrecondition,
			"access point %s has the root of file system %s as its root directory, which is removed only with the file system; delete the access point without removing its root directory", a.ID, a.FileSystemID)
	}
	a.DeleteRoot = a.DeleteRoot || req.DeleteRootDirectory
	if err := s.removeAccessPoint(ctx, a, false); err != nil {
		return nil, err
	}
	s.log.Info("access point deleted", "accessPoint", a.ID, "name", a.Name, "fileSystem", a.FileSystemID, "rootDirectoryRemoved", a.DeleteRoot)
	return &pb.DeleteAccessPointResponse{Deleted: true}, nil
}

// SetAccessPointQuota changes the hard limit of an access point that was
// made with a quota.
func (s *Server) SetAccessPointQuota(ctx context.Context, req *pb.SetAccessPointQuotaRequest) (*pb.AccessPoint, error) {
	if req.AccessPointId == "" {
		return nil, status.Error(codes.InvalidArgument, "access point id is required")
	}
	if req.QuotaBytes <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "quota of %d bytes: a quota must be greater than 0", req.QuotaBytes)
	}
	unlock, err := s.lock(ctx, "access point "+req.AccessPointId, req.AccessPointId)
	if err != nil {
		return nil, err
	}
	defer unlock()
	a, err := s.getAccessPoint(ctx, req.AccessPointId)
	if err != nil {
		return nil, err
	}
	if a.State != apAvailable {
		return nil, status.Errorf(codes.FailedPrecondition, "access point %s is %s, not available", a.ID, a.State.Word())
	}
	if a.QuotaBytes == 0 {
		return nil, status.Errorf(codes.FailedPrecondition,
			"access point %s was made without a quota; its root directory %s is not a quota tree, so no quota can be set on it", a.ID, a.Path)
	}
	if a.QuotaBytes == req.QuotaBytes {
		return s.apProto(a), nil
	}
	p, err := s.filePool(a.Pool)
	if err != nil {
		return nil, err
	}
	if err := p.SetQuota(a.FileSystemID, a.Path, req.QuotaBytes); err != nil {
		return nil, filesError(fmt.Errorf("access point %s: %w", a.ID, err))
	}
	old := a.QuotaBytes
	a.QuotaBytes = req.QuotaBytes
	if err := s.putAccessPoint(ctx, a); err != nil {
		return nil, err
	}
	s.log.Info("access point quota changed", "accessPoint", a.ID, "fromBytes", old, "toBytes", a.QuotaBytes)
	return s.apProto(a), nil
}

// removeAccessPoint marks the record deleting, unexports, lifts the quota,
// removes the directories the create made when rolling one back, then
// forgets the record; Reconcile repeats it after a crash.
func (s *Server) removeAccessPoint(ctx context.Context, a *accessPointRecord, rollback bool) error {
	if err := s.fileTreeAway(ctx, a.Pool); err != nil {
		return err
	}
	if !rollback {
		a.State = apDeleting
		if err := s.putAccessPoint(ctx, a); err != nil {
			return err
		}
		faults.Point("delete-ap:marked")
	}
	if p, ok := s.files.pool(a.Pool); ok {
		if ex, ok := s.files.exporter(a.Pool); ok {
			if err := ex.Unexport(ctx, a.ID); err != nil {
				return internal(err, "unexport access point %s", a.ID)
			}
		}
		if a.QuotaBytes > 0 {
			if err := p.SetQuota(a.FileSystemID, a.Path, 0); err != nil && !errors.Is(err, files.ErrNotFound) {
				return internal(err, "lift quota of access point %s", a.ID)
			}
		}
		if a.DeleteRoot && !rollback {
			if err := p.RemoveRoot(a.FileSystemID, a.Path); err != nil && !errors.Is(err, files.ErrNotFound) {
				return internal(err, "remove root directory %s of access point %s", a.Path, a.ID)
			}
			faults.Point("delete-ap:root-removed")
		}
		if rollback {
			if err := p.RemoveDirs(a.FileSystemID, a.MadeDirs); err != nil && !errors.Is(err, files.ErrNotFound) {
				return internal(err, "remove directories of access point %s", a.ID)
			}
		}
	}
	err := s.store.Update(ctx, func(tx store.Tx) error {
		if err := forget(tx, bucketAccessPoints, bucketAccessPointNames, a.ID, a.Name); err != nil {
			return err
		}
		if err := tx.Delete(bucketFileSystemAPs, a.FileSystemID+"/"+a.ID); err != nil {
			return err
		}
		if err := freeExportID(tx, a.ExportID, a.ID); err != nil {
			return err
		}
		var f fileSystemRecord
		if err := store.GetJSON(tx, bucketFileSystems, a.FileSystemID, &f); errors.Is(err, store.ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if f.AccessPoints > 0 {
			f.AccessPoints--
		}
		return store.PutJSON(tx, bucketFileSystems, f.ID, &f)
	})
	if err != nil {
		return internal(err, "delete record of access point %s", a.ID)
	}
	return nil
}

// reconcileFiles makes the file-tree pools, the exports and the metadata
// agree after a crash: creates that never finished are rolled back (their
// directories and exports removed), deletes are finished, available access
// points are exported again, and trees no record knows are removed.
func (s *Server) reconcileFiles(ctx context.Context) error {
	var fss []fileSystemRecord
	var aps []accessPointRecord
	err := s.store.View(ctx, func(tx store.Tx) error {
		if err := tx.Scan(bucketFileSystems, "", "", func(key string, value []byte) error {
			var f fileSystemRecord
			if err := json.Unmarshal(value, &f); err != nil {
				return fmt.Errorf("file system %s: %w", key, err)
			}
			fss = append(fss, f)
			return nil
		}); err != nil {
			return err
		}
		return tx.Scan(bucketAccessPoints, "", "", func(key string, value []byte) error {
			var a accessPointRecord
			if err := json.Unmarshal(value, &a); err != nil {
				return fmt.Errorf("access point %s: %w", key, err)
			}
			aps = append(aps, a)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("reconcile files: read metadata: %w", err)
	}
	for i := range aps {
		a := &aps[i]
		switch a.State {
		case apCreating, apDeleting:
			if err := s.fileTreeAway(ctx, a.Pool); err != nil {
				s.log.Warn("reconcile: an access point's create or delete did not finish; finished when its storage host connects", "accessPoint", a.ID, "pool", a.Pool)
				continue
			}
			s.log.Warn("reconcile: removing an access point whose create or delete did not finish", "accessPoint", a.ID, "state", a.State)
			if err := s.removeAccessPoint(ctx, a, a.State == apCreating); err != nil {
				return fmt.Errorf("reconcile: access point %s: %w", a.ID, err)
			}
		case apAvailable:
			_, pok := s.files.pool(a.Pool)
			ex, eok := s.files.exporter(a.Pool)
			if pok && eok {
				if err := ex.Export(ctx, a.export()); err != nil {
					return fmt.Errorf("reconcile: export access point %s: %w", a.ID, err)
				}
			}
		}
	}
	known := map[string]map[string]bool{}
	for _, name := range s.files.list() {
		known[name] = map[string]bool{}
	}
	for i := range fss {
		f := &fss[i]
		if f.State == fsCreating || f.State == fsDeleting {
			if err := s.fileTreeAway(ctx, f.Pool); err != nil {
				s.log.Warn("reconcile: a file system's create or delete did not finish; finished when its storage host connects", "fileSystem", f.ID, "pool", f.Pool)
				continue
			}
			s.log.Warn("reconcile: removing a file system whose create or delete did not finish", "fileSystem", f.ID, "state", f.State)
			if err := s.deleteFileSystem(ctx, f); err != nil {
				return fmt.Errorf("reconcile: file system %s: %w", f.ID, err)
			}
			continue
		}
		if m, ok := known[f.Pool]; ok {
			m[f.ID] = true
		}
		if err := s.reexportFileSystem(ctx, f); err != nil {
			return fmt.Errorf("reconcile: export file system %s: %w", f.ID, err)
		}
	}
	for _, name := range s.files.list() {
		p, ok := s.files.pool(name)
		if !ok {
			continue
		}
		ids, err := p.ListFileSystems()
		if err != nil {
			return fmt.Errorf("reconcile: list file systems of pool %s: %w", name, err)
		}
		for _, id := range ids {
			if !known[name][id] {
				s.log.Warn("reconcile: removing a file system tree no record knows", "pool", name, "fileSystem", id)
				if err := p.DeleteFileSystem(ctx, id); err != nil {
					return fmt.Errorf("reconcile: remove orphaned tree %s: %w", id, err)
				}
			}
		}
	}
	return nil
}

// reexportFileSystem exports an available file system again after a
// start; one made before file systems had exports of their own gets an
// export id first.
func (s *Server) reexportFileSystem(ctx context.Context, f *fileSystemRecord) error {
	if _, exported := s.files.exporter(f.Pool); !exported {
		return nil
	}
	if f.ExportID == 0 {
		err := s.store.Update(ctx, func(tx store.Tx) error {
			eid, err := allocateExportID(tx, exportNamespace, f.ID)
			if err != nil {
				return err
			}
			f.ExportID = eid
			return store.PutJSON(tx, bucketFileSystems, f.ID, f)
		})
		if err != nil {
			return err
		}
	}
	return s.exportFileSystem(ctx, f)
}
