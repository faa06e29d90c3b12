package attach

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/pkg/nbd"
)

// KernelNBD attaches a network target with the kernel's own NBD client
// (/dev/nbdN): the handshake, with the attachment's secret and generation
// (nbd.OptAuth), is done here in Go on every connection, and the sockets,
// positioned at the transmission phase, are handed to the kernel over
// generic netlink (NBD_CMD_CONNECT). From then on the kernel does the I/O
// with no process in its path; a broken connection is replaced by
// Reconnect (NBD_CMD_RECONFIGURE), which needs a process that stays:
// Watch, run by `stowage nbd-attach --kernel` (RunKernelNBDAttach).
type KernelNBD struct {
	// StateDir holds one directory per attachment with the device index
	// it was given ("index") and its device ("device").
	StateDir string
	// Connections is how many sockets the device gets (default 4; 1 if
	// the server does not advertise CAN_MULTI_CONN).
	Connections int
	// Timeout is a request's timeout in the kernel (default 30 s): one
	// that expires marks its socket dead and is sent again on another.
	Timeout time.Duration
	// DeadConnTimeout is how long I/O waits for dead sockets to be
	// replaced before it fails (default 1 h: the FUSE path waits forever,
	// the kernel has no "forever").
	DeadConnTimeout time.Duration
	Logger          *slog.Logger
}

const kernelNBDBlockSize = 4096

func (k KernelNBD) log() *slog.Logger {
	if k.Logger == nil {
		return slog.Default()
	}
	return k.Logger
}

func (k KernelNBD) config(t Target) nbdConfig {
	c := nbdConfig{Index: -1, BlockSize: kernelNBDBlockSize, Timeout: k.Timeout, DeadConnTimeout: k.DeadConnTimeout, Backend: t.AttachmentID}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.DeadConnTimeout == 0 {
		c.DeadConnTimeout = time.Hour
	}
	return c
}

func (k KernelNBD) dir(t Target) string { return filepath.Join(k.StateDir, t.AttachmentID) }

func nbdDevice(index int) string { return "/dev/nbd" + strconv.Itoa(index) }

// Attach dials the export Connections times, authenticates and opens it
// on each, and gives the sockets to a free NBD device the kernel picks.
// An attachment whose recorded device still serves it (its
// /sys/block/nbdN/backend is the attachment id) gets that device back.
func (k KernelNBD) Attach(ctx context.Context, t Target) (string, error) {
	if t.AttachmentID == "" || t.Address == "" || strings.ContainsAny(t.AttachmentID, "/\x00") {
		return "", fmt.Errorf("kernel nbd attach: target needs an attachment id and an address")
	}
	dir := k.dir(t)
	if index, ok := k.attached(t); ok {
		return nbdDevice(index), nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	// The kernel side first: a node without the module fails before the
	// storage host is dialled.
	n, err := openNBDNetlink()
	if err != nil {
		return "", fmt.Errorf("kernel nbd attach %s: %w", t.AttachmentID, err)
	}
	defer n.Close()
	socks, info, err := dialSockets(ctx, t, k.Connections, 0)
	if err != nil {
		return "", fmt.Errorf("kernel nbd attach %s from %s: %w", t.AttachmentID, t.Address, err)
	}
	defer closeAll(socks)
	c := k.config(t)
	c.SizeBytes, c.ServerFlags = uint64(info.Size), uint64(info.Flags)
	c.FDs = fds(socks)
	index, err := n.connect(c)
	if err != nil {
		return "", fmt.Errorf("kernel nbd attach %s: %w", t.AttachmentID, err)
	}
	dev := nbdDevice(index)
	if err := os.WriteFile(filepath.Join(dir, "index"), []byte(strconv.Itoa(index)), 0o600); err != nil {
		n.disconnect(index)
		return "", err
	}
	os.WriteFile(filepath.Join(dir, "device"), []byte(dev), 0o600)
	k.log().Info("attached", "attachment", t.AttachmentID, "device", dev, "connections", len(socks), "size", info.Size)
	return dev, nil
}

// attached returns the recorded device index of t if the kernel still
// has that device configured for t.
func (k KernelNBD) attached(t Target) (int, bool) {
	index, err := readIndex(k.dir(t))
	if err != nil {
		return 0, false
	}
	return index, deviceBackend(index) == t.AttachmentID
}

func readIndex(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "index"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// deviceBackend is what the kernel holds as the backend of /dev/nbdN:
// our attachment id while it is configured, "" otherwise.
func deviceBackend(index int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/sys/block/nbd%d/backend", index))
	return strings.TrimSpace(string(b))
}

// Device returns the device of a live attachment: its recorded device
// still serves it.
func (k KernelNBD) Device(t Target) (string, bool) {
	index, ok := k.attached(t)
	if !ok {
		return "", false
	}
	return nbdDevice(index), true
}

// Refresh makes a live attachment's device take its export's size now,
// after the volume grew on its storage host: one handshake learns the
// size, and NBD_CMD_RECONFIGURE with NBD_ATTR_SIZE_BYTES (Linux 5.3 and
// later) sets it. It returns the device's size.
func (k KernelNBD) Refresh(ctx context.Context, t Target) (int64, error) {
	index, ok := k.attached(t)
	if !ok {
		return 0, fmt.Errorf("kernel nbd refresh %s: not attached", t.AttachmentID)
	}
	socks, info, err := dialSockets(ctx, t, 1, 0)
	if err != nil {
		return 0, fmt.Errorf("kernel nbd refresh %s from %s: %w", t.AttachmentID, t.Address, err)
	}
	closeAll(socks)
	c := k.config(t)
	c.Index, c.SizeBytes = index, uint64(info.Size)
	if err := withNBDNetlink(func(n *nbdNetlink) error { return n.reconfigure(c) }); err != nil {
		return 0, fmt.Errorf("kernel nbd refresh %s (%s): %w", t.AttachmentID, nbdDevice(index), err)
	}
	return deviceSize(index)
}

// DetachAll detaches every attachment in StateDir and reports how many
// were live.
func (k KernelNBD) DetachAll(ctx context.Context) (int, error) { return detachAll(ctx, k.StateDir, k) }

// Detach disconnects the attachment's device (NBD_CMD_DISCONNECT: the
// kernel sends NBD_CMD_DISC on every socket and fails what is queued) and
// removes its state. A device that serves something else now (the index
// was reused) is left alone.
func (k KernelNBD) Detach(ctx context.Context, t Target) error {
	dir := k.dir(t)
	index, err := readIndex(dir)
	if errors.Is(err, os.ErrNotExist) {
		return os.RemoveAll(dir)
	}
	if err != nil {
		return err
	}
	if deviceBackend(index) == t.AttachmentID {
		if err := withNBDNetlink(func(n *nbdNetlink) error { return n.disconnect(index) }); err != nil {
			return fmt.Errorf("kernel nbd detach %s (%s): %w", t.AttachmentID, nbdDevice(index), err)
		}
		k.log().Info("detached", "attachment", t.AttachmentID, "device", nbdDevice(index))
	}
	return os.RemoveAll(dir)
}

// Reconnect dials the export again and gives the kernel the new sockets
// for device index (NBD_CMD_RECONFIGURE): each replaces a dead one, and
// the kernel ignores those it has no dead socket for, so dialling
// Connections again replaces every dead socket at once. A refusal
// (fenced, wrong secret) is nbd.ErrRefused.
func (k KernelNBD) Reconnect(ctx context.Context, t Target, index int) error {
	c := k.config(t)
	c.Index = index
	size, err := deviceSize(index)
	if err != nil {
		return fmt.Errorf("kernel nbd reconnect %s: %w", t.AttachmentID, err)
	}
	socks, _, err := dialSockets(ctx, t, k.Connections, size)
	if err != nil {
		return fmt.Errorf("kernel nbd reconnect %s from %s: %w", t.AttachmentID, t.Address, err)
	}
	defer closeAll(socks)
	c.FDs = fds(socks)
	if err := withNBDNetlink(func(n *nbdNetlink) error { return n.reconfigure(c) }); err != nil {
		return fmt.Errorf("kernel nbd reconnect %s (%s): %w", t.AttachmentID, nbdDevice(index), err)
	}
	return nil
}

// deviceSize is /dev/nbdN's size in bytes (sysfs counts 512-byte
// sectors).
func deviceSize(index int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/nbd%d/size", index))
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n * 512, err
}

// dialSockets opens the export on n connections (4 by default, 1 if the
// server cannot take several) and returns their sockets at the
// transmission phase, as files the caller closes. If size is not 0 the
// export must still have it.
func dialSockets(ctx context.Context, t Target, n int, size int64) ([]*os.File, nbd.Info, error) {
	if n <= 0 {
		n = 4
	}
	auth := &nbd.Auth{Export: t.AttachmentID, Generation: t.Generation, Secret: []byte(t.Secret)}
	var socks []*os.File
	var info nbd.Info
	for i := 0; i < n; i++ {
		tc, in, err := nbd.DialHandshake(ctx, t.Address, t.AttachmentID, auth, 0)
		if err != nil {
			closeAll(socks)
			return nil, nbd.Info{}, err
		}
		// The kernel does blocking I/O on the socket; File gives a
		// descriptor of our own and the Go side lets go of its one.
		f, err := tc.File()
		tc.Close()
		if err == nil {
			err = unix.SetNonblock(int(f.Fd()), false)
		}
		if err != nil {
			closeAll(append(socks, f))
			return nil, nbd.Info{}, err
		}
		socks = append(socks, f)
		if size != 0 && in.Size != size {
			closeAll(socks)
			return nil, nbd.Info{}, fmt.Errorf("export %q changed size from %d to %d", t.AttachmentID, size, in.Size)
		}
		if i == 0 {
			info = in
			if in.Flags&nbd.FlagCanMultiConn == 0 {
				n = 1
			}
		}
	}
	return socks, info, nil
}

func fds(fs []*os.File) []int {
	out := make([]int, len(fs))
	for i, f := range fs {
		out[i] = int(f.Fd())
	}
	return out
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

// nbdNetlink is a generic netlink socket with the nbd family resolved.
type nbdNetlink struct {
	*genlSocket
	family genlFamily
}

func openNBDNetlink() (*nbdNetlink, error) {
	s, err := openGenl()
	if err != nil {
		return nil, err
	}
	fam, err := s.resolveFamily(NBD_GENL_FAMILY_NAME)
	if err != nil {
		s.Close()
		return nil, err
	}
	return &nbdNetlink{genlSocket: s, family: fam}, nil
}

// withNBDNetlink runs f on a fresh nbd netlink socket.
func withNBDNetlink(f func(*nbdNetlink) error) error {
	n, err := openNBDNetlink()
	if err != nil {
		return err
	}
	defer n.Close()
	return f(n)
}

// connect configures a device with c's sockets and returns its index.
func (n *nbdNetlink) connect(c nbdConfig) (int, error) {
	rs, err := n.request(n.family.ID, NBD_CMD_CONNECT, NBD_GENL_VERSION, c.connectAttrs())
	if err != nil {
		return 0, fmt.Errorf("NBD_CMD_CONNECT: %w", err)
	}
	return connectReplyIndex(rs, c.Index)
}

func (n *nbdNetlink) disconnect(index int) error {
	if _, err := n.request(n.family.ID, NBD_CMD_DISCONNECT, NBD_GENL_VERSION, indexAttrs(index)); err != nil {
		return fmt.Errorf("NBD_CMD_DISCONNECT: %w", err)
	}
	return nil
}

func (n *nbdNetlink) reconfigure(c nbdConfig) error {
	if _, err := n.request(n.family.ID, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION, c.reconfigureAttrs()); err != nil {
		return fmt.Errorf("NBD_CMD_RECONFIGURE: %w", err)
	}
	return nil
}

// connectReplyIndex reads the device index from CONNECT's reply; a
// kernel too old to send one has used the index asked for.
func connectReplyIndex(rs []genlReply, asked int) (int, error) {
	for _, r := range rs {
		if index, ok := attrU32(r.attrs, NBD_ATTR_INDEX); ok && r.cmd == NBD_CMD_CONNECT {
			return int(index), nil
		}
	}
	if asked >= 0 {
		return asked, nil
	}
	return 0, errors.New("NBD_CMD_CONNECT: the reply has no NBD_ATTR_INDEX")
}

// Watch keeps device index of t connected until ctx ends: it listens for
// the kernel's NBD_CMD_LINK_DEAD multicast and answers with Reconnect,
// retrying with backoff (0.1 s to 5 s) while the storage host is away.
// It also reconnects once at the start, and whenever the socket lost
// multicast messages (ENOBUFS), as a link may have died unheard; the
// kernel takes only sockets that replace dead ones. A refusal (fenced,
// wrong secret) disconnects the device, so its I/O fails at once rather
// than after DeadConnTimeout, and ends Watch with the refusal; so does
// finding the device no longer configured for t.
func (k KernelNBD) Watch(ctx context.Context, t Target, index int) error {
	log := k.log().With("attachment", t.AttachmentID, "device", nbdDevice(index))
	n, err := openNBDNetlink()
	if err != nil {
		return err
	}
	defer n.Close()
	grp, ok := n.family.Groups[NBD_GENL_MCAST_GROUP_NAME]
	if !ok {
		return fmt.Errorf("nbd family has no multicast group %q", NBD_GENL_MCAST_GROUP_NAME)
	}
	if err := unix.SetsockoptInt(n.fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(grp)); err != nil {
		return os.NewSyscallError("NETLINK_ADD_MEMBERSHIP", err)
	}
	tv := unix.NsecToTimeval(time.Second.Nanoseconds()) // to notice ctx
	unix.SetsockoptTimeval(n.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	dead, next := true, time.Now()
	delay := 100 * time.Millisecond
	buf := make([]byte, 64<<10)
	for ctx.Err() == nil {
		if dead && !time.Now().Before(next) {
			if deviceBackend(index) != t.AttachmentID {
				return fmt.Errorf("%s is no longer configured for attachment %s (disconnected by someone else)", nbdDevice(index), t.AttachmentID)
			}
			err := k.Reconnect(ctx, t, index)
			switch {
			case err == nil:
				dead, delay = false, 100*time.Millisecond
			case errors.Is(err, nbd.ErrRefused):
				log.Error("reconnect refused; disconnecting the device so its I/O fails", "err", err)
				if derr := n.disconnect(index); derr != nil {
					log.Error("disconnect", "err", derr)
				}
				return err
			case ctx.Err() != nil:
				return nil
			default:
				log.Warn("reconnect failed; I/O waits", "err", err, "retry in", delay)
				next = time.Now().Add(delay)
				delay = min(2*delay, 5*time.Second)
			}
		}
		got, _, err := unix.Recvfrom(n.fd, buf, 0)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			continue
		case err == unix.ENOBUFS:
			log.Warn("nbd multicast messages lost; reconnecting in case a link died")
		case err != nil:
			return os.NewSyscallError("recvfrom(netlink)", err)
		default:
			rs, _ := parseGenl(buf[:got])
			if !linkDead(rs, index) {
				continue
			}
			log.Warn("nbd link dead; reconnecting, I/O waits")
		}
		if !dead {
			dead, next = true, time.Now()
		}
	}
	return nil
}

// linkDead says whether rs has an NBD_CMD_LINK_DEAD for device index.
func linkDead(rs []genlReply, index int) bool {
	for _, r := range rs {
		if i, ok := attrU32(r.attrs, NBD_ATTR_INDEX); ok && r.cmd == NBD_CMD_LINK_DEAD && int(i) == index {
			return true
		}
	}
	return false
}

// nbdAvailable says whether this node can use KernelNBD, and if not why.
func nbdAvailable() error {
	if _, err := os.Stat("/dev/nbd0"); errors.Is(err, os.ErrNotExist) {
		return errors.New("no /dev/nbd0: the nbd kernel module is not loaded")
	} else if err != nil {
		return err
	}
	return withNBDNetlink(func(*nbdNetlink) error { return nil })
}

// RunKernelNBDAttach is `stowage nbd-attach --kernel`: it attaches t with
// KernelNBD (or takes over the device already attached for it), writes
// "attached <device>" to ready and keeps the device connected (Watch)
// until ctx ends; then it detaches. Its memory is locked (mlockall) and
// PR_SET_IO_FLUSHER set because while a link is dead the device's
// writeback waits on this process.
func RunKernelNBDAttach(ctx context.Context, k KernelNBD, t Target, ready io.Writer) error {
	log := k.log()
	if err := unix.Prctl(unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0); err != nil {
		log.Warn("PR_SET_IO_FLUSHER not set", "err", err)
	}
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE); err != nil {
		log.Warn("mlockall failed; the process may be paged out", "err", err)
	}
	dev, err := k.Attach(ctx, t)
	if err != nil {
		return err
	}
	fmt.Fprintf(ready, "attached %s\n", dev)
	index, err := readIndex(k.dir(t))
	if err != nil {
		return err
	}
	werr := k.Watch(ctx, t, index)
	dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := k.Detach(dctx, t); err != nil {
		return err
	}
	return werr
}
