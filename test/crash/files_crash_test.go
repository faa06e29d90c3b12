package crash

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// fileCrashCase is a crash case of the file system and access point API;
// the server test turns it into its own crashCase.
type fileCrashCase struct {
	point string
	setup func(t *testing.T, a *apiClients) string
	op    func(ctx context.Context, a *apiClients, id string) error
	check func(t *testing.T, a *apiClients, id string)
}

func fileSystemsNamed(t *testing.T, a *apiClients, name string) []*pb.FileSystem {
	t.Helper()
	resp, err := a.fs.ListFileSystems(callCtx(t), &pb.ListFileSystemsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var out []*pb.FileSystem
	for _, f := range resp.FileSystems {
		if f.Name == name {
			out = append(out, f)
		}
	}
	return out
}

func makeFS(t *testing.T, a *apiClients) string {
	f, err := a.fs.CreateFileSystem(callCtx(t), &pb.CreateFileSystemRequest{Name: "crash-fs"})
	if err != nil {
		t.Fatal(err)
	}
	return f.Id
}

func createAP(ctx context.Context, a *apiClients, fsID string) (*pb.AccessPoint, error) {
	return a.aps.CreateAccessPoint(ctx, &pb.CreateAccessPointRequest{
		Name: "crash-ap", FileSystemId: fsID, PosixUser: &pb.PosixUser{Uid: 1000, Gid: 1000},
		RootDirectory: &pb.RootDirectory{Path: "/base/crash/ap", CreationInfo: &pb.CreationInfo{OwnerUid: 1000, OwnerGid: 1000, Permissions: "700"}},
	})
}

func fileCrashCases() []fileCrashCase {
	createFS := func(ctx context.Context, a *apiClients, _ string) error {
		_, err := a.fs.CreateFileSystem(ctx, &pb.CreateFileSystemRequest{Name: "crash-fs", ThroughputMode: "elastic"})
		return err
	}
	oneFS := func(t *testing.T, a *apiClients, _ string) {
		fss := fileSystemsNamed(t, a, "crash-fs")
		if len(fss) != 1 || fss[0].State != pb.FileSystemState_FILE_SYSTEM_STATE_AVAILABLE {
			t.Errorf("file systems named crash-fs: %v, want one available", fss)
		}
	}
	apMade := func(t *testing.T, a *apiClients, fsID string) {
		list, err := a.aps.ListAccessPoints(callCtx(t), &pb.ListAccessPointsRequest{FileSystemId: fsID})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.AccessPoints) != 1 || list.AccessPoints[0].Name != "crash-ap" || list.AccessPoints[0].State != pb.AccessPointState_ACCESS_POINT_STATE_AVAILABLE {
			t.Errorf("access points of %s: %v, want one available crash-ap", fsID, list.AccessPoints)
		}
		f, err := a.fs.DescribeFileSystem(callCtx(t), &pb.DescribeFileSystemRequest{FileSystemId: fsID})
		if err != nil || f.AccessPointCount != 1 {
			t.Errorf("file system %s counts %d access points (%v), want 1", fsID, f.GetAccessPointCount(), err)
		}
	}
	return []fileCrashCase{
		{point: "create-fs:recorded", op: createFS, check: oneFS},
		{point: "create-fs:tree-created", op: createFS, check: oneFS},
		{point: "delete-fs:marked", setup: makeFS,
			op: func(ctx context.Context, a *apiClients, id string) error {
				_, err := a.fs.DeleteFileSystem(ctx, &pb.DeleteFileSystemRequest{FileSystemId: id})
				return err
			},
			check: func(t *testing.T, a *apiClients, id string) {
				if _, err := a.fs.DescribeFileSystem(callCtx(t), &pb.DescribeFileSystemRequest{FileSystemId: id}); status.Code(err) != codes.NotFound {
					t.Errorf("deleted file system %s: %v, want NotFound", id, err)
				}
			}},
		{point: "create-ap:recorded", setup: makeFS, op: func(ctx context.Context, a *apiClients, id string) error { _, err := createAP(ctx, a, id); return err }, check: apMade},
		{point: "create-ap:root-made", setup: makeFS, op: func(ctx context.Context, a *apiClients, id string) error { _, err := createAP(ctx, a, id); return err }, check: apMade},
		{point: "create-ap:exported", setup: makeFS, op: func(ctx context.Context, a *apiClients, id string) error { _, err := createAP(ctx, a, id); return err }, check: apMade},
		{point: "delete-ap:marked",
			setup: func(t *testing.T, a *apiClients) string {
				ap, err := createAP(callCtx(t), a, makeFS(t, a))
				if err != nil {
					t.Fatal(err)
				}
				return ap.Id
			},
			op: func(ctx context.Context, a *apiClients, id string) error {
				_, err := a.aps.DeleteAccessPoint(ctx, &pb.DeleteAccessPointRequest{AccessPointId: id})
				return err
			},
			check: func(t *testing.T, a *apiClients, id string) {
				if _, err := a.aps.DescribeAccessPoint(callCtx(t), &pb.DescribeAccessPointRequest{AccessPointId: id}); status.Code(err) != codes.NotFound {
					t.Errorf("deleted access point %s: %v, want NotFound", id, err)
				}
				if fss := fileSystemsNamed(t, a, "crash-fs"); len(fss) != 1 || fss[0].AccessPointCount != 0 {
					t.Errorf("after the delete: %v, want crash-fs with no access points", fss)
				}
			}},
	}
}

// checkFileTrees checks that the file-tree pool holds exactly the file
// systems the metadata knows, nothing half made in tmp, no temporary
// directory left in a tree, and every access point's root directory with
// the owner and mode it was made with.
func checkFileTrees(t *testing.T, e *crashEnv, a *apiClients) {
	t.Helper()
	pool := filepath.Join(e.dir, "data", "files", "files")
	resp, err := a.fs.ListFileSystems(callCtx(t), &pb.ListFileSystemsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var known []string
	for _, f := range resp.FileSystems {
		known = append(known, f.Id)
	}
	entries, _ := os.ReadDir(filepath.Join(pool, "filesystems"))
	var got []string
	for _, en := range entries {
		got = append(got, en.Name())
	}
	if strings.Join(sortedCopy(got), ",") != strings.Join(sortedCopy(known), ",") {
		t.Errorf("file-tree pool holds %v, the metadata knows %v", got, known)
	}
	if tmp, _ := os.ReadDir(filepath.Join(pool, "tmp")); len(tmp) != 0 {
		t.Errorf("file-tree pool tmp holds %v after the restart", tmp)
	}
	for _, id := range known {
		filepath.WalkDir(filepath.Join(pool, "filesystems", id), func(p string, d os.DirEntry, err error) error {
			if err == nil && strings.HasPrefix(d.Name(), ".stowage-tmp-") {
				t.Errorf("half-made directory %s survived", p)
			}
			return nil
		})
		aps, err := a.aps.ListAccessPoints(callCtx(t), &pb.ListAccessPointsRequest{FileSystemId: id})
		if err != nil {
			t.Fatal(err)
		}
		for _, ap := range aps.AccessPoints {
			var st syscall.Stat_t
			p := filepath.Join(pool, "filesystems", id, ap.RootDirectory.Path)
			if err := syscall.Stat(p, &st); err != nil || st.Uid != 1000 || st.Mode&0o777 != 0o700 {
				t.Errorf("root directory of %s: uid %d mode %o, %v; want 1000, 0700", ap.Id, st.Uid, st.Mode&0o777, err)
			}
		}
	}
}
