// Package etcdtest runs a real etcd for a test: the pinned binary from
// _output/bin/etcd (hack/build-components.sh etcd), on loopback ports of its
// own and a temporary data directory, stopped by its PID and removed when
// the test ends, whatever way it ends.
package etcdtest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stowage-io/stowage/internal/testutil/logbuf"
)

// Etcd is a running etcd member.
type Etcd struct {
	// Endpoint is host:port of its client URL.
	Endpoint string
	cmd      *exec.Cmd
	done     chan struct{}
	out      *logbuf.Buffer
}

// Binary finds _output/bin/etcd of the repository the test runs in.
func Binary() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "hack", "build-components.sh")); err == nil {
			bin := filepath.Join(d, "_output", "bin", "etcd")
			if _, err := os.Stat(bin); err != nil {
				return "", fmt.Errorf("no etcd binary at %s: build it with `bash hack/build-components.sh etcd` in %s (the tests run the pinned etcd of third_party/etcd)", bin, d)
			}
			return bin, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no repository root (hack/build-components.sh) above %s", dir)
		}
	}
}

// Start runs etcd and waits until it is healthy; it fails the test (never
// skips it) when the binary is missing.
func Start(t testing.TB) *Etcd {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "stwetcd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	client, peer := FreeAddr(t), FreeAddr(t)
	clientURL, peerURL := "http://"+client, "http://"+peer
	e := &Etcd{Endpoint: client, done: make(chan struct{}), out: &logbuf.Buffer{}}
	e.cmd = exec.Command(bin,
		"--name", "test",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "test="+peerURL,
		"--log-level", "warn",
		// Tests kill servers, not etcd: its fsyncs would only slow them.
		"--unsafe-no-fsync")
	e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
	if err := e.cmd.Start(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	go func() {
		e.cmd.Wait()
		close(e.done)
	}()
	// Registered after the dir's cleanup, so it runs first.
	t.Cleanup(func() {
		e.stop()
		if t.Failed() {
			t.Logf("etcd output:\n%s", e.out)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(clientURL + "/health")
		if err == nil {
			var b bytes.Buffer
			b.ReadFrom(resp.Body)
			resp.Body.Close()
			if strings.Contains(b.String(), `"health":"true"`) {
				return e
			}
		}
		select {
		case <-e.done:
			t.Fatalf("etcd exited at start: %v\n%s", e.cmd.ProcessState, e.out)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd not healthy on %s after 30 s:\n%s", clientURL, e.out)
		}
	}
}

func (e *Etcd) stop() {
	select {
	case <-e.done:
		return
	default:
	}
	_ = syscall.Kill(e.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(e.cmd.Process.Pid, syscall.SIGKILL)
		<-e.done
	}
}

// FreeAddr returns a loopback host:port nobody listens on now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
