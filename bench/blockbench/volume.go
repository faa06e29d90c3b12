package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/internal/attach"
)

const gib = int64(1) << 30

// callTimeout bounds every control-plane call of the benchmark; none should
// take more than a fraction of it.
const callTimeout = 2 * time.Minute

// volume is a volume the benchmark created through the CSI controller and
// possibly published on the node.
type volume struct {
	id        string
	sizeGiB   int64
	block     bool   // published as a raw block device rather than ext4
	target    string // the published path: a mount point, or a device file
	staging   string
	imagePath string // the file behind the loop device (backingOf)
	device    string // the loop device the node attached
	del       *undo  // DeleteVolume
	unpublish *undo  // NodeUnpublish + NodeUnstage + ControllerUnpublish
}

func mountCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// csiCreate is what the external-provisioner sends for a PVC of a
// StorageClass with params.
func csiCreate(name string, sizeGiB int64, params map[string]string, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:                name,
		CapacityRange:       &csi.CapacityRange{RequiredBytes: sizeGiB * gib},
		VolumeCapabilities:  []*csi.VolumeCapability{mountCap()},
		Parameters:          params,
		VolumeContentSource: src,
	}
}

// createVolume creates a volume through the CSI controller and registers
// its deletion on u.
func (s *stack) createVolume(ctx context.Context, u *undoStack, name string, sizeGiB int64, params map[string]string) (*volume, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := s.ctrl.CreateVolume(cctx, csiCreate(name, sizeGiB, params, nil))
	if err != nil {
		return nil, fmt.Errorf("CSI CreateVolume %s: %w", name, err)
	}
	v := &volume{id: resp.Volume.VolumeId, sizeGiB: sizeGiB}
	v.del = u.Push("delete volume "+v.id, func() error { return s.deleteVolume(v.id) })
	return v, nil
}

func (s *stack) deleteVolume(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	_, err := s.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	return err
}

func (s *stack) deleteSnapshot(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	_, err := s.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
	return err
}

// publish does what kubelet and the external-attacher do before a pod
// starts: ControllerPublish, NodeStage, NodePublish. Its undo on u does the
// reverse, and must run before the volume's deletion (it is pushed later).
func (s *stack) publish(ctx context.Context, u *undoStack, v *volume, asBlock bool) error {
	vc := mountCap()
	if asBlock {
		vc = blockCap()
	}
	v.block = asBlock
	v.staging = filepath.Join(s.work, "staging", v.id)
	v.target = filepath.Join(s.work, "pods", v.id, "volume")
	if err := os.MkdirAll(v.staging, 0o750); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(v.target), 0o750); err != nil {
		return err
	}
	v.unpublish = u.Push("unpublish volume "+v.id, func() error { return s.unpublish(v) })

	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	pub, err := s.ctrl.ControllerPublishVolume(cctx, &csi.ControllerPublishVolumeRequest{VolumeId: v.id, NodeId: benchNode, VolumeCapability: vc})
	if err != nil {
		return fmt.Errorf("ControllerPublishVolume %s: %w", v.id, err)
	}
	if _, err := s.node.NodeStageVolume(cctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging,
		VolumeCapability: vc, PublishContext: pub.PublishContext}); err != nil {
		return fmt.Errorf("NodeStageVolume %s: %w", v.id, err)
	}
	if _, err := s.node.NodePublishVolume(cctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging,
		TargetPath: v.target, VolumeCapability: vc, PublishContext: pub.PublishContext}); err != nil {
		return fmt.Errorf("NodePublishVolume %s: %w", v.id, err)
	}
	// The API names no paths: the kernel says which device backs the
	// published volume and which image file backs that loop device.
	dev, image, err := backingOf(v.target, asBlock)
	if err != nil {
		return fmt.Errorf("volume %s is published at %s: %w", v.id, v.target, err)
	}
	v.imagePath = image
	v.device = dev
	return nil
}

// backingOf is the loop device behind a published target (the device
// file itself for a block volume, the mounted file system's device
// otherwise) and the image file behind that loop device.
func backingOf(target string, block bool) (dev, image string, err error) {
	var st unix.Stat_t
	if err := unix.Stat(target, &st); err != nil {
		return "", "", err
	}
	d := st.Dev
	if block {
		d = st.Rdev
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(d), unix.Minor(d))
	link, err := os.Readlink(sys)
	if err != nil {
		return "", "", fmt.Errorf("no block device %d:%d behind it: %w", unix.Major(d), unix.Minor(d), err)
	}
	b, err := os.ReadFile(filepath.Join(sys, "loop", "backing_file"))
	if err != nil {
		return "", "", fmt.Errorf("%s is not a loop device: %w", filepath.Base(link), err)
	}
	return "/dev/" + filepath.Base(link), strings.TrimSpace(string(b)), nil
}

func (s *stack) unpublish(v *volume) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	var errs []error
	if _, err := s.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target}); err != nil {
		errs = append(errs, err)
	}
	if _, err := s.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging}); err != nil {
		errs = append(errs, err)
	}
	if _, err := s.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: v.id, NodeId: benchNode}); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// loopInfo describes the data path of a published volume: whether its loop
// device does direct I/O (else the page cache would flatter the volume) and
// the blkio throttle rules the node applied to it.
func loopInfo(device string) (dio string, l attach.Limits, err error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(device), "loop", "dio"))
	if err != nil {
		return "", l, err
	}
	l, err = attach.GetLimits(device)
	return strings.TrimSpace(string(b)), l, err
}

// waitIdle waits until device has issued no I/O for quiet, at most max: a
// just-formatted ext4 zeroes its inode tables in the background
// (ext4lazyinit), which would otherwise be counted against the volume.
func waitIdle(ctx context.Context, device string, quiet, max time.Duration) (time.Duration, error) {
	start := time.Now()
	last, err := ioCount(device)
	if err != nil {
		return 0, err
	}
	stableSince := time.Now()
	for time.Since(start) < max {
		select {
		case <-ctx.Done():
			return time.Since(start), ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		n, err := ioCount(device)
		if err != nil {
			return 0, err
		}
		if n != last {
			last, stableSince = n, time.Now()
		} else if time.Since(stableSince) >= quiet {
			return time.Since(start), nil
		}
	}
	return time.Since(start), fmt.Errorf("%s still busy after %s", device, max)
}

// ioCount is the number of completed reads and writes of a block device.
func ioCount(device string) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(device), "stat"))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 5 {
		return 0, fmt.Errorf("short stat of %s: %q", device, b)
	}
	r, _ := strconv.ParseInt(f[0], 10, 64)
	w, _ := strconv.ParseInt(f[4], 10, 64)
	return r + w, nil
}
