package filecsi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/stowage-io/stowage/internal/runner"
)

func slicesSort(s []string) { slices.Sort(s) }

// FUSEType is the file system type the FUSE NFS client's mounts have in
// /proc/self/mountinfo.
const FUSEType = "fuse.stowage-nfs"

// FUSEMounter mounts with Stowage's FUSE NFS client (`stowage nfs-mount`),
// one client process per mount. Starter starts them so that they outlive
// a restart of the node plugin (sessions of their own, or the node
// runner's children); a record per mount in StateDir names the volume and
// the client's pid, so a restarted plugin finds them.
type FUSEMounter struct {
	// Helper is the stowage binary (its nfs-mount command).
	Helper string
	// StateDir holds one record per mount and the clients' logs.
	StateDir string
	// NodeID goes into the NFS client id, so the server tells nodes apart.
	NodeID string
	// ReadyTimeout bounds how long a mount may take; default 60 s.
	ReadyTimeout time.Duration
	// Starter starts the clients; default runner.Local. With a
	// runner.Remote the plugin must see the runner's pids (hostPID).
	Starter runner.Starter
}

type mountRecord struct {
	VolumeID string `json:"volumeId"`
	Target   string `json:"target"`
	Server   string `json:"server"`
	Export   string `json:"export"`
	ReadOnly bool   `json:"readOnly"`
	PID      int    `json:"pid"`
	Log      string `json:"log"`
}

// records keeps one mountRecord per target under dir/mounts.
type records string

func (f *FUSEMounter) recordPath(target string) string { return records(f.StateDir).path(target) }
func (f *FUSEMounter) readRecord(target string) (*mountRecord, error) {
	return records(f.StateDir).read(target)
}
func (f *FUSEMounter) writeRecord(r *mountRecord) error { return records(f.StateDir).write(r) }

// Mounts lists the records: target -> volume id.
func (f *FUSEMounter) Mounts() (map[string]string, error) { return records(f.StateDir).list() }

// clientOwner is the NFSv4 client owner of the mount of volume at target
// on node. Each mount is a client with state of its own, so two mounts of
// one volume on one node (two pods) must not share an owner: the server
// would take each EXCHANGE_ID of one for the other restarting and drop
// the other's session and opens, over and over. The same target keeps
// its owner, so a restarted client replaces the state of the one before.
func clientOwner(node, volume, target string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(target)))
	return "stowage-csi/" + node + "/" + volume + "/" + hex.EncodeToString(sum[:12])
}

func (rs records) path(target string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(target)))
	return filepath.Join(string(rs), "mounts", hex.EncodeToString(sum[:12])+".json")
}

func (rs records) remove(target string) error {
	if err := os.Remove(rs.path(target)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (rs records) read(target string) (*mountRecord, error) {
	b, err := os.ReadFile(rs.path(target))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r mountRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("mount record %s: %w", rs.path(target), err)
	}
	return &r, nil
}

func (rs records) write(r *mountRecord) error {
	p := rs.path(r.Target)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(r)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// Mount starts a client for m and waits for its "mounted" line.
func (f *FUSEMounter) Mount(ctx context.Context, m Mount) error {
	timeout := f.ReadyTimeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	logDir := filepath.Join(f.StateDir, "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return err
	}
	logPath := filepath.Join(logDir, strings.TrimSuffix(filepath.Base(f.recordPath(m.Target)), ".json")+".log")
	args := []string{"nfs-mount", "--server", m.Server, "--export", m.Export, "--target", m.Target,
		"--client-id", clientOwner(f.NodeID, m.VolumeID, m.Target), "--log-file", logPath}
	if m.ReadOnly {
		args = append(args, "--read-only")
	}
	p, err := runner.OrLocal(f.Starter).Start(ctx, runner.Spec{Command: append([]string{f.Helper}, args...), Log: logPath})
	if err != nil {
		return fmt.Errorf("start the FUSE NFS client %s: %w", f.Helper, err)
	}
	exited := make(chan struct{})
	go func() {
		err, ok := <-p.Exited
		close(exited)
		switch {
		case !ok:
		case err != nil:
			klog.ErrorS(err, "FUSE NFS client exited", "volume", m.VolumeID, "target", m.Target, "pid", p.PID, "log", logPath)
		default:
			klog.InfoS("FUSE NFS client exited", "volume", m.VolumeID, "target", m.Target, "pid", p.PID)
		}
	}()
	fail := func(why error) error {
		// Exited is closed once the goroutine above has its value.
		p.Stop(5 * time.Second)
		_ = unix.Unmount(m.Target, unix.MNT_DETACH)
		return fmt.Errorf("%w (client log %s: %s)", why, logPath, lastLines(logPath, 5))
	}
	// Ready when the target is a mount of the client's type.
	deadline := time.Now().Add(timeout)
	for {
		mounted, fstype, err := isMountPoint(m.Target)
		if err != nil {
			return fail(err)
		}
		if mounted && fstype == FUSEType {
			break
		}
		select {
		case <-exited:
			return fail(fmt.Errorf("the FUSE NFS client exited before mounting"))
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("the FUSE NFS client did not mount within %s (is the NFS server %s up?)", timeout, m.Server))
		}
	}
	r := &mountRecord{VolumeID: m.VolumeID, Target: filepath.Clean(m.Target), Server: m.Server, Export: m.Export, ReadOnly: m.ReadOnly, PID: p.PID, Log: logPath}
	if err := f.writeRecord(r); err != nil {
		return fail(fmt.Errorf("record the mount: %w", err))
	}
	return nil
}

// alive reports whether pid is a running nfs-mount client (not a pid
// reused by another program).
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
		// A zombie is not serving.
		if i := strings.LastIndexByte(string(st), ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
			return false
		}
	}
	return strings.Contains(string(b), "nfs-mount")
}

func isMountPoint(target string) (bool, string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(filepath.Clean(target)))
	if err != nil {
		return false, "", err
	}
	if len(infos) == 0 {
		return false, "", nil
	}
	return true, infos[len(infos)-1].FSType, nil
}

// Unmount stops the client (SIGTERM: it unmounts and exits), or detaches a
// mount whose client is gone.
func (f *FUSEMounter) Unmount(ctx context.Context, target string) error {
	target = filepath.Clean(target)
	r, err := f.readRecord(target)
	if err != nil {
		return err
	}
	if r != nil && alive(r.PID) {
		_ = syscall.Kill(r.PID, syscall.SIGTERM)
		deadline := time.Now().Add(10 * time.Second)
		for alive(r.PID) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if alive(r.PID) {
			klog.InfoS("FUSE NFS client did not stop within 10 s; killing it", "volume", r.VolumeID, "target", target, "pid", r.PID)
			_ = syscall.Kill(r.PID, syscall.SIGKILL)
		}
	}
	for i := 0; i < 3; i++ {
		mounted, fstype, err := isMountPoint(target)
		if err != nil {
			return err
		}
		if !mounted {
			break
		}
		if fstype != FUSEType && r == nil {
			return fmt.Errorf("%s is a %s mount this driver did not make; not unmounting it", target, fstype)
		}
		if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
	return records(f.StateDir).remove(target)
}

// Mounted reports the volume of the record for target when target is
// mounted.
func (f *FUSEMounter) Mounted(target string) (string, error) {
	r, err := f.readRecord(filepath.Clean(target))
	if err != nil || r == nil {
		return "", err
	}
	mounted, _, err := isMountPoint(target)
	if err != nil {
		return "", err
	}
	if !mounted && !alive(r.PID) {
		return "", nil
	}
	return r.VolumeID, nil
}

// Check says why the mount at target does not serve: its client is gone, it
// is not mounted, or the mount does not answer.
func (f *FUSEMounter) Check(ctx context.Context, target string) error {
	r, err := f.readRecord(filepath.Clean(target))
	if err != nil {
		return err
	}
	if r == nil {
		return fmt.Errorf("no mount record for %s", target)
	}
	if !alive(r.PID) {
		return fmt.Errorf("its FUSE NFS client (pid %d) has exited; the mount is dead (client log %s: %s)", r.PID, r.Log, lastLines(r.Log, 3))
	}
	mounted, _, err := isMountPoint(target)
	if err != nil {
		return err
	}
	if !mounted {
		return fmt.Errorf("%s is not mounted although its FUSE NFS client (pid %d) runs", target, r.PID)
	}
	if _, err := statfs(ctx, target); err != nil {
		return err
	}
	return nil
}

func (rs records) list() (map[string]string, error) {
	out := map[string]string{}
	entries, err := os.ReadDir(filepath.Join(string(rs), "mounts"))
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(string(rs), "mounts", e.Name()))
		if err != nil {
			continue
		}
		var r mountRecord
		if json.Unmarshal(b, &r) == nil {
			out[r.Target] = r.VolumeID
		}
	}
	return out, nil
}

type fsStats struct{ total, free, avail, files, filesFree int64 }

// statfs asks the mount for its numbers, giving up after 10 s: a hard NFS
// mount whose server is away does not answer, and a stats call must not
// hang with it.
func statfs(ctx context.Context, p string) (fsStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	type result struct {
		st  unix.Statfs_t
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		r.err = unix.Statfs(p, &r.st)
		ch <- r
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			if errors.Is(r.err, unix.ENOTCONN) {
				return fsStats{}, fmt.Errorf("the mount's FUSE client is gone (%w)", r.err)
			}
			return fsStats{}, r.err
		}
		bs := int64(r.st.Bsize)
		return fsStats{total: int64(r.st.Blocks) * bs, free: int64(r.st.Bfree) * bs, avail: int64(r.st.Bavail) * bs,
			files: int64(r.st.Files), filesFree: int64(r.st.Ffree)}, nil
	case <-ctx.Done():
		return fsStats{}, fmt.Errorf("the mount did not answer statfs within 10 s (is its NFS server up?)")
	}
}

func lastLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
