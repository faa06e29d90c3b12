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

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/pkg/fusefile"
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
	// NoURing keeps FUSE requests on /dev/fuse even where the kernel
	// offers FUSE over io_uring (the fuse module's enable_uring).
	NoURing bool
	Logger  *slog.Logger
}

// diskName is the one file of the FUSE mount.
const diskName = "disk"

// NBDFile is a mounted FUSE file system whose one file is an NBD export.
type NBDFile struct {
	client *nbd.Client
	server *fusefile.Server
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
	// One file, with direct I/O (no page cache under the loop device's,
	// whose writeback under memory pressure is how the deadlock nbdfuse
	// warns about happens) and asynchronous direct I/O (without it the
	// kernel turns each of loop's kiocbs into a synchronous request, and
	// the loop device runs at queue depth 1).
	server, err := fusefile.Mount(fusefile.Options{
		Mountpoint: o.Mountpoint,
		Name:       diskName,
		FsName:     "stowage-nbd:" + o.AttachmentID,
		Subtype:    "stowage-nbd",
		MaxWrite:   1 << 20,
		URing:      !o.NoURing,
		Logger:     log,
	}, nbdBackend{c})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("attach %s: fuse mount at %s: %w", o.AttachmentID, o.Mountpoint, err)
	}
	if st := server.Stats(); st.URing {
		log.Info("FUSE requests over io_uring", "mountpoint", o.Mountpoint)
	} else if st.URingError != "" {
		log.Info("FUSE requests over /dev/fuse", "mountpoint", o.Mountpoint, "why", st.URingError)
	}
	return &NBDFile{client: c, server: server, log: log}, nil
}

// nbdBackend is the NBD client as the FUSE file's content.
type nbdBackend struct{ c *nbd.Client }

func (b nbdBackend) ReadAt(p []byte, off int64) (int, error)  { return b.c.ReadAt(p, off) }
func (b nbdBackend) WriteAt(p []byte, off int64) (int, error) { return b.c.WriteAt(p, off) }
func (b nbdBackend) Sync() error                              { return b.c.Flush() }
func (b nbdBackend) Size() int64                              { return b.c.Size() }

// Path is the file to put a loop device on.
func (m *NBDFile) Path() string { return m.server.Path() }

// Stats says how the file's requests were served.
func (m *NBDFile) Stats() fusefile.Stats { return m.server.Stats() }

// Refresh learns the export's size now (after it grew) and makes the
// kernel see it: the file's attributes are cached for an hour, so they
// are invalidated and fetched again. It returns the file's size.
func (m *NBDFile) Refresh(ctx context.Context) (int64, error) {
	size, err := m.client.RefreshSize(ctx)
	if err != nil {
		return 0, err
	}
	if err := m.server.Invalidate(); err != nil {
		return 0, err
	}
	st, err := os.Stat(m.Path())
	if err != nil {
		return 0, err
	}
	if st.Size() != size {
		return 0, fmt.Errorf("%s is %d bytes after the refresh, the export %d", m.Path(), st.Size(), size)
	}
	return size, nil
}

// Wait returns when the file system is unmounted.
func (m *NBDFile) Wait() { m.server.Wait() }

// Close unmounts (lazily if busy) and disconnects.
func (m *NBDFile) Close() error {
	m.server.Unmount()
	m.client.Close()
	return nil
}

// RunNBDAttach is the `stowage nbd-attach` process: it hardens itself
// for serving a block device's I/O (PR_SET_IO_FLUSHER so its own memory
// allocations do not recurse into writeback of the device it serves;
// mlockall so what it has touched is never paged out while the kernel
// waits on it), mounts
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
	// MCL_ONFAULT: a page is locked once touched, not when mapped. Without
	// it every thread's 8 MiB stack and every buffer was resident in full
	// from the start (268 MB per attachment, measured); a page touched
	// later is faulted in under PR_SET_IO_FLUSHER, so that allocation does
	// not wait on this device's writeback either.
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
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
