package csi_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/stowage-io/stowage/internal/attach"
)

// A stage that fails after attaching the image (here: the mount is refused)
// detaches it again and forgets it: the kubelet never unstages a volume
// whose stage failed, so a loop device left behind would hold the image
// after the volume is deleted. The next stage then works.
func TestNodeStage_FailedMountLeavesNoLoopDevice(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	vol, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "stage-fails", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap("xfs")},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.Volume.VolumeId
	image := filepath.Join(d.s.PoolDir, "volumes", id+".img")
	if _, err := d.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: d.s.Node, VolumeCapability: mountCap("xfs")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: d.s.Node})
	})
	staging := filepath.Join(d.s.Dir, "staging-"+id)
	if err := os.MkdirAll(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	bad := mountCap("xfs")
	bad.GetMount().MountFlags = []string{"no-such-mount-option"}
	if _, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: bad}); err == nil {
		t.Fatal("NodeStageVolume with an unknown mount option succeeded")
	}
	if dev, found, err := attach.Find(image); err != nil || found {
		t.Fatalf("after the failed stage the image is still attached as %s (err %v)", dev, err)
	}

	// The stage that works, and a failed retry of it, keep the volume staged.
	if _, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap("xfs")}); err != nil {
		t.Fatalf("NodeStageVolume after a failed one: %v", err)
	}
	t.Cleanup(func() {
		d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	})
	if _, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: bad}); err != nil {
		t.Logf("repeated stage with other options: %v", err)
	}
	if _, found, err := attach.Find(image); err != nil || !found {
		t.Fatalf("a staged volume lost its loop device after a repeated stage (err %v)", err)
	}
	if err := os.WriteFile(filepath.Join(staging, "f"), []byte("still here"), 0o600); err != nil {
		t.Fatalf("the staged file system is not usable: %v", err)
	}
	if _, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := attach.Find(image); found {
		t.Fatal("unstage left the loop device")
	}
}
