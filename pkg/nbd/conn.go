package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Info is what the server told about an export in the handshake.
type Info struct {
	Size  int64
	Flags uint16
}

// Handshake negotiates on c (fixed newstyle, NO_ZEROES) and opens export
// with NBD_OPT_GO, presenting auth first if it is not nil. A refusal is
// ErrRefused or ErrUnknownExport with the server's reason.
func Handshake(ctx context.Context, c net.Conn, export string, auth *Auth) (Info, error) {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
		defer c.SetDeadline(time.Time{})
	}
	hello := make([]byte, 18)
	if _, err := io.ReadFull(c, hello); err != nil {
		return Info{}, fmt.Errorf("nbd handshake: %w", err)
	}
	if binary.BigEndian.Uint64(hello) != magicNBD || binary.BigEndian.Uint64(hello[8:]) != magicOpt {
		return Info{}, errors.New("nbd handshake: not a newstyle NBD server")
	}
	sflags := binary.BigEndian.Uint16(hello[16:])
	if sflags&flagFixedNewstyle == 0 {
		return Info{}, errors.New("nbd handshake: server does not speak fixed newstyle")
	}
	cflags := uint32(flagFixedNewstyle)
	if sflags&flagNoZeroes != 0 {
		cflags |= uint32(flagNoZeroes)
	}
	if err := binary.Write(c, binary.BigEndian, cflags); err != nil {
		return Info{}, fmt.Errorf("nbd handshake: %w", err)
	}
	if auth != nil {
		if err := sendOpt(c, OptAuth, auth.marshal()); err != nil {
			return Info{}, err
		}
		typ, data, err := readOptReply(c, OptAuth)
		if err != nil {
			return Info{}, err
		}
		if err := replyError(typ, data, *auth); err != nil {
			return Info{}, err
		}
	}
	req := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	req = append(req, export...)
	req = binary.BigEndian.AppendUint16(req, 0)
	if err := sendOpt(c, optGo, req); err != nil {
		return Info{}, err
	}
	var info Info
	for {
		typ, data, err := readOptReply(c, optGo)
		if err != nil {
			return Info{}, err
		}
		switch typ {
		case repAck:
			if info.Size == 0 && info.Flags == 0 {
				return Info{}, errors.New("nbd handshake: server sent no export info")
			}
			return info, nil
		case repInfo:
			if len(data) >= 12 && binary.BigEndian.Uint16(data) == infoExport {
				info.Size = int64(binary.BigEndian.Uint64(data[2:]))
				info.Flags = binary.BigEndian.Uint16(data[10:])
			}
		default:
			if err := replyError(typ, data, Auth{Export: export}); err != nil {
				return Info{}, err
			}
		}
	}
}

func replyError(typ uint32, data []byte, a Auth) error {
	switch typ {
	case repAck:
		return nil
	case repErrPolicy:
		return fmt.Errorf("%w: %s: %s", ErrRefused, a, data)
	case repErrUnknown:
		return fmt.Errorf("%w: %q: %s", ErrUnknownExport, a.Export, data)
	case repErrUnsup:
		return fmt.Errorf("%w: %s", ErrUnsupported, data)
	}
	return fmt.Errorf("nbd handshake: reply type %#x: %s", typ, data)
}

func sendOpt(w io.Writer, opt uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	if _, err := w.Write(append(b, data...)); err != nil {
		return fmt.Errorf("nbd handshake: %w", err)
	}
	return nil
}

func readOptReply(r io.Reader, opt uint32) (uint32, []byte, error) {
	h := make([]byte, 20)
	if _, err := io.ReadFull(r, h); err != nil {
		return 0, nil, fmt.Errorf("nbd handshake: %w", err)
	}
	if binary.BigEndian.Uint64(h) != magicOptReply || binary.BigEndian.Uint32(h[8:]) != opt {
		return 0, nil, errors.New("nbd handshake: bad option reply")
	}
	n := binary.BigEndian.Uint32(h[16:])
	if n > maxOptionData {
		return 0, nil, errors.New("nbd handshake: option reply too large")
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return 0, nil, fmt.Errorf("nbd handshake: %w", err)
	}
	return binary.BigEndian.Uint32(h[12:]), data, nil
}

// Conn is one connection in the transmission phase. Its methods may be
// called concurrently: each request has its own handle and replies are
// matched to them as they come.
type Conn struct {
	c    net.Conn
	info Info
	bw   *batchWriter

	mu sync.Mutex
	// pending is keyed by handle; nil once the connection is broken.
	pending map[uint64]*call
	next    uint64
	err     error
	done    chan struct{}
}

type call struct {
	hdr  [requestSize]byte // the request, until it is sent
	dst  []byte            // READ: where the data goes
	done chan error
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan error, 1)} }}

// NewConn starts the transmission phase on c after Handshake.
func NewConn(c net.Conn, info Info) *Conn {
	cn := &Conn{c: c, info: info, bw: newBatchWriter(c), pending: map[uint64]*call{}, done: make(chan struct{})}
	go cn.readReplies()
	return cn
}

// Info is the export's size and flags.
func (cn *Conn) Info() Info { return cn.info }

// Done is closed when the connection is broken or closed.
func (cn *Conn) Done() <-chan struct{} { return cn.done }

func (cn *Conn) readReplies() {
	br := bufio.NewReaderSize(cn.c, 256<<10)
	h := make([]byte, replySize)
	var err error
	for {
		if _, err = io.ReadFull(br, h); err != nil {
			break
		}
		if binary.BigEndian.Uint32(h) != magicSimpleReply {
			err = errors.New("bad reply magic")
			break
		}
		errno := Errno(binary.BigEndian.Uint32(h[4:]))
		handle := binary.BigEndian.Uint64(h[8:])
		cn.mu.Lock()
		cl := cn.pending[handle]
		delete(cn.pending, handle)
		cn.mu.Unlock()
		if cl == nil {
			err = fmt.Errorf("reply for unknown handle %d", handle)
			break
		}
		if errno != 0 {
			cl.done <- errno
			continue
		}
		if cl.dst != nil {
			if err = readPayload(br, cn.c, cl.dst); err != nil {
				cl.done <- ErrDisconnected
				break
			}
		}
		cl.done <- nil
	}
	cn.fail(fmt.Errorf("%w: %v", ErrDisconnected, err))
}

func (cn *Conn) fail(err error) {
	cn.mu.Lock()
	if cn.pending == nil {
		cn.mu.Unlock()
		return
	}
	p := cn.pending
	cn.pending, cn.err = nil, err
	cn.mu.Unlock()
	cn.c.Close()
	for _, cl := range p {
		cl.done <- err
	}
	close(cn.done)
}

// Close sends NBD_CMD_DISC and closes the connection; requests still
// waiting fail with ErrDisconnected.
func (cn *Conn) Close() error {
	h := make([]byte, requestSize)
	binary.BigEndian.PutUint32(h, magicRequest)
	binary.BigEndian.PutUint16(h[6:], CmdDisconnect)
	cn.c.SetWriteDeadline(time.Now().Add(time.Second))
	cn.bw.write(nil, h)
	cn.fail(ErrDisconnected)
	return nil
}

// Do sends one request and waits for its reply. For READ, dst receives
// length bytes; for WRITE, data is sent. It fails with an Errno the
// server replied or ErrDisconnected.
func (cn *Conn) Do(cmd, flags uint16, off uint64, length uint32, data, dst []byte) error {
	cl := callPool.Get().(*call)
	cl.dst = dst
	cn.mu.Lock()
	if cn.pending == nil {
		err := cn.err
		cn.mu.Unlock()
		callPool.Put(cl)
		return err
	}
	cn.next++
	handle := cn.next
	cn.pending[handle] = cl
	cn.mu.Unlock()

	h := cl.hdr[:]
	binary.BigEndian.PutUint32(h, magicRequest)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], cmd)
	binary.BigEndian.PutUint64(h[8:], handle)
	binary.BigEndian.PutUint64(h[16:], off)
	binary.BigEndian.PutUint32(h[24:], length)
	// Sent now or by a concurrent Do's write (batchWriter); h and data
	// stay ours until the reply, which cannot come before they are sent.
	var err error
	if len(data) > 0 {
		err = cn.bw.write(nil, h, data)
	} else {
		err = cn.bw.write(nil, h)
	}
	if err != nil {
		cn.fail(fmt.Errorf("%w: %v", ErrDisconnected, err))
	}
	err = <-cl.done
	cl.dst = nil
	callPool.Put(cl)
	return err
}

// readDirectMin is the size from which readPayload reads a payload's
// remainder straight from the connection instead of through its buffer.
const readDirectMin = 64 << 10

// readPayload fills p with the next bytes of a connection that br reads:
// what br holds already is copied out of it, and a remainder of
// readDirectMin or more is read from c straight into p. bufio would read
// a payload smaller than its buffer into the buffer first and copy it
// out again, which for a 1 MiB write is a second copy of up to half of
// it; small payloads still go through br, which reads the frames
// behind them in the same system call.
func readPayload(br *bufio.Reader, c io.Reader, p []byte) error {
	n := br.Buffered()
	if len(p)-n < readDirectMin {
		_, err := io.ReadFull(br, p)
		return err
	}
	if n > 0 {
		br.Read(p[:n]) // n bytes are buffered: no read from c
	}
	_, err := io.ReadFull(c, p[n:])
	return err
}
