package benchkit

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Daemon starts a long-running process (a stowage daemon, etcd, an
// apiserver) with stdout and stderr in logPath, in its own process group so
// that a Ctrl-C at the terminal reaches only the benchmark, which then
// tears down in order. Pdeathsig stops it should the benchmark be killed
// outright. Its undo, pushed on u before Daemon returns, stops it by PID
// (SIGTERM, SIGKILL after 15 s). It returns the PID.
func Daemon(u *UndoStack, name, logPath, bin string, args ...string) (int, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := Stopper(name, cmd.Process, exited)
	u.Push(fmt.Sprintf("stop %s (pid %d)", name, cmd.Process.Pid), func() error {
		defer logf.Close()
		return stop()
	})
	return cmd.Process.Pid, nil
}

// Stopper is the undo of a started process whose Wait result arrives on
// exited: SIGTERM to its PID, SIGKILL if it has not exited 15 s later.
func Stopper(name string, p *os.Process, exited <-chan error) func() error {
	return func() error {
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			return nil
		case <-time.After(15 * time.Second):
			_ = p.Kill()
			<-exited
			return fmt.Errorf("%s did not stop on SIGTERM within 15 s; killed (pid %d)", name, p.Pid)
		}
	}
}

// FreePort is a TCP port on 127.0.0.1 that nothing listened on a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// DialUnix is a gRPC client of a unix socket (no transport security: the
// socket's file permissions are the boundary, as in a deployment).
func DialUnix(sock string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+sock, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
}

// WaitReady polls probe (one second each) until it succeeds, for at most
// within; the error names what did not come up and the last failure.
func WaitReady(ctx context.Context, what string, within time.Duration, probe func(context.Context) error) error {
	deadline := time.Now().Add(within)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := probe(pctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted while waiting for %s: %w", what, ctx.Err())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w", what, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
