package cluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// Supervisor is the name of the process that restarts crashed components.
const Supervisor = "supervisor"

// Restart policy: a component that crashes more than maxRestarts times
// within restartWindow is left dead (its log says why; `stowage status`
// shows it).
const (
	superviseInterval = 2 * time.Second
	maxRestarts       = 5
	restartWindow     = 5 * time.Minute
)

// supervisorComponent is the supervisor itself, started last by `up` as
// `stowage up --supervise`.
func (c *Config) supervisorComponent() Component {
	return Component{Name: Supervisor, Cmd: Command{Path: c.Stowage, Args: []string{"up", "--supervise", "--data-dir=" + c.DataDir}}}
}

// startLock serialises "is it running? start it" between `up` and the
// supervisor, so that a component is never started twice.
func (c *Config) startLock() (unlock func(), err error) {
	if err := os.MkdirAll(c.Layout().Run(), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(c.Layout().path("run", "start.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// Supervise restarts, every few seconds, each component of dataDir's
// cluster whose pid file names a process that is gone: a crash, an OOM
// kill, a `kill` by hand. Components `down` stopped have no pid file and
// are left alone. It runs until ctx ends; `down` stops it first.
func Supervise(ctx context.Context, dataDir string, log io.Writer) error {
	c, err := LoadConfig(dataDir)
	if err != nil {
		return err
	}
	restarts := map[string][]time.Time{}
	gaveUp := map[string]bool{}
	fmt.Fprintf(log, "%s supervising %d components of %s\n", time.Now().Format(time.RFC3339), len(c.Components()), c.DataDir)
	tick := time.NewTicker(superviseInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		for _, comp := range c.Components() {
			if gaveUp[comp.Name] {
				continue
			}
			msg, err := c.restartIfDead(comp, restarts)
			if err != nil {
				fmt.Fprintf(log, "%s %s: %v\n", time.Now().Format(time.RFC3339), comp.Name, err)
				gaveUp[comp.Name] = true
				continue
			}
			if msg != "" {
				fmt.Fprintf(log, "%s %s\n", time.Now().Format(time.RFC3339), msg)
			}
		}
	}
}

func (c *Config) restartIfDead(comp Component, restarts map[string][]time.Time) (string, error) {
	unlock, err := c.startLock()
	if err != nil {
		return "", err
	}
	defer unlock()
	proc := c.process(comp.Name)
	st, old := proc.State()
	if st != Dead {
		return "", nil
	}
	now := time.Now()
	var recent []time.Time
	for _, t := range restarts[comp.Name] {
		if now.Sub(t) < restartWindow {
			recent = append(recent, t)
		}
	}
	logFile := c.Layout().LogFile(comp.Name)
	if len(recent) >= maxRestarts {
		return "", fmt.Errorf("crashed %d times within %s; leaving it dead. Last lines of %s:\n%s", len(recent), restartWindow, logFile, indent(tail(logFile, 10)))
	}
	restarts[comp.Name] = append(recent, now)
	cmd, err := comp.Cmd.resolved()
	if err != nil {
		return "", err
	}
	pid, err := proc.start(cmd, logFile)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s (pid %d) was gone; restarted it as pid %d", comp.Name, old, pid), nil
}
