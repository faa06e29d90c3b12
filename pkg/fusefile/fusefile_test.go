package fusefile

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/internal/testutil/fuseuring"
)

// memBackend is a file in memory that counts its syncs.
type memBackend struct {
	mu    sync.Mutex
	b     []byte
	syncs int
	fail  bool
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return 0, errors.New("backend broken")
	}
	return copy(p, m.b[off:]), nil
}

func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return 0, errors.New("backend broken")
	}
	return copy(m.b[off:], p), nil
}

func (m *memBackend) Sync() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.syncs++
	return nil
}

func (m *memBackend) Size() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.b))
}

// The handler alone, without a mount: what the kernel is told.
func TestHandle_LookupAttrReadWriteBounds(t *testing.T) {
	b := &memBackend{b: make([]byte, 8192)}
	s := &Server{o: Options{Name: "disk", MaxWrite: 1 << 20}, b: b}
	out := make([]byte, 1<<16)

	n, errno := s.handle(inHeader{Opcode: opLookup, NodeID: rootID}, nil, []byte("disk\x00"), out)
	if errno != 0 || n != entryOutSize || le.Uint64(out) != fileID {
		t.Fatalf("lookup of disk: n=%d errno=%v nodeid=%d", n, errno, le.Uint64(out))
	}
	if size := le.Uint64(out[40+8:]); size != 8192 {
		t.Fatalf("lookup's attributes give size %d, want 8192", size)
	}
	if _, errno := s.handle(inHeader{Opcode: opLookup, NodeID: rootID}, nil, []byte("other\x00"), out); errno != syscall.ENOENT {
		t.Fatalf("lookup of another name: errno %v, want ENOENT", errno)
	}

	w := make([]byte, writeInSize)
	le.PutUint64(w[8:], 4096)
	le.PutUint32(w[16:], 5)
	if n, errno := s.handle(inHeader{Opcode: opWrite, NodeID: fileID}, w, []byte("hello"), out); errno != 0 || n != writeOutSize || le.Uint32(out) != 5 {
		t.Fatalf("write: n=%d errno=%v size=%d", n, errno, le.Uint32(out))
	}
	le.PutUint64(w[8:], 8190)
	if _, errno := s.handle(inHeader{Opcode: opWrite, NodeID: fileID}, w, []byte("hello"), out); errno != syscall.ENOSPC {
		t.Fatalf("write past the end: errno %v, want ENOSPC", errno)
	}

	rd := make([]byte, readInSize)
	le.PutUint64(rd[8:], 4096)
	le.PutUint32(rd[16:], 4096)
	if n, errno := s.handle(inHeader{Opcode: opRead, NodeID: fileID}, rd, nil, out); errno != 0 || n != 4096 || string(out[:5]) != "hello" {
		t.Fatalf("read: n=%d errno=%v data=%q", n, errno, out[:5])
	}
	le.PutUint64(rd[8:], 8000)
	if n, errno := s.handle(inHeader{Opcode: opRead, NodeID: fileID}, rd, nil, out); errno != 0 || n != 192 {
		t.Fatalf("read across the end: n=%d errno=%v, want 192 bytes", n, errno)
	}
	le.PutUint64(rd[8:], 9000)
	if n, errno := s.handle(inHeader{Opcode: opRead, NodeID: fileID}, rd, nil, out); errno != 0 || n != 0 {
		t.Fatalf("read past the end: n=%d errno=%v, want 0 bytes", n, errno)
	}

	sa := make([]byte, setattrInSize)
	le.PutUint32(sa, fattrSize)
	le.PutUint64(sa[16:], 0)
	if _, errno := s.handle(inHeader{Opcode: opSetattr, NodeID: fileID}, sa, nil, out); errno != syscall.EPERM {
		t.Fatalf("truncate: errno %v, want EPERM", errno)
	}
	le.PutUint64(sa[16:], 8192)
	if _, errno := s.handle(inHeader{Opcode: opSetattr, NodeID: fileID}, sa, nil, out); errno != 0 {
		t.Fatalf("setattr to the same size: errno %v", errno)
	}

	b.fail = true
	if _, errno := s.handle(inHeader{Opcode: opRead, NodeID: fileID}, rd[:readInSize], nil, out); errno != 0 {
		// offset 9000 is past the end: no backend call
		t.Fatalf("read past the end with a broken backend: errno %v", errno)
	}
	le.PutUint64(rd[8:], 0)
	if _, errno := s.handle(inHeader{Opcode: opRead, NodeID: fileID}, rd, nil, out); errno != syscall.EIO {
		t.Fatalf("read of a broken backend: errno %v, want EIO", errno)
	}
	if _, errno := s.handle(inHeader{Opcode: 22 /* GETXATTR */, NodeID: fileID}, nil, nil, out); errno != syscall.ENOSYS {
		t.Fatalf("getxattr: errno %v, want ENOSYS", errno)
	}
}

func TestPossibleCPUs_CountsTheRanges(t *testing.T) {
	n, err := possibleCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if n < 1 {
		t.Fatalf("%d possible CPUs", n)
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts a FUSE file system")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse: " + err.Error())
	}
}

func mountMem(t *testing.T, size int, uring bool) (*Server, *memBackend) {
	t.Helper()
	b := &memBackend{b: make([]byte, size)}
	rand.Read(b.b)
	dir := t.TempDir()
	s, err := Mount(Options{Mountpoint: dir, FsName: "fusefile-test", Subtype: "fusefile-test", URing: uring}, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		s.Wait()
	})
	return s, b
}

// exercise reads and writes the file through the kernel, with direct I/O
// and without, and checks what the backend holds.
func exercise(t *testing.T, s *Server, b *memBackend) {
	t.Helper()
	path := s.Path()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != b.Size() || !st.Mode().IsRegular() {
		t.Fatalf("%s: size %d mode %v, want %d, a regular file", path, st.Size(), st.Mode(), b.Size())
	}
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil || len(ents) != 1 || ents[0].Name() != "disk" {
		t.Fatalf("the mount lists %v (%v), want just disk", ents, err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	want := append([]byte(nil), b.b...)
	b.mu.Unlock()
	if !bytes.Equal(got, want) {
		t.Fatal("the file read through the mount differs from the backend")
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Concurrent writes of different sizes, then read back.
	var wg sync.WaitGroup
	for i, n := range []int{4096, 64 << 10, 1 << 20, 8192} {
		off := int64(i) * (2 << 20)
		data := make([]byte, n)
		rand.Read(data)
		copy(want[off:], data)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := f.WriteAt(data, off); err != nil {
				t.Errorf("write %d bytes at %d: %v", n, off, err)
			}
		}()
	}
	wg.Wait()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	same, syncs := bytes.Equal(b.b, want), b.syncs
	b.mu.Unlock()
	if !same {
		t.Fatal("the backend does not hold what was written")
	}
	if syncs == 0 {
		t.Fatal("fsync of the file did not reach the backend")
	}
	if err := f.Truncate(0); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("truncate: %v, want EPERM", err)
	}
}

// The process that serves the file opens it too (loopdev.Attach does):
// an os.Open registers it with the runtime's epoll, whose FUSE_POLL must
// not wait on a stopped world. Many opens, each with a collection.
func TestMount_OpenedByItsOwnProcessDuringGC_NoDeadlock(t *testing.T) {
	needRoot(t)
	for _, uring := range []bool{false, true} {
		if uring {
			fuseuring.Set(t, true)
		}
		s, _ := mountMem(t, 8192, uring)
		// The one poll came at mount; an open by the process sends none.
		if n := s.polls.Load(); n != 1 {
			t.Fatalf("uring=%v: %d FUSE_POLL requests at mount, want 1", uring, n)
		}
		f, err := os.Open(s.Path())
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if n := s.polls.Load(); n != 1 {
			t.Fatalf("uring=%v: an os.Open of the file sent a FUSE_POLL (%d in all): its epoll registration can deadlock with a collection", uring, n)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 200 {
				f, err := os.Open(s.Path())
				if err != nil {
					t.Error(err)
					return
				}
				f.Close()
			}
		}()
		go func() {
			for {
				select {
				case <-done:
					return
				default:
					runtime.GC()
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			s.abortConn()
			t.Fatalf("uring=%v: 200 opens of the file by its own process did not end in 20 s", uring)
		}
	}
}

func TestMount_OverDevFuse_ReadsWritesAndSyncsReachTheBackend(t *testing.T) {
	needRoot(t)
	s, b := mountMem(t, 16<<20, false)
	exercise(t, s, b)
	st := s.Stats()
	if st.URing || st.RingRequests != 0 || st.DevRequests == 0 {
		t.Fatalf("stats %+v: want every request over /dev/fuse", st)
	}
}

func TestMount_OverIOURing_RequestsGoThroughTheRing(t *testing.T) {
	needRoot(t)
	fuseuring.Set(t, true)
	s, b := mountMem(t, 16<<20, true)
	if st := s.Stats(); !st.URing {
		t.Fatalf("the ring did not start: %s", st.URingError)
	}
	exercise(t, s, b)
	st := s.Stats()
	if st.RingRequests < 10 {
		t.Fatalf("stats %+v: the requests did not go through the ring", st)
	}
}

func TestMount_URingAskedButOffInTheKernel_ServesOverDevFuseAndSaysWhy(t *testing.T) {
	needRoot(t)
	fuseuring.Set(t, false)
	s, b := mountMem(t, 4<<20+8192, true)
	st := s.Stats()
	if st.URing || !strings.Contains(st.URingError, "enable_uring") {
		t.Fatalf("stats %+v: want no ring, and why", st)
	}
	got, err := os.ReadFile(s.Path())
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil || !bytes.Equal(got, b.b) {
		t.Fatalf("read over /dev/fuse: %v", err)
	}
}

func TestInvalidate_TheNewSizeIsSeen(t *testing.T) {
	needRoot(t)
	for _, uring := range []bool{false, true} {
		if uring {
			fuseuring.Set(t, true)
		}
		s, b := mountMem(t, 8192, uring)
		if st, _ := os.Stat(s.Path()); st.Size() != 8192 {
			t.Fatalf("size %d", st.Size())
		}
		b.mu.Lock()
		b.b = append(b.b, make([]byte, 4096)...)
		b.mu.Unlock()
		if err := s.Invalidate(); err != nil {
			t.Fatal(err)
		}
		if st, _ := os.Stat(s.Path()); st.Size() != 12288 {
			t.Fatalf("uring=%v: size %d after Invalidate, want 12288", uring, st.Size())
		}
	}
}

// A ring that cannot be set up (io_uring_setup refused, as by a seccomp
// profile) leaves the mount on /dev/fuse: INIT did not ask for io_uring,
// so the kernel does not wait for a ring.
func TestMount_RingSetupFails_ServesOverDevFuseAndSaysWhy(t *testing.T) {
	needRoot(t)
	fuseuring.Set(t, true)
	faults.prepare = syscall.EPERM
	t.Cleanup(func() { faults.prepare = nil })
	s, b := mountMem(t, 1<<20, true)
	st := s.Stats()
	if st.URing || !strings.Contains(st.URingError, "could not be set up") {
		t.Fatalf("stats %+v: want no ring, and why", st)
	}
	got, err := os.ReadFile(s.Path())
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil || !bytes.Equal(got, b.b) {
		t.Fatalf("read over /dev/fuse: %v", err)
	}
}

// A ring failing on its own after INIT asked for io_uring would leave
// every request waiting: the mount fails instead, saying what to do, and
// nothing stays mounted.
func TestMount_RingFailsAfterINIT_MountFailsWithTheWayOut(t *testing.T) {
	needRoot(t)
	fuseuring.Set(t, true)
	faults.register = syscall.ENOMEM
	t.Cleanup(func() { faults.register = nil })
	dir := t.TempDir()
	s, err := Mount(Options{Mountpoint: dir, Subtype: "fusefile-test", URing: true}, &memBackend{b: make([]byte, 8192)})
	if err == nil {
		s.Unmount()
		t.Fatal("the mount succeeded with a ring that failed after INIT")
	}
	if !strings.Contains(err.Error(), "enable_uring") || !strings.Contains(err.Error(), "--no-fuse-uring") {
		t.Fatalf("error %q does not say the way out", err)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), dir) {
		t.Fatalf("%s is still mounted", dir)
	}
}
