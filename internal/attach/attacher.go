package attach

import (
	"context"
	"errors"
)

// Target is what a node is given to attach a block volume over the
// network: an opaque description of where the data is, never a path. (A
// local attachment's image comes as a descriptor from the local handoff,
// internal/handoff.)
type Target struct {
	// AttachmentID is the NBD export name.
	AttachmentID string
	// Address is the storage host's NBD address (host:port).
	Address    string
	Generation uint64
	Secret     string // never logged
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
