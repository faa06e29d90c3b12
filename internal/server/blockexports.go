package server

import (
	"context"
	"fmt"

	"github.com/stowage-io/stowage/internal/blockexport"
)

// BlockExporter exports the volumes of one pool over the network (NBD) to
// nodes other than the pool's own: LocalBlockExporter when the pool is in
// this process, the agent API for a storage host of its own. It is told
// volume ids, never paths: the storage host knows where its images are.
type BlockExporter interface {
	// Address is the host:port nodes reach the exports at.
	Address() string
	// Export declares an attachment's export; again with the same
	// parameters it succeeds (new limits apply). A higher generation of
	// the volume fences every lower one before Export returns.
	Export(ctx context.Context, e BlockExport) error
	// Unexport ends an attachment's export; a missing one is success.
	Unexport(ctx context.Context, attachmentID string) error
}

// BlockExport is one attachment's export.
type BlockExport struct {
	AttachmentID string // the NBD export name
	VolumeID     string
	Generation   uint64
	Secret       string // what the node presents; never logged
	ReadOnly     bool
	// Limits are the volume's provisioned IOPS and bytes per second
	// (zero: unlimited), enforced by the exporter.
	IOPS, BytesPerSecond int64
}

// LocalBlockExporter serves a pool of this process through a
// blockexport.Exporter listening at Addr.
type LocalBlockExporter struct {
	Exporter *blockexport.Exporter
	Pool     Pool
	Addr     string
}

func (l LocalBlockExporter) Address() string { return l.Addr }

func (l LocalBlockExporter) Export(ctx context.Context, e BlockExport) error {
	if e.VolumeID == "" {
		return fmt.Errorf("export attachment %s: no volume", e.AttachmentID)
	}
	return l.Exporter.Export(ctx, blockexport.Attachment{
		ID: e.AttachmentID, VolumeID: e.VolumeID, ImagePath: l.Pool.ImagePath(e.VolumeID),
		Generation: e.Generation, Secret: e.Secret, ReadOnly: e.ReadOnly,
		Limits: blockexport.Limits{IOPS: e.IOPS, BytesPerSecond: e.BytesPerSecond},
	})
}

func (l LocalBlockExporter) Unexport(ctx context.Context, attachmentID string) error {
	return l.Exporter.Unexport(ctx, attachmentID)
}
