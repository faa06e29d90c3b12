package files

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// GaneshaConfig says how to run the storage host's NFS server.
type GaneshaConfig struct {
	// Binary is nfs-ganesha's daemon; default "ganesha.nfsd" on PATH.
	Binary string
	// StateDir holds the generated configuration, the log, the pid file
	// and NFSv4 client recovery records.
	StateDir string
	// Address and Port are where NFS is served; default 127.0.0.1:2049.
	Address string
	Port    int
	// Graceless skips NFSv4's grace period after a start. Clients then
	// cannot reclaim locks and opens after a restart: for tests only.
	Graceless bool
	Logger    *slog.Logger
}

// Ganesha runs nfs-ganesha as a supervised child serving one NFSv4 export
// per access point. Exports are added and removed by rewriting the
// configuration and sending SIGHUP, which ganesha applies without a restart,
// so the clients of other exports are not disturbed. If the daemon dies it
// is started again with the same exports (same export ids, so the file
// handles clients hold stay valid).
//
// NFSv4 only, TCP only: so ganesha needs neither rpcbind (NFSv3's mount
// protocol and UDP registration need it, and without it ganesha 4.3 exits
// with "Cannot register NFS V3 on UDP") nor the kernel. D-Bus is not used;
// ganesha logs that the system bus is missing and carries on.
type Ganesha struct {
	cfg GaneshaConfig

	mu      sync.Mutex
	exports map[string]Export
	// ownMounts are the export paths this Ganesha bind-mounted onto
	// themselves (subvolmount.go), by access point; Unexport and Stop
	// remove them.
	ownMounts map[string]string
	cmd       *exec.Cmd
	exited    chan struct{}
	stopped   bool

	cancel context.CancelFunc
	done   chan struct{}
}

// StartGanesha is NewGanesha, the exports, and Start.
func StartGanesha(ctx context.Context, cfg GaneshaConfig, exports []Export) (*Ganesha, error) {
	g, err := NewGanesha(cfg)
	if err != nil {
		return nil, err
	}
	for _, e := range exports {
		if err := g.Export(ctx, e); err != nil {
			g.Stop()
			return nil, err
		}
	}
	if err := g.Start(ctx); err != nil {
		return nil, err
	}
	return g, nil
}

// NewGanesha checks cfg and returns a Ganesha that is not running yet:
// exports added before Start are in the configuration it starts with, so
// after a restart of the storage host every export is there from ganesha's
// first request on (a client holding a handle of a missing export would get
// NFS4ERR_STALE).
func NewGanesha(cfg GaneshaConfig) (*Ganesha, error) {
	if cfg.Binary == "" {
		cfg.Binary = "ganesha.nfsd"
	}
	if cfg.Address == "" {
		cfg.Address = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = 2049
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StateDir == "" {
		return nil, errors.New("nfs-ganesha: no state directory")
	}
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("nfs-ganesha: %s not found (install nfs-ganesha and nfs-ganesha-vfs; run hack/setup.sh): %w", cfg.Binary, err)
	}
	cfg.Binary = bin
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "recovery"), 0o700); err != nil {
		return nil, fmt.Errorf("nfs-ganesha: %w", err)
	}
	return &Ganesha{cfg: cfg, exports: map[string]Export{}, ownMounts: map[string]string{}, done: make(chan struct{})}, nil
}

// Start writes the configuration with the exports added so far, starts the
// daemon, waits until it accepts connections, and supervises it until Stop.
func (g *Ganesha) Start(ctx context.Context) error {
	g.mu.Lock()
	err := g.writeConfigLocked()
	if err == nil {
		err = g.startLocked()
	}
	g.mu.Unlock()
	if err != nil {
		g.Stop()
		return err
	}
	if err := g.waitListening(ctx, 20*time.Second); err != nil {
		g.Stop()
		return err
	}
	sctx, cancel := context.WithCancel(context.Background())
	g.mu.Lock()
	g.cancel = cancel
	g.mu.Unlock()
	go g.supervise(sctx)
	return nil
}

// Address is host:port of the NFS service.
func (g *Ganesha) Address() string {
	return net.JoinHostPort(g.cfg.Address, strconv.Itoa(g.cfg.Port))
}

// PID is the running daemon's process id (0 when none runs).
func (g *Ganesha) PID() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil || g.cmd.Process == nil {
		return 0
	}
	return g.cmd.Process.Pid
}

func (g *Ganesha) configPath() string { return filepath.Join(g.cfg.StateDir, "ganesha.conf") }

// LogPath is the daemon's log file.
func (g *Ganesha) LogPath() string { return filepath.Join(g.cfg.StateDir, "ganesha.log") }

func (g *Ganesha) startLocked() error {
	cmd := exec.Command(g.cfg.Binary, "-F", "-f", g.configPath(), "-L", g.LogPath(),
		"-p", filepath.Join(g.cfg.StateDir, "ganesha.pid"), "-N", "NIV_EVENT")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start nfs-ganesha: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	g.cmd, g.exited = cmd, exited
	g.cfg.Logger.Info("nfs-ganesha started", "pid", cmd.Process.Pid, "address", g.Address(), "exports", len(g.exports))
	return nil
}

// waitListening waits until the daemon accepts TCP connections, or fails
// with the end of its log when it exits first.
func (g *Ganesha) waitListening(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		g.mu.Lock()
		exited := g.exited
		g.mu.Unlock()
		select {
		case <-exited:
			return fmt.Errorf("nfs-ganesha exited during start-up; end of %s:\n%s", g.LogPath(), tail(g.LogPath(), 10))
		default:
		}
		c, err := net.DialTimeout("tcp", g.Address(), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nfs-ganesha does not listen on %s after %s: %v", g.Address(), timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// supervise restarts the daemon when it dies, with a growing pause.
func (g *Ganesha) supervise(ctx context.Context) {
	defer close(g.done)
	backoff := time.Second
	for {
		g.mu.Lock()
		exited := g.exited
		g.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-exited:
		}
		g.mu.Lock()
		if g.stopped {
			g.mu.Unlock()
			return
		}
		g.cfg.Logger.Error("nfs-ganesha exited; restarting it", "in", backoff, "log", tail(g.LogPath(), 3))
		g.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		g.mu.Lock()
		err := g.startLocked()
		g.mu.Unlock()
		if err != nil {
			g.cfg.Logger.Error("could not restart nfs-ganesha", "err", err)
			// Keep an exited channel so the loop waits the backoff again.
			ch := make(chan struct{})
			close(ch)
			g.mu.Lock()
			g.exited = ch
			g.mu.Unlock()
		}
		if backoff < 30*time.Second {
			backoff *= 2
		}
	}
}

// Stop ends the daemon (SIGTERM, then SIGKILL after 10 s) and its
// supervision. Its exports stop being served.
func (g *Ganesha) Stop() {
	g.mu.Lock()
	g.stopped = true
	cmd, exited, cancel := g.cmd, g.exited, g.cancel
	g.mu.Unlock()
	if cancel != nil {
		cancel()
		<-g.done
	}
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	g.mu.Lock()
	g.unmountAllLocked()
	g.mu.Unlock()
}

// exposeLocked gives e's path a mount of its own when ganesha needs one to
// export it (a btrfs subvolume made after ganesha started; subvolmount.go).
func (g *Ganesha) exposeLocked(e Export) error {
	if _, ok := g.ownMounts[e.AccessPointID]; ok {
		return nil
	}
	mounted, err := mountOnItself(e.Path)
	if err != nil {
		return fmt.Errorf("export %s: %w", e.AccessPointID, err)
	}
	if mounted {
		g.ownMounts[e.AccessPointID] = e.Path
	}
	return nil
}

func (g *Ganesha) unmountAllLocked() {
	for id, p := range g.ownMounts {
		if err := unmountSelf(p); err != nil {
			g.cfg.Logger.Warn("nfs-ganesha stopped, but an export's own mount stays", "accessPoint", id, "err", err)
			continue
		}
		delete(g.ownMounts, id)
	}
}

// Export adds or updates an access point's export.
func (g *Ganesha) Export(ctx context.Context, e Export) error {
	if err := checkExport(e); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if old, ok := g.exports[e.AccessPointID]; ok && old == e {
		return nil
	}
	if err := g.exposeLocked(e); err != nil {
		return err
	}
	g.exports[e.AccessPointID] = e
	return g.reloadLocked()
}

// Unexport removes an access point's export; a missing one is not an error.
func (g *Ganesha) Unexport(ctx context.Context, accessPointID string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.exports[accessPointID]; !ok {
		return nil
	}
	delete(g.exports, accessPointID)
	if err := g.reloadLocked(); err != nil {
		return err
	}
	if p, ok := g.ownMounts[accessPointID]; ok {
		if err := unmountSelf(p); err != nil {
			return fmt.Errorf("unexport %s: %w", accessPointID, err)
		}
		delete(g.ownMounts, accessPointID)
	}
	return nil
}

func (g *Ganesha) reloadLocked() error {
	if err := g.writeConfigLocked(); err != nil {
		return err
	}
	if g.cmd == nil || g.cmd.Process == nil {
		return nil // the supervisor starts it with this configuration
	}
	if err := g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		// It died; the supervisor restarts it with the new configuration.
		g.cfg.Logger.Warn("nfs-ganesha did not take SIGHUP", "err", err)
	}
	return nil
}

func checkExport(e Export) error {
	if e.ID == 0 {
		return fmt.Errorf("%w: export of %s has id 0, which ganesha keeps for its pseudo root", ErrInvalid, e.AccessPointID)
	}
	for _, s := range []string{e.Path, e.Pseudo} {
		if !strings.HasPrefix(s, "/") || strings.ContainsAny(s, "\"\n\\") {
			return fmt.Errorf("%w: export of %s: path %q must be absolute and free of quotes, backslashes and newlines", ErrInvalid, e.AccessPointID, s)
		}
	}
	return nil
}

// writeConfigLocked writes the configuration atomically (rename), so a
// reload never reads half a file.
func (g *Ganesha) writeConfigLocked() error {
	var b strings.Builder
	fmt.Fprintf(&b, `# Generated by the Stowage agent; rewritten on every export change.
NFS_CORE_PARAM {
	Protocols = 4;
	Enable_UDP = false;
	Enable_NLM = false;
	Enable_RQUOTA = false;
	Bind_addr = %s;
	NFS_Port = %d;
}
NFSv4 {
	Graceless = %t;
	RecoveryBackend = fs;
	RecoveryRoot = "%s";
	Minor_Versions = 0, 1, 2;
	# Owners as numbers ("1234"), both ways: the access point's POSIX
	# user is numeric and clients (Stowage's FUSE client) map them back.
	Only_Numeric_Owners = true;
	# No ID mapping service either: libnfsidmap (/etc/idmapd.conf and
	# its plugins) is not needed, so ganesha runs from the stowage image.
	UseGetpwnam = true;
}
NFS_KRB5 { Active_krb5 = false; }
`, g.cfg.Address, g.cfg.Port, g.cfg.Graceless, filepath.Join(g.cfg.StateDir, "recovery"))
	ids := make([]string, 0, len(g.exports))
	for id := range g.exports {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		e := g.exports[id]
		access := "RW"
		if e.ReadOnly {
			access = "RO"
		}
		squash := "None"
		if e.Squash {
			squash = "All_Squash"
		}
		fmt.Fprintf(&b, `EXPORT {
	Export_Id = %d;
	Path = "%s";
	Pseudo = "%s";
	Tag = "%s";
	Access_Type = %s;
	Squash = %s;
	Anonymous_Uid = %d;
	Anonymous_Gid = %d;
	Protocols = 4;
	Transports = TCP;
	SecType = sys;
	FSAL { Name = VFS; }
}
`, e.ID, e.Path, e.Pseudo, e.AccessPointID, access, squash, e.AnonUID, e.AnonGID)
	}
	tmp := g.configPath() + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write nfs-ganesha configuration: %w", err)
	}
	if err := os.Rename(tmp, g.configPath()); err != nil {
		return fmt.Errorf("write nfs-ganesha configuration: %w", err)
	}
	return nil
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
