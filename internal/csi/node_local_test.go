package csi

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// A local attachment: the node gets the image from the local handoff (no
// path from the API), finds its loop device again by the image's device
// and inode, and a restarted node plugin (a new NodeService on the same
// state) neither asks again nor attaches twice.
func TestNodeStageVolume_LocalAttachment_ImageFromTheHandoffFoundAgainByInode(t *testing.T) {
	f := newNodeFixture(t)
	f.stage(t)
	if f.loops.devices[f.image] == "" || len(f.images.asked) != 1 {
		t.Fatalf("devices %v, handoff asked %d times", f.loops.devices, len(f.images.asked))
	}
	b, _ := os.ReadFile(f.n.statePath(fakeVolumeID))
	if strings.Contains(string(b), f.image) || strings.Contains(string(b), fakeSecret) {
		t.Errorf("node state %s holds the image path or the secret", b)
	}
	restarted := newNodeService(f.n.cfg, f.vols, nil, f.loops, f.network, f.mounts, f.lim)
	restarted.images = f.images
	if _, err := restarted.NodeStageVolume(context.Background(), f.stageReq(fsCap("xfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER))); err != nil {
		t.Fatal(err)
	}
	if len(f.images.asked) != 1 || len(f.loops.devices) != 1 {
		t.Errorf("restaged after a restart: handoff asked %d times, devices %v; want the recorded device", len(f.images.asked), f.loops.devices)
	}
	if _, err := restarted.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: fakeVolumeID, StagingTargetPath: f.staging}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.loops.detached, []string{f.image}) || f.state(t) != nil {
		t.Errorf("after unstage: detached %v, state %+v", f.loops.detached, f.state(t))
	}
	// Unstaged again: nothing to do.
	if _, err := restarted.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: fakeVolumeID, StagingTargetPath: f.staging}); err != nil {
		t.Fatal(err)
	}
}

func TestNodeStageVolume_LocalAttachment_Failures(t *testing.T) {
	rwo := fsCap("xfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	t.Run("HandoffRefuses_ItsCodeAndWordsNamingTheTarget", func(t *testing.T) {
		f := newNodeFixture(t)
		f.images.err = status.Error(codes.PermissionDenied, "local handoff: the secret given for volume vol-1 on node node-a is not its attachment's")
		_, err := f.n.NodeStageVolume(context.Background(), f.stageReq(rwo))
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), fakeLocalTarget) || !strings.Contains(err.Error(), "not its attachment's") {
			t.Fatalf("stage = %v", err)
		}
		if f.state(t) != nil || len(f.loops.devices) != 0 {
			t.Errorf("a refused stage left state %+v, devices %v", f.state(t), f.loops.devices)
		}
	})
	t.Run("NoHandoffConfigured_SaysWhichFlag", func(t *testing.T) {
		f := newNodeFixture(t)
		f.n.images = hostHandoff{socket: ""}
		_, err := f.n.NodeStageVolume(context.Background(), f.stageReq(rwo))
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--local-handoff") {
			t.Fatalf("stage = %v; want FailedPrecondition naming --local-handoff", err)
		}
	})
	t.Run("AttachmentChanged_Aborted", func(t *testing.T) {
		f := newNodeFixture(t)
		real := f.vols.vol
		f.vols.vol = &pb.Volume{Id: real.Id, Attachments: []*pb.Attachment{{NodeId: "node-a", LocalTarget: "lat-2"}}}
		_, err := f.n.attachLocal(context.Background(), fakeVolumeID, &stagedVolume{VolumeID: fakeVolumeID, Local: localOf(real.Attachments[0])})
		if status.Code(err) != codes.Aborted {
			t.Fatalf("attach with a stale target = %v, want Aborted", err)
		}
	})
	t.Run("AttachmentOfAnOlderServer_FailedPreconditionToPublishAgain", func(t *testing.T) {
		f := newNodeFixture(t)
		f.vols.vol.Attachments = []*pb.Attachment{{NodeId: "node-a"}}
		_, err := f.n.NodeStageVolume(context.Background(), f.stageReq(rwo))
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "ControllerPublishVolume again") {
			t.Fatalf("stage = %v", err)
		}
	})
	t.Run("MountFails_LoopDeviceDetached", func(t *testing.T) {
		f := newNodeFixture(t)
		f.mounts.mountErr = os.ErrPermission
		if _, err := f.n.NodeStageVolume(context.Background(), f.stageReq(rwo)); err == nil {
			t.Fatal("stage succeeded with a failing mount")
		}
		if len(f.loops.devices) != 0 || !slices.Equal(f.loops.detached, []string{f.image}) || f.state(t) != nil {
			t.Errorf("after a failed stage: devices %v, detached %v, state %+v", f.loops.devices, f.loops.detached, f.state(t))
		}
	})
}

// A volume staged by a node plugin from before the local handoff: its
// state names the image path (from the API of then). After the upgrade a
// repeated stage keeps its device, and unstage detaches it by that path.
func TestNodeUnstageVolume_StateOfAnOlderNodePlugin_DetachedByImagePath(t *testing.T) {
	f := newNodeFixture(t)
	f.loops.devices[f.image] = "/dev/loop5"
	f.mounts.mounted[f.staging] = "/dev/loop5"
	old := `{"volumeId":"` + fakeVolumeID + `","imagePath":"` + f.image + `","device":"/dev/loop5","stagingPath":"` + f.staging + `"}`
	if err := os.WriteFile(f.n.statePath(fakeVolumeID), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.n.NodeStageVolume(context.Background(), f.stageReq(fsCap("xfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER))); err != nil {
		t.Fatalf("repeated stage after the upgrade: %v", err)
	}
	if len(f.images.asked) != 0 || len(f.loops.devices) != 1 {
		t.Errorf("repeated stage asked the handoff %d times, devices %v; want the old device kept", len(f.images.asked), f.loops.devices)
	}
	resp, err := f.n.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: fakeVolumeID, VolumePath: f.staging})
	if err != nil || resp.VolumeCondition.Abnormal {
		t.Errorf("stats of the old volume: %v, %v", resp, err)
	}
	if _, err := f.n.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: fakeVolumeID, StagingTargetPath: f.staging}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.loops.detached, []string{f.image}) || f.state(t) != nil {
		t.Errorf("after unstage: detached %v, state %+v", f.loops.detached, f.state(t))
	}
}
