package nfsmount

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strconv"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/pkg/nfs4"
)

// Options say what to mount where.
type Options struct {
	Server   string // host:port
	Export   string // NFSv4 pseudo path, e.g. /fsap-0123456789abcdef0
	Subdir   string // optional path below the export
	Target   string
	ReadOnly bool
	// CommitOnClose makes every close(2) of a written file COMMIT (make
	// durable) its writes, like the kernel NFS client; by default only
	// fsync does.
	CommitOnClose bool
	// ClientID is the NFSv4 client owner; default: host name and target.
	ClientID string
	// CacheTimeout is how long attributes and entries are cached (1 s).
	CacheTimeout time.Duration
	Logger       *slog.Logger
}

// Mount is a mounted, serving NFS export.
type Mount struct {
	opts   Options
	client *nfs4.Client
	server *fuse.Server
	log    *slog.Logger
}

// New connects (retrying until ctx ends while the server is not up or
// the export not there yet), resolves the export and mounts it at Target.
// It returns once the kernel has the mount and requests are served.
func New(ctx context.Context, o Options) (*Mount, error) {
	if o.Server == "" || o.Export == "" || o.Target == "" {
		return nil, errors.New("nfs mount: server, export and target are required")
	}
	if o.CacheTimeout == 0 {
		o.CacheTimeout = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ClientID == "" {
		h, _ := os.Hostname()
		o.ClientID = fmt.Sprintf("stowage-nfs/%s:%s", h, o.Target)
	}
	log := o.Logger.With("server", o.Server, "export", o.Export, "target", o.Target)
	client, err := nfs4.Dial(ctx, nfs4.Config{Server: o.Server, Owner: o.ClientID, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("nfs mount of %s:%s: %w", o.Server, o.Export, err)
	}
	p := path.Join("/", o.Export, o.Subdir)
	var rootFH nfs4.FH
	var rootAttr *nfs4.Attr
	for delay := 100 * time.Millisecond; ; {
		rootFH, rootAttr, err = client.LookupPath(ctx, nfs4.RootCred, p)
		if err == nil {
			break
		}
		if !nfs4.IsStatus(err, nfs4.ErrNoent) || ctx.Err() != nil {
			client.Close()
			return nil, fmt.Errorf("nfs mount: resolve %s on %s: %w", p, o.Server, err)
		}
		log.Warn("export path not found yet; retrying", "path", p)
		select {
		case <-ctx.Done():
			client.Close()
			return nil, fmt.Errorf("nfs mount: resolve %s on %s: %w", p, o.Server, err)
		case <-time.After(delay):
		}
		if delay *= 2; delay > 3*time.Second {
			delay = 3 * time.Second
		}
	}
	if rootAttr.Type != nfs4.TypeDir {
		client.Close()
		return nil, fmt.Errorf("nfs mount: %s on %s is not a directory", p, o.Server)
	}
	m := &fsys{client: client, rootFH: rootFH, readOnly: o.ReadOnly, commitOnClose: o.CommitOnClose, timeout: o.CacheTimeout, log: log}
	root := &node{m: m, fh: rootFH}
	to := o.CacheTimeout
	flags := uintptr(syscall.MS_NOSUID | syscall.MS_NODEV)
	if o.ReadOnly {
		flags |= syscall.MS_RDONLY
	}
	ioSize := client.IOSize()
	fopts := &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:        true,
			FsName:            fmt.Sprintf("stowage-nfs:%s:%s", o.Server, p),
			Name:              "stowage-nfs",
			MaxWrite:          min(ioSize, 1<<20),
			MaxReadAhead:      8 << 20,
			MaxBackground:     64,
			DirectMount:       true,
			DirectMountStrict: true,
			DirectMountFlags:  flags,
			Logger:            nil,
		},
		EntryTimeout:    &to,
		AttrTimeout:     &to,
		NegativeTimeout: &to,
		RootStableAttr:  &fs.StableAttr{Ino: rootAttr.FileID, Gen: generation(rootFH), Mode: syscall.S_IFDIR},
		Logger:          nil,
	}
	server, err := fs.Mount(o.Target, root, fopts)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("nfs mount: fuse mount at %s: %w", o.Target, err)
	}
	if err := setReadAhead(o.Target, readAheadKiB); err != nil {
		log.Info("read-ahead left at the kernel's default", "err", err)
	}
	log.Info("mounted", "read_only", o.ReadOnly, "io_size", ioSize)
	return &Mount{opts: o, client: client, server: server, log: log}, nil
}

// Wait returns when the file system is unmounted (by Unmount or by
// someone else).
func (m *Mount) Wait() { m.server.Wait() }

// Unmount unmounts the file system; if it is busy, lazily (MNT_DETACH):
// it disappears from the tree at once, and open files keep being served
// for at most grace before the process ends them.
func (m *Mount) Unmount(grace time.Duration) error {
	err := m.server.Unmount()
	if err != nil {
		m.log.Warn("mount busy; detaching it (lazy unmount)", "err", err)
		if err2 := unix.Unmount(m.opts.Target, unix.MNT_DETACH); err2 != nil && err2 != unix.EINVAL {
			return fmt.Errorf("unmount %s: %w", m.opts.Target, err2)
		}
		done := make(chan struct{})
		go func() { m.server.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(grace):
			m.log.Warn("files still open on the detached mount; ending anyway")
		}
	}
	return nil
}

// Close ends the NFS session.
func (m *Mount) Close() error { return m.client.Close() }

// Run mounts, writes "mounted <target>" to ready once serving, and serves
// until ctx ends (then unmounts) or the kernel unmounts the file system.
func Run(ctx context.Context, o Options, ready io.Writer) error {
	if err := unix.Prctl(unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0); err != nil {
		o.logger().Info("PR_SET_IO_FLUSHER not set", "err", err)
	}
	m, err := New(ctx, o)
	if err != nil {
		if ctx.Err() != nil {
			o.logger().Info("signalled before the mount was up; nothing mounted", "target", o.Target, "err", err)
			return nil
		}
		return err
	}
	defer m.Close()
	fmt.Fprintf(ready, "mounted %s\n", o.Target)
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
	select {
	case <-done:
		m.log.Info("unmounted by someone else; exiting")
		return nil
	case <-ctx.Done():
	}
	m.log.Info("signalled; unmounting")
	if err := m.Unmount(5 * time.Second); err != nil {
		return err
	}
	m.log.Info("unmounted")
	return nil
}

func (o Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.Default()
	}
	return o.Logger
}

// readAheadKiB is the mount's read-ahead: several 1 MiB READs in flight for
// a file read sequentially. FUSE mounts start with the kernel's default
// (128 KiB), which leaves one READ at a time.
const readAheadKiB = 8 << 10

// setReadAhead sets the read-ahead of the backing device info of the
// mount at target (/sys/class/bdi/<major>:<minor>/read_ahead_kb).
func setReadAhead(target string, kib int) error {
	var st unix.Stat_t
	if err := unix.Stat(target, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(kib)), 0o644)
}
