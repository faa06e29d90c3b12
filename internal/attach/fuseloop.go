package attach

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/internal/runner"
	"github.com/stowage-io/stowage/pkg/loopdev"
)

// FUSELoop attaches a network target on a node whose kernel has no NBD
// client: a process of its own (`stowage nbd-attach`, see RunNBDAttach)
// connects to the export, exposes it as one FUSE file and puts a loop
// device on it. The process is outside the caller (the CSI node plugin),
// so restarting the caller leaves the device serving.
type FUSELoop struct {
	// Command starts the process; the flags are appended. Default: this
	// executable's nbd-attach command.
	Command []string
	// StateDir holds one directory per attachment: the FUSE mountpoint,
	// the process's PID, its log and the files of a Refresh.
	StateDir string
	Logger   *slog.Logger
	// Starter starts the process; default runner.Local. With a
	// runner.Remote the caller must see the runner's pids (hostPID).
	Starter runner.Starter
}

func (f FUSELoop) dir(t Target) string { return filepath.Join(f.StateDir, t.AttachmentID) }

// Attach starts the process, hands it the secret on its stdin (never in
// its arguments, which anyone on the node can read) and waits for its
// device. If a live process already serves the attachment, its device is
// returned.
func (f FUSELoop) Attach(ctx context.Context, t Target) (string, error) {
	if t.AttachmentID == "" || t.Address == "" || strings.ContainsAny(t.AttachmentID, "/\x00") {
		return "", fmt.Errorf("fuse-loop attach: target needs an attachment id and an address")
	}
	dir := f.dir(t)
	if dev, ok := f.running(dir); ok {
		return dev, nil
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return "", err
	}
	cmd := f.Command
	if len(cmd) == 0 {
		self, err := os.Executable()
		if err != nil {
			return "", err
		}
		cmd = []string{self, "nbd-attach"}
	}
	args := append(cmd[1:len(cmd):len(cmd)], "--server", t.Address, "--export", t.AttachmentID,
		"--generation", strconv.FormatUint(t.Generation, 10), "--mountpoint", mnt, "--state-dir", dir, "--secret-stdin")
	p, err := runner.OrLocal(f.Starter).Start(ctx, runner.Spec{Command: append(cmd[:1:1], args...), Stdin: t.Secret + "\n",
		Log: filepath.Join(dir, "log"), PipeStdout: true})
	if err != nil {
		return "", fmt.Errorf("fuse-loop attach %s: start %s: %w", t.AttachmentID, cmd[0], err)
	}
	defer p.Release()
	got := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(p.Stdout).ReadString('\n')
		got <- strings.TrimSpace(line)
	}()
	select {
	case line := <-got:
		dev, ok := strings.CutPrefix(line, "attached ")
		if !ok {
			p.Stop(10 * time.Second)
			return "", fmt.Errorf("fuse-loop attach %s: %s", t.AttachmentID, f.lastLog(dir))
		}
		os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(p.PID)), 0o600)
		os.WriteFile(filepath.Join(dir, "device"), []byte(dev), 0o600)
		return dev, nil
	case <-ctx.Done():
		p.Stop(10 * time.Second)
		return "", fmt.Errorf("fuse-loop attach %s: %w", t.AttachmentID, ctx.Err())
	}
}

func (f FUSELoop) lastLog(dir string) string {
	b, _ := os.ReadFile(filepath.Join(dir, "log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// Device returns the loop device of a live attachment.
func (f FUSELoop) Device(t Target) (string, bool) { return f.running(f.dir(t)) }

// running returns the device of a live process serving dir's attachment.
func (f FUSELoop) running(dir string) (string, bool) {
	pid, err := readPID(dir)
	if err != nil || syscall.Kill(pid, 0) != nil {
		return "", false
	}
	dev, err := os.ReadFile(filepath.Join(dir, "device"))
	return string(dev), err == nil
}

func readPID(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Refresh makes a live attachment's device take its export's size now,
// after the volume grew on its storage host, and returns the device's
// size. It asks the process (SIGHUP, with a request token; see refresh)
// and waits for its answer, at most 30 s. Calls for one attachment must
// not overlap.
func (f FUSELoop) Refresh(ctx context.Context, t Target) (int64, error) {
	dir := f.dir(t)
	pid, err := readPID(dir)
	if err != nil || syscall.Kill(pid, 0) != nil {
		return 0, fmt.Errorf("fuse-loop refresh %s: not attached", t.AttachmentID)
	}
	if _, err := os.Stat(filepath.Join(dir, sizeFile)); err != nil {
		return 0, fmt.Errorf("fuse-loop refresh %s: its process (%d) predates online growth and would exit on SIGHUP; unstage and stage the volume again", t.AttachmentID, pid)
	}
	token := strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := os.WriteFile(filepath.Join(dir, refreshFile), []byte(token+"\n"), 0o600); err != nil {
		return 0, fmt.Errorf("fuse-loop refresh %s: %w", t.AttachmentID, err)
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return 0, fmt.Errorf("fuse-loop refresh %s: signal process %d: %w", t.AttachmentID, pid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		b, _ := os.ReadFile(filepath.Join(dir, sizeFile))
		if reply, ok := strings.CutPrefix(strings.TrimSpace(string(b)), token+" "); ok {
			if why, failed := strings.CutPrefix(reply, "error: "); failed {
				return 0, fmt.Errorf("fuse-loop refresh %s: %s", t.AttachmentID, why)
			}
			return strconv.ParseInt(reply, 10, 64)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("fuse-loop refresh %s: no answer from process %d (its log: %s): %w", t.AttachmentID, pid, f.lastLog(dir), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Detach stops the attachment's process (SIGTERM: it detaches its loop
// device and unmounts), waits for it and removes its directory.
func (f FUSELoop) Detach(ctx context.Context, t Target) error {
	dir := f.dir(t)
	pid, err := readPID(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// A pid of a process that died may be someone else's by now: only
	// this attachment's nbd-attach is signalled.
	if err == nil && isAttachProcess(pid, t.AttachmentID) && syscall.Kill(pid, syscall.SIGTERM) == nil {
		for syscall.Kill(pid, 0) == nil {
			// Not our child after a restart of the caller: poll.
			var ws syscall.WaitStatus
			syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
			select {
			case <-ctx.Done():
				return fmt.Errorf("fuse-loop detach %s: process %d still running: %w", t.AttachmentID, pid, ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	// What a process that was killed leaves behind (a node that crashed):
	// the loop device on its FUSE file and the FUSE mount, which no
	// longer answers.
	mnt := filepath.Join(dir, "mnt")
	if err := loopdev.DetachUnder(ctx, mnt); err != nil {
		return fmt.Errorf("fuse-loop detach %s: %w", t.AttachmentID, err)
	}
	if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("fuse-loop detach %s: unmount %s: %w", t.AttachmentID, mnt, err)
	}
	return os.RemoveAll(dir)
}

// DetachAll detaches every attachment in StateDir (what a node plugin or
// a failed test left, live or with a killed process) and reports how many
// were live.
func (f FUSELoop) DetachAll(ctx context.Context) (int, error) { return detachAll(ctx, f.StateDir, f) }

// detachAll detaches every attachment that has a directory in dir, with
// a, and reports how many were live.
func detachAll(ctx context.Context, dir string, a Network) (int, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var errs []error
	n := 0
	for _, e := range entries {
		t := Target{AttachmentID: e.Name()}
		_, live := a.Device(t)
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := a.Detach(dctx, t); err != nil {
			errs = append(errs, fmt.Errorf("detach network attachment %s: %w", e.Name(), err))
		} else if live {
			n++
		}
		cancel()
	}
	return n, errors.Join(errs...)
}

// isAttachProcess reports whether pid is the process Attach started for
// the attachment (its arguments name the export).
func isAttachProcess(pid int, attachmentID string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	i := slices.Index(args, "--export")
	return i >= 0 && i+1 < len(args) && args[i+1] == attachmentID
}
