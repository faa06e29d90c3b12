package loopdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches real loop devices")
	}
}

// newImage creates a sparse backing file and registers a Detach for it, so
// the device is released even if the test fails between Attach and its own
// cleanup. t.TempDir is created first so its removal runs after the Detach.
func newImage(t testing.TB, name string, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Detach(context.Background(), path); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return path
}

func mustAttach(t testing.TB, path string) string {
	t.Helper()
	dev, err := Attach(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return dev
}

func TestAttach_SameFileTwice_ReturnsSameDevice(t *testing.T) {
	requireRoot(t)
	img := newImage(t, "vol.img", 64<<20)
	first := mustAttach(t, img)
	second := mustAttach(t, img)
	if first != second {
		t.Fatalf("second Attach returned %s, want %s", second, first)
	}
	if n := countBound(t, img); n != 1 {
		t.Fatalf("%s is on %d loop devices, want 1", img, n)
	}
}

func TestAttach_ThroughSymlink_ReturnsSameDevice(t *testing.T) {
	requireRoot(t)
	img := newImage(t, "vol.img", 64<<20)
	link := filepath.Join(t.TempDir(), "link.img")
	if err := os.Symlink(img, link); err != nil {
		t.Fatal(err)
	}
	if a, b := mustAttach(t, img), mustAttach(t, link); a != b {
		t.Fatalf("Attach via symlink returned %s, want %s", b, a)
	}
}

func TestAttach_ManyFilesConcurrently_DistinctDevices(t *testing.T) {
	requireRoot(t)
	// More than the 8 devices the kernel preallocates, so some are created
	// on demand and, without udev, need Attach to make their /dev nodes.
	const n = 12
	imgs := make([]string, n)
	for i := range imgs {
		imgs[i] = newImage(t, fmt.Sprintf("vol-%d.img", i), 32<<20)
	}
	devs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range imgs {
		wg.Go(func() { devs[i], errs[i] = Attach(context.Background(), imgs[i]) })
	}
	wg.Wait()
	seen := map[string]string{}
	for i, dev := range devs {
		if errs[i] != nil {
			t.Fatalf("Attach %s: %v", imgs[i], errs[i])
		}
		if other, dup := seen[dev]; dup {
			t.Fatalf("%s and %s both got %s", other, imgs[i], dev)
		}
		seen[dev] = imgs[i]
		if got, found, err := Find(imgs[i]); err != nil || !found || got != dev {
			t.Fatalf("Find(%s) = %s, %v, %v; want %s", imgs[i], got, found, err, dev)
		}
	}
}

func TestAttach_SameFileConcurrently_OneDevice(t *testing.T) {
	requireRoot(t)
	img := newImage(t, "vol.img", 32<<20)
	const n = 8
	devs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { devs[i], errs[i] = Attach(context.Background(), img) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if devs[i] != devs[0] {
			t.Fatalf("concurrent Attach returned %s and %s", devs[0], devs[i])
		}
	}
	if c := countBound(t, img); c != 1 {
		t.Fatalf("%s is on %d loop devices, want 1", img, c)
	}
}

func TestAttach_DirectIO(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name    string
		dir     func(t *testing.T) string
		wantDIO string
	}{
		{"LocalFileSystem_On", func(t *testing.T) string { return t.TempDir() }, "1"},
		// ramfs has no O_DIRECT: the device must still attach, buffered.
		{"RamfsRefuses_Buffered", func(t *testing.T) string {
			dir := t.TempDir()
			if err := unix.Mount("ramfs", dir, "ramfs", 0, ""); err != nil {
				t.Skipf("cannot mount ramfs: %v", err)
			}
			t.Cleanup(func() {
				if err := unix.Unmount(dir, 0); err != nil {
					t.Errorf("cleanup: unmount %s: %v", dir, err)
				}
			})
			return dir
		}, "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := filepath.Join(tt.dir(t), "vol.img")
			if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			// After the mount's cleanup is registered, so it runs first.
			t.Cleanup(func() {
				if err := Detach(context.Background(), img); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			})
			dev := mustAttach(t, img)
			b, err := os.ReadFile(filepath.Join(sysBlock, filepath.Base(dev), "loop", "dio"))
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(b)); got != tt.wantDIO {
				t.Fatalf("%s backed by %s: dio = %s, want %s", dev, img, got, tt.wantDIO)
			}
		})
	}
}

func TestAttach_MissingFile_ErrorNamesFile(t *testing.T) {
	requireRoot(t)
	missing := filepath.Join(t.TempDir(), "missing.img")
	_, err := Attach(context.Background(), missing)
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Attach(%s) error = %v, want one naming the file", missing, err)
	}
}

func TestAttach_CanceledWhileAnotherHoldsTheFile_ReturnsContextError(t *testing.T) {
	requireRoot(t)
	img := newImage(t, "vol.img", 32<<20)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Attach(ctx, img); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Attach while locked = %v, want deadline exceeded", err)
	}
}

func TestFind(t *testing.T) {
	requireRoot(t)
	attached := newImage(t, "attached.img", 32<<20)
	dev := mustAttach(t, attached)
	unattached := newImage(t, "unattached.img", 32<<20)
	tests := []struct {
		name      string
		file      string
		wantFound bool
	}{
		{"AttachedFile_Found", attached, true},
		{"UnattachedFile_NotFound", unattached, false},
		{"MissingFile_NotFound", filepath.Join(t.TempDir(), "missing.img"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, found, err := Find(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			if found != tt.wantFound {
				t.Fatalf("Find(%s) found = %v, want %v", tt.file, found, tt.wantFound)
			}
			if found && got != dev {
				t.Fatalf("Find(%s) = %s, want %s", tt.file, got, dev)
			}
		})
	}
}

func TestFind_BackingFileReplaced_NotFound(t *testing.T) {
	requireRoot(t)
	img := newImage(t, "vol.img", 32<<20)
	mustAttach(t, img)
	// A new file at the same path is a different volume; the old device
	// still serves the deleted one.
	if err := os.Remove(img); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if dev, found, err := Find(img); err != nil || found {
		t.Fatalf("Find after replace = %s, %v, %v; want not found", dev, found, err)
	}
}

func TestDetach(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name  string
		setup func(t *testing.T, img string)
	}{
		{"Attached_Detaches", func(t *testing.T, img string) { mustAttach(t, img) }},
		{"Unattached_Succeeds", func(t *testing.T, img string) {}},
		{"MissingFile_Succeeds", func(t *testing.T, img string) {
			if err := os.Remove(img); err != nil {
				t.Fatal(err)
			}
		}},
		{"DeletedAfterAttach_Detaches", func(t *testing.T, img string) {
			mustAttach(t, img)
			if err := os.Remove(img); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := newImage(t, "vol.img", 32<<20)
			tt.setup(t, img)
			for i := range 2 { // the second call checks idempotency
				if err := Detach(context.Background(), img); err != nil {
					t.Fatalf("Detach #%d: %v", i+1, err)
				}
			}
			if n := countBound(t, img); n != 0 {
				t.Fatalf("%s still on %d loop devices", img, n)
			}
		})
	}
}

func TestDetach_Mounted_ErrBusyAndStaysAttached(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4 to make a mountable device")
	}
	img := newImage(t, "vol.img", 64<<20)
	dev := mustAttach(t, img)
	if out, err := exec.Command("mkfs.ext4", "-q", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v: %s", dev, err, out)
	}
	mnt := t.TempDir()
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	// Registered after newImage's Detach, so it runs before it.
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("cleanup: unmount %s: %v", mnt, err)
		}
	})
	err := Detach(context.Background(), img)
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("Detach of mounted %s = %v, want ErrBusy", dev, err)
	}
	if got, found, _ := Find(img); !found || got != dev {
		t.Fatalf("after refused Detach, Find = %s, %v; want %s", got, found, dev)
	}
}

func TestRefresh_AfterGrow_ReportsNewSize(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name     string
		from, to int64
	}{
		{"Grown", 64 << 20, 192 << 20},
		{"Unchanged", 64 << 20, 64 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := newImage(t, "vol.img", tt.from)
			dev := mustAttach(t, img)
			if err := os.Truncate(img, tt.to); err != nil {
				t.Fatal(err)
			}
			got, err := Refresh(dev)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.to {
				t.Fatalf("Refresh(%s) = %d, want %d", dev, got, tt.to)
			}
		})
	}
}

func TestRefresh_NotALoopDevice_Error(t *testing.T) {
	requireRoot(t)
	f := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Refresh(f); err == nil || !strings.Contains(err.Error(), f) {
		t.Fatalf("Refresh(%s) = %v, want an error naming it", f, err)
	}
}

func countBound(t testing.TB, img string) int {
	t.Helper()
	path, err := resolve(img)
	if err != nil {
		t.Fatal(err)
	}
	loops, err := List()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range loops {
		if l.BackingFile == path {
			n++
		}
	}
	return n
}

// fakeSysBlock points the package at a sysfs tree of its own: name ->
// backing_file contents ("" for a device without a binding).
func fakeSysBlock(t *testing.T, devices map[string]string) {
	t.Helper()
	root := t.TempDir()
	for name, backing := range devices {
		dir := filepath.Join(root, name)
		if backing != "" {
			dir = filepath.Join(dir, "loop")
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if backing != "" {
			if err := os.WriteFile(filepath.Join(dir, "backing_file"), []byte(backing), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	old := sysBlock
	sysBlock = root
	t.Cleanup(func() { sysBlock = old })
}

// The kernel appends " (deleted)" to the backing file of a device whose
// file was deleted; List strips it and says so, so that callers matching
// by path (cleanups of a pool directory) find such devices too.
func TestList_DeletedBackingFile_PathWithoutSuffix(t *testing.T) {
	fakeSysBlock(t, map[string]string{
		"loop0": "/pool/volumes/a.img\n",
		"loop3": "/pool/volumes/b.img (deleted)\n",
		"loop1": "", // unbound
		"ram0":  "", // not a loop device
	})
	got, err := List()
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{
		{Path: "/dev/loop0", Number: 0, BackingFile: "/pool/volumes/a.img"},
		{Path: "/dev/loop3", Number: 3, BackingFile: "/pool/volumes/b.img", Deleted: true},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("List() = %+v, want %+v", got, want)
	}
	for _, tt := range []struct {
		dir  string
		want int
	}{{"/pool", 2}, {"/pool/volumes/", 2}, {"/pool/volumes/b.img", 1}, {"/poo", 0}} {
		if got, err := Under(tt.dir); err != nil || len(got) != tt.want {
			t.Errorf("Under(%s) = %+v, %v; want %d devices", tt.dir, got, err, tt.want)
		}
	}
}

// An image handed over as an open file, without its path: attached by the
// file, found and detached by its device and inode, idempotently.
func TestAttachFile_FindAndDetachByBacking(t *testing.T) {
	requireRoot(t)
	img := newImage(t, "vol.img", 64<<20)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := BackingOf(f)
	if err != nil || b.IsZero() {
		t.Fatalf("BackingOf = %v, %v", b, err)
	}
	dev, err := AttachFile(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	f.Close() // the device keeps its own reference
	if again, err := AttachFile(context.Background(), mustOpen(t, img, os.O_RDWR)); err != nil || again != dev {
		t.Fatalf("second AttachFile = %s, %v; want %s", again, err, dev)
	}
	if got, found, err := FindFile(b); err != nil || !found || got != dev {
		t.Fatalf("FindFile = %s, %t, %v; want %s", got, found, err, dev)
	}
	// The path-based view agrees: one device for the file.
	if got, found, _ := Find(img); !found || got != dev || countBound(t, img) != 1 {
		t.Fatalf("Find(path) = %s, %t; %d devices", got, found, countBound(t, img))
	}
	// Written through the device, read back from the image.
	if err := os.WriteFile(dev, bytesOf('x', 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := DetachFile(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := FindFile(b); found || countBound(t, img) != 0 {
		t.Fatal("still attached after DetachFile")
	}
	if err := DetachFile(context.Background(), b); err != nil {
		t.Fatalf("second DetachFile: %v", err)
	}
	got, _ := os.ReadFile(img)
	if string(got[:4096]) != string(bytesOf('x', 4096)) {
		t.Fatal("the write through the device is not in the image")
	}
}

// A file opened read-only gives a read-only device.
func TestAttachFile_ReadOnlyFile_ReadOnlyDevice(t *testing.T) {
	requireRoot(t)
	img := newImage(t, "ro.img", 64<<20)
	f := mustOpen(t, img, os.O_RDONLY)
	dev, err := AttachFile(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := BackingOf(f)
	t.Cleanup(func() { DetachFile(context.Background(), b) })
	n, _ := loopNumber(filepath.Base(dev))
	ro, err := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/ro", n))
	if err != nil || strings.TrimSpace(string(ro)) != "1" {
		t.Fatalf("%s ro = %q, %v; want 1", dev, ro, err)
	}
	if w, err := os.OpenFile(dev, os.O_WRONLY, 0); err == nil {
		_, err = w.Write(bytesOf('x', 4096))
		w.Close()
		if err == nil {
			t.Fatal("wrote to a read-only loop device")
		}
	}
}

// A backing file replaced at its path is another file: the device of the
// old one is not found for the new one, and is still detached by the old
// one's identity.
func TestFindFile_OtherInodeAtThePath_NotFound(t *testing.T) {
	requireRoot(t)
	img := newImage(t, "vol.img", 64<<20)
	f := mustOpen(t, img, os.O_RDWR)
	old, _ := BackingOf(f)
	if _, err := AttachFile(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(img); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	nf := mustOpen(t, img, os.O_RDWR)
	now, _ := BackingOf(nf)
	if _, found, _ := FindFile(now); found {
		t.Fatal("the new file at the path was found attached")
	}
	if _, found, _ := FindFile(old); found {
		t.Fatal("a device of a deleted file was found (it holds old data)")
	}
	if err := DetachFile(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	if devs, _ := devicesOf(old, true); len(devs) != 0 {
		t.Fatalf("devices of the deleted file left: %v", devs)
	}
}

func mustOpen(t testing.TB, path string, flag int) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func bytesOf(c byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = c
	}
	return b
}

// A device whose backing file's mount went away (lazily unmounted, as a
// FUSE mount whose server died) no longer shows a path under its old
// directory, but its identity (BackingOfDevice, taken while it did) still
// finds and detaches it: what `stowage down` relies on.
func TestBackingOfDevice_FindsItAfterItsMountWentAway(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	path := filepath.Join(dir, "disk")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := mustAttach(t, path)
	under, err := Under(dir)
	if err != nil || len(under) != 1 {
		t.Fatalf("Under(%s) = %v, %v; want %s", dir, under, err, dev)
	}
	b, err := BackingOfDevice(under[0].Number)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { DetachFile(context.Background(), b) })
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	mounted = false
	if under, _ := Under(dir); len(under) != 0 {
		t.Fatalf("after the lazy unmount, Under still finds %v", under)
	}
	got, found, err := FindFile(b)
	if err != nil || !found || got != dev {
		t.Fatalf("FindFile(%s) = %q, %v, %v; want %s", b, got, found, err, dev)
	}
	if err := DetachFile(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := FindFile(b); found {
		t.Fatalf("%s is still attached after DetachFile", dev)
	}
}
