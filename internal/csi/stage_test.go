package csi_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stowage-io/stowage/pkg/loopdev"
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
	if dev, found, err := loopdev.Find(image); err != nil || found {
		t.Fatalf("after the failed stage the image is still attached as %s (err %v)", dev, err)
	}

	// The stage that works, and a repeat of it with other mount options,
	// keep the volume staged. Mount options apply when the volume is first
	// mounted (as with the EBS driver): the kubelet stages a staged volume
	// again after a restart, and a PV's mountOptions may have changed
	// meanwhile, which must not fail the pod that is running on it.
	if _, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap("xfs")}); err != nil {
		t.Fatalf("NodeStageVolume after a failed one: %v", err)
	}
	t.Cleanup(func() {
		d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	})
	if _, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: bad}); err != nil {
		t.Fatalf("repeated stage of a staged volume with other mount options: %v, want success (the volume is staged)", err)
	}
	if _, found, err := loopdev.Find(image); err != nil || !found {
		t.Fatalf("a staged volume lost its loop device after a repeated stage (err %v)", err)
	}
	if err := os.WriteFile(filepath.Join(staging, "f"), []byte("still here"), 0o600); err != nil {
		t.Fatalf("the staged file system is not usable: %v", err)
	}
	if _, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := loopdev.Find(image); found {
		t.Fatal("unstage left the loop device")
	}
}

// The kubelet stages a staged volume again (after a restart, for example).
// That must keep what the node knows about the volume's publishes: the
// single-writer check and the pods' I/O limits rely on it.
func TestNodeStage_Repeated_KeepsPublishedTargets(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	vol, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "stage-twice", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap("xfs")},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.Volume.VolumeId
	target, cleanup := d.mountFS(id, "xfs")
	defer cleanup()
	staging := filepath.Join(d.s.Dir, "staging-"+id)
	if _, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap("xfs")}); err != nil {
		t.Fatalf("repeated NodeStageVolume: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(d.s.StateDir, id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Device  string          `json:"device"`
		Targets map[string]bool `json:"targets"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Targets[target]; !ok || st.Device == "" {
		t.Fatalf("after a repeated stage the node state is %s; want device and target %s kept", b, target)
	}
	// And what the targets are for: a single-writer publish elsewhere is
	// refused while the volume is published.
	single := mountCap("xfs")
	single.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	other := filepath.Join(d.s.Dir, "other-target-"+id)
	_, err = d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: other, VolumeCapability: single})
	if status.Code(err) != codes.FailedPrecondition {
		d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: other})
		t.Fatalf("single-writer publish beside a published target after a repeated stage: %v, want FailedPrecondition", err)
	}
}
