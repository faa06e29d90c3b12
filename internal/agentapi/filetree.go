package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/agent/v1"
	"github.com/stowage-io/stowage/internal/files"
)

// fileErrors are the file-tree pool's sentinels, in the order they are
// tested (ErrUnsafePath is an ErrInvalid).
var fileErrors = []sentinel{
	{files.ErrNotFound, codes.NotFound},
	{files.ErrInvalid, codes.InvalidArgument},
	{files.ErrQuotaUnsupported, codes.Unimplemented},
	{files.ErrQuotaNeedsNewDirectory, codes.FailedPrecondition},
}

// FileTreeServer serves a storage host's file-tree pool and, when nfs is
// set, its NFSv4 exports (FileTreeService). The exports are kept in a file
// of the state directory, so an agent that restarts serves them again from
// nfs-ganesha's first request on, before any server reconnects.
type FileTreeServer struct {
	pb.UnimplementedFileTreeServiceServer
	tree       *files.Tree
	nfs        *files.TreeExporter // nil: the tree is not exported
	nfsAddress string
	stateFile  string

	mu      sync.Mutex
	exports map[string]files.Export
}

// NewFileTreeServer serves tree. With g, its exports are served by g (not
// started yet: Restore adds the kept exports first) and reached by clients
// at nfsAddress; they are kept in stateDir.
func NewFileTreeServer(tree *files.Tree, g *files.Ganesha, nfsAddress, stateDir string) *FileTreeServer {
	s := &FileTreeServer{tree: tree, exports: map[string]files.Export{}}
	if g != nil {
		s.nfs = &files.TreeExporter{Tree: tree, NFS: g}
		s.nfsAddress = nfsAddress
		s.stateFile = filepath.Join(stateDir, "exports.json")
	}
	return s
}

// Restore exports again what the agent exported when it last ran.
func (s *FileTreeServer) Restore(ctx context.Context) (int, error) {
	if s.nfs == nil {
		return 0, nil
	}
	b, err := os.ReadFile(s.stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the kept NFS exports: %w", err)
	}
	var kept []files.Export
	if err := json.Unmarshal(b, &kept); err != nil {
		return 0, fmt.Errorf("read the kept NFS exports %s: %w", s.stateFile, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range kept {
		if err := s.nfs.Export(ctx, e); err != nil {
			return 0, fmt.Errorf("export %s again: %w", e.AccessPointID, err)
		}
		s.exports[e.AccessPointID] = e
	}
	return len(kept), nil
}

// Info is the pool as GetPoolInfo reports it.
func (s *FileTreeServer) Info() *pb.FileTreeInfo {
	return &pb.FileTreeInfo{Zone: s.tree.Zone(), Node: s.tree.Node(), Quotas: s.tree.Quotas(), NfsAddress: s.nfsAddress}
}

// saveLocked writes the exports atomically (rename).
func (s *FileTreeServer) saveLocked() error {
	list := make([]files.Export, 0, len(s.exports))
	for _, e := range s.exports {
		list = append(list, e)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].AccessPointID < list[j].AccessPointID })
	b, err := json.Marshal(list)
	if err != nil {
		return err
	}
	tmp := s.stateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("keep the NFS exports: %w", err)
	}
	if err := os.Rename(tmp, s.stateFile); err != nil {
		return fmt.Errorf("keep the NFS exports: %w", err)
	}
	return nil
}

var empty = &pb.FileTreeResponse{}

func (s *FileTreeServer) CreateFileSystem(ctx context.Context, r *pb.FileSystemRequest) (*pb.FileTreeResponse, error) {
	return empty, toStatus(s.tree.CreateFileSystem(ctx, r.FileSystemId), fileErrors)
}

func (s *FileTreeServer) DeleteFileSystem(ctx context.Context, r *pb.FileSystemRequest) (*pb.FileTreeResponse, error) {
	return empty, toStatus(s.tree.DeleteFileSystem(ctx, r.FileSystemId), fileErrors)
}

func (s *FileTreeServer) ListFileSystems(context.Context, *pb.ListFileSystemsRequest) (*pb.ListResponse, error) {
	ids, err := s.tree.ListFileSystems()
	return &pb.ListResponse{Ids: ids}, toStatus(err, fileErrors)
}

func (s *FileTreeServer) FileSystemUsage(_ context.Context, r *pb.FileSystemRequest) (*pb.UsageResponse, error) {
	n, err := s.tree.Usage(r.FileSystemId)
	return &pb.UsageResponse{Bytes: n}, toStatus(err, fileErrors)
}

func (s *FileTreeServer) RootUsage(_ context.Context, r *pb.RootRequest) (*pb.UsageResponse, error) {
	b, i, err := s.tree.RootUsage(r.FileSystemId, r.Path)
	return &pb.UsageResponse{Bytes: b, Inodes: i}, toStatus(err, fileErrors)
}

func (s *FileTreeServer) TreeCapacity(context.Context, *pb.TreeCapacityRequest) (*pb.CapacityResponse, error) {
	total, free, err := s.tree.Capacity()
	return &pb.CapacityResponse{TotalBytes: total, FreeBytes: free}, toStatus(err, fileErrors)
}

func (s *FileTreeServer) PlanRoot(_ context.Context, r *pb.RootRequest) (*pb.PlanRootResponse, error) {
	dirs, err := s.tree.PlanRoot(r.FileSystemId, r.Path)
	return &pb.PlanRootResponse{Dirs: dirs}, toStatus(err, fileErrors)
}

func (s *FileTreeServer) MakeRoot(ctx context.Context, r *pb.MakeRootRequest) (*pb.FileTreeResponse, error) {
	root := files.RootDirectory{Path: r.Path}
	if r.Create {
		root.Creation = &files.CreationInfo{UID: r.Uid, GID: r.Gid, Mode: r.Mode}
	}
	return empty, toStatus(s.tree.MakeRoot(ctx, r.FileSystemId, root, r.QuotaBytes), fileErrors)
}

func (s *FileTreeServer) SetQuota(_ context.Context, r *pb.SetQuotaRequest) (*pb.FileTreeResponse, error) {
	return empty, toStatus(s.tree.SetQuota(r.FileSystemId, r.Path, r.QuotaBytes), fileErrors)
}

func (s *FileTreeServer) RemoveDirs(_ context.Context, r *pb.RemoveDirsRequest) (*pb.FileTreeResponse, error) {
	return empty, toStatus(s.tree.RemoveDirs(r.FileSystemId, r.Dirs), fileErrors)
}

func (s *FileTreeServer) RemoveRoot(_ context.Context, r *pb.RootRequest) (*pb.FileTreeResponse, error) {
	return empty, toStatus(s.tree.RemoveRoot(r.FileSystemId, r.Path), fileErrors)
}

func (s *FileTreeServer) ExportTree(ctx context.Context, r *pb.ExportTreeRequest) (*pb.FileTreeResponse, error) {
	if s.nfs == nil {
		return nil, status.Errorf(codes.Unimplemented, "export %s: this agent serves no NFS (start it with --nfs-listen)", r.AccessPointId)
	}
	if r.ExportId == 0 || r.ExportId > 0xffff {
		return nil, status.Errorf(codes.InvalidArgument, "export %s: export id %d is not in 1..65535", r.AccessPointId, r.ExportId)
	}
	e := files.Export{ID: uint16(r.ExportId), AccessPointID: r.AccessPointId, FileSystemID: r.FileSystemId, Dir: r.Path,
		Pseudo: r.Pseudo, Squash: r.Squash, AnonUID: r.AnonUid, AnonGID: r.AnonGid, ReadOnly: r.ReadOnly}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.nfs.Export(ctx, e); err != nil {
		return nil, toStatus(err, fileErrors)
	}
	if old, ok := s.exports[e.AccessPointID]; ok && old == e {
		return empty, nil
	}
	s.exports[e.AccessPointID] = e
	return empty, toStatus(s.saveLocked(), fileErrors)
}

func (s *FileTreeServer) UnexportTree(ctx context.Context, r *pb.UnexportTreeRequest) (*pb.FileTreeResponse, error) {
	if s.nfs == nil {
		return empty, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.nfs.Unexport(ctx, r.AccessPointId); err != nil {
		return nil, toStatus(err, fileErrors)
	}
	if _, ok := s.exports[r.AccessPointId]; !ok {
		return empty, nil
	}
	delete(s.exports, r.AccessPointId)
	return empty, toStatus(s.saveLocked(), fileErrors)
}
