package csi

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/stowage-io/stowage/internal/attach"
	"github.com/stowage-io/stowage/internal/handoff"
	"github.com/stowage-io/stowage/pkg/loopdev"
)

// loopDevices turns volume images into block devices on this node.
type loopDevices interface {
	// AttachFile returns the loop device of the open image, attaching it
	// if need be (the image was handed over, without a path).
	AttachFile(ctx context.Context, image *os.File) (device string, err error)
	// FindFile returns the loop device of the image b identifies, if any.
	FindFile(b loopdev.Backing) (device string, found bool, err error)
	// DetachFile detaches every loop device of the image b identifies; a
	// missing one is no error.
	DetachFile(ctx context.Context, b loopdev.Backing) error
	// Find and Detach are by image path, for volumes that node plugins
	// before the local handoff staged (their state names the path).
	Find(image string) (device string, found bool, err error)
	Detach(ctx context.Context, image string) error
	// Refresh makes device see its grown image and returns its size in bytes.
	Refresh(device string) (int64, error)
}

// networkAttacher makes block devices of volumes attached over the
// network: attach.KernelNBD or attach.FUSELoop, as attach.Select chose.
type networkAttacher = attach.Network

// mounter formats, mounts and grows the file systems of staged volumes.
type mounter interface {
	// IsLikelyNotMountPoint is mount.Interface's: false when path is a mount point.
	IsLikelyNotMountPoint(path string) (bool, error)
	// MountedDevice returns the device mounted at path.
	MountedDevice(path string) (string, error)
	// FormatAndMount makes a file system on device unless it has one, and
	// mounts it at target.
	FormatAndMount(device, target, fsType string, options, formatOptions []string) error
	Mount(source, target, fsType string, options []string) error
	Unmount(path string) error
	// Cleanup unmounts path if it is mounted and removes it; a missing path
	// is no error.
	Cleanup(path string) error
	// IsExt reports whether device holds an ext2/3/4 file system.
	IsExt(device string) bool
	// GrowOffline grows an unmounted ext file system to fill its device.
	GrowOffline(ctx context.Context, device string) error
	// Resize grows the file system on device, mounted at path, online.
	Resize(device, path string) error
	// NeedResize reports whether the file system on device, mounted at
	// path, is smaller than the device.
	NeedResize(device, path string) (bool, error)
}

// localImages hands this node the images of its local attachments.
type localImages interface {
	Open(ctx context.Context, r handoff.Request) (image *os.File, readOnly bool, err error)
}

// hostHandoff is localImages by this machine's local handoff socket.
type hostHandoff struct{ socket string }

func (h hostHandoff) Open(ctx context.Context, r handoff.Request) (*os.File, bool, error) {
	return handoff.Open(ctx, h.socket, r)
}

// hostLoops is loopDevices on the host's loop driver.
type hostLoops struct{}

func (hostLoops) AttachFile(ctx context.Context, image *os.File) (string, error) {
	return loopdev.AttachFile(ctx, image)
}
func (hostLoops) FindFile(b loopdev.Backing) (string, bool, error) { return loopdev.FindFile(b) }
func (hostLoops) DetachFile(ctx context.Context, b loopdev.Backing) error {
	return loopdev.DetachFile(ctx, b)
}
func (hostLoops) Detach(ctx context.Context, image string) error { return loopdev.Detach(ctx, image) }
func (hostLoops) Find(image string) (string, bool, error)        { return loopdev.Find(image) }
func (hostLoops) Refresh(device string) (int64, error)           { return loopdev.Refresh(device) }

// hostMounts is mounter on the host's mount table and file-system tools.
type hostMounts struct{ m *mount.SafeFormatAndMount }

func newHostMounts() hostMounts {
	return hostMounts{m: mount.NewSafeFormatAndMount(mount.New(""), utilexec.New())}
}

func (h hostMounts) IsLikelyNotMountPoint(path string) (bool, error) {
	return h.m.IsLikelyNotMountPoint(path)
}

func (h hostMounts) MountedDevice(path string) (string, error) {
	dev, _, err := mount.GetDeviceNameFromMount(h.m, path)
	return dev, err
}

func (h hostMounts) FormatAndMount(device, target, fsType string, options, formatOptions []string) error {
	return h.m.FormatAndMountSensitiveWithFormatOptions(device, target, fsType, options, nil, formatOptions)
}

func (h hostMounts) Mount(source, target, fsType string, options []string) error {
	return h.m.Mount(source, target, fsType, options)
}

func (h hostMounts) Unmount(path string) error { return h.m.Unmount(path) }

func (h hostMounts) Cleanup(path string) error { return mount.CleanupMountPoint(path, h.m, true) }

func (h hostMounts) Resize(device, path string) error {
	_, err := mount.NewResizeFs(utilexec.New()).Resize(device, path)
	return err
}

func (h hostMounts) NeedResize(device, path string) (bool, error) {
	return mount.NewResizeFs(utilexec.New()).NeedResize(device, path)
}

func (h hostMounts) IsExt(device string) bool {
	f, err := h.m.GetDiskFormat(device)
	return err == nil && strings.HasPrefix(f, "ext")
}

// GrowOffline grows an unmounted ext file system to fill its (grown)
// device. Offline growth needs no capability, so a volume expanded while
// online growth was impossible gets its space at the next stage.
func (h hostMounts) GrowOffline(ctx context.Context, device string) error {
	if !h.IsExt(device) {
		return nil
	}
	devSize, err := deviceSize(device)
	if err != nil {
		return fmt.Errorf("size of %s: %w", device, err)
	}
	out, err := exec.CommandContext(ctx, "dumpe2fs", "-h", device).Output()
	if err != nil {
		return fmt.Errorf("read ext4 superblock of %s: %w", device, err)
	}
	var blocks, blockSize int64
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Block count":
			blocks, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		case "Block size":
			blockSize, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if blocks == 0 || blockSize == 0 || devSize-blocks*blockSize < 8<<20 {
		return nil
	}
	// resize2fs insists on a freshly checked file system when offline.
	if out, err := exec.CommandContext(ctx, "e2fsck", "-f", "-p", device).CombinedOutput(); err != nil {
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() > 1 {
			return fmt.Errorf("check %s before growing it: %v: %s", device, err, strings.TrimSpace(string(out)))
		}
	}
	if out, err := exec.CommandContext(ctx, "resize2fs", device).CombinedOutput(); err != nil {
		return fmt.Errorf("grow the file system on %s: %v: %s", device, err, strings.TrimSpace(string(out)))
	}
	klog.InfoS("grew ext file system offline", "device", device, "fromBytes", blocks*blockSize, "toBytes", devSize)
	return nil
}
