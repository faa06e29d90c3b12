package nfs4

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// ONC RPC (RFC 5531) over one TCP connection with record marking. Calls
// are multiplexed by xid: many may be in flight, one reader goroutine
// hands each reply to its caller.

const (
	rpcCall       = 0
	rpcReply      = 1
	rpcVersion    = 2
	nfsProgram    = 100003
	nfsVersion    = 4
	procCompound  = 1
	authNone      = 0
	authSys       = 1
	machineName   = "stowage"
	maxRecordSize = 64 << 20
)

// Cred is an AUTH_SYS identity.
type Cred struct {
	UID, GID uint32
	GIDs     []uint32 // supplementary groups, at most 16 are sent
}

// RootCred is uid 0, gid 0.
var RootCred = Cred{}

// ConnError is a failure of the transport: the call may or may not have
// reached the server.
type ConnError struct{ Err error }

func (e *ConnError) Error() string { return "nfs4 connection: " + e.Err.Error() }
func (e *ConnError) Unwrap() error { return e.Err }

// RPCError is a call the server's RPC layer refused.
type RPCError struct{ Msg string }

func (e *RPCError) Error() string { return "rpc: " + e.Msg }

type rpcResult struct {
	body []byte
	err  error
}

type pendingCall struct {
	done chan rpcResult // buffered, receives exactly one result
}

type rpcConn struct {
	nc  net.Conn
	wmu sync.Mutex

	mu      sync.Mutex
	xid     uint32
	pending map[uint32]*pendingCall
	err     error
	dead    chan struct{}
}

func dialRPC(addr string, timeout time.Duration) (*rpcConn, error) {
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
		_ = tc.SetKeepAlive(true)
		_ = tc.SetKeepAlivePeriod(10 * time.Second)
	}
	c := &rpcConn{nc: nc, pending: map[uint32]*pendingCall{}, dead: make(chan struct{}),
		xid: uint32(time.Now().UnixNano())}
	go c.readLoop()
	return c, nil
}

func (c *rpcConn) close(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	p := c.pending
	c.pending = nil
	close(c.dead)
	c.mu.Unlock()
	_ = c.nc.Close()
	for _, pc := range p {
		pc.done <- rpcResult{err: &ConnError{err}}
	}
}

func encodeAuthSys(e *Encoder, cred Cred) {
	e.Uint32(authSys)
	lenOff := len(e.buf)
	e.Uint32(0) // length, patched below
	start := len(e.buf)
	e.Uint32(0) // stamp
	e.String(machineName)
	e.Uint32(cred.UID)
	e.Uint32(cred.GID)
	g := cred.GIDs
	if len(g) > 16 {
		g = g[:16]
	}
	e.Uint32(uint32(len(g)))
	for _, x := range g {
		e.Uint32(x)
	}
	binary.BigEndian.PutUint32(e.buf[lenOff:], uint32(len(e.buf)-start))
}

// start sends a COMPOUND call whose arguments were produced by args.
func (c *rpcConn) start(cred Cred, args [][]byte) (*pendingCall, error) {
	pc := &pendingCall{done: make(chan rpcResult, 1)}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, &ConnError{err}
	}
	c.xid++
	xid := c.xid
	c.pending[xid] = pc
	c.mu.Unlock()

	e := NewEncoder(make([]byte, 0, 128))
	e.Uint32(0) // record mark, patched below
	e.Uint32(xid)
	e.Uint32(rpcCall)
	e.Uint32(rpcVersion)
	e.Uint32(nfsProgram)
	e.Uint32(nfsVersion)
	e.Uint32(procCompound)
	encodeAuthSys(e, cred)
	e.Uint32(authNone)
	e.Uint32(0)
	n := len(e.buf) - 4
	for _, a := range args {
		n += len(a)
	}
	binary.BigEndian.PutUint32(e.buf, 0x80000000|uint32(n))

	bufs := append(net.Buffers{e.buf}, args...)
	c.wmu.Lock()
	_, err := bufs.WriteTo(c.nc)
	c.wmu.Unlock()
	if err != nil {
		c.close(err)
		// close delivered the ConnError to pc (if it was still pending).
	}
	return pc, nil
}

func (c *rpcConn) readLoop() {
	r := bufio.NewReaderSize(c.nc, 256<<10)
	var hdr [4]byte
	for {
		var rec []byte
		for {
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				c.close(err)
				return
			}
			m := binary.BigEndian.Uint32(hdr[:])
			n := int(m & 0x7fffffff)
			if len(rec)+n > maxRecordSize {
				c.close(fmt.Errorf("rpc record of %d bytes too large", len(rec)+n))
				return
			}
			start := len(rec)
			if rec == nil {
				rec = make([]byte, n)
			} else {
				rec = append(rec, make([]byte, n)...)
			}
			if _, err := io.ReadFull(r, rec[start:]); err != nil {
				c.close(err)
				return
			}
			if m&0x80000000 != 0 {
				break
			}
		}
		if len(rec) < 8 {
			c.close(errors.New("short rpc record"))
			return
		}
		xid := binary.BigEndian.Uint32(rec)
		if binary.BigEndian.Uint32(rec[4:]) != rpcReply {
			continue // a callback call: we offer no back channel
		}
		c.mu.Lock()
		pc := c.pending[xid]
		delete(c.pending, xid)
		c.mu.Unlock()
		if pc == nil {
			continue
		}
		body, err := parseReply(rec[8:])
		pc.done <- rpcResult{body: body, err: err}
	}
}

// parseReply checks an RPC reply header and returns the procedure's result.
func parseReply(b []byte) ([]byte, error) {
	d := NewDecoder(b)
	switch d.Uint32() {
	case 0: // MSG_ACCEPTED
		d.Uint32()    // verifier flavor
		d.Opaque(400) // verifier body
		stat := d.Uint32()
		if d.Err() != nil {
			return nil, d.Err()
		}
		switch stat {
		case 0:
			return b[d.off:], nil
		case 1:
			return nil, &RPCError{"program unavailable"}
		case 2:
			return nil, &RPCError{fmt.Sprintf("program version mismatch (%d-%d)", d.Uint32(), d.Uint32())}
		case 3:
			return nil, &RPCError{"procedure unavailable"}
		case 4:
			return nil, &RPCError{"garbage arguments"}
		default:
			return nil, &RPCError{fmt.Sprintf("accept status %d", stat)}
		}
	case 1: // MSG_DENIED
		if d.Uint32() == 0 {
			return nil, &RPCError{"rpc version mismatch"}
		}
		return nil, &RPCError{fmt.Sprintf("authentication error %d", d.Uint32())}
	default:
		return nil, errors.New("rpc: bad reply status")
	}
}
