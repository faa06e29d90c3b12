// Package file runs csi-sanity against the file driver; a package of its
// own because Ginkgo runs one suite per process.
package file

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/testutil/stack"
)

// TestFileCSISanity runs csi-sanity against the file driver
// (file.csi.stowage.io) with everything real: the server, a btrfs
// file-tree pool, nfs-ganesha exporting each access point, and the FUSE NFS
// client mounting it at every publish.
func TestFileCSISanity(t *testing.T) {
	helper := stack.BuildStowage(t)
	s := stack.Start(t, stack.Options{FileDriver: true, MountHelper: helper, NoDriver: true})
	fs, err := pb.NewFileSystemServiceClient(s.Conn).CreateFileSystem(context.Background(), &pb.CreateFileSystemRequest{Name: "sanity"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := sanity.NewTestConfig()
	cfg.Address = s.FileCSIEndpoint
	cfg.TargetPath = filepath.Join(s.Dir, "target")
	cfg.StagingPath = filepath.Join(s.Dir, "staging")
	cfg.TestVolumeSize = 1 << 30
	cfg.TestVolumeExpandSize = 2 << 30
	cfg.IdempotentCount = 2
	cfg.TestVolumeParameters = map[string]string{
		"provisioningMode": "efs-ap",
		"fileSystemId":     fs.Id,
		"directoryPerms":   "700",
		"basePath":         "/sanity",
		"quota":            "true",
	}
	cfg.CheckPath = stack.CheckPath
	sanity.Test(t, cfg)
}
