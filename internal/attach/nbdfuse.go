package attach

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/pkg/loopdev"
	"github.com/stowage-io/stowage/pkg/nbd"
)

// NBDFileOptions say which export to expose as a file, and where.
type NBDFileOptions struct {
	Target
	// Mountpoint is an empty directory; the export appears as
	// Mountpoint/disk.
	Mountpoint  string
	Connections int // NBD connections (default 4)
	Logger      *slog.Logger
}

// diskName is the one file of the FUSE mount.
const diskName = "disk"

// NBDFile is a mounted FUSE file system whose one file is an NBD export.
type NBDFile struct {
	client *nbd.Client
	server *fuse.Server
	path   string
	log    *slog.Logger
}

// MountNBDFile connects to the export (reconnecting for as long as it
// takes after a break, requests waiting meanwhile) and mounts it.
func MountNBDFile(ctx context.Context, o NBDFileOptions) (*NBDFile, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("attachment", o.AttachmentID, "server", o.Address)
	c, err := nbd.Dial(ctx, nbd.ClientOptions{Addr: o.Address, Export: o.AttachmentID, Connections: o.Connections, Reconnect: true, Logger: log,
		Auth: &nbd.Auth{Export: o.AttachmentID, Generation: o.Generation, Secret: []byte(o.Secret)}})
	if err != nil {
		return nil, fmt.Errorf("attach %s from %s: %w", o.AttachmentID, o.Address, err)
	}
	disk := &diskNode{c: c}
	timeout := time.Hour // the file's size never changes under us
	server, err := fs.Mount(o.Mountpoint, &diskRoot{disk: disk}, &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther: true,
			FsName:     "stowage-nbd:" + o.AttachmentID,
			Name:       "stowage-nbd",
			MaxWrite:   1 << 20,
			// Loop's direct I/O sends asynchronous kiocbs; without
			// ASYNC_DIO the kernel turns each into a synchronous request and
			// the loop device runs at queue depth 1.
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
			MaxBackground:     256,
			DirectMount:       true,
			DirectMountStrict: true,
		},
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
	})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("attach %s: fuse mount at %s: %w", o.AttachmentID, o.Mountpoint, err)
	}
	return &NBDFile{client: c, server: server, path: filepath.Join(o.Mountpoint, diskName), log: log}, nil
}

// Path is the file to put a loop device on.
func (m *NBDFile) Path() string { return m.path }

// Wait returns when the file system is unmounted.
func (m *NBDFile) Wait() { m.server.Wait() }

// Close unmounts (lazily if busy) and disconnects.
func (m *NBDFile) Close() error {
	err := m.server.Unmount()
	if err != nil {
		unix.Unmount(filepath.Dir(m.path), unix.MNT_DETACH)
	}
	m.client.Close()
	return nil
}

type diskRoot struct {
	fs.Inode
	disk *diskNode
}

var _ fs.NodeOnAdder = (*diskRoot)(nil)

func (r *diskRoot) OnAdd(ctx context.Context) {
	ch := r.NewPersistentInode(ctx, r.disk, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	r.AddChild(diskName, ch, false)
}

type diskNode struct {
	fs.Inode
	c *nbd.Client
}

var (
	_ fs.NodeOpener    = (*diskNode)(nil)
	_ fs.NodeReader    = (*diskNode)(nil)
	_ fs.NodeWriter    = (*diskNode)(nil)
	_ fs.NodeFsyncer   = (*diskNode)(nil)
	_ fs.NodeGetattrer = (*diskNode)(nil)
	_ fs.NodeSetattrer = (*diskNode)(nil)
)

func (d *diskNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o600
	out.Size = uint64(d.c.Size())
	out.Blksize = 4096
	out.Blocks = (out.Size + 511) / 512
	return 0
}

// Setattr accepts only what changes nothing (an open with O_TRUNC of the
// same size is not one: the size is the export's).
func (d *diskNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != d.c.Size() {
		return syscall.EPERM
	}
	return d.Getattr(ctx, fh, out)
}

// Open bypasses the page cache (FOPEN_DIRECT_IO): the loop device above
// has its own, and a FUSE-backed page cache under memory pressure is how
// the deadlock nbdfuse warns about happens.
func (d *diskNode) Open(_ context.Context, _ uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

func (d *diskNode) Read(_ context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := d.c.Size()
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), size-off)]
	if _, err := d.c.ReadAt(dest, off); err != nil {
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest), 0
}

func (d *diskNode) Write(_ context.Context, _ fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if off+int64(len(data)) > d.c.Size() {
		return 0, syscall.ENOSPC
	}
	if _, err := d.c.WriteAt(data, off); err != nil {
		return 0, syscall.EIO
	}
	return uint32(len(data)), 0
}

func (d *diskNode) Fsync(_ context.Context, _ fs.FileHandle, _ uint32) syscall.Errno {
	if err := d.c.Flush(); err != nil {
		return syscall.EIO
	}
	return 0
}

// RunNBDAttach is the `stowage nbd-attach` process: it hardens itself
// for serving a block device's I/O (PR_SET_IO_FLUSHER so its own memory
// allocations do not recurse into writeback of the device it serves;
// mlockall so it is never paged out while the kernel waits on it), mounts
// the export as a file, puts a loop device with direct I/O on it, writes
// "attached <device>" to ready and serves until ctx ends; then it
// detaches the loop device and unmounts.
func RunNBDAttach(ctx context.Context, o NBDFileOptions, ready io.Writer) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := unix.Prctl(unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0); err != nil {
		log.Warn("PR_SET_IO_FLUSHER not set", "err", err)
	}
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE); err != nil {
		log.Warn("mlockall failed; the process may be paged out", "err", err)
	}
	m, err := MountNBDFile(ctx, o)
	if err != nil {
		return err
	}
	defer m.Close()
	dev, err := loopdev.Attach(ctx, m.Path())
	if err != nil {
		return fmt.Errorf("attach %s: loop device on %s: %w", o.AttachmentID, m.Path(), err)
	}
	fmt.Fprintf(ready, "attached %s\n", dev)
	log.Info("attached", "attachment", o.AttachmentID, "device", dev)
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
	select {
	case <-ctx.Done():
	case <-done:
		log.Warn("FUSE file unmounted by someone else")
	}
	dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := loopdev.Detach(dctx, m.Path()); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("detach loop device", "device", dev, "err", err)
		return err
	}
	log.Info("detached", "attachment", o.AttachmentID, "device", dev)
	return nil
}
