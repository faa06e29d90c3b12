package files

import (
	"context"
	"fmt"
)

// Export is one access point served over NFS: a directory of the storage
// host, reached by clients as Pseudo (NFSv4) or Path (NFSv3), with every
// request performed as the access point's user when Squash is set.
type Export struct {
	// ID is the NFS server's export id, stable for the life of the access
	// point: it is part of the file handles clients hold.
	ID            uint16
	AccessPointID string
	// FileSystemID and Dir are what is served: a directory of a file
	// system, by its path inside it ("/" for the whole file system). This
	// is what the server gives; TreeExporter resolves it to Path.
	FileSystemID string
	Dir          string
	Path         string // on the storage host
	Pseudo       string // e.g. /fsap-0123…
	// Squash maps every user to AnonUID/AnonGID (the access point's POSIX
	// user); without it the client's identity is used as sent.
	Squash           bool
	AnonUID, AnonGID uint32
	ReadOnly         bool
}

// TreeExporter serves a Tree's directories with nfs-ganesha: it resolves
// an Export's FileSystemID and Dir to where they are on the storage host,
// so nothing above the storage host handles its paths.
type TreeExporter struct {
	Tree *Tree
	NFS  *Ganesha
}

// Export checks e's file system id and directory and exports the
// directory.
func (x TreeExporter) Export(ctx context.Context, e Export) error {
	if err := checkFileSystemID(e.FileSystemID); err != nil {
		return err
	}
	dir, err := CleanRootPath(e.Dir)
	if err != nil {
		return err
	}
	if dir != e.Dir {
		return fmt.Errorf("%w: export of %s: directory %q is not canonical (%q)", ErrInvalid, e.AccessPointID, e.Dir, dir)
	}
	e.Path = x.Tree.HostPath(e.FileSystemID, dir)
	return x.NFS.Export(ctx, e)
}

// Unexport ends an export; a missing one is success.
func (x TreeExporter) Unexport(ctx context.Context, accessPointID string) error {
	return x.NFS.Unexport(ctx, accessPointID)
}
