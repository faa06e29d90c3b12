package nfsmount

import (
	"sync"

	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/stowage-io/stowage/internal/testutil/loopfs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/stowage-io/stowage/internal/files"
)

const anonUID, anonGID = 1234, 2345

type env struct {
	t    *testing.T
	dir  string
	ex   files.Export
	g    *files.Ganesha
	gcfg files.GaneshaConfig
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: FUSE mounts and nfs-ganesha's VFS back end")
	}
	if _, err := exec.LookPath("ganesha.nfsd"); err != nil {
		t.Skip("needs ganesha.nfsd (Debian nfs-ganesha, nfs-ganesha-vfs; hack/setup.sh)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// newEnv serves one squashing export (the access point's user 1234:2345)
// of a fresh directory.
func newEnv(t *testing.T, ro bool) *env { return newEnvSquash(t, ro, true) }

func newEnvSquash(t *testing.T, ro, squash bool) *env { return newEnvIn(t, "", ro, squash) }

// newEnvIn is newEnvSquash with the export's tree under base ("": the
// temporary directory).
func newEnvIn(t *testing.T, base string, ro, squash bool) *env {
	needRoot(t)
	dir, err := os.MkdirTemp(base, "nfsmount-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // other users reach the mounts
		t.Fatal(err)
	}
	root := filepath.Join(dir, "tree")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(root, anonUID, anonGID); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir}
	e.ex = files.Export{ID: 9, AccessPointID: "fsap-0123456789abcdef0", Path: root, Pseudo: "/fsap-0123456789abcdef0",
		Squash: squash, AnonUID: anonUID, AnonGID: anonGID, ReadOnly: ro}
	if !squash {
		if err := os.Chmod(root, 0o1777); err != nil {
			t.Fatal(err)
		}
	}
	e.gcfg = files.GaneshaConfig{StateDir: filepath.Join(dir, "ganesha"), Port: freePort(t), Graceless: true}
	e.start()
	return e
}

func (e *env) start() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g, err := files.StartGanesha(ctx, e.gcfg, []files.Export{e.ex})
	if err != nil {
		e.t.Fatal(err)
	}
	e.g = g
	e.t.Cleanup(func() {
		g.Stop()
		if e.t.Failed() {
			if b, err := os.ReadFile(g.LogPath()); err == nil {
				lines := strings.Split(string(b), "\n")
				e.t.Logf("end of ganesha log:\n%s", strings.Join(lines[max(0, len(lines)-30):], "\n"))
			}
		}
	})
}

// mount mounts the export in-process and unmounts it at cleanup.
func (e *env) mount(name string, ro bool) string { return e.mountSub(name, ro, "") }

func (e *env) mountSub(name string, ro bool, subdir string) string {
	target := filepath.Join(e.dir, name)
	if err := os.MkdirAll(target, 0o755); err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := New(ctx, Options{Server: e.g.Address(), Export: e.ex.Pseudo, Target: target, ReadOnly: ro, Subdir: subdir,
		Logger: slog.Default().With("mount", name)})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if err := m.Unmount(time.Second); err != nil {
			e.t.Errorf("unmount %s: %v", target, err)
		}
		m.Close()
		if ok, _ := mountinfo.Mounted(target); ok {
			e.t.Errorf("%s still mounted", target)
			_ = syscall.Unmount(target, syscall.MNT_DETACH)
		}
	})
	return target
}

// asUser runs a shell command as uid:gid.
func asUser(t *testing.T, uid, gid uint32, script string) (string, error) {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func stat(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

func TestMount_OwnerIsAccessPointUser(t *testing.T) {
	e := newEnv(t, false)
	mnt := e.mount("m", false)
	if out, err := asUser(t, 5000, 5000, "echo 'written as uid 5000' > "+mnt+"/hello.txt && cat "+mnt+"/hello.txt"); err != nil || !strings.Contains(out, "written as uid 5000") {
		t.Fatalf("write as uid 5000: %v: %s", err, out)
	}
	back := stat(t, filepath.Join(e.ex.Path, "hello.txt"))
	if back.Uid != anonUID || back.Gid != anonGID {
		t.Errorf("backing file owned by %d:%d, want the access point's %d:%d", back.Uid, back.Gid, anonUID, anonGID)
	}
	through := stat(t, filepath.Join(mnt, "hello.txt"))
	if through.Uid != anonUID || through.Gid != anonGID || through.Ino != back.Ino || through.Size != back.Size {
		t.Errorf("stat through the mount: %d:%d ino %d size %d; backing: %d:%d ino %d size %d",
			through.Uid, through.Gid, through.Ino, through.Size, back.Uid, back.Gid, back.Ino, back.Size)
	}
	// --subdir mounts a directory below the export.
	if err := os.MkdirAll(filepath.Join(e.ex.Path, "a/b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.ex.Path, "a/b/in-sub"), []byte("sub"), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := e.mountSub("sub", false, "/a/b")
	if b, err := os.ReadFile(filepath.Join(sub, "in-sub")); err != nil || string(b) != "sub" {
		t.Errorf("file through a subdir mount: %q %v", b, err)
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(mnt, &sfs); err != nil || sfs.Blocks == 0 {
		t.Errorf("statfs: %v %+v", err, sfs)
	}
	mi, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mnt))
	if err != nil || len(mi) != 1 {
		t.Fatalf("mountinfo: %v %v", mi, err)
	}
	if mi[0].FSType != "fuse.stowage-nfs" || !strings.HasPrefix(mi[0].Source, "stowage-nfs:") || !strings.Contains(mi[0].VFSOptions, "allow_other") {
		t.Errorf("mount entry: type %q source %q options %q", mi[0].FSType, mi[0].Source, mi[0].VFSOptions)
	}
}

func TestMount_TwoMountsSeeEachOther(t *testing.T) {
	e := newEnv(t, false)
	a, b := e.mount("a", false), e.mount("b", false)
	if err := os.WriteFile(filepath.Join(a, "from-a"), []byte("hello from a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(b, "from-a")); err != nil || string(got) != "hello from a" {
		t.Fatalf("b reads a's file: %q %v", got, err)
	}
	// Rewritten through b (same size, so only the change attribute tells
	// a's page cache is stale); a sees it after its next open.
	if err := os.WriteFile(filepath.Join(b, "from-a"), []byte("HELLO FROM B"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(a, "from-a")); err != nil || string(got) != "HELLO FROM B" {
		t.Errorf("a after b rewrote it: %q %v", got, err)
	}
	// A new file in b appears in a's listing (after the 1 s entry cache).
	if err := os.Mkdir(filepath.Join(b, "dir-b"), 0o755); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		names, _ := os.ReadDir(a)
		found := false
		for _, n := range names {
			found = found || n.Name() == "dir-b"
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a does not list b's directory: %v", names)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestMount_NamespaceOperations(t *testing.T) {
	e := newEnv(t, false)
	mnt := e.mount("m", false)
	p := func(s string) string { return filepath.Join(mnt, s) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(p("d1/d2"), 0o750))
	must(os.WriteFile(p("d1/d2/f"), []byte("0123456789"), 0o600))
	must(os.Rename(p("d1/d2/f"), p("d1/g")))
	if _, err := os.Stat(p("d1/d2/f")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("renamed-away name: %v", err)
	}
	must(os.Symlink("g", p("d1/link")))
	if tg, err := os.Readlink(p("d1/link")); err != nil || tg != "g" {
		t.Errorf("readlink: %q %v", tg, err)
	}
	if b, err := os.ReadFile(p("d1/link")); err != nil || string(b) != "0123456789" {
		t.Errorf("through the symlink: %q %v", b, err)
	}
	must(os.Link(p("d1/g"), p("d1/hard")))
	if st := stat(t, p("d1/g")); st.Nlink != 2 {
		t.Errorf("nlink after link: %d", st.Nlink)
	}
	must(os.Chmod(p("d1/g"), 0o604))
	if st := stat(t, filepath.Join(e.ex.Path, "d1/g")); st.Mode&0o7777 != 0o604 {
		t.Errorf("backing mode after chmod: %o", st.Mode&0o7777)
	}
	must(os.Truncate(p("d1/g"), 4))
	if b, _ := os.ReadFile(p("d1/hard")); string(b) != "0123" {
		t.Errorf("after truncate: %q", b)
	}
	mt := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	must(os.Chtimes(p("d1/g"), mt, mt))
	if fi, err := os.Stat(p("d1/g")); err != nil || !fi.ModTime().Equal(mt) {
		t.Errorf("mtime after utimens: %v %v", fi.ModTime(), err)
	}
	ents, err := os.ReadDir(p("d1"))
	must(err)
	var names []string
	for _, de := range ents {
		names = append(names, de.Name())
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "d2,g,hard,link" {
		t.Errorf("readdir d1: %v", names)
	}
	if err := os.Remove(p("d1")); !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
		t.Errorf("rmdir of a non-empty directory: %v", err)
	}
	if _, err := os.OpenFile(p("d1/g"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("O_EXCL create of an existing file: %v", err)
	}
	must(os.Remove(p("d1/link")))
	must(os.Remove(p("d1/hard")))
	must(os.Remove(p("d1/g")))
	must(os.Remove(p("d1/d2")))
	must(os.Remove(p("d1")))
	if ents, _ := os.ReadDir(e.ex.Path); len(ents) != 0 {
		t.Errorf("backing directory not empty after removals: %v", ents)
	}
	// Chown is the server's decision: with All_Squash the file stays the
	// access point user's whatever the caller asks (ganesha squashes the
	// owner of a SETATTR too, or refuses it).
	must(os.WriteFile(p("own"), nil, 0o644))
	if err := os.Chown(p("own"), 42, 42); err != nil && !errors.Is(err, syscall.EPERM) {
		t.Errorf("chown: %v, want success or EPERM", err)
	}
	if st := stat(t, filepath.Join(e.ex.Path, "own")); st.Uid != anonUID || st.Gid != anonGID {
		t.Errorf("after chown through a squashing export the backing file is owned by %d:%d", st.Uid, st.Gid)
	}
	if st := stat(t, p("own")); st.Uid != anonUID {
		t.Errorf("after chown, stat through the mount says uid %d", st.Uid)
	}
}

func TestMount_ReadOnlyRefusesWrites(t *testing.T) {
	e := newEnv(t, false)
	if err := os.WriteFile(filepath.Join(e.ex.Path, "existing"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := e.mount("ro", true)
	if b, err := os.ReadFile(filepath.Join(mnt, "existing")); err != nil || string(b) != "x" {
		t.Errorf("read on a read-only mount: %q %v", b, err)
	}
	for name, err := range map[string]error{
		"create":   os.WriteFile(filepath.Join(mnt, "new"), []byte("x"), 0o644),
		"write":    func() error { _, err := os.OpenFile(filepath.Join(mnt, "existing"), os.O_WRONLY, 0); return err }(),
		"mkdir":    os.Mkdir(filepath.Join(mnt, "d"), 0o755),
		"unlink":   os.Remove(filepath.Join(mnt, "existing")),
		"chmod":    os.Chmod(filepath.Join(mnt, "existing"), 0o600),
		"truncate": os.Truncate(filepath.Join(mnt, "existing"), 0),
	} {
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on a read-only mount: %v, want EROFS", name, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(e.ex.Path, "existing")); string(b) != "x" {
		t.Errorf("backing file changed: %q", b)
	}
}

// The server restarts while a file is open, partly written and fsynced:
// the next write waits for it and completes, nothing is lost.
func TestMount_GaneshaRestart_WriterBlocksThenCompletes(t *testing.T) {
	e := newEnv(t, false)
	mnt := e.mount("m", false)
	f, err := os.OpenFile(filepath.Join(mnt, "log"), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	first := bytes.Repeat([]byte("before restart\n"), 10000)
	if _, err := f.Write(first); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	e.g.Stop()
	down := time.Now()
	type res struct {
		err error
		at  time.Time
	}
	done := make(chan res, 1)
	second := []byte("after restart\n")
	go func() {
		_, err := f.Write(second)
		if err == nil {
			err = f.Sync()
		}
		done <- res{err, time.Now()}
	}()
	select {
	case r := <-done:
		t.Fatalf("write completed while the server was down: %v", r.err)
	case <-time.After(2 * time.Second):
	}
	e.start()
	var r res
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("write still blocked 60 s after the server came back")
	}
	if r.err != nil {
		t.Fatalf("write after the restart: %v (want it to complete, not fail)", r.err)
	}
	t.Logf("write blocked for %s and completed after the restart", r.at.Sub(down).Round(time.Millisecond))
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	want := append(append([]byte(nil), first...), second...)
	if b, err := os.ReadFile(filepath.Join(e.ex.Path, "log")); err != nil || !bytes.Equal(b, want) {
		t.Errorf("backing file: %d bytes (want %d), %v", len(b), len(want), err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "log")); err != nil || !bytes.Equal(b, want) {
		t.Errorf("through the mount: %d bytes (want %d), %v", len(b), len(want), err)
	}
}

// The command: prints "mounted <target>", serves, unmounts on SIGTERM,
// exits 0 and leaves no mount behind.
func TestNFSMountCommand_SIGTERMLeavesNoMount(t *testing.T) {
	e := newEnv(t, false)
	bin := filepath.Join(e.dir, "stowage")
	build := exec.Command("go", "build", "-o", bin, "github.com/stowage-io/stowage/cmd/stowage")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v: %s", err, out)
	}
	target := filepath.Join(e.dir, "cmd-target")
	if err := os.MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(e.dir, "nfs-mount.log")
	cmd := exec.Command(bin, "nfs-mount", "--server", e.g.Address(), "--export", e.ex.Pseudo, "--target", target, "--log-file", logFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if ok, _ := mountinfo.Mounted(target); ok {
			_ = syscall.Unmount(target, syscall.MNT_DETACH)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("nfs-mount log:\n%s", b)
		}
	})
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		if s.Scan() {
			line <- s.Text()
		}
		close(line)
	}()
	select {
	case l := <-line:
		if l != "mounted "+target {
			t.Fatalf("first stdout line %q, want %q", l, "mounted "+target)
		}
	case err := <-exited:
		t.Fatalf("nfs-mount exited before mounting: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no readiness line after 30 s")
	}
	if err := os.WriteFile(filepath.Join(target, "via-cmd"), []byte("ok"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(e.ex.Path, "via-cmd")); err != nil || string(b) != "ok" {
		t.Errorf("backing file: %q %v", b, err)
	}
	// Busy: a process has its working directory in the mount; the unmount
	// is then lazy.
	busy, err := os.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("nfs-mount after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nfs-mount still runs 30 s after SIGTERM")
	}
	busy.Close()
	if ok, err := mountinfo.Mounted(target); ok || err != nil {
		t.Errorf("mount left behind at %s (%v)", target, err)
	}
	if b, _ := os.ReadFile(logFile); !strings.Contains(string(b), "unmount") {
		t.Errorf("log does not say it unmounted:\n%s", b)
	}
	_ = fmt.Sprint()
}

// Byte-range and flock locks are not sent to the server (no LOCK ops):
// the kernel keeps them, so they exclude each other within one mount and
// not across mounts. The test pins that down so that the docs stay true.
func TestMount_LocksAreLocalToOneMount(t *testing.T) {
	e := newEnv(t, false)
	a, b := e.mount("a", false), e.mount("b", false)
	if err := os.WriteFile(filepath.Join(a, "lk"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	open := func(dir string) *os.File {
		f, err := os.OpenFile(filepath.Join(dir, "lk"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	fa1, fa2, fb := open(a), open(a), open(b)
	if err := syscall.Flock(int(fa1.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("flock: %v", err)
	}
	if err := syscall.Flock(int(fa2.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Errorf("second flock on the same mount: %v, want EWOULDBLOCK", err)
	}
	if err := syscall.Flock(int(fb.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Errorf("flock on the other mount: %v, want success (locks are per mount)", err)
	}
	// POSIX locks: taken by this process; another mount's kernel inode
	// does not know them either.
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := syscall.FcntlFlock(fa1.Fd(), syscall.F_SETLK, &lk); err != nil {
		t.Errorf("fcntl lock: %v", err)
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 needed for the fcntl lock of another process")
	}
	lockf := func(dir string) error {
		return exec.Command("python3", "-c", "import fcntl,sys; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB)",
			filepath.Join(dir, "lk")).Run()
	}
	if err := lockf(a); err == nil {
		t.Error("another process got a POSIX lock on the same mount while this one holds it")
	}
	if err := lockf(b); err != nil {
		t.Errorf("another process on the other mount: %v, want success (locks are per mount)", err)
	}
}

// Without squash the server sees each caller's uid, gid and groups
// (AUTH_SYS from the FUSE request) and decides, like with a kernel client.
func TestMount_NoSquash_CallersIdentityDecides(t *testing.T) {
	e := newEnvSquash(t, false, false)
	mnt := e.mount("m", false)
	f := filepath.Join(mnt, "mine")
	if out, err := asUser(t, 5000, 5000, "umask 022; echo mine > "+f); err != nil {
		t.Fatalf("create as 5000: %v %s", err, out)
	}
	if st := stat(t, filepath.Join(e.ex.Path, "mine")); st.Uid != 5000 || st.Gid != 5000 {
		t.Errorf("backing owner %d:%d, want 5000:5000", st.Uid, st.Gid)
	}
	if out, err := asUser(t, 6000, 6000, "echo theirs >> "+f); err == nil || !strings.Contains(out, "denied") {
		t.Errorf("uid 6000 appended to 5000's 0644 file: %v %s", err, out)
	}
	// Group write through a supplementary group.
	// (chmod through the mount by the owner: ganesha caches attributes,
	// a change behind its back would not be seen at once)
	if out, err := asUser(t, 5000, 5000, "chmod 664 "+f); err != nil {
		t.Fatalf("chmod by the owner: %v %s", err, out)
	}
	cmd := exec.Command("sh", "-c", "echo group >> "+f)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 6000, Gid: 6000, Groups: []uint32{5000}}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("append through supplementary group 5000: %v %s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(e.ex.Path, "mine")); string(b) != "mine\ngroup\n" {
		t.Errorf("content %q", b)
	}
}

// Large writes are written behind; what the writer wrote is what the
// server has once close returns, and stat during the writes never shows
// the file shrinking.
func TestMount_WriteBehind_LargeWritesArriveInOrder(t *testing.T) {
	e := newEnv(t, false)
	a, b := e.mount("a", false), e.mount("b", false)
	data := make([]byte, 24<<20+12345)
	for i := range data {
		data[i] = byte(i*7 + i>>13)
	}
	f, err := os.Create(filepath.Join(a, "big"))
	if err != nil {
		t.Fatal(err)
	}
	var last int64
	for off := 0; off < len(data); off += 1 << 20 {
		if _, err := f.Write(data[off:min(len(data), off+1<<20)]); err != nil {
			t.Fatal(err)
		}
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() < last {
			t.Errorf("size went down from %d to %d during writes", last, fi.Size())
		}
		last = fi.Size()
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(b, "big")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("other mount reads %d bytes (want %d), equal=%v, %v", len(got), len(data), bytes.Equal(got, data), err)
	}
	if got, err := os.ReadFile(filepath.Join(e.ex.Path, "big")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("backing file: %d bytes, %v", len(got), err)
	}
}

// Unmounted by someone else (umount(8) by an admin, the kubelet): the
// command notices and exits 0.
func TestNFSMountCommand_ExternalUnmount_Exits0(t *testing.T) {
	e := newEnv(t, false)
	bin := filepath.Join(e.dir, "stowage")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/stowage-io/stowage/cmd/stowage").CombinedOutput(); err != nil {
		t.Fatalf("build: %v: %s", err, out)
	}
	target := filepath.Join(e.dir, "t")
	if err := os.MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "nfs-mount", "--server", e.g.Address(), "--export", e.ex.Pseudo, "--target", target)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	ready := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		if s.Scan() {
			ready <- s.Text()
		}
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if ok, _ := mountinfo.Mounted(target); ok {
			_ = syscall.Unmount(target, syscall.MNT_DETACH)
		}
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr.String())
		}
	})
	select {
	case l := <-ready:
		if l != "mounted "+target {
			t.Fatalf("readiness line %q", l)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no readiness line")
	}
	if err := syscall.Unmount(target, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after external unmount: %v, want 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("still running 20 s after the file system was unmounted")
	}
	if !strings.Contains(stderr.String(), "unmounted by someone else") {
		t.Errorf("log does not say why it exited:\n%s", stderr.String())
	}
}

// File systems reuse a removed file's inode number for the next new file
// at once; the kernel may still hold the old inode. Each round creates,
// stats and removes the same names, as the benchmark does: a new file must
// never be taken for the removed one (wrong EEXIST, ENOENT or ESTALE).
func TestMount_InodeNumbersReused_NewFilesAreNotTheRemovedOnes(t *testing.T) {
	needRoot(t)
	// xfs hands a removed file's inode number to the next new file at once.
	e := newEnvIn(t, loopfs.New(t, "xfs", 1<<30), false, true)
	m := e.mount("reuse", false)
	const clients, files = 4, 300
	for round := 0; round < 3; round++ {
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for c := 0; c < clients; c++ {
			wg.Add(1)
			go func(c int) {
				defer wg.Done()
				dir := filepath.Join(m, fmt.Sprintf("r%d-c%d", round, c))
				if err := os.Mkdir(dir, 0o755); err != nil {
					errs <- fmt.Errorf("round %d: mkdir: %w", round, err)
					return
				}
				name := func(i int) string { return filepath.Join(dir, fmt.Sprintf("f%d", i)) }
				for i := 0; i < files; i++ {
					f, err := os.OpenFile(name(i), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
					if err != nil {
						errs <- fmt.Errorf("round %d: create: %w", round, err)
						return
					}
					f.Write([]byte("x"))
					f.Close()
				}
				for i := 0; i < files; i++ {
					if _, err := os.Stat(name(i)); err != nil {
						errs <- fmt.Errorf("round %d: stat: %w", round, err)
						return
					}
				}
				for i := 0; i < files; i++ {
					if err := os.Remove(name(i)); err != nil {
						errs <- fmt.Errorf("round %d: remove: %w", round, err)
						return
					}
				}
			}(c)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if t.Failed() {
			return
		}
	}
}

// Signals interrupt FUSE requests (Go's runtime itself preempts goroutines
// with SIGURG); the kernel then sends FUSE_INTERRUPT. A mount that gave up
// on the NFS request would return EINTR after the server had done it, and
// the caller's retry (Go retries EINTR) would fail on its own effect:
// EEXIST from an O_EXCL create, ENOENT from an unlink.
func TestMount_InterruptedRequests_RunToTheEnd(t *testing.T) {
	e := newEnv(t, false)
	m := e.mount("intr", false)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				syscall.Kill(os.Getpid(), syscall.SIGURG)
				time.Sleep(20 * time.Microsecond)
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	const files = 1500
	for i := 0; i < files; i++ {
		p := filepath.Join(m, fmt.Sprintf("f%d", i))
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatalf("create f%d under signals: %v", i, err)
		}
		f.Close()
	}
	for i := 0; i < files; i++ {
		if err := os.Remove(filepath.Join(m, fmt.Sprintf("f%d", i))); err != nil {
			t.Fatalf("remove f%d under signals: %v", i, err)
		}
	}
}
