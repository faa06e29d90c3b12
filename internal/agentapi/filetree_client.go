package agentapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/agent/v1"
	"github.com/stowage-io/stowage/internal/files"
	"github.com/stowage-io/stowage/internal/server"
)

// FileTree is a storage host's file-tree pool as the server uses it: a
// server.FilePool and, when the agent serves NFS, the server.Exporter of
// its access points. It shares the Client's connection.
type FileTree struct {
	c    *Client
	api  pb.FileTreeServiceClient
	info *pb.FileTreeInfo
}

var (
	_ server.FilePool = (*FileTree)(nil)
	_ server.Exporter = (*FileTree)(nil)
)

// FileTree is the agent's file-tree pool; nil when it has none.
func (c *Client) FileTree() *FileTree {
	if c.info.FileTree == nil {
		return nil
	}
	return &FileTree{c: c, api: pb.NewFileTreeServiceClient(c.conn), info: c.info.FileTree}
}

func (t *FileTree) Zone() string { return t.info.Zone }
func (t *FileTree) Node() string { return t.info.Node }
func (t *FileTree) Quotas() bool { return t.info.Quotas }

// NFSAddress is where clients mount the agent's exports; "" when it
// serves no NFS.
func (t *FileTree) NFSAddress() string { return t.info.NfsAddress }

func (t *FileTree) err(err error) error { return t.c.fromStatus(err, fileErrors) }

func (t *FileTree) CreateFileSystem(ctx context.Context, id string) error {
	_, err := t.api.CreateFileSystem(ctx, &pb.FileSystemRequest{FileSystemId: id})
	return t.err(err)
}

func (t *FileTree) DeleteFileSystem(ctx context.Context, id string) error {
	_, err := t.api.DeleteFileSystem(ctx, &pb.FileSystemRequest{FileSystemId: id})
	return t.err(err)
}

func (t *FileTree) ListFileSystems() ([]string, error) {
	ctx, cancel := t.c.bounded()
	defer cancel()
	r, err := t.api.ListFileSystems(ctx, &pb.ListFileSystemsRequest{})
	if err != nil {
		return nil, t.err(err)
	}
	return nonNil(r.Ids), nil
}

func (t *FileTree) Usage(id string) (int64, error) {
	ctx, cancel := t.c.bounded()
	defer cancel()
	r, err := t.api.FileSystemUsage(ctx, &pb.FileSystemRequest{FileSystemId: id})
	if err != nil {
		return 0, t.err(err)
	}
	return r.Bytes, nil
}

func (t *FileTree) Capacity() (total, free int64, err error) {
	ctx, cancel := t.c.bounded()
	defer cancel()
	r, err := t.api.TreeCapacity(ctx, &pb.TreeCapacityRequest{})
	if status.Code(err) == codes.Unimplemented {
		// An agent older than TreeCapacity: its free space is unknown, so
		// it is placed on last, but still placed on.
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, t.err(err)
	}
	return r.TotalBytes, r.FreeBytes, nil
}

func (t *FileTree) RootUsage(id, path string) (bytes, inodes int64, err error) {
	ctx, cancel := t.c.bounded()
	defer cancel()
	r, err := t.api.RootUsage(ctx, &pb.RootRequest{FileSystemId: id, Path: path})
	if err != nil {
		return 0, 0, t.err(err)
	}
	return r.Bytes, r.Inodes, nil
}

func (t *FileTree) PlanRoot(id, path string) ([]string, error) {
	ctx, cancel := t.c.bounded()
	defer cancel()
	r, err := t.api.PlanRoot(ctx, &pb.RootRequest{FileSystemId: id, Path: path})
	if err != nil {
		return nil, t.err(err)
	}
	return r.Dirs, nil
}

func (t *FileTree) MakeRoot(ctx context.Context, id string, root files.RootDirectory, quotaBytes int64) error {
	req := &pb.MakeRootRequest{FileSystemId: id, Path: root.Path, QuotaBytes: quotaBytes}
	if ci := root.Creation; ci != nil {
		req.Create, req.Uid, req.Gid, req.Mode = true, ci.UID, ci.GID, ci.Mode
	}
	_, err := t.api.MakeRoot(ctx, req)
	return t.err(err)
}

func (t *FileTree) SetQuota(id, path string, quotaBytes int64) error {
	ctx, cancel := t.c.bounded()
	defer cancel()
	_, err := t.api.SetQuota(ctx, &pb.SetQuotaRequest{FileSystemId: id, Path: path, QuotaBytes: quotaBytes})
	return t.err(err)
}

func (t *FileTree) RemoveDirs(id string, dirs []string) error {
	ctx, cancel := t.c.bounded()
	defer cancel()
	_, err := t.api.RemoveDirs(ctx, &pb.RemoveDirsRequest{FileSystemId: id, Dirs: dirs})
	return t.err(err)
}

func (t *FileTree) RemoveRoot(id, path string) error {
	ctx, cancel := t.c.bounded()
	defer cancel()
	_, err := t.api.RemoveRoot(ctx, &pb.RootRequest{FileSystemId: id, Path: path})
	return t.err(err)
}

func (t *FileTree) Export(ctx context.Context, e files.Export) error {
	_, err := t.api.ExportTree(ctx, &pb.ExportTreeRequest{ExportId: uint32(e.ID), AccessPointId: e.AccessPointID,
		FileSystemId: e.FileSystemID, Path: e.Dir, Pseudo: e.Pseudo, Squash: e.Squash, AnonUid: e.AnonUID, AnonGid: e.AnonGID,
		ReadOnly: e.ReadOnly})
	return t.err(err)
}

func (t *FileTree) Unexport(ctx context.Context, accessPointID string) error {
	_, err := t.api.UnexportTree(ctx, &pb.UnexportTreeRequest{AccessPointId: accessPointID})
	return t.err(err)
}
