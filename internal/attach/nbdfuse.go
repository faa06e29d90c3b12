package attach

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
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
	// StateDir, for RunNBDAttach, is where it reports the device's size
	// (sizeFile) at attach and after each refresh (SIGHUP) and reads the
	// refresh's request (refreshFile). Empty: SIGHUP refreshes unreported.
	StateDir string
	Logger   *slog.Logger
}

// diskName is the one file of the FUSE mount.
const diskName = "disk"

// NBDFile is a mounted FUSE file system whose one file is an NBD export.
type NBDFile struct {
	client *nbd.Client
	disk   *diskNode
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
	// The file's size changes only through Refresh, which invalidates it.
	timeout := time.Hour
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
			// Replies carry bytes already in memory; with splice on, go-fuse
			// first writes each read's reply header into a pipe, finds it
			// cannot splice a memory buffer, and drains the pipe again:
			// three wasted system calls per read.
			DisableSplice:     true,
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
	return &NBDFile{client: c, disk: disk, server: server, path: filepath.Join(o.Mountpoint, diskName), log: log}, nil
}

// Path is the file to put a loop device on.
func (m *NBDFile) Path() string { return m.path }

// Refresh learns the export's size now (after it grew) and makes the
// kernel see it: the file's attributes are cached for an hour, so they
// are invalidated and fetched again. It returns the file's size.
func (m *NBDFile) Refresh(ctx context.Context) (int64, error) {
	size, err := m.client.RefreshSize(ctx)
	if err != nil {
		return 0, err
	}
	if errno := m.disk.NotifyContent(-1, 0); errno != 0 {
		return 0, fmt.Errorf("invalidate the attributes of %s: %w", m.path, errno)
	}
	st, err := os.Stat(m.path)
	if err != nil {
		return 0, err
	}
	if st.Size() != size {
		return 0, fmt.Errorf("%s is %d bytes after the refresh, the export %d", m.path, st.Size(), size)
	}
	return size, nil
}

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
// detaches the loop device and unmounts. SIGHUP makes it take the
// export's size now (see refresh).
func RunNBDAttach(ctx context.Context, o NBDFileOptions, ready io.Writer) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	// Before anything else: SIGHUP's default is to exit.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := unix.Prctl(unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0); err != nil {
		log.Warn("PR_SET_IO_FLUSHER not set", "err", err)
	}
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE); err != nil {
		log.Warn("mlockall failed; the process may be paged out", "err", err)
	}
	if path := os.Getenv(cpuProfileEnv); path != "" {
		stop, err := startCPUProfile(path)
		if err != nil {
			return err
		}
		defer stop()
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
	// The size file also says this process can refresh (one from before
	// would be killed by the SIGHUP).
	if err := o.report("attached", m.client.Size(), nil); err != nil {
		log.Warn("could not write the size file", "err", err)
	}
	fmt.Fprintf(ready, "attached %s\n", dev)
	log.Info("attached", "attachment", o.AttachmentID, "device", dev)
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
serve:
	for {
		select {
		case <-ctx.Done():
			break serve
		case <-done:
			log.Warn("FUSE file unmounted by someone else")
			break serve
		case <-hup:
			refresh(ctx, o, m, dev, log)
		}
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

// cpuProfileEnv names a file for a CPU profile of the whole run of
// RunNBDAttach (go tool pprof), for finding where the data path's time goes.
const cpuProfileEnv = "STOWAGE_NBD_ATTACH_CPUPROFILE"

func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// The files of a refresh in NBDFileOptions.StateDir: the requester writes
// a token to refreshFile and sends SIGHUP; the process reads the token
// before it refreshes, so a reply with it in sizeFile ("<token> <bytes>"
// or "<token> error: <why>") describes a refresh begun after the request.
const (
	refreshFile = "refresh"
	sizeFile    = "size"
)

// refresh takes the export's size now: the client's, the FUSE file's,
// then the loop device's (LOOP_SET_CAPACITY), and reports the device's.
func refresh(ctx context.Context, o NBDFileOptions, m *NBDFile, dev string, log *slog.Logger) {
	var token string
	if o.StateDir != "" {
		b, _ := os.ReadFile(filepath.Join(o.StateDir, refreshFile))
		token = strings.TrimSpace(string(b))
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	size, err := m.Refresh(ctx)
	if err == nil {
		size, err = loopdev.Refresh(dev)
	}
	if err != nil {
		log.Error("refresh of the size failed", "device", dev, "err", err)
	} else {
		log.Info("size refreshed", "device", dev, "size", size)
	}
	if token == "" {
		return
	}
	if err := o.report(token, size, err); err != nil {
		log.Error("could not write the size file", "err", err)
	}
}

// report writes "<token> <size>" (or the error) to the size file, through
// a rename so a reader never sees half of it.
func (o NBDFileOptions) report(token string, size int64, failed error) error {
	if o.StateDir == "" {
		return nil
	}
	line := fmt.Sprintf("%s %d\n", token, size)
	if failed != nil {
		line = fmt.Sprintf("%s error: %v\n", token, failed)
	}
	path := filepath.Join(o.StateDir, sizeFile)
	if err := os.WriteFile(path+".tmp", []byte(line), 0o600); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}
