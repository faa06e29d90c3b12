// Package runner starts the node's data-path clients (the FUSE NFS client
// of a file volume's mount, the FUSE block device of a network attachment)
// so that they outlive the node plugin that asked for them.
//
// Local starts a client as a child in a session of its own: enough when
// the node plugin is a host process, since stopping it leaves the session
// alone. A node plugin in a pod cannot do that: when its container stops,
// the runtime kills every process of the container, clients included, and
// their mounts die (ENOTCONN) under the pods that use them. There the
// plugin asks `stowage node-runner` (Server), a process of its own pod
// that is not upgraded with the plugin, over a unix socket (Remote), and
// the client is the runner's child.
//
// The exchange, one per connection: the client sends a Spec as one JSON
// object; the server answers with JSON lines: {"pid":N} or
// {"error":"..."}, then {"out":"..."} for each line the process writes to
// its standard output (when the Spec pipes it) and {"exit":"..."} when it
// ends. The client may hang up at any time; the process runs on.
package runner

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Spec says which client to start.
type Spec struct {
	// Command is the program and its arguments. A Remote runner runs its
	// own stowage binary with Command[1:], whose first element must be one
	// of the runner's allowed commands.
	Command []string `json:"command"`
	// Stdin is written to the process's standard input, which is then
	// closed: how a secret reaches it without its arguments, which anyone
	// on the node can read. Never logged.
	Stdin string `json:"stdin,omitempty"`
	// Log is the file (appended to) that gets the process's standard
	// error, and its standard output unless PipeStdout.
	Log string `json:"log"`
	// PipeStdout hands the process's standard output to the caller
	// (Proc.Stdout) instead of the log.
	PipeStdout bool `json:"pipeStdout,omitempty"`
}

// Proc is a started client.
type Proc struct {
	PID int
	// Stdout is the process's standard output when the Spec piped it;
	// nil otherwise. It ends when the process closes it or the caller
	// calls Release.
	Stdout io.Reader
	// Exited gets the process's end (nil error for exit status 0) and is
	// then closed. After Release it may never be sent.
	Exited <-chan error

	release func()
}

// Release stops following the process; it runs on.
func (p *Proc) Release() {
	if p.release != nil {
		p.release()
	}
}

// Stop ends a process that is still followed: SIGTERM, and SIGKILL if it
// has not exited within grace.
func (p *Proc) Stop(grace time.Duration) {
	_ = syscall.Kill(p.PID, syscall.SIGTERM)
	select {
	case <-p.Exited:
	case <-time.After(grace):
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
}

// OrLocal is s, or Local when s is nil.
func OrLocal(s Starter) Starter {
	if s == nil {
		return Local{}
	}
	return s
}

// Starter starts clients that outlive the caller.
type Starter interface {
	Start(ctx context.Context, s Spec) (*Proc, error)
}

// Local starts clients as children of this process, each in a session of
// its own.
type Local struct{}

// Start implements Starter.
func (Local) Start(_ context.Context, s Spec) (*Proc, error) {
	if len(s.Command) == 0 {
		return nil, errors.New("runner: no command to start")
	}
	logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("runner: the client's log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(s.Command[0], s.Command[1:]...)
	// A session of its own: a signal to the caller's process group is not
	// one to the client. Its output goes to its log, not to a pipe that
	// breaks when the caller exits (unless the caller asked for it).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Stderr = logf
	var stdout io.ReadCloser
	if s.PipeStdout {
		if stdout, err = cmd.StdoutPipe(); err != nil {
			return nil, err
		}
	} else {
		cmd.Stdout = logf
	}
	var stdin io.WriteCloser
	if s.Stdin != "" {
		if stdin, err = cmd.StdinPipe(); err != nil {
			return nil, err
		}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("runner: start %s: %w", s.Command[0], err)
	}
	if stdin != nil {
		io.WriteString(stdin, s.Stdin)
		stdin.Close()
	}
	exited := make(chan error, 1)
	p := &Proc{PID: cmd.Process.Pid, Exited: exited}
	var waitOut sync.WaitGroup
	if stdout != nil {
		// Wait closes the pipe: read it to its end first.
		pr, pw := io.Pipe()
		p.Stdout = pr
		var once sync.Once
		p.release = func() { once.Do(func() { pr.CloseWithError(io.EOF) }) }
		waitOut.Add(1)
		go func() {
			defer waitOut.Done()
			_, err := io.Copy(pw, stdout)
			pw.CloseWithError(err)
			io.Copy(io.Discard, stdout) // after a Release: keep the process from blocking
		}()
	}
	go func() {
		waitOut.Wait()
		exited <- cmd.Wait()
		close(exited)
	}()
	return p, nil
}

// message is one JSON line of the server's answer.
type message struct {
	PID   int     `json:"pid,omitempty"`
	Error string  `json:"error,omitempty"`
	Out   *string `json:"out,omitempty"`
	Exit  *string `json:"exit,omitempty"`
}

// lines copies r to w a line at a time as messages; it returns at r's end.
func lines(r io.Reader, send func(message) error) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			l := strings.TrimSuffix(line, "\n")
			if send(message{Out: &l}) != nil {
				io.Copy(io.Discard, br)
				return
			}
		}
		if err != nil {
			return
		}
	}
}
