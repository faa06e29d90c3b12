package nfs4_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stowage-io/stowage/internal/files"
	"github.com/stowage-io/stowage/pkg/nfs4"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startGanesha serves one export of a fresh directory owned by 1234:2345,
// squashing everyone to that user.
func startGanesha(t *testing.T) (*files.Ganesha, files.Export) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: nfs-ganesha's VFS back end opens files by handle")
	}
	if _, err := exec.LookPath("ganesha.nfsd"); err != nil {
		t.Skip("needs ganesha.nfsd (Debian nfs-ganesha, nfs-ganesha-vfs; hack/setup.sh)")
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "tree")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(root, 1234, 2345); err != nil {
		t.Fatal(err)
	}
	ex := files.Export{ID: 7, AccessPointID: "fsap-00000000000000007", Path: root, Pseudo: "/fsap-00000000000000007",
		Squash: true, AnonUID: 1234, AnonGID: 2345}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g, err := files.StartGanesha(ctx, files.GaneshaConfig{StateDir: filepath.Join(dir, "ganesha"), Port: freePort(t), Graceless: true}, []files.Export{ex})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Stop)
	return g, ex
}

func TestClient_AgainstGanesha(t *testing.T) {
	g, ex := startGanesha(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := nfs4.Dial(ctx, nfs4.Config{Server: g.Address(), Owner: "test-" + t.Name(), Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cred := nfs4.Cred{UID: 5000, GID: 5000}
	var root nfs4.FH
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var a *nfs4.Attr
		root, a, err = c.LookupPath(ctx, cred, ex.Pseudo)
		if err == nil {
			if a.Type != nfs4.TypeDir || a.UID != 1234 || a.GID != 2345 {
				t.Fatalf("export root: type %d owner %q/%q", a.Type, a.Owner, a.OwnerGroup)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	mode := uint32(0o640)
	o, err := c.Open(ctx, cred, root, "f.txt", nfs4.ShareBoth, nfs4.Guarded, &nfs4.SetAttr{Mode: &mode})
	if err != nil {
		t.Fatal(err)
	}
	if o.Attr.Type != nfs4.TypeReg || o.Attr.Mode != 0o640 || o.Attr.UID != 1234 {
		t.Errorf("created file: %+v", o.Attr)
	}
	if _, err := c.Open(ctx, cred, root, "f.txt", nfs4.ShareBoth, nfs4.Guarded, nil); nfs4.Errno(err) != syscall.EEXIST {
		t.Errorf("guarded create of an existing file: %v, want EEXIST", err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 65536) // 1 MiB
	n := 0
	for n < len(data) {
		chunk := data[n:min(len(data), n+c.IOSize())]
		w, err := c.Write(ctx, cred, o.FH, o.Stateid, uint64(n), chunk, nfs4.Unstable)
		if err != nil {
			t.Fatal(err)
		}
		n += int(w.Count)
	}
	if _, err := c.Commit(ctx, cred, o.FH); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	r := 0
	for r < len(got) {
		k, eof, err := c.Read(ctx, cred, o.FH, o.Stateid, uint64(r), got[r:min(len(got), r+c.IOSize())])
		if err != nil {
			t.Fatal(err)
		}
		r += k
		if eof {
			break
		}
	}
	if !bytes.Equal(got[:r], data) {
		t.Errorf("read back %d bytes, differ", r)
	}
	if err := c.CloseFile(ctx, cred, o.FH, o.Stateid); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(ex.Path, "f.txt"))
	if err != nil || !bytes.Equal(b, data) {
		t.Errorf("backing file: %d bytes, %v", len(b), err)
	}
	if _, _, err := c.Mkdir(ctx, cred, root, "d", nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Symlink(ctx, cred, root, "l", "f.txt", nil); err != nil {
		t.Fatal(err)
	}
	lfh, _, err := c.Lookup(ctx, cred, root, "l")
	if err != nil {
		t.Fatal(err)
	}
	if tg, err := c.Readlink(ctx, cred, lfh); err != nil || tg != "f.txt" {
		t.Errorf("readlink: %q %v", tg, err)
	}
	if _, err := c.Link(ctx, cred, o.FH, root, "hard"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rename(ctx, cred, root, "hard", root, "hard2"); err != nil {
		t.Fatal(err)
	}
	ents, _, eof, err := c.ReadDir(ctx, cred, root, 0, [8]byte{})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, e := range ents {
		names[e.Name] = true
		if len(e.Attr.FH) == 0 {
			t.Errorf("entry %s without file handle", e.Name)
		}
	}
	if !eof || !names["f.txt"] || !names["d"] || !names["l"] || !names["hard2"] || names["hard"] {
		t.Errorf("readdir: %v eof %v", names, eof)
	}
	if err := c.Remove(ctx, cred, root, "d"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Lookup(ctx, cred, root, "d"); nfs4.Errno(err) != syscall.ENOENT {
		t.Errorf("lookup of removed: %v", err)
	}
	sz := uint64(10)
	a, err := c.SetAttr(ctx, cred, o.FH, nfs4.AnonStateid, &nfs4.SetAttr{Size: &sz})
	if err != nil || a.Size != 10 {
		t.Errorf("truncate: %v %+v", err, a)
	}
	fs, err := c.StatFS(ctx, cred, root)
	if err != nil || fs.SpaceTotal == 0 {
		t.Errorf("statfs: %v %+v", err, fs)
	}
	t.Logf("io size %d, statfs %+v", c.IOSize(), fs)
}

// TestMeasureRoundTrips prints per-operation latencies against ganesha
// (STOWAGE_NFS_MEASURE=1).
func TestMeasureRoundTrips(t *testing.T) {
	if os.Getenv("STOWAGE_NFS_MEASURE") == "" {
		t.Skip("set STOWAGE_NFS_MEASURE=1 to measure")
	}
	g, ex := startGanesha(t)
	ctx := context.Background()
	c, err := nfs4.Dial(ctx, nfs4.Config{Server: g.Address(), Owner: "measure"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cred := nfs4.Cred{UID: 5000, GID: 5000}
	var root nfs4.FH
	for i := 0; i < 50; i++ {
		if root, _, err = c.LookupPath(ctx, cred, ex.Pseudo); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	const n = 2000
	start := time.Now()
	for i := 0; i < n; i++ {
		if _, err := c.GetAttr(ctx, cred, root); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("GETATTR: %v per call", time.Since(start)/n)
	start = time.Now()
	var opens []*nfs4.OpenResult
	for i := 0; i < n; i++ {
		o, err := c.Open(ctx, cred, root, "f"+strconv.Itoa(i), nfs4.ShareBoth, nfs4.Unchecked, nil)
		if err != nil {
			t.Fatal(err)
		}
		opens = append(opens, o)
		if i%500 == 499 {
			t.Logf("OPEN create up to %d: %v per call", i+1, time.Since(start)/time.Duration(i+1))
		}
	}
	t.Logf("OPEN create: %v per call", time.Since(start)/n)
	start = time.Now()
	for _, o := range opens {
		if _, err := c.Write(ctx, cred, o.FH, o.Stateid, 0, []byte("small file\n"), nfs4.Unstable); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("WRITE 11 bytes: %v per call", time.Since(start)/n)
	start = time.Now()
	for _, o := range opens {
		if err := c.CloseFile(ctx, cred, o.FH, o.Stateid); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("CLOSE: %v per call", time.Since(start)/n)
}

// proxy forwards TCP to target and can cut every connection it carries.
type proxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target}
	t.Cleanup(func() { l.Close(); p.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns) / 2
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	return n
}

// Connections cut again and again under a stream of creates, writes and
// removes: every call returns success (hard mount; replays on the same
// slot are answered from the server's reply cache), none fails with EXIST
// or NOENT because of a replay, and the files are as written.
func TestClient_ConnectionCuts_CallsSucceedExactlyOnce(t *testing.T) {
	g, ex := startGanesha(t)
	px := newProxy(t, g.Address())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := nfs4.Dial(ctx, nfs4.Config{Server: px.l.Addr().String(), Owner: "cuts"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cred := nfs4.Cred{UID: 1, GID: 1}
	var root nfs4.FH
	for i := 0; i < 50; i++ {
		if root, _, err = c.LookupPath(ctx, cred, ex.Pseudo); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	stop := make(chan struct{})
	cuts := 0
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(30 * time.Millisecond):
				cuts += px.cut()
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 60; i++ {
				name := fmt.Sprintf("w%d-%d", w, i)
				o, err := c.Open(ctx, cred, root, name, nfs4.ShareBoth, nfs4.Guarded, nil)
				if err != nil {
					errs <- fmt.Errorf("create %s: %w", name, err)
					return
				}
				if _, err := c.Write(ctx, cred, o.FH, o.Stateid, 0, []byte(name), nfs4.FileSync); err != nil {
					errs <- fmt.Errorf("write %s: %w", name, err)
					return
				}
				if err := c.CloseFile(ctx, cred, o.FH, o.Stateid); err != nil {
					errs <- fmt.Errorf("close %s: %w", name, err)
					return
				}
				if i%2 == 1 {
					if err := c.Remove(ctx, cred, root, name); err != nil {
						errs <- fmt.Errorf("remove %s: %w", name, err)
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(stop)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if cuts == 0 {
		t.Fatal("no connection was cut")
	}
	for w := 0; w < 4; w++ {
		for i := 0; i < 60; i++ {
			name := fmt.Sprintf("w%d-%d", w, i)
			b, err := os.ReadFile(filepath.Join(ex.Path, name))
			if i%2 == 1 {
				if err == nil {
					t.Errorf("%s was removed but exists", name)
				}
			} else if string(b) != name {
				t.Errorf("%s: %q %v", name, b, err)
			}
		}
	}
	t.Logf("%d connections cut", cuts)
}
