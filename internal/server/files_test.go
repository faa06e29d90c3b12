package server

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/files"
	"github.com/stowage-io/stowage/internal/store"
	"github.com/stowage-io/stowage/internal/store/boltstore"
)

// fakeExporter records what the server exports, as ganesha would serve it.
type fakeExporter struct {
	mu      sync.Mutex
	exports map[string]files.Export
}

func (f *fakeExporter) Export(_ context.Context, e files.Export) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exports[e.AccessPointID] = e
	return nil
}

func (f *fakeExporter) Unexport(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.exports, id)
	return nil
}

type filesEnv struct {
	srv   *Server
	st    store.Store
	tree  *files.Tree
	ex    *fakeExporter
	dir   string
	limit int
}

// newFilesEnv runs a server with one block pool and one file-tree pool
// (plain directories in t.TempDir: no quotas) in zone-a.
func newFilesEnv(t *testing.T, limit int) *filesEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := boltstore.Open(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &filesEnv{st: st, dir: dir, limit: limit, ex: &fakeExporter{exports: map[string]files.Export{}}}
	e.restart(t)
	return e
}

// restart builds a new server on the same store and pools, as a restart
// after a crash does, and reconciles.
func (e *filesEnv) restart(t *testing.T) {
	t.Helper()
	pool, err := agent.Open(agent.Config{Dir: filepath.Join(e.dir, "pool-a"), Zone: "zone-a", Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	e.tree, err = files.Open(files.Config{Dir: filepath.Join(e.dir, "files-a"), Zone: "zone-a", Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	e.srv, err = New(Config{Store: e.st, Pools: map[string]Pool{"pool-a": pool},
		FilePools: map[string]FilePool{"files-a": e.tree}, Exporters: map[string]Exporter{"files-a": e.ex},
		AccessPointLimit: e.limit, Logger: slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Reconcile(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func (e *filesEnv) fs(t *testing.T, name string) *pb.FileSystem {
	t.Helper()
	f, err := e.srv.CreateFileSystem(testCtx(t), &pb.CreateFileSystemRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func ap(fsID, path string, uid uint32) *pb.CreateAccessPointRequest {
	return &pb.CreateAccessPointRequest{
		FileSystemId:  fsID,
		PosixUser:     &pb.PosixUser{Uid: uid, Gid: uid, SecondaryGids: []uint32{5}},
		RootDirectory: &pb.RootDirectory{Path: path, CreationInfo: &pb.CreationInfo{OwnerUid: uid, OwnerGid: uid, Permissions: "750"}},
	}
}

func wantFilesCode(t *testing.T, err error, code codes.Code, contains ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("err = %v, want %s", err, code)
	}
	for _, c := range contains {
		if !strings.Contains(status.Convert(err).Message(), c) {
			t.Errorf("message %q does not name %q", status.Convert(err).Message(), c)
		}
	}
}

func TestCreateFileSystem_SameName_Idempotent_OtherParameters_AlreadyExists(t *testing.T) {
	e := newFilesEnv(t, 0)
	ctx := testCtx(t)
	a, err := e.srv.CreateFileSystem(ctx, &pb.CreateFileSystemRequest{Name: "shared", AvailabilityZone: "zone-a", ThroughputMode: "elastic"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(a.Id, "fs-") || a.State != pb.FileSystemState_FILE_SYSTEM_STATE_AVAILABLE || a.StorageClass != files.StorageOneZone ||
		a.PerformanceMode != files.PerformanceGeneralPurpose || a.ThroughputMode != files.ThroughputElastic ||
		a.AccessPointLimit != DefaultAccessPointLimit {
		t.Fatalf("created %+v", a)
	}
	if _, err := os.Stat(e.tree.FileSystemDir(a.Id)); err != nil {
		t.Fatalf("no tree: %v", err)
	}
	b, err := e.srv.CreateFileSystem(ctx, &pb.CreateFileSystemRequest{Name: "shared", AvailabilityZone: "zone-a", ThroughputMode: "ELASTIC"})
	if err != nil || b.Id != a.Id {
		t.Fatalf("second create = %v, %v; want %s", b, err, a.Id)
	}
	_, err = e.srv.CreateFileSystem(ctx, &pb.CreateFileSystemRequest{Name: "shared", PerformanceMode: "maxIO"})
	wantFilesCode(t, err, codes.AlreadyExists, "shared", a.Id)
	std := e.fs(t, "standard")
	if std.StorageClass != files.StorageStandard || std.AvailabilityZone != "" {
		t.Errorf("a file system without a zone is %s in %q, want standard", std.StorageClass, std.AvailabilityZone)
	}
	list, err := e.srv.ListFileSystems(ctx, &pb.ListFileSystemsRequest{PageSize: 1})
	if err != nil || len(list.FileSystems) != 1 || list.NextPageToken == "" {
		t.Fatalf("first page = %v, %v", list, err)
	}
	list2, err := e.srv.ListFileSystems(ctx, &pb.ListFileSystemsRequest{PageToken: list.NextPageToken})
	if err != nil || len(list2.FileSystems) != 1 || list2.FileSystems[0].Id == list.FileSystems[0].Id {
		t.Fatalf("second page = %v, %v", list2, err)
	}
}

func TestCreateFileSystem_BadInput_NamesTheValue(t *testing.T) {
	e := newFilesEnv(t, 0)
	cases := []struct {
		name string
		req  *pb.CreateFileSystemRequest
		code codes.Code
		says string
	}{
		{"unknown performance mode", &pb.CreateFileSystemRequest{PerformanceMode: "turbo"}, codes.InvalidArgument, `"turbo"`},
		{"unknown throughput mode", &pb.CreateFileSystemRequest{ThroughputMode: "warp"}, codes.InvalidArgument, `"warp"`},
		{"provisioned throughput out of range", &pb.CreateFileSystemRequest{ThroughputMode: "provisioned", ProvisionedThroughputMibps: 5000}, codes.InvalidArgument, "5000"},
		{"zone without a pool", &pb.CreateFileSystemRequest{AvailabilityZone: "zone-z"}, codes.InvalidArgument, `"zone-z"`},
		{"encryption is not pretended", &pb.CreateFileSystemRequest{Encrypted: true}, codes.Unimplemented, "encryption"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.srv.CreateFileSystem(testCtx(t), c.req)
			wantFilesCode(t, err, c.code, c.says)
		})
	}
}

func TestCreateAccessPoint_MakesRootWithOwner_ExportsAsItsUser_Idempotent(t *testing.T) {
	e := newFilesEnv(t, 0)
	ctx := testCtx(t)
	f := e.fs(t, "fs")
	req := ap(f.Id, "/dynamic_provisioning/pvc-1", 1000)
	req.Name = "pvc-1"
	a, err := e.srv.CreateAccessPoint(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(a.Id, "fsap-") || a.State != pb.AccessPointState_ACCESS_POINT_STATE_AVAILABLE ||
		a.RootDirectory.CreationInfo.Permissions != "0750" || a.PosixUser.Uid != 1000 {
		t.Fatalf("created %+v", a)
	}
	fi, err := os.Stat(e.tree.HostPath(f.Id, "/dynamic_provisioning/pvc-1"))
	if err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("root directory: %v %v", fi, err)
	}
	// The whole file system has an export of its own, unsquashed, with
	// another export id.
	fx, ok := e.ex.exports[f.Id]
	if !ok || fx.Squash || fx.ID == 0 || fx.Pseudo != "/"+f.Id || fx.FileSystemID != f.Id || fx.Dir != "/" || fx.Path != "" {
		t.Fatalf("file system export %+v (present %t)", fx, ok)
	}
	if d, _ := e.srv.DescribeFileSystem(ctx, &pb.DescribeFileSystemRequest{FileSystemId: f.Id}); d.GetNfsExportPath() != "/"+f.Id {
		t.Errorf("describe says the file system's export is %q, want /%s", d.GetNfsExportPath(), f.Id)
	}
	x, ok := e.ex.exports[a.Id]
	if !ok || x.ID == fx.ID || !x.Squash || x.AnonUID != 1000 || x.AnonGID != 1000 || x.ID == 0 || x.Pseudo != "/"+a.Id ||
		x.FileSystemID != f.Id || x.Dir != "/dynamic_provisioning/pvc-1" || x.Path != "" {
		t.Fatalf("export %+v (present %t)", x, ok)
	}
	// Describe tells what the root directory's tree takes.
	if err := os.WriteFile(filepath.Join(e.tree.HostPath(f.Id, "/dynamic_provisioning/pvc-1"), "data"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if d, err := e.srv.DescribeAccessPoint(ctx, &pb.DescribeAccessPointRequest{AccessPointId: a.Id}); err != nil || d.SizeUsedBytes < 1<<20 || d.InodesUsed != 2 {
		t.Errorf("describe after writing 1 MiB: used %d bytes, %d inodes (%v); want at least 1 MiB and 2 inodes (the root and the file)", d.GetSizeUsedBytes(), d.GetInodesUsed(), err)
	}
	again, err := e.srv.CreateAccessPoint(ctx, req)
	if err != nil || again.Id != a.Id {
		t.Fatalf("second create = %v, %v", again, err)
	}
	other := ap(f.Id, "/elsewhere", 1000)
	other.Name = "pvc-1"
	_, err = e.srv.CreateAccessPoint(ctx, other)
	wantFilesCode(t, err, codes.AlreadyExists, "pvc-1", a.Id)
	got, err := e.srv.DescribeFileSystem(ctx, &pb.DescribeFileSystemRequest{FileSystemId: f.Id})
	if err != nil || got.AccessPointCount != 1 {
		t.Fatalf("file system after one access point: %v, %v", got, err)
	}
	// A second access point gets its own export id.
	b, err := e.srv.CreateAccessPoint(ctx, ap(f.Id, "/dynamic_provisioning/pvc-2", 1001))
	if err != nil {
		t.Fatal(err)
	}
	if e.ex.exports[b.Id].ID == x.ID {
		t.Errorf("two access points share export id %d", x.ID)
	}
	list, err := e.srv.ListAccessPoints(ctx, &pb.ListAccessPointsRequest{FileSystemId: f.Id})
	if err != nil || len(list.AccessPoints) != 2 {
		t.Fatalf("list = %v, %v", list, err)
	}
}

func TestCreateAccessPoint_BadInput_NamesTheValue(t *testing.T) {
	e := newFilesEnv(t, 0)
	f := e.fs(t, "fs")
	if err := os.Symlink("/etc", filepath.Join(e.tree.FileSystemDir(f.Id), "out")); err != nil {
		t.Fatal(err)
	}
	withPath := func(p string) *pb.CreateAccessPointRequest { return ap(f.Id, p, 1) }
	noCreation := withPath("/missing")
	noCreation.RootDirectory.CreationInfo = nil
	badPerms := withPath("/x")
	badPerms.RootDirectory.CreationInfo.Permissions = "0888"
	quota := withPath("/q")
	quota.QuotaBytes = 1 << 20
	cases := []struct {
		name string
		req  *pb.CreateAccessPointRequest
		code codes.Code
		says string
	}{
		{"dot-dot escapes", withPath("/a/../../etc"), codes.InvalidArgument, "/a/../../etc"},
		{"relative path", withPath("etc"), codes.InvalidArgument, `"etc" must start with /`},
		{"symlink out", withPath("/out/x"), codes.InvalidArgument, "/out is a symbolic link"},
		{"permissions not octal 000-777", badPerms, codes.InvalidArgument, `"0888"`},
		{"missing directory without creation info", noCreation, codes.InvalidArgument, "/missing"},
		{"unknown file system", ap("fs-00000000000000000", "/x", 1), codes.NotFound, "fs-00000000000000000"},
		{"quota on a pool that is not btrfs", quota, codes.FailedPrecondition, "cannot enforce quotas"},
		{"too many secondary groups", &pb.CreateAccessPointRequest{FileSystemId: f.Id, PosixUser: &pb.PosixUser{SecondaryGids: make([]uint32, 17)}}, codes.InvalidArgument, "17"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.srv.CreateAccessPoint(testCtx(t), c.req)
			wantFilesCode(t, err, c.code, c.says)
		})
	}
	got, _ := e.srv.DescribeFileSystem(testCtx(t), &pb.DescribeFileSystemRequest{FileSystemId: f.Id})
	if got.AccessPointCount != 0 || len(e.ex.exports) != 1 {
		t.Errorf("refused creates left %d access points, %d exports (want only the file system's own)", got.AccessPointCount, len(e.ex.exports))
	}
}

func TestCreateAccessPoint_PastTheLimit_ResourceExhausted(t *testing.T) {
	e := newFilesEnv(t, 2)
	f := e.fs(t, "fs")
	for i, p := range []string{"/a", "/b"} {
		if _, err := e.srv.CreateAccessPoint(testCtx(t), ap(f.Id, p, uint32(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	_, err := e.srv.CreateAccessPoint(testCtx(t), ap(f.Id, "/c", 3))
	wantFilesCode(t, err, codes.ResourceExhausted, f.Id, "2 access points")
}

func TestDeleteFileSystem_WithAccessPoints_RefusedNamingThem(t *testing.T) {
	e := newFilesEnv(t, 0)
	ctx := testCtx(t)
	f := e.fs(t, "fs")
	a, err := e.srv.CreateAccessPoint(ctx, ap(f.Id, "/a", 1))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.srv.DeleteFileSystem(ctx, &pb.DeleteFileSystemRequest{FileSystemId: f.Id})
	wantFilesCode(t, err, codes.FailedPrecondition, f.Id, a.Id)

	resp, err := e.srv.DeleteAccessPoint(ctx, &pb.DeleteAccessPointRequest{AccessPointId: a.Id})
	if err != nil || !resp.Deleted {
		t.Fatalf("delete access point = %v, %v", resp, err)
	}
	if _, ok := e.ex.exports[a.Id]; ok {
		t.Error("the deleted access point is still exported")
	}
	if _, err := os.Stat(e.tree.HostPath(f.Id, "/a")); err != nil {
		t.Errorf("deleting an access point removed its directory (EFS keeps it): %v", err)
	}
	if resp, err := e.srv.DeleteAccessPoint(ctx, &pb.DeleteAccessPointRequest{AccessPointId: a.Id}); err != nil || resp.Deleted {
		t.Errorf("deleting a missing access point = %v, %v; want success, deleted=false", resp, err)
	}
	if resp, err := e.srv.DeleteFileSystem(ctx, &pb.DeleteFileSystemRequest{FileSystemId: f.Id}); err != nil || !resp.Deleted {
		t.Fatalf("delete file system = %v, %v", resp, err)
	}
	if _, err := os.Stat(e.tree.FileSystemDir(f.Id)); !os.IsNotExist(err) {
		t.Errorf("tree still there: %v", err)
	}
	if resp, err := e.srv.DeleteFileSystem(ctx, &pb.DeleteFileSystemRequest{FileSystemId: f.Id}); err != nil || resp.Deleted {
		t.Errorf("deleting a missing file system = %v, %v", resp, err)
	}
	_, err = e.srv.DescribeFileSystem(ctx, &pb.DescribeFileSystemRequest{FileSystemId: f.Id})
	wantFilesCode(t, err, codes.NotFound, f.Id)
}

func TestReconcile_HalfMadeAccessPoint_RolledBackWithItsDirectories(t *testing.T) {
	e := newFilesEnv(t, 0)
	ctx := testCtx(t)
	f := e.fs(t, "fs")
	keep, err := e.srv.CreateAccessPoint(ctx, ap(f.Id, "/base/keep", 1))
	if err != nil {
		t.Fatal(err)
	}
	delete(e.ex.exports, keep.Id) // as if ganesha restarted empty
	// A crash after the record and the directories, before the export.
	plan, err := e.tree.PlanRoot(f.Id, "/base/half/made")
	if err != nil {
		t.Fatal(err)
	}
	half := &accessPointRecord{ID: "fsap-0000000000000dead", Name: "half", FileSystemID: f.Id, Pool: "files-a",
		Path: "/base/half/made", MadeDirs: plan, ExportID: 9, State: apCreating}
	err = e.st.Update(ctx, func(tx store.Tx) error {
		var fr fileSystemRecord
		if err := store.GetJSON(tx, bucketFileSystems, f.Id, &fr); err != nil {
			return err
		}
		fr.AccessPoints++
		if err := store.PutJSON(tx, bucketFileSystems, f.Id, &fr); err != nil {
			return err
		}
		if err := tx.Put(bucketAccessPointNames, half.Name, []byte(half.ID)); err != nil {
			return err
		}
		if err := tx.Put(bucketFileSystemAPs, f.Id+"/"+half.ID, nil); err != nil {
			return err
		}
		if err := tx.Put(bucketExportIDs, exportIDKey(exportNamespace, 9), []byte(half.ID)); err != nil {
			return err
		}
		return store.PutJSON(tx, bucketAccessPoints, half.ID, half)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.tree.MakeRoot(ctx, f.Id, files.RootDirectory{Path: half.Path, Creation: &files.CreationInfo{Mode: 0o700}}, 0); err != nil {
		t.Fatal(err)
	}
	e.ex.exports[half.ID] = files.Export{AccessPointID: half.ID}
	// A tree of a file system no record knows, and a file system whose
	// delete did not finish.
	if err := e.tree.CreateFileSystem(ctx, "fs-00000000000000bad"); err != nil {
		t.Fatal(err)
	}
	gone := e.fs(t, "gone")
	rec, _ := e.srv.getFileSystem(ctx, gone.Id)
	rec.State = fsDeleting
	if err := e.srv.putFileSystem(ctx, rec); err != nil {
		t.Fatal(err)
	}

	e.restart(t)

	if _, err := e.srv.DescribeAccessPoint(ctx, &pb.DescribeAccessPointRequest{AccessPointId: half.ID}); status.Code(err) != codes.NotFound {
		t.Errorf("half-made access point after reconcile: %v", err)
	}
	if _, err := os.Stat(e.tree.HostPath(f.Id, "/base/half")); !os.IsNotExist(err) {
		t.Errorf("half-made directory /base/half survived reconcile: %v", err)
	}
	if _, err := os.Stat(e.tree.HostPath(f.Id, "/base/keep")); err != nil {
		t.Errorf("the finished access point's directory is gone: %v", err)
	}
	if _, ok := e.ex.exports[half.ID]; ok {
		t.Error("half-made access point is still exported")
	}
	if _, ok := e.ex.exports[keep.Id]; !ok {
		t.Error("reconcile did not export the available access point again")
	}
	got, _ := e.srv.DescribeFileSystem(ctx, &pb.DescribeFileSystemRequest{FileSystemId: f.Id})
	if got.AccessPointCount != 1 {
		t.Errorf("access point count %d after rollback, want 1", got.AccessPointCount)
	}
	if a, _ := byName[accessPointRecord](ctx, e.st, bucketAccessPoints, bucketAccessPointNames, "half"); a != nil {
		t.Error("the rolled-back name still points at a record")
	}
	ids, _ := e.tree.ListFileSystems()
	if len(ids) != 1 || ids[0] != f.Id {
		t.Errorf("trees after reconcile: %v, want only %s", ids, f.Id)
	}
}

func TestAccessPoint_DeleteRootDirectory_RemovesTheTree_FinishedByReconcile(t *testing.T) {
	e := newFilesEnv(t, 0)
	ctx := testCtx(t)
	f := e.fs(t, "shared")
	keep, err := e.srv.CreateAccessPoint(ctx, ap(f.Id, "/keep", 1000))
	if err != nil {
		t.Fatal(err)
	}
	gone, err := e.srv.CreateAccessPoint(ctx, ap(f.Id, "/dyn/gone", 1000))
	if err != nil {
		t.Fatal(err)
	}
	if keep.NfsExportPath != "/"+keep.Id {
		t.Errorf("export path %q; want /%s", keep.NfsExportPath, keep.Id)
	}
	host := func(p string) string { return e.tree.HostPath(f.Id, p) }
	if err := os.MkdirAll(filepath.Join(host("/dyn/gone"), "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := e.srv.DeleteAccessPoint(ctx, &pb.DeleteAccessPointRequest{AccessPointId: keep.Id}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.srv.DeleteAccessPoint(ctx, &pb.DeleteAccessPointRequest{AccessPointId: gone.Id, DeleteRootDirectory: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(host("/keep")); err != nil {
		t.Errorf("without delete_root_directory the directory stays: %v", err)
	}
	if _, err := os.Stat(host("/dyn/gone")); !os.IsNotExist(err) {
		t.Errorf("with delete_root_directory the directory goes: %v", err)
	}
	if _, err := os.Stat(host("/dyn")); err != nil {
		t.Errorf("the parent stays: %v", err)
	}

	// A delete that crashed after marking the record: the restart
	// finishes it, directory included.
	half, err := e.srv.CreateAccessPoint(ctx, ap(f.Id, "/half", 1000))
	if err != nil {
		t.Fatal(err)
	}
	a, err := e.srv.getAccessPoint(ctx, half.Id)
	if err != nil {
		t.Fatal(err)
	}
	a.State, a.DeleteRoot = apDeleting, true
	if err := e.srv.putAccessPoint(ctx, a); err != nil {
		t.Fatal(err)
	}
	e.restart(t)
	if _, err := os.Stat(host("/half")); !os.IsNotExist(err) {
		t.Errorf("reconcile did not finish removing the root directory: %v", err)
	}

	root, err := e.srv.CreateAccessPoint(ctx, ap(f.Id, "/", 1000))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.srv.DeleteAccessPoint(ctx, &pb.DeleteAccessPointRequest{AccessPointId: root.Id, DeleteRootDirectory: true})
	wantFilesCode(t, err, codes.FailedPrecondition, "removed only with the file system")
}

func TestSetAccessPointQuota_RefusedWithoutAQuota(t *testing.T) {
	e := newFilesEnv(t, 0)
	ctx := testCtx(t)
	f := e.fs(t, "shared")
	a, err := e.srv.CreateAccessPoint(ctx, ap(f.Id, "/elastic", 1000))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.srv.SetAccessPointQuota(ctx, &pb.SetAccessPointQuotaRequest{AccessPointId: a.Id, QuotaBytes: 1 << 30})
	wantFilesCode(t, err, codes.FailedPrecondition, "was made without a quota")
	_, err = e.srv.SetAccessPointQuota(ctx, &pb.SetAccessPointQuotaRequest{AccessPointId: a.Id})
	wantFilesCode(t, err, codes.InvalidArgument, "must be greater than 0")
	_, err = e.srv.SetAccessPointQuota(ctx, &pb.SetAccessPointQuotaRequest{AccessPointId: "fsap-00000000000000000", QuotaBytes: 1})
	wantFilesCode(t, err, codes.NotFound)
}

// capacityTree is a file tree whose free space the test sets.
type capacityTree struct {
	*files.Tree
	mu   sync.Mutex
	free int64
	err  error
}

func (c *capacityTree) Capacity() (int64, int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return 1 << 40, c.free, c.err
}

func (c *capacityTree) set(free int64, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.free, c.err = free, err
}

// A new file system goes to the file-tree pool of its zone with the most
// free space; a pool whose free space cannot be read is passed over, and
// with none readable the create is refused as unavailable, naming it.
func TestCreateFileSystem_PlacedOnTheTreeWithTheMostFreeSpace(t *testing.T) {
	dir := t.TempDir()
	st, err := boltstore.Open(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	trees := map[string]*capacityTree{}
	filePools, exporters := map[string]FilePool{}, map[string]Exporter{}
	for _, p := range []struct{ name, zone string }{{"files-1", "zone-a"}, {"files-2", "zone-a"}, {"files-3", "zone-b"}} {
		tr, err := files.Open(files.Config{Dir: filepath.Join(dir, p.name), Zone: p.zone, Node: "node-" + p.name})
		if err != nil {
			t.Fatal(err)
		}
		trees[p.name] = &capacityTree{Tree: tr}
		filePools[p.name], exporters[p.name] = trees[p.name], &fakeExporter{exports: map[string]files.Export{}}
	}
	pool, err := agent.Open(agent.Config{Dir: filepath.Join(dir, "pool-a"), Zone: "zone-a", Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Store: st, Pools: map[string]Pool{"pool-a": pool}, FilePools: filePools, Exporters: exporters,
		Logger: slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelError}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	placed := func(name, zone string) string {
		t.Helper()
		f, err := srv.CreateFileSystem(ctx, &pb.CreateFileSystemRequest{Name: name, AvailabilityZone: zone})
		if err != nil {
			t.Fatal(err)
		}
		r, err := srv.getFileSystem(ctx, f.GetId())
		if err != nil {
			t.Fatal(err)
		}
		return r.Pool
	}

	trees["files-1"].set(10<<30, nil)
	trees["files-2"].set(20<<30, nil)
	trees["files-3"].set(90<<30, nil)
	if got := placed("one", "zone-a"); got != "files-2" {
		t.Fatalf("zone-a, files-1 10 GiB free, files-2 20 GiB: placed on %s, want files-2", got)
	}
	trees["files-2"].set(5<<30, nil)
	if got := placed("two", "zone-a"); got != "files-1" {
		t.Fatalf("zone-a, files-1 10 GiB free, files-2 5 GiB: placed on %s, want files-1", got)
	}
	if got := placed("regional", ""); got != "files-3" {
		t.Fatalf("any zone, files-3 has 90 GiB free: placed on %s, want files-3", got)
	}
	trees["files-1"].set(0, errors.New("agent not answering"))
	if got := placed("three", "zone-a"); got != "files-2" {
		t.Fatalf("zone-a, files-1 unreadable: placed on %s, want files-2", got)
	}
	trees["files-2"].set(0, errors.New("agent not answering"))
	_, err = srv.CreateFileSystem(ctx, &pb.CreateFileSystemRequest{Name: "four", AvailabilityZone: "zone-a"})
	wantFilesCode(t, err, codes.Unavailable, "files-1", "zone-a", "free space")
}
