package csi_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/testutil/stack"
)

func mountCap(fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

type driver struct {
	t    *testing.T
	s    *stack.Stack
	ctrl csi.ControllerClient
	node csi.NodeClient
}

func newDriver(t *testing.T) *driver { return newDriverWith(t, stack.Options{}) }

func newDriverWith(t *testing.T, o stack.Options) *driver {
	s := stack.Start(t, o)
	conn, err := grpc.NewClient(s.CSIEndpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &driver{t: t, s: s, ctrl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn)}
}

// mount attaches, stages and publishes a volume and returns the published path
// and a function that undoes it all.
func (d *driver) mount(volID string) (string, func()) {
	d.t.Helper()
	return d.mountFS(volID, "ext4")
}

func (d *driver) mountFS(volID, fs string) (string, func()) {
	d.t.Helper()
	ctx := context.Background()
	staging := filepath.Join(d.s.Dir, "staging-"+volID)
	target := filepath.Join(d.s.Dir, "target-"+volID)
	if err := os.MkdirAll(staging, 0o750); err != nil {
		d.t.Fatal(err)
	}
	if _, err := d.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: volID, NodeId: d.s.Node, VolumeCapability: mountCap(fs)}); err != nil {
		d.t.Fatal(err)
	}
	if _, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: staging, VolumeCapability: mountCap(fs)}); err != nil {
		d.t.Fatal(err)
	}
	if _, err := d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap(fs)}); err != nil {
		d.t.Fatal(err)
	}
	return target, func() {
		d.t.Helper()
		for _, err := range []error{
			second(d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target})),
			second(d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: staging})),
			second(d.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: volID, NodeId: d.s.Node})),
		} {
			if err != nil {
				d.t.Fatal(err)
			}
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestEncryptedVolume_DataReadableInPodCiphertextInImage(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	vol, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "enc-1", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap("ext4")},
		Parameters:         map[string]string{"type": "gp3", "encrypted": "true"},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.Volume.VolumeId
	desc, err := d.s.Volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: id})
	if err != nil || !desc.Encrypted || desc.KmsKeyId == "" {
		t.Fatalf("DescribeVolume = %+v, %v; want encrypted with a KMS key", desc, err)
	}

	target, unmount := d.mount(id)
	marker := bytes.Repeat([]byte("stowage-secret-marker-"), 1000)
	if err := os.WriteFile(filepath.Join(target, "secret"), marker, 0o600); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	img, err := os.ReadFile(filepath.Join(d.s.PoolDir, "volumes", id+".img"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(img, []byte("stowage-secret-marker-")) {
		t.Fatal("plaintext found in the volume image: not encrypted at rest")
	}

	// Only the node the volume is attached to gets its key.
	if _, err := d.s.Volumes.GetVolumeDataKey(ctx, &pb.GetVolumeDataKeyRequest{VolumeId: id, NodeId: "node-z"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("data key for an unattached node: %v, want PermissionDenied", err)
	}

	snap, err := d.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "enc-snap", SourceVolumeId: id})
	if err != nil {
		t.Fatal(err)
	}
	unmount()

	restored, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "enc-restore", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30},
		VolumeCapabilities:  []*csi.VolumeCapability{mountCap("ext4")},
		Parameters:          map[string]string{"encrypted": "true"},
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.Snapshot.SnapshotId}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{id, restored.Volume.VolumeId} {
		target, unmount := d.mount(v)
		got, err := os.ReadFile(filepath.Join(target, "secret"))
		if err != nil || !bytes.Equal(got, marker) {
			t.Fatalf("volume %s after re-stage: read = %v; want the data written before", v, err)
		}
		unmount()
	}
}

func TestEncryptedVolume_BlockOrXFS_InvalidArgument(t *testing.T) {
	d := newDriver(t)
	block := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	for name, c := range map[string]*csi.VolumeCapability{"block": block, "xfs": mountCap("xfs")} {
		_, err := d.ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
			Name: "enc-" + name, VolumeCapabilities: []*csi.VolumeCapability{c},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}, Parameters: map[string]string{"encrypted": "true"},
		})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: CreateVolume = %v, want InvalidArgument", name, err)
		}
	}
}
