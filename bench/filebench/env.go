package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/bench/benchkit"
	"github.com/stowage-io/stowage/internal/files"
	"github.com/stowage-io/stowage/internal/testutil/loopfs"
)

const (
	apUID, apGID = 1000, 1000
	accessPoint  = "fsap-0000000000000be9c"
)

// env is what every benchmark runs against: a local directory and an
// access point's directory on one xfs, ganesha exporting the latter, and the
// FUSE client's mount of it.
type env struct {
	fsDir  string // the xfs mount
	local  string // baseline directory, on fsDir
	export string // the access point's directory, on fsDir
	mount  string // the FUSE client's mount of the export
	port   int
	ex     files.Export
	g      *files.Ganesha
	dev    string
	dio    string
}

// setup builds the environment; every step registers its undo on u first.
func setup(ctx context.Context, u *undoStack, stowage, logDir string, imgSize int64, port int) (*env, error) {
	work, err := os.MkdirTemp("", "stwfb")
	if err != nil {
		return nil, err
	}
	u.Push("remove "+work, func() error { return os.RemoveAll(work) })
	if err := os.Chmod(work, 0o755); err != nil { // uid 1000 reaches the mount below it
		return nil, err
	}
	progress("storage: %d GiB sparse xfs on a loop device under %s", imgSize>>30, work)
	fsDir, cleanupFS, err := loopfs.Make(work, "xfs", imgSize)
	if err != nil {
		return nil, err
	}
	u.Push("unmount and detach the xfs", cleanupFS)
	e := &env{fsDir: fsDir, local: filepath.Join(fsDir, "local"), export: filepath.Join(fsDir, "export"),
		mount: filepath.Join(work, "mnt"), port: port}
	// Runs before the xfs is unmounted: a FUSE mount the client left.
	u.Push("unmount leftovers", func() error { return unmountUnder(e.mount) })
	e.dev, e.dio = deviceOf(fsDir)
	for _, d := range []string{e.local, e.export, e.mount} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.Chown(e.export, apUID, apGID); err != nil {
		return nil, err
	}

	e.ex = files.Export{ID: 1, AccessPointID: accessPoint, Path: e.export, Pseudo: "/" + accessPoint,
		Squash: true, AnonUID: apUID, AnonGID: apGID}
	progress("starting nfs-ganesha on 127.0.0.1:%d (state and log: %s)", port, filepath.Join(work, "ganesha"))
	gctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	e.g, err = files.StartGanesha(gctx, files.GaneshaConfig{StateDir: filepath.Join(work, "ganesha"), Port: port, Graceless: true, Logger: logger},
		[]files.Export{e.ex})
	if err != nil {
		return nil, err
	}
	u.Push("stop nfs-ganesha", func() error {
		// Keep its log with the report.
		if b, err := os.ReadFile(e.g.LogPath()); err == nil {
			_ = os.WriteFile(filepath.Join(logDir, "files-ganesha.log"), b, 0o644)
		}
		e.g.Stop()
		return nil
	})

	progress("starting `stowage nfs-mount` (log: %s)", filepath.Join(logDir, "files-nfs-mount.log"))
	if err := startClient(ctx, u, stowage, filepath.Join(logDir, "files-nfs-mount.log"),
		"nfs-mount", "--server", fmt.Sprintf("127.0.0.1:%d", port), "--export", e.ex.Pseudo, "--target", e.mount,
		"--log-file", filepath.Join(logDir, "files-nfs-mount.log")); err != nil {
		return nil, err
	}
	return e, nil
}

// startClient runs the FUSE client in its own process group (a Ctrl-C
// reaches only filebench, which then stops it by PID after the benchmark has
// let go of the mount) and waits for its "mounted" line.
func startClient(ctx context.Context, u *undoStack, bin, logPath string, args ...string) error {
	cmd := exec.Command(bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	errf, err := os.Create(logPath + ".stderr")
	if err != nil {
		return err
	}
	cmd.Stderr = errf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		errf.Close()
		return fmt.Errorf("start stowage nfs-mount: %w", err)
	}
	exited := make(chan error, 1)
	mounted := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "mounted ") {
				close(mounted)
				io.Copy(io.Discard, stdout)
				break
			}
		}
		exited <- cmd.Wait()
	}()
	stop := benchkit.Stopper("stowage nfs-mount", cmd.Process, exited)
	u.Push(fmt.Sprintf("stop stowage nfs-mount (pid %d)", cmd.Process.Pid), func() error {
		defer errf.Close()
		return stop()
	})
	select {
	case <-mounted:
		return nil
	case err := <-exited:
		exited <- err
		return fmt.Errorf("stowage nfs-mount exited before mounting: %v (see %s)", err, logPath)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("stowage nfs-mount did not mount within 30 s (see %s)", logPath)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func unmountUnder(dir string) error {
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return err
	}
	var errs []error
	for i := len(ms) - 1; i >= 0; i-- {
		if err := unix.Unmount(ms[i].Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", ms[i].Mountpoint, err))
		} else {
			progress("cleanup: unmounted leftover %s", ms[i].Mountpoint)
		}
	}
	return errors.Join(errs...)
}

func deviceOf(dir string) (dev, dio string) {
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil || len(ms) == 0 {
		return "unknown", "unknown"
	}
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(ms[0].Source), "loop", "dio"))
	if err != nil {
		return ms[0].Source, "unknown"
	}
	return ms[0].Source, strings.TrimSpace(string(b))
}

// dropCaches writes back everything and drops the page, dentry and inode
// caches, so reads come from the disk (ganesha's reads as well: it is on
// this host).
func dropCaches() error {
	unix.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

// settle writes back the xfs so one phase's writeback is not billed to the
// next.
func (e *env) settle() error {
	d, err := os.Open(e.fsDir)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}
