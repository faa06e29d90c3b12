package csi_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stowage-io/stowage/internal/testutil/stack"
)

func fsSize(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * int64(st.Bsize)
}

// Growing a mounted volume: xfs grows online; ext4 grows online where the
// node has CAP_SYS_RESOURCE and otherwise says why and grows at the next
// stage. Data stays either way.
func TestExpand_OnlineXFSAndExt4NextStage_DataIntact(t *testing.T) {
	expandOnline(t, newDriver(t), "xfs", "ext4")
}

// The same over the network: the node is not the storage host, so the
// volume is attached through its NBD export (stowage nbd-attach), whose
// device grows when the node asks for the export's size again.
func TestExpand_OverTheNetwork_OnlineXFS_DataIntact(t *testing.T) {
	expandOnline(t, newDriverWith(t, stack.Options{StorageNode: "storage-1", MountHelper: stack.BuildStowage(t)}), "xfs")
}

func expandOnline(t *testing.T, d *driver, fileSystems ...string) {
	ctx := context.Background()
	for _, fs := range fileSystems {
		t.Run(fs, func(t *testing.T) {
			vol, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
				Name: "grow-" + fs, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30},
				VolumeCapabilities: []*csi.VolumeCapability{mountCap(fs)},
			})
			if err != nil {
				t.Fatal(err)
			}
			id := vol.Volume.VolumeId
			target, unmount := d.mountFS(id, fs)
			data := bytes.Repeat([]byte("keep me "), 1<<16)
			if err := os.WriteFile(filepath.Join(target, "f"), data, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := d.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 3 << 30}}); err != nil {
				t.Fatal(err)
			}
			_, err = d.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target, VolumeCapability: mountCap(fs)})
			switch {
			case err == nil:
				if got := fsSize(t, target); got < 2<<30 {
					t.Fatalf("after online expansion the file system has %d bytes, want > 2 GiB", got)
				}
			case fs == "ext4" && status.Code(err) == codes.FailedPrecondition && strings.Contains(err.Error(), "CAP_SYS_RESOURCE"):
				t.Logf("online ext4 growth not possible on this node: %v", err)
			default:
				t.Fatalf("NodeExpandVolume: %v", err)
			}
			unmount()
			target, unmount = d.mountFS(id, fs)
			defer unmount()
			if got := fsSize(t, target); got < 2<<30 {
				t.Fatalf("after re-stage the file system has %d bytes, want > 2 GiB", got)
			}
			if got, err := os.ReadFile(filepath.Join(target, "f")); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("data after expansion: %v", err)
			}
		})
	}
}
