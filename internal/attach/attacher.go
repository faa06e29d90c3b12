package attach

import (
	"context"
	"errors"

	"github.com/stowage-io/stowage/pkg/loopdev"
)

// Target is what a node is given to attach a block volume: an opaque
// description of where the data is, never a path on another host.
type Target struct {
	// AttachmentID is the NBD export name.
	AttachmentID string
	// Address is the storage host's NBD address (host:port); empty for a
	// local attachment.
	Address    string
	Generation uint64
	Secret     string // never logged
	// ImagePath is set only when the image is on this host (local loop).
	ImagePath string
}

// Attacher turns a target into a block device on this node and back.
// Attach is idempotent per attachment; Detach of what is not attached
// succeeds.
type Attacher interface {
	Attach(ctx context.Context, t Target) (device string, err error)
	Detach(ctx context.Context, t Target) error
}

// ErrNotSupported means this node cannot use an attacher (no /dev/nbd*,
// no FUSE).
var ErrNotSupported = errors.New("attacher not supported on this node")

// LocalLoop attaches an image on this host (the pod runs on its storage
// host) with a plain loop device with direct I/O.
type LocalLoop struct{}

func (LocalLoop) Attach(ctx context.Context, t Target) (string, error) {
	if t.ImagePath == "" {
		return "", errors.New("local loop attach: the target has no local image")
	}
	return loopdev.Attach(ctx, t.ImagePath)
}

func (LocalLoop) Detach(ctx context.Context, t Target) error {
	return loopdev.Detach(ctx, t.ImagePath)
}
