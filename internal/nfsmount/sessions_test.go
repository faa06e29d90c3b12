package nfsmount

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// warnCounter counts the warnings logged through it, by message.
type warnCounter struct {
	mu   sync.Mutex
	seen map[string]int
	n    atomic.Int64
}

func (w *warnCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnCounter) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	w.seen[r.Message]++
	w.mu.Unlock()
	w.n.Add(1)
	return nil
}
func (w *warnCounter) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnCounter) WithGroup(string) slog.Handler      { return w }

func (w *warnCounter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var b strings.Builder
	for m, n := range w.seen {
		fmt.Fprintf(&b, "%dx %q; ", n, m)
	}
	return b.String()
}

// Two mounts of one export (two pods on one node) are two NFS clients
// with state of their own: each appending to its own file while reading
// the other's must not cost either its session (the server must not take
// them for one client restarting over and over).
func TestMount_TwoClients_KeepTheirSessions(t *testing.T) {
	testTwoClients(t, func(name string) string { return "" }) // the default owner: host name and target
}

// twoClients mounts one export twice, with the client owners owner
// gives, and has each mount append to its own file while reading the
// other's. It fails if that took either client its session, or hung.
func testTwoClients(t *testing.T, owner func(mount string) string) {
	e := newEnv(t, false)
	warns := &warnCounter{seen: map[string]int{}}
	mount := func(name string) string {
		target := filepath.Join(e.dir, name)
		if err := os.MkdirAll(target, 0o755); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m, err := New(ctx, Options{Server: e.g.Address(), Export: e.ex.Pseudo, Target: target, ClientID: owner(name), Logger: slog.New(warns).With("mount", name)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// Bounded: a client that lost its way must not hang the run.
			done := make(chan struct{})
			go func() {
				defer close(done)
				if err := m.Unmount(time.Second); err != nil {
					t.Errorf("unmount %s: %v", target, err)
				}
				m.Close()
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Errorf("unmount %s: no answer in 10 s; detached it", target)
				abortFUSE(t, target)
				_ = syscall.Unmount(target, syscall.MNT_DETACH)
			}
		})
		return target
	}
	a, b := mount("a"), mount("b")
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, p := range [][2]string{{a, b}, {b, a}} {
		wg.Add(1)
		go func(mine, theirs string) {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				f, err := os.OpenFile(filepath.Join(mine, "out.txt"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
				if err != nil {
					errs <- err
					return
				}
				fmt.Fprintf(f, "line %d\n", i)
				if err := f.Close(); err != nil {
					errs <- err
					return
				}
				os.ReadFile(filepath.Join(theirs, "out.txt"))
				time.Sleep(50 * time.Millisecond)
			}
		}(p[0], p[1])
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		// Unblock the writers stuck in FUSE requests, so the test fails
		// instead of hanging (the FUSE server is this process).
		abortFUSE(t, a)
		abortFUSE(t, b)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		t.Fatalf("two clients appending 30 lines each did not finish in 30 s; warnings: %s", warns)
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := warns.n.Load(); n > 0 {
		t.Errorf("%d warnings from two clients sharing a server: %s", n, warns)
	}
}

// abortFUSE aborts the FUSE connection mounted at target (fusectl), failing
// its pending and future requests.
func abortFUSE(t *testing.T, target string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != target {
			continue
		}
		dev := strings.SplitN(f[2], ":", 2)
		if len(dev) != 2 {
			continue
		}
		ctl := "/sys/fs/fuse/connections"
		if _, err := os.Stat(filepath.Join(ctl, dev[1])); err != nil {
			if err := syscall.Mount("fusectl", ctl, "fusectl", 0, ""); err != nil {
				t.Errorf("mount fusectl: %v", err)
			}
		}
		if err := os.WriteFile(filepath.Join(ctl, dev[1], "abort"), []byte("1"), 0); err != nil {
			t.Errorf("abort the FUSE connection of %s: %v", target, err)
		}
	}
}
