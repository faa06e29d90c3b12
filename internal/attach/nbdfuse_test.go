package attach

import (
	"bytes"
	"context"
	"crypto/rand"
	"flag"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moby/sys/mountinfo"

	"github.com/stowage-io/stowage/internal/blockexport"
	"github.com/stowage-io/stowage/internal/testutil/fuseuring"
	"github.com/stowage-io/stowage/internal/testutil/logbuf"
	"github.com/stowage-io/stowage/pkg/loopdev"
)

// TestMain doubles as `stowage nbd-attach` when the FUSELoop attacher of
// the tests starts this binary.
func TestMain(m *testing.M) {
	if os.Getenv("STOWAGE_TEST_NBD_ATTACH") == "1" {
		os.Exit(nbdAttachMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func nbdAttachMain(args []string) int {
	fs := flag.NewFlagSet("nbd-attach", flag.ContinueOnError)
	var o NBDFileOptions
	fs.StringVar(&o.Address, "server", "", "")
	fs.StringVar(&o.AttachmentID, "export", "", "")
	fs.Uint64Var(&o.Generation, "generation", 0, "")
	fs.StringVar(&o.Mountpoint, "mountpoint", "", "")
	fs.StringVar(&o.StateDir, "state-dir", "", "")
	fs.Bool("secret-stdin", false, "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var line [256]byte
	n, _ := os.Stdin.Read(line[:])
	o.Secret = strings.TrimSpace(string(line[:n]))
	ctx, cancel := signalCtx()
	defer cancel()
	if err := RunNBDAttach(ctx, o, os.Stdout); err != nil {
		slog.Error("nbd-attach", "err", err)
		return 1
	}
	return 0
}

func needRealDevices(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (FUSE, loop devices)")
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s", p)
		}
	}
}

type storageHost struct {
	t     *testing.T
	addr  string
	image string
	ex    *blockexport.Exporter
	logs  *logbuf.Buffer
}

// start runs an exporter on addr (a fresh port when empty) with the
// attachments given.
func (h *storageHost) start(as ...blockexport.Attachment) {
	h.t.Helper()
	addr := h.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var l net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		h.t.Fatal(err)
	}
	h.addr = l.Addr().String()
	h.ex = blockexport.New(slog.New(slog.NewTextHandler(h.logs, nil)))
	for _, a := range as {
		if err := h.ex.Export(context.Background(), a); err != nil {
			h.t.Fatal(err)
		}
	}
	go h.ex.Serve(l)
}

// alignedBuf is page-aligned memory for O_DIRECT.
func alignedBuf(t *testing.T, n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// TestFUSELoop_RealDevices drives the whole network path on this
// machine's real FUSE and loop devices, in order: write and fsync through
// the loop device and find the data in the image; kill the storage host
// mid-I/O and restart it (the I/O waits, nothing fsynced is lost); a
// wrong secret is refused; a newer generation fences the device.
//
// It runs twice: with the FUSE file's requests over /dev/fuse, and over
// io_uring (the fuse module's enable_uring set for the test).
func TestFUSELoop_RealDevices(t *testing.T) {
	needRealDevices(t)
	t.Run("over /dev/fuse", func(t *testing.T) {
		if _, err := os.Stat(fuseuring.Param); err == nil {
			fuseuring.Set(t, false)
		}
		testFUSELoopRealDevices(t, "FUSE requests over /dev/fuse")
	})
	t.Run("over io_uring", func(t *testing.T) {
		fuseuring.Set(t, true)
		testFUSELoopRealDevices(t, "FUSE requests over io_uring")
	})
}

func testFUSELoopRealDevices(t *testing.T, transportLog string) {
	ctx := context.Background()
	dir := t.TempDir()
	image := filepath.Join(dir, "vol-1.img")
	if err := os.WriteFile(image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(image, 64<<20)
	secret := blockexport.NewSecret()
	att1 := blockexport.Attachment{ID: "att-1", VolumeID: "vol-1", ImagePath: image, Generation: 1, Secret: secret}
	host := &storageHost{t: t, image: image, logs: &logbuf.Buffer{}}
	host.start(att1)
	t.Cleanup(func() { host.ex.Close() })

	t.Setenv("STOWAGE_TEST_NBD_ATTACH", "1")
	at := FUSELoop{Command: []string{os.Args[0]}, StateDir: filepath.Join(dir, "state")}
	target := Target{AttachmentID: "att-1", Address: host.addr, Generation: 1, Secret: secret}
	dev, err := at.Attach(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := at.Detach(context.Background(), target); err != nil {
			t.Errorf("detach: %v", err)
		}
		if left, _ := loopdev.Under(dir); len(left) > 0 {
			t.Errorf("loop devices left behind: %v", left)
		}
		if mounted, _ := mountinfo.Mounted(filepath.Join(dir, "state", "att-1", "mnt")); mounted {
			t.Errorf("FUSE mount left behind")
		}
	})
	if again, err := at.Attach(ctx, target); err != nil || again != dev {
		t.Fatalf("second attach: %q, %v; want %q", again, err, dev)
	}
	attachLog, err := os.ReadFile(filepath.Join(dir, "state", "att-1", "log"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(attachLog, []byte(secret)) {
		t.Fatal("the attach process logged the secret")
	}
	if _, err := os.Stat(fuseuring.Param); err == nil && !bytes.Contains(attachLog, []byte(transportLog)) {
		t.Fatalf("the attach process did not log %q:\n%s", transportLog, attachLog)
	}
	if dio, err := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/loop/dio"); err == nil {
		t.Logf("%s direct I/O: %s", dev, strings.TrimSpace(string(dio)))
	}
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := alignedBuf(t, 1<<20)

	writeAndCheck := func(t *testing.T, off int64) {
		t.Helper()
		rand.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		img, _ := os.ReadFile(image)
		if !bytes.Equal(img[off:off+int64(len(buf))], buf) {
			t.Fatal("what was fsynced through the loop device is not in the image")
		}
	}

	t.Run("write fsync read back via image", func(t *testing.T) { writeAndCheck(t, 1<<20) })

	t.Run("server restart: I/O waits, nothing fsynced lost", func(t *testing.T) {
		writeAndCheck(t, 2<<20)
		host.ex.Close()
		rand.Read(buf)
		want := bytes.Clone(buf)
		done := make(chan error, 1)
		go func() {
			_, err := f.WriteAt(buf, 3<<20)
			if err == nil {
				err = f.Sync()
			}
			done <- err
		}()
		select {
		case err := <-done:
			t.Fatalf("I/O finished with the storage host down: %v", err)
		case <-time.After(500 * time.Millisecond):
		}
		host.start(att1)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("I/O after the restart: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("I/O did not resume after the storage host came back")
		}
		img, _ := os.ReadFile(image)
		if !bytes.Equal(img[3<<20:4<<20], want) {
			t.Fatal("the write made while the host was down is not in the image")
		}
		img2 := img[2<<20 : 3<<20]
		if bytes.Equal(img2, make([]byte, len(img2))) {
			t.Fatal("data fsynced before the restart is gone")
		}
	})

	t.Run("image grows: Refresh grows the device, write at its new end", func(t *testing.T) {
		if err := os.Truncate(image, 128<<20); err != nil {
			t.Fatal(err)
		}
		if err := host.ex.Resize(ctx, "vol-1"); err != nil {
			t.Fatal(err)
		}
		size, err := at.Refresh(ctx, target)
		if err != nil || size != 128<<20 {
			t.Fatalf("Refresh: %d, %v; want %d", size, err, 128<<20)
		}
		out, err := exec.Command("blockdev", "--getsize64", dev).Output()
		if err != nil || strings.TrimSpace(string(out)) != strconv.Itoa(128<<20) {
			t.Fatalf("blockdev --getsize64 %s: %s %v; want %d", dev, out, err, 128<<20)
		}
		writeAndCheck(t, 127<<20)
		if _, err := at.Refresh(ctx, Target{AttachmentID: "att-none"}); err == nil {
			t.Fatal("Refresh of an attachment not attached succeeded")
		}
	})

	t.Run("wrong secret refused", func(t *testing.T) {
		bad := Target{AttachmentID: "att-1", Address: host.addr, Generation: 1, Secret: "wrong-" + secret[:8]}
		at2 := FUSELoop{Command: []string{os.Args[0]}, StateDir: filepath.Join(dir, "state2")}
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if dev, err := at2.Attach(cctx, bad); err == nil || !strings.Contains(err.Error(), "refused") {
			at2.Detach(ctx, bad)
			t.Fatalf("attach with a wrong secret: %q, %v", dev, err)
		}
		at2.Detach(ctx, bad)
		if !strings.Contains(host.logs.String(), "nbd client refused") || strings.Contains(host.logs.String(), bad.Secret) {
			t.Fatalf("refusal not logged, or logged with the secret:\n%s", host.logs)
		}
	})

	t.Run("newer generation fences the device", func(t *testing.T) {
		before, _ := os.ReadFile(image)
		att2 := blockexport.Attachment{ID: "att-2", VolumeID: "vol-1", ImagePath: image, Generation: 2, Secret: blockexport.NewSecret()}
		if err := host.ex.Export(ctx, att2); err != nil {
			t.Fatal(err)
		}
		rand.Read(buf)
		_, werr := f.WriteAt(buf, 4<<20)
		serr := f.Sync()
		if werr == nil && serr == nil {
			t.Fatal("write and fsync of the fenced generation succeeded")
		}
		after, _ := os.ReadFile(image)
		if !bytes.Equal(before, after) {
			t.Fatal("the fenced device changed the image")
		}
		t.Logf("fenced write: %v; fsync: %v", werr, serr)
	})
}

// A node that crashed leaves its attachment's loop device on a FUSE mount
// whose process is dead; Detach after the node's restart removes both.
func TestFUSELoop_ProcessKilled_DetachCleansUp(t *testing.T) {
	needRealDevices(t)
	ctx := context.Background()
	dir := t.TempDir()
	image := filepath.Join(dir, "vol-1.img")
	if err := os.WriteFile(image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(image, 16<<20)
	secret := blockexport.NewSecret()
	host := &storageHost{t: t, image: image, logs: &logbuf.Buffer{}}
	host.start(blockexport.Attachment{ID: "att-k", VolumeID: "vol-1", ImagePath: image, Generation: 1, Secret: secret})
	t.Cleanup(func() { host.ex.Close() })
	t.Setenv("STOWAGE_TEST_NBD_ATTACH", "1")
	at := FUSELoop{Command: []string{os.Args[0]}, StateDir: filepath.Join(dir, "state")}
	target := Target{AttachmentID: "att-k", Address: host.addr, Generation: 1, Secret: secret}
	mnt := filepath.Join(dir, "state", "att-k", "mnt")
	t.Cleanup(func() {
		loopdev.DetachUnder(context.Background(), dir)
		unix.Unmount(mnt, unix.MNT_DETACH)
	})
	if _, err := at.Attach(ctx, target); err != nil {
		t.Fatal(err)
	}
	pid, err := readPID(filepath.Join(dir, "state", "att-k"))
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for syscall.Kill(pid, 0) == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if _, live := at.Device(target); live {
		t.Fatal("a killed attachment reads as live")
	}
	if left, _ := loopdev.Under(dir); len(left) == 0 {
		t.Fatal("the killed process took its loop device with it; this test needs one left behind")
	}
	if err := at.Detach(ctx, target); err != nil {
		t.Fatalf("detach after the process was killed: %v", err)
	}
	if left, _ := loopdev.Under(dir); len(left) > 0 {
		t.Errorf("loop devices left: %v", left)
	}
	if mounted, _ := mountinfo.Mounted(mnt); mounted {
		t.Error("the dead FUSE mount is left")
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "att-k")); !os.IsNotExist(err) {
		t.Errorf("the attachment's state directory is left (%v)", err)
	}
}
