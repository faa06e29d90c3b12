package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Every process `up` starts carries these two variables, so that a pid file
// is trusted only while the process it names is still the one we started
// (pids are reused) and belongs to this data directory.
const (
	envComponent = "STOWAGE_COMPONENT"
	envCluster   = "STOWAGE_CLUSTER"
)

// Process is a component's process as its pid file describes it.
type Process struct {
	Name    string
	PidFile string
	Cluster string // the data directory
}

// State of a component's process.
type State int

const (
	NotStarted State = iota // no pid file
	Running
	Dead // a pid file, but no such process (or another one under that pid)
)

func (s State) String() string {
	switch s {
	case Running:
		return "running"
	case Dead:
		return "dead"
	}
	return "not started"
}

// writePidFile records pid atomically.
func writePidFile(path string, pid int) error {
	return writeFileAtomic(path, []byte(strconv.Itoa(pid)+"\n"), 0o644)
}

// readPidFile returns the pid in path; os.ErrNotExist when there is no file.
func readPidFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: %q is not a pid", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// State reports whether the process is running, and its pid if the pid file
// names one.
func (p Process) State() (State, int) {
	pid, err := readPidFile(p.PidFile)
	if errors.Is(err, os.ErrNotExist) {
		return NotStarted, 0
	}
	if err != nil {
		return Dead, 0
	}
	if p.isOurs(pid) {
		return Running, pid
	}
	return Dead, pid
}

// isOurs says whether pid is alive (not a zombie) and was started by us for
// this component of this cluster.
func (p Process) isOurs(pid int) bool {
	if !alive(pid) {
		return false
	}
	// While a process execs, its environment reads empty, fails or is
	// briefly incomplete; a process of ours shows its marks within moments,
	// so look again for a while before saying it is not ours.
	want := []string{envComponent + "=" + p.Name, envCluster + "=" + p.Cluster}
	for i := 0; i < 50; i++ {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if errors.Is(err, os.ErrPermission) {
			// Not root (`stowage status` as a user): alive is the best we know.
			return true
		}
		if err == nil && hasEnv(env, want[0]) && hasEnv(env, want[1]) {
			return true
		}
		if !alive(pid) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// alive says whether pid exists and is not a zombie. Right after exec a
// process's environment reads empty for a moment, so a process we just
// started is watched with alive, not isOurs.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// contain anything, so look after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] != 'Z' && stat[i+2] != 'X'
}

func hasEnv(environ []byte, kv string) bool {
	for _, e := range bytes.Split(environ, []byte{0}) {
		if string(e) == kv {
			return true
		}
	}
	return false
}

// Command is how to start a component.
type Command struct {
	Path string
	Args []string
	Env  []string // added to the environment
	Dir  string
}

// resolved finds a command given by name on PATH.
func (c Command) resolved() (Command, error) {
	if filepath.IsAbs(c.Path) {
		return c, nil
	}
	p, err := exec.LookPath(c.Path)
	if err != nil {
		return c, fmt.Errorf("%s is not installed: %w", c.Path, err)
	}
	c.Path = p
	return c, nil
}

func (c Command) String() string { return strings.Join(append([]string{c.Path}, c.Args...), " ") }

// start runs cmd detached from us (its own session, stdin from /dev/null,
// output appended to logFile), records its pid, and returns it. The process
// outlives `stowage up`.
func (p Process) start(cmd Command, logFile string) (int, error) {
	if err := os.MkdirAll(filepath.Dir(logFile), 0o755); err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Dir(p.PidFile), 0o755); err != nil {
		return 0, err
	}
	log, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer log.Close()
	fmt.Fprintf(log, "\n==== %s stowage: starting %s\n", time.Now().Format(time.RFC3339), cmd)
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	c := exec.Command(cmd.Path, cmd.Args...)
	c.Dir = cmd.Dir
	if c.Dir == "" {
		c.Dir = "/"
	}
	c.Env = append(componentEnv(), cmd.Env...)
	c.Env = append(c.Env, envComponent+"="+p.Name, envCluster+"="+p.Cluster)
	c.Stdin, c.Stdout, c.Stderr = devnull, log, log
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", p.Name, err)
	}
	pid := c.Process.Pid
	if err := writePidFile(p.PidFile, pid); err != nil {
		c.Process.Kill()
		c.Wait()
		return 0, err
	}
	// Reap it if it dies while we are still running; the pid file stays,
	// and State reports it dead.
	go c.Wait()
	return pid, nil
}

// componentEnv is the environment components run with: ours, minus our own
// markers, with the system directories on PATH (the kubelet runs mount and
// iptables, containerd runs runc and the CNI plugins).
func componentEnv() []string {
	var env []string
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range os.Environ() {
		k, v, _ := strings.Cut(e, "=")
		switch k {
		case envComponent, envCluster, "KUBECONFIG", "NOTIFY_SOCKET":
			continue
		case "PATH":
			path = v + ":" + path
			continue
		}
		env = append(env, e)
	}
	return append(env, "PATH="+path)
}

// Stop sends SIGTERM, waits up to grace, then SIGKILL, and removes the pid
// file. A process that is not ours (or not running) only loses its pid file.
func (p Process) Stop(ctx context.Context, grace time.Duration) (stopped bool, err error) {
	st, pid := p.State()
	if st != Running {
		os.Remove(p.PidFile)
		return false, nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return false, fmt.Errorf("stop %s (pid %d): %w", p.Name, pid, err)
	}
	if !waitGone(ctx, p, pid, grace) {
		syscall.Kill(pid, syscall.SIGKILL)
		if !waitGone(ctx, p, pid, 5*time.Second) {
			return true, fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, pid)
		}
	}
	os.Remove(p.PidFile)
	return true, nil
}

func waitGone(ctx context.Context, p Process, pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !p.isOurs(pid) {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
