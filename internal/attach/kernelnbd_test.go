package attach

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/internal/blockexport"
	"github.com/stowage-io/stowage/internal/testutil/logbuf"
	"github.com/stowage-io/stowage/pkg/nbd"
)

// unhex reads hex with spaces and "|" comments stripped, one field per
// group, so the golden messages below can be checked against the
// kernel's structs by eye.
func unhex(t *testing.T, s string) []byte {
	t.Helper()
	var clean strings.Builder
	for _, line := range strings.Split(s, "\n") {
		line, _, _ = strings.Cut(line, "|")
		clean.WriteString(strings.ReplaceAll(strings.TrimSpace(line), " ", ""))
	}
	b, err := hex.DecodeString(clean.String())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The golden messages are little-endian (netlink is host order; these
// tests run on amd64 and arm64).
func TestNBDNetlink_Messages_GoldenBytes(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("golden bytes are written little-endian")
	}
	const family, seq = 0x22, 7
	cfg := nbdConfig{
		Index: -1, SizeBytes: 64 << 20, BlockSize: 4096,
		ServerFlags:     uint64(nbd.FlagHasFlags | nbd.FlagSendFlush | nbd.FlagCanMultiConn),
		Timeout:         30 * time.Second,
		DeadConnTimeout: time.Hour,
		Backend:         "att-1",
		FDs:             []int{3, 4},
	}
	reconf := cfg
	reconf.Index, reconf.SizeBytes = 5, 0
	reconf.FDs = []int{9}
	resize := nbdConfig{Index: 5, SizeBytes: 128 << 20, Backend: "att-1"}
	for _, tc := range []struct {
		name string
		cmd  uint8
		a    attrs
		want string
	}{
		{"connect, kernel picks the index", NBD_CMD_CONNECT, cfg.connectAttrs(), `
			78000000 2200 0500 07000000 00000000 | nlmsghdr: len 120, family, REQUEST|ACK, seq, port
			01 01 0000                           | genlmsghdr: NBD_CMD_CONNECT, version 1
			0c00 0200 0000000400000000           | NBD_ATTR_SIZE_BYTES u64 64 MiB
			0c00 0300 0010000000000000           | NBD_ATTR_BLOCK_SIZE_BYTES u64 4096
			0c00 0500 0501000000000000           | NBD_ATTR_SERVER_FLAGS u64 HAS_FLAGS|SEND_FLUSH|CAN_MULTI_CONN
			0c00 0400 1e00000000000000           | NBD_ATTR_TIMEOUT u64 30 s
			0c00 0800 100e000000000000           | NBD_ATTR_DEAD_CONN_TIMEOUT u64 3600 s
			0a00 0a00 6174742d3100 0000          | NBD_ATTR_BACKEND_IDENTIFIER "att-1\0", padded
			1c00 0780                            | NBD_ATTR_SOCKETS, nested
			  0c00 0180 0800 0100 03000000       |   NBD_SOCK_ITEM { NBD_SOCK_FD u32 3 }
			  0c00 0180 0800 0100 04000000       |   NBD_SOCK_ITEM { NBD_SOCK_FD u32 4 }
		`},
		{"disconnect", NBD_CMD_DISCONNECT, indexAttrs(5), `
			1c000000 2200 0500 07000000 00000000 | nlmsghdr: len 28
			02 01 0000                           | NBD_CMD_DISCONNECT
			0800 0100 05000000                   | NBD_ATTR_INDEX u32 5
		`},
		{"reconfigure with one new socket", NBD_CMD_RECONFIGURE, reconf.reconfigureAttrs(), `
			38000000 2200 0500 07000000 00000000 | nlmsghdr: len 56
			03 01 0000                           | NBD_CMD_RECONFIGURE
			0800 0100 05000000                   | NBD_ATTR_INDEX u32 5
			0a00 0a00 6174742d3100 0000          | NBD_ATTR_BACKEND_IDENTIFIER "att-1\0"
			1000 0780                            | NBD_ATTR_SOCKETS
			  0c00 0180 0800 0100 09000000       |   NBD_SOCK_ITEM { NBD_SOCK_FD u32 9 }
		`},
		{"reconfigure to a new size (Refresh), no sockets", NBD_CMD_RECONFIGURE, resize.reconfigureAttrs(), `
			34000000 2200 0500 07000000 00000000 | nlmsghdr: len 52
			03 01 0000                           | NBD_CMD_RECONFIGURE
			0800 0100 05000000                   | NBD_ATTR_INDEX u32 5
			0a00 0a00 6174742d3100 0000          | NBD_ATTR_BACKEND_IDENTIFIER "att-1\0"
			0c00 0200 0000000800000000           | NBD_ATTR_SIZE_BYTES u64 128 MiB
		`},
		{"connect on a given index", NBD_CMD_CONNECT, nbdConfig{Index: 2, SizeBytes: 4096, BlockSize: 4096, FDs: []int{3}}.connectAttrs(), `
			68000000 2200 0500 07000000 00000000 | nlmsghdr: len 104
			01 01 0000                           | NBD_CMD_CONNECT
			0800 0100 02000000                   | NBD_ATTR_INDEX u32 2
			0c00 0200 0010000000000000           | NBD_ATTR_SIZE_BYTES 4096
			0c00 0300 0010000000000000           | NBD_ATTR_BLOCK_SIZE_BYTES 4096
			0c00 0500 0000000000000000           | NBD_ATTR_SERVER_FLAGS 0
			0c00 0400 0000000000000000           | NBD_ATTR_TIMEOUT 0
			0c00 0800 0000000000000000           | NBD_ATTR_DEAD_CONN_TIMEOUT 0
			1000 0780                            | NBD_ATTR_SOCKETS
			  0c00 0180 0800 0100 03000000       |   NBD_SOCK_ITEM { NBD_SOCK_FD u32 3 }
		`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := genlMessage(family, tc.cmd, NBD_GENL_VERSION, unix.NLM_F_REQUEST|unix.NLM_F_ACK, seq, tc.a)
			if want := unhex(t, tc.want); !bytes.Equal(got, want) {
				t.Fatalf("message:\n got %x\nwant %x", got, want)
			}
		})
	}
}

// A CONNECT answered as the kernel does (nbd_connect_reply, then the ACK
// capped by NETLINK_CAP_ACK) and a refusal.
func TestNBDNetlink_ConnectReply_IndexAndErrno(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("golden bytes are written little-endian")
	}
	reply := unhex(t, `
		1c000000 2200 0000 07000000 2a000000 | nlmsghdr: len 28, family, seq 7, port 42
		01 01 0000                           | NBD_CMD_CONNECT
		0800 0100 03000000                   | NBD_ATTR_INDEX u32 3
		24000000 0200 0001 07000000 2a000000 | NLMSG_ERROR, NLM_F_CAPPED
		00000000                             | error 0: the ACK
		78000000 2200 0500 07000000 00000000 | the request's header
	`)
	rs, err := parseGenl(reply)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[1].typ != unix.NLMSG_ERROR || rs[1].errno != 0 {
		t.Fatalf("messages: %+v", rs)
	}
	if index, err := connectReplyIndex(rs[:1], -1); err != nil || index != 3 {
		t.Fatalf("index %d, %v; want 3", index, err)
	}
	if _, err := connectReplyIndex(nil, -1); err == nil {
		t.Fatal("a reply without NBD_ATTR_INDEX gave an index")
	}

	busy := unhex(t, `
		24000000 0200 0001 08000000 2a000000 | NLMSG_ERROR
		f0ffffff                             | -16: EBUSY
		78000000 2200 0500 08000000 00000000
	`)
	rs, err = parseGenl(busy)
	if err != nil || len(rs) != 1 || !errors.Is(rs[0].errno, syscall.EBUSY) {
		t.Fatalf("refusal: %+v, %v; want EBUSY", rs, err)
	}

	dead := unhex(t, `
		1c000000 2200 0000 00000000 00000000 | multicast: seq 0, port 0
		04 01 0000                           | NBD_CMD_LINK_DEAD
		0800 0100 03000000                   | NBD_ATTR_INDEX u32 3
	`)
	rs, err = parseGenl(dead)
	if err != nil || !linkDead(rs, 3) || linkDead(rs, 4) {
		t.Fatalf("link dead for nbd3: %+v, %v", rs, err)
	}
}

// The encoder and decoder against the real kernel: the generic netlink
// controller resolves itself, and (without the nbd module) not "nbd".
func TestResolveFamily_RealKernel_NlctrlFoundNBDMissing(t *testing.T) {
	s, err := openGenl()
	if err != nil {
		t.Skipf("no generic netlink: %v", err)
	}
	defer s.Close()
	f, err := s.resolveFamily("nlctrl")
	if err != nil {
		t.Fatal(err)
	}
	if f.ID != unix.GENL_ID_CTRL || f.Groups["notify"] == 0 {
		t.Fatalf("nlctrl: %+v; want id %#x and a notify group", f, unix.GENL_ID_CTRL)
	}
	if _, err := os.Stat("/dev/nbd0"); err == nil {
		return
	}
	if _, err := s.resolveFamily(NBD_GENL_FAMILY_NAME); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("nbd family without the module: %v; want ENOENT", err)
	}
}

// exported starts a storage host exporting image (written with data)
// as attachment att-1 at generation 1 and returns its target.
func exported(t *testing.T, image string, data []byte) Target {
	t.Helper()
	if err := os.WriteFile(image, data, 0o600); err != nil {
		t.Fatal(err)
	}
	secret := blockexport.NewSecret()
	host := &storageHost{t: t, image: image, logs: &logbuf.Buffer{}}
	host.start(blockexport.Attachment{ID: "att-1", VolumeID: "vol-1", ImagePath: image, Generation: 1, Secret: secret})
	t.Cleanup(func() { host.ex.Close() })
	return Target{AttachmentID: "att-1", Address: host.addr, Generation: 1, Secret: secret}
}

// dialSockets must leave each socket authenticated and at the
// transmission phase: a READ written on it by hand, the way the kernel
// will, gets the image's bytes back.
func TestKernelNBD_DialSockets_RawReadAtTransmissionPhase(t *testing.T) {
	dir := t.TempDir()
	image := filepath.Join(dir, "vol-1.img")
	want := make([]byte, 1<<20)
	rand.Read(want)
	target := exported(t, image, want)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	socks, info, err := dialSockets(ctx, target, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(socks)
	if len(socks) != 4 || info.Size != int64(len(want)) || info.Flags&nbd.FlagCanMultiConn == 0 {
		t.Fatalf("%d sockets, info %+v; want 4 of a %d-byte multi-conn export", len(socks), info, len(want))
	}
	for i, f := range socks {
		fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_NONBLOCK != 0 {
			t.Fatalf("socket %d: flags %#x, %v; the kernel wants a blocking socket", i, fl, err)
		}
		off := int64(i+1) * 8192
		req := binary.BigEndian.AppendUint32(nil, 0x25609513) // NBD_REQUEST_MAGIC
		req = binary.BigEndian.AppendUint16(req, 0)           // flags
		req = binary.BigEndian.AppendUint16(req, nbd.CmdRead)
		req = binary.BigEndian.AppendUint64(req, 0xfeed0000+uint64(i)) // handle
		req = binary.BigEndian.AppendUint64(req, uint64(off))
		req = binary.BigEndian.AppendUint32(req, 4096)
		if _, err := f.Write(req); err != nil {
			t.Fatal(err)
		}
		reply := make([]byte, 16+4096)
		if _, err := io.ReadFull(f, reply); err != nil {
			t.Fatal(err)
		}
		if m, e, h := binary.BigEndian.Uint32(reply), binary.BigEndian.Uint32(reply[4:]), binary.BigEndian.Uint64(reply[8:]); m != 0x67446698 || e != 0 || h != 0xfeed0000+uint64(i) {
			t.Fatalf("socket %d: reply magic %#x error %d handle %#x", i, m, e, h)
		}
		if !bytes.Equal(reply[16:], want[off:off+4096]) {
			t.Fatalf("socket %d: READ returned other bytes than the image's", i)
		}
	}

	t.Run("wrong secret refused", func(t *testing.T) {
		bad := target
		bad.Secret = "wrong"
		if socks, _, err := dialSockets(ctx, bad, 2, 0); !errors.Is(err, nbd.ErrRefused) {
			closeAll(socks)
			t.Fatalf("wrong secret: %v; want ErrRefused", err)
		}
	})
	t.Run("size changed refused", func(t *testing.T) {
		if socks, _, err := dialSockets(ctx, target, 1, 4096); err == nil || !strings.Contains(err.Error(), "changed size") {
			closeAll(socks)
			t.Fatalf("reconnect to an export of another size: %v", err)
		}
	})
}

// Without the nbd module, Attach fails on resolving the nbd netlink
// family (before dialling the storage host); nothing is recorded.
func TestKernelNBD_AttachWithoutNBDModule_FailsRecordingNothing(t *testing.T) {
	if _, err := os.Stat("/dev/nbd0"); err == nil {
		t.Skip("this node has the nbd module")
	}
	dir := t.TempDir()
	image := filepath.Join(dir, "vol-1.img")
	target := exported(t, image, make([]byte, 1<<20))
	k := KernelNBD{StateDir: filepath.Join(dir, "state")}
	dev, err := k.Attach(context.Background(), target)
	if err == nil || !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), `family "nbd"`) {
		t.Fatalf("attach without the nbd module: %q, %v; want the nbd family not found", dev, err)
	}
	if _, err := readIndex(k.dir(target)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed attach recorded an index: %v", err)
	}
	t.Logf("attach: %v", err)
}

func TestKernelNBD_DetachOfMissingAttachment_Succeeds(t *testing.T) {
	k := KernelNBD{StateDir: t.TempDir()}
	if err := k.Detach(context.Background(), Target{AttachmentID: "never-attached"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := k.attached(Target{AttachmentID: "never-attached"}); ok {
		t.Fatal("an attachment never attached is attached")
	}
}

func TestSelect_PicksByKernelNBD(t *testing.T) {
	for _, tc := range []struct {
		name   string
		probe  func() error
		want   string
		reason string
	}{
		{"no device", func() error { return errors.New("no /dev/nbd0: the nbd kernel module is not loaded") }, "fuse-loop", "no /dev/nbd0"},
		{"no family", func() error { return errors.New(`generic netlink family "nbd": no such file or directory`) }, "fuse-loop", `family "nbd"`},
		{"kernel nbd", func() error { return nil }, "kernel-nbd", "/dev/nbd0 exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := SelectWith("/state", []string{"/bin/stowage", "nbd-attach"}, tc.probe)
			if s.Name != tc.want || !strings.Contains(s.Reason, tc.reason) {
				t.Fatalf("%s (%s); want %s because %s", s.Name, s.Reason, tc.want, tc.reason)
			}
			switch a := s.Attacher.(type) {
			case KernelNBD:
				if tc.want != "kernel-nbd" || a.StateDir != "/state/kernel-nbd" {
					t.Fatalf("attacher %+v", a)
				}
			case FUSELoop:
				if tc.want != "fuse-loop" || a.StateDir != "/state/network" || a.Command[0] != "/bin/stowage" {
					t.Fatalf("attacher %+v", a)
				}
			}
		})
	}
}

func TestSelect_ThisNodeWithoutNBD_FUSELoop(t *testing.T) {
	if _, err := os.Stat("/dev/nbd0"); err == nil {
		t.Skip("this node has /dev/nbd0")
	}
	s := Select(t.TempDir(), nil)
	if _, ok := s.Attacher.(FUSELoop); !ok || !strings.Contains(s.Reason, "no /dev/nbd0") {
		t.Fatalf("selected %s (%s); want fuse-loop because there is no /dev/nbd0", s.Name, s.Reason)
	}
	t.Logf("selected %s: %s", s.Name, s.Reason)
}

// TestKernelNBD_RealKernel attaches through the kernel's NBD client:
// write and fsync through /dev/nbdN land in the image, a second Attach
// returns the same device, Detach disconnects it.
func TestKernelNBD_RealKernel(t *testing.T) {
	if _, err := os.Stat("/dev/nbd0"); err != nil {
		t.Skip("needs the nbd kernel module: /dev/nbd0 missing")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (NBD_CMD_CONNECT wants CAP_SYS_ADMIN)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	image := filepath.Join(dir, "vol-1.img")
	target := exported(t, image, make([]byte, 64<<20))
	k := KernelNBD{StateDir: filepath.Join(dir, "state")}
	dev, err := k.Attach(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Detach(ctx, target); err != nil {
			t.Errorf("detach: %v", err)
		}
		if err := k.Detach(ctx, target); err != nil {
			t.Errorf("second detach: %v", err)
		}
	})
	if again, err := k.Attach(ctx, target); err != nil || again != dev {
		t.Fatalf("second attach: %q, %v; want %q", again, err, dev)
	}
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := alignedBuf(t, 1<<20)
	rand.Read(buf)
	if _, err := f.WriteAt(buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	img, _ := os.ReadFile(image)
	if !bytes.Equal(img[1<<20:2<<20], buf) {
		t.Fatal("what was fsynced through the NBD device is not in the image")
	}
	index, err := readIndex(k.dir(target))
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Reconnect(ctx, target, index); err != nil {
		t.Fatalf("reconnect with no dead socket: %v", err)
	}
}
