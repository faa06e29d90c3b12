package attach

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The kernel's NBD generic netlink interface, with the names of
// include/uapi/linux/nbd-netlink.h (and NBD_CFLAG_* of nbd.h).
const (
	NBD_GENL_FAMILY_NAME      = "nbd"
	NBD_GENL_VERSION          = 0x1
	NBD_GENL_MCAST_GROUP_NAME = "nbd_mc_group"
)

const (
	NBD_ATTR_UNSPEC = iota
	NBD_ATTR_INDEX
	NBD_ATTR_SIZE_BYTES
	NBD_ATTR_BLOCK_SIZE_BYTES
	NBD_ATTR_TIMEOUT
	NBD_ATTR_SERVER_FLAGS
	NBD_ATTR_CLIENT_FLAGS
	NBD_ATTR_SOCKETS
	NBD_ATTR_DEAD_CONN_TIMEOUT
	NBD_ATTR_DEVICE_LIST
	NBD_ATTR_BACKEND_IDENTIFIER
)

const (
	NBD_DEVICE_ITEM_UNSPEC = iota
	NBD_DEVICE_ITEM
)

const (
	NBD_DEVICE_UNSPEC = iota
	NBD_DEVICE_INDEX
	NBD_DEVICE_CONNECTED
)

const (
	NBD_SOCK_ITEM_UNSPEC = iota
	NBD_SOCK_ITEM
)

const (
	NBD_SOCK_UNSPEC = iota
	NBD_SOCK_FD
)

const (
	NBD_CMD_UNSPEC = iota
	NBD_CMD_CONNECT
	NBD_CMD_DISCONNECT
	NBD_CMD_RECONFIGURE
	NBD_CMD_LINK_DEAD
	NBD_CMD_STATUS
)

// attrs is a netlink attribute stream being built: each attribute is
// u16 length (header included), u16 type, payload, padded to 4 bytes;
// all in host byte order.
type attrs []byte

func (a attrs) put(typ uint16, payload []byte) attrs {
	a = binary.NativeEndian.AppendUint16(a, uint16(unix.SizeofNlAttr+len(payload)))
	a = binary.NativeEndian.AppendUint16(a, typ)
	a = append(a, payload...)
	for len(a)%unix.NLA_ALIGNTO != 0 {
		a = append(a, 0)
	}
	return a
}

func (a attrs) u32(typ uint16, v uint32) attrs {
	return a.put(typ, binary.NativeEndian.AppendUint32(nil, v))
}

func (a attrs) u64(typ uint16, v uint64) attrs {
	return a.put(typ, binary.NativeEndian.AppendUint64(nil, v))
}

// str is a NUL-terminated string (NLA_STRING, NLA_NUL_STRING).
func (a attrs) str(typ uint16, s string) attrs { return a.put(typ, append([]byte(s), 0)) }

func (a attrs) nested(typ uint16, inner attrs) attrs { return a.put(typ|unix.NLA_F_NESTED, inner) }

// parseAttrs splits an attribute stream into type (flags cleared) →
// payload; a repeated type keeps the last.
func parseAttrs(b []byte) (map[uint16][]byte, error) {
	m := map[uint16][]byte{}
	err := eachAttr(b, func(typ uint16, payload []byte) { m[typ] = payload })
	return m, err
}

func eachAttr(b []byte, f func(typ uint16, payload []byte)) error {
	for len(b) > 0 {
		if len(b) < unix.SizeofNlAttr {
			return fmt.Errorf("netlink attribute: %d bytes left, too short", len(b))
		}
		n := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if n < unix.SizeofNlAttr || n > len(b) {
			return fmt.Errorf("netlink attribute %d: length %d, %d bytes left", typ, n, len(b))
		}
		f(typ, b[unix.SizeofNlAttr:n])
		b = b[min(nlaAlign(n), len(b)):]
	}
	return nil
}

func nlaAlign(n int) int { return (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1) }

func attrU32(m map[uint16][]byte, typ uint16) (uint32, bool) {
	b, ok := m[typ]
	if !ok || len(b) < 4 {
		return 0, false
	}
	return binary.NativeEndian.Uint32(b), true
}

// genlMessage is one request: nlmsghdr, genlmsghdr, attributes.
func genlMessage(family uint16, cmd, version uint8, flags uint16, seq uint32, a attrs) []byte {
	b := make([]byte, 0, unix.NLMSG_HDRLEN+unix.GENL_HDRLEN+len(a))
	b = binary.NativeEndian.AppendUint32(b, uint32(unix.NLMSG_HDRLEN+unix.GENL_HDRLEN+len(a)))
	b = binary.NativeEndian.AppendUint16(b, family)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // port id: the kernel fills it in
	b = append(b, cmd, version, 0, 0)
	return append(b, a...)
}

// nbdConfig is what NBD_CMD_CONNECT and NBD_CMD_RECONFIGURE carry.
type nbdConfig struct {
	// Index is the device (/dev/nbd<Index>); negative on CONNECT lets the
	// kernel pick a free one (and say which in its reply).
	Index       int
	SizeBytes   uint64
	BlockSize   uint64
	ServerFlags uint64 // the export's transmission flags
	// Timeout is a request's timeout; with several sockets a request
	// that times out marks its socket dead and is sent again on another.
	Timeout time.Duration
	// DeadConnTimeout is how long I/O waits for a dead socket to be
	// replaced (RECONFIGURE) before it fails.
	DeadConnTimeout time.Duration
	// Backend is stored by the kernel (/sys/block/nbdN/backend) and, once
	// set, must be given again on RECONFIGURE: the attachment id.
	Backend string
	FDs     []int
}

func (c nbdConfig) socketAttrs() attrs {
	var socks attrs
	for _, fd := range c.FDs {
		socks = socks.nested(NBD_SOCK_ITEM, attrs(nil).u32(NBD_SOCK_FD, uint32(fd)))
	}
	return socks
}

// connectAttrs is the payload of NBD_CMD_CONNECT.
func (c nbdConfig) connectAttrs() attrs {
	var a attrs
	if c.Index >= 0 {
		a = a.u32(NBD_ATTR_INDEX, uint32(c.Index))
	}
	a = a.u64(NBD_ATTR_SIZE_BYTES, c.SizeBytes).
		u64(NBD_ATTR_BLOCK_SIZE_BYTES, c.BlockSize).
		u64(NBD_ATTR_SERVER_FLAGS, c.ServerFlags).
		u64(NBD_ATTR_TIMEOUT, uint64(c.Timeout/time.Second)).
		u64(NBD_ATTR_DEAD_CONN_TIMEOUT, uint64(c.DeadConnTimeout/time.Second))
	if c.Backend != "" {
		a = a.str(NBD_ATTR_BACKEND_IDENTIFIER, c.Backend)
	}
	return a.nested(NBD_ATTR_SOCKETS, c.socketAttrs())
}

// reconfigureAttrs is the payload of NBD_CMD_RECONFIGURE: the device, its
// backend (the kernel refuses a RECONFIGURE without it once set), a new
// size if SizeBytes is set (a grown volume), and the new sockets, each of
// which replaces a dead one.
func (c nbdConfig) reconfigureAttrs() attrs {
	a := attrs(nil).u32(NBD_ATTR_INDEX, uint32(c.Index))
	if c.Backend != "" {
		a = a.str(NBD_ATTR_BACKEND_IDENTIFIER, c.Backend)
	}
	if c.SizeBytes != 0 {
		a = a.u64(NBD_ATTR_SIZE_BYTES, c.SizeBytes)
	}
	if len(c.FDs) == 0 {
		return a
	}
	return a.nested(NBD_ATTR_SOCKETS, c.socketAttrs())
}

func indexAttrs(index int) attrs { return attrs(nil).u32(NBD_ATTR_INDEX, uint32(index)) }

// genlReply is one genetlink message received.
type genlReply struct {
	typ   uint16 // family id, or NLMSG_ERROR / NLMSG_DONE
	seq   uint32
	cmd   uint8
	attrs map[uint16][]byte
	errno syscall.Errno // of an NLMSG_ERROR; 0 for an ACK
}

// parseGenl splits what one recv returned into messages.
func parseGenl(b []byte) ([]genlReply, error) {
	var out []genlReply
	for len(b) > 0 {
		if len(b) < unix.NLMSG_HDRLEN {
			return out, fmt.Errorf("netlink: %d bytes left, shorter than a header", len(b))
		}
		n := int(binary.NativeEndian.Uint32(b))
		if n < unix.NLMSG_HDRLEN || n > len(b) {
			return out, fmt.Errorf("netlink: message length %d, %d bytes left", n, len(b))
		}
		r := genlReply{typ: binary.NativeEndian.Uint16(b[4:]), seq: binary.NativeEndian.Uint32(b[8:])}
		body := b[unix.NLMSG_HDRLEN:n]
		switch r.typ {
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return out, errors.New("netlink: short error message")
			}
			r.errno = syscall.Errno(-int32(binary.NativeEndian.Uint32(body)))
		case unix.NLMSG_DONE, unix.NLMSG_NOOP:
		default:
			if len(body) < unix.GENL_HDRLEN {
				return out, errors.New("netlink: short generic netlink message")
			}
			r.cmd = body[0]
			m, err := parseAttrs(body[unix.GENL_HDRLEN:])
			if err != nil {
				return out, err
			}
			r.attrs = m
		}
		out = append(out, r)
		b = b[min(nlmsgAlign(n), len(b)):]
	}
	return out, nil
}

func nlmsgAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// genlSocket is a NETLINK_GENERIC socket.
type genlSocket struct {
	fd  int
	seq atomic.Uint32
}

// netlinkTimeout bounds a request: the kernel answers at once or not
// at all.
const netlinkTimeout = 10 * time.Second

func openGenl() (*genlSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, os.NewSyscallError("socket(AF_NETLINK)", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind(AF_NETLINK)", err)
	}
	tv := unix.NsecToTimeval(netlinkTimeout.Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	// Errors come back without the request echoed.
	unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	s := &genlSocket{fd: fd}
	s.seq.Store(uint32(time.Now().UnixNano()))
	return s, nil
}

func (s *genlSocket) Close() error { return unix.Close(s.fd) }

// request sends one request with NLM_F_ACK and returns the messages
// answering it (the ACK excluded), or the kernel's error.
func (s *genlSocket) request(family uint16, cmd uint8, version uint8, a attrs) ([]genlReply, error) {
	seq := s.seq.Add(1)
	msg := genlMessage(family, cmd, version, unix.NLM_F_REQUEST|unix.NLM_F_ACK, seq, a)
	if err := unix.Sendto(s.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, os.NewSyscallError("sendto(netlink)", err)
	}
	var got []genlReply
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, os.NewSyscallError("recvfrom(netlink)", err)
		}
		rs, err := parseGenl(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, r := range rs {
			if r.seq != seq {
				continue
			}
			if r.typ == unix.NLMSG_ERROR {
				if r.errno != 0 {
					return got, r.errno
				}
				return got, nil
			}
			got = append(got, r)
		}
	}
}

// genlFamily is a resolved generic netlink family.
type genlFamily struct {
	ID     uint16
	Groups map[string]uint32 // multicast group name → id
}

// resolveFamily asks the kernel's controller for a family by name
// (CTRL_CMD_GETFAMILY); ENOENT means no such family (module not loaded).
func (s *genlSocket) resolveFamily(name string) (genlFamily, error) {
	rs, err := s.request(unix.GENL_ID_CTRL, unix.CTRL_CMD_GETFAMILY, 1, getFamilyAttrs(name))
	if err != nil {
		return genlFamily{}, fmt.Errorf("generic netlink family %q: %w", name, err)
	}
	for _, r := range rs {
		if f, ok := parseFamily(r.attrs); ok {
			return f, nil
		}
	}
	return genlFamily{}, fmt.Errorf("generic netlink family %q: no id in the reply", name)
}

func getFamilyAttrs(name string) attrs { return attrs(nil).str(unix.CTRL_ATTR_FAMILY_NAME, name) }

func parseFamily(m map[uint16][]byte) (genlFamily, bool) {
	id, ok := m[unix.CTRL_ATTR_FAMILY_ID]
	if !ok || len(id) < 2 {
		return genlFamily{}, false
	}
	f := genlFamily{ID: binary.NativeEndian.Uint16(id), Groups: map[string]uint32{}}
	eachAttr(m[unix.CTRL_ATTR_MCAST_GROUPS], func(_ uint16, grp []byte) {
		g, err := parseAttrs(grp)
		if err != nil {
			return
		}
		gid, ok := attrU32(g, unix.CTRL_ATTR_MCAST_GRP_ID)
		if name := g[unix.CTRL_ATTR_MCAST_GRP_NAME]; ok && len(name) > 0 {
			f.Groups[string(name[:len(name)-1])] = gid
		}
	})
	return f, true
}
