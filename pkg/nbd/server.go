package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// Request is one transmission-phase request, as an Export's Admit sees it.
type Request struct {
	Command uint16
	Flags   uint16
	Offset  uint64
	Length  uint32
}

// Export is what a client opens by name.
type Export struct {
	Name string
	Size int64
	// SizeFunc, if set, is the size instead of Size, asked at every open
	// and for every request's bounds check: an export that grows is seen
	// at once by new opens and by connections already open.
	SizeFunc func() int64
	ReadOnly bool
	Backend  Backend
	// Admit, if set, runs before each request's I/O and may wait (rate
	// limits) or refuse it: an Errno is sent as is, any other error as EIO,
	// and after ESHUTDOWN the connection closes. done, if not nil, runs
	// when the I/O has finished, before the reply is sent.
	Admit func(ctx context.Context, r Request) (done func(), err error)
	// Gone, if set, ends every connection to the export when it is
	// closed: requests not yet admitted fail with ESHUTDOWN and nothing
	// more is read.
	Gone <-chan struct{}
}

// Server serves exports over NBD (fixed newstyle).
type Server struct {
	// Lookup finds the export a client names. auth is what the connection
	// presented with OptAuth (nil if nothing). Return ErrUnknownExport or
	// ErrRefused (wrapped, with a reason the client is told) to refuse.
	Lookup func(ctx context.Context, name string, auth *Auth) (*Export, error)
	// Authenticate checks an OptAuth; nil makes OptAuth unsupported.
	// A refusal should wrap ErrRefused.
	Authenticate func(ctx context.Context, a Auth, remote net.Addr) error
	Logger       *slog.Logger
	// MaxInFlight bounds the requests one connection has in progress
	// (default 256); the reader stops reading beyond it.
	MaxInFlight int
	// HandshakeTimeout bounds the negotiation (default 10 s).
	HandshakeTimeout time.Duration

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("nbd: server closed")

func (s *Server) init() {
	if s.ctx == nil {
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[net.Conn]struct{}{}
	}
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.Default()
	}
	return s.Logger
}

// Serve accepts connections on l until Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	s.init()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	for delay := 5 * time.Millisecond; ; {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(delay)
				delay = min(2*delay, time.Second)
				continue
			}
			return err
		}
		if !s.track(c) {
			c.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.serveConn(c)
		}()
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.init()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Close stops every listener and connection and waits for their
// goroutines. Requests in progress finish their I/O first.
func (s *Server) Close() error {
	s.mu.Lock()
	s.init()
	s.closed = true
	s.cancel()
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) serveConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
		tc.SetKeepAlivePeriod(5 * time.Second)
		tc.SetKeepAlive(true)
	}
	timeout := s.HandshakeTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	c.SetDeadline(time.Now().Add(timeout))
	br := bufio.NewReaderSize(c, 256<<10)
	exp, err := s.negotiate(c, br)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			s.log().Info("nbd handshake ended", "remote", c.RemoteAddr().String(), "err", err)
		}
		return
	}
	c.SetDeadline(time.Time{})
	s.transmit(c, br, exp)
}

// negotiate runs the fixed newstyle handshake until a client opens an
// export (GO or EXPORT_NAME); it returns that export.
func (s *Server) negotiate(c net.Conn, br *bufio.Reader) (*Export, error) {
	hello := make([]byte, 18)
	binary.BigEndian.PutUint64(hello, magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.Write(hello); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(br, cf[:]); err != nil {
		return nil, err
	}
	cflags := binary.BigEndian.Uint32(cf[:])
	if cflags&uint32(flagFixedNewstyle) == 0 {
		return nil, errors.New("client does not speak fixed newstyle")
	}
	noZeroes := cflags&uint32(flagNoZeroes) != 0
	var auth *Auth
	hdr := make([]byte, 16)
	for {
		if _, err := io.ReadFull(br, hdr); err != nil {
			return nil, err
		}
		if binary.BigEndian.Uint64(hdr) != magicOpt {
			return nil, errors.New("bad option magic")
		}
		opt, n := binary.BigEndian.Uint32(hdr[8:]), binary.BigEndian.Uint32(hdr[12:])
		if n > maxOptionData {
			return nil, fmt.Errorf("option %d with %d bytes of data", opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(br, data); err != nil {
			return nil, err
		}
		switch opt {
		case OptAuth:
			if s.Authenticate == nil {
				if err := optReply(c, opt, repErrUnsup, []byte("authentication not enabled")); err != nil {
					return nil, err
				}
				continue
			}
			a, err := unmarshalAuth(data)
			if err == nil {
				err = s.Authenticate(s.ctx, a, c.RemoteAddr())
			}
			if err != nil {
				auth = nil
				if err := optReply(c, opt, refusal(err), []byte(err.Error())); err != nil {
					return nil, err
				}
				continue
			}
			auth = &a
			if err := optReply(c, opt, repAck, nil); err != nil {
				return nil, err
			}
		case optAbort:
			optReply(c, opt, repAck, nil)
			return nil, io.EOF
		case optList:
			// Export names are attachment ids: not for anyone to list.
			if err := optReply(c, opt, repErrPolicy, []byte("listing exports is not allowed")); err != nil {
				return nil, err
			}
		case optExportName:
			exp, err := s.Lookup(s.ctx, string(data), auth)
			if err != nil {
				// This option has no error reply: closing is the answer.
				return nil, fmt.Errorf("export %q: %w", data, err)
			}
			b := make([]byte, 10, 134)
			binary.BigEndian.PutUint64(b, uint64(exp.size()))
			binary.BigEndian.PutUint16(b[8:], transmissionFlags(exp))
			if !noZeroes {
				b = b[:134]
			}
			if _, err := c.Write(b); err != nil {
				return nil, err
			}
			return exp, nil
		case optInfo, optGo:
			name, infos, err := parseInfoRequest(data)
			if err != nil {
				if err := optReply(c, opt, repErrInvalid, []byte(err.Error())); err != nil {
					return nil, err
				}
				continue
			}
			exp, err := s.Lookup(s.ctx, name, auth)
			if err != nil {
				if err := optReply(c, opt, refusal(err), []byte(err.Error())); err != nil {
					return nil, err
				}
				continue
			}
			info := make([]byte, 12)
			binary.BigEndian.PutUint16(info, infoExport)
			binary.BigEndian.PutUint64(info[2:], uint64(exp.size()))
			binary.BigEndian.PutUint16(info[10:], transmissionFlags(exp))
			if err := optReply(c, opt, repInfo, info); err != nil {
				return nil, err
			}
			for _, t := range infos {
				if t == infoBlockSize {
					bs := make([]byte, 14)
					binary.BigEndian.PutUint16(bs, infoBlockSize)
					binary.BigEndian.PutUint32(bs[2:], 1)
					binary.BigEndian.PutUint32(bs[6:], 4096)
					binary.BigEndian.PutUint32(bs[10:], MaxRequest)
					if err := optReply(c, opt, repInfo, bs); err != nil {
						return nil, err
					}
				}
			}
			if err := optReply(c, opt, repAck, nil); err != nil {
				return nil, err
			}
			if opt == optGo {
				return exp, nil
			}
		default:
			if err := optReply(c, opt, repErrUnsup, nil); err != nil {
				return nil, err
			}
		}
	}
}

func refusal(err error) uint32 {
	if errors.Is(err, ErrUnknownExport) {
		return repErrUnknown
	}
	return repErrPolicy
}

func parseInfoRequest(b []byte) (name string, infos []uint16, err error) {
	if len(b) < 6 {
		return "", nil, errors.New("info request too short")
	}
	n := int(binary.BigEndian.Uint32(b))
	if n > len(b)-6 {
		return "", nil, errors.New("info request: name does not fit")
	}
	name, b = string(b[4:4+n]), b[4+n:]
	k := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) != 2*k {
		return "", nil, errors.New("info request: wrong number of info types")
	}
	for i := range k {
		infos = append(infos, binary.BigEndian.Uint16(b[2*i:]))
	}
	return name, infos, nil
}

func optReply(w io.Writer, opt, typ uint32, data []byte) error {
	b := make([]byte, 20, 20+len(data))
	binary.BigEndian.PutUint64(b, magicOptReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	_, err := w.Write(append(b, data...))
	return err
}

func (e *Export) size() int64 {
	if e.SizeFunc != nil {
		return e.SizeFunc()
	}
	return e.Size
}

func transmissionFlags(e *Export) uint16 {
	f := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagCanMultiConn
	if e.ReadOnly {
		f |= FlagReadOnly
	}
	return f
}

// Buffers are pooled in two classes so a 4 KiB request does not pin 1 MiB,
// aligned for FileBackend's direct reads.
var (
	smallBufs = sync.Pool{New: func() any { b := alignedBuf(64 << 10); return &b }}
	largeBufs = sync.Pool{New: func() any { b := alignedBuf(1 << 20); return &b }}
)

func alignedBuf(n int) []byte {
	b := make([]byte, n+DirectAlign)
	i := DirectAlign - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%DirectAlign)
	return b[i : i+n : i+n]
}

func getBuf(n int) (*[]byte, []byte) {
	switch {
	case n <= 64<<10:
		p := smallBufs.Get().(*[]byte)
		return p, (*p)[:n]
	case n <= 1<<20:
		p := largeBufs.Get().(*[]byte)
		return p, (*p)[:n]
	}
	b := make([]byte, n)
	return nil, b
}

func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	if cap(*p) == 64<<10 {
		smallBufs.Put(p)
	} else {
		largeBufs.Put(p)
	}
}

// transmit reads requests and runs each in its own goroutine, so one slow
// request (a FLUSH, a throttled READ) does not hold up the others; replies
// go out in completion order, as the protocol allows, several in one
// write when they complete together (batchWriter).
func (s *Server) transmit(c net.Conn, br *bufio.Reader, exp *Export) {
	max := s.MaxInFlight
	if max <= 0 {
		max = 256
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	bw := newBatchWriter(c)
	var stopOnce sync.Once
	// stop makes the reader return without closing the connection, so
	// replies of requests in progress still go out.
	stop := func() { stopOnce.Do(func() { c.SetReadDeadline(time.Now()) }) }
	if exp.Gone != nil {
		go func() {
			select {
			case <-exp.Gone:
				stop()
			case <-ctx.Done():
			}
		}()
	}
	// Requests run on workers that stay for the connection's life (at most
	// max of them): a goroutine started per request grew its stack on
	// every read, about 7 % of the server's CPU at depth.
	handle := func(j job) {
		errno := s.do(ctx, exp, j.r, j.buf)
		rep := make([]byte, replySize)
		binary.BigEndian.PutUint32(rep, magicSimpleReply)
		binary.BigEndian.PutUint32(rep[4:], uint32(errno))
		binary.BigEndian.PutUint64(rep[8:], j.handle)
		var err error
		if j.r.Command == CmdRead && errno == 0 {
			err = bw.write(j.pooled, rep, j.buf) // bw hands pooled back once sent
		} else {
			putBuf(j.pooled)
			err = bw.write(nil, rep)
		}
		if err != nil || errno == ESHUTDOWN {
			stop()
		}
	}
	jobs := make(chan job)
	var wg sync.WaitGroup
	workers := 0
	run := func(j job) {
		select {
		case jobs <- j: // an idle worker takes it
			return
		default:
		}
		if workers < max {
			workers++
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(j)
				for j := range jobs {
					handle(j)
				}
			}()
			return
		}
		jobs <- j // all max busy: wait for one
	}
	hdr := make([]byte, requestSize)
	for {
		if _, err := io.ReadFull(br, hdr); err != nil {
			break
		}
		if binary.BigEndian.Uint32(hdr) != magicRequest {
			s.log().Info("nbd: bad request magic; closing", "export", exp.Name, "remote", c.RemoteAddr().String())
			break
		}
		r := Request{
			Flags:   binary.BigEndian.Uint16(hdr[4:]),
			Command: binary.BigEndian.Uint16(hdr[6:]),
			Offset:  binary.BigEndian.Uint64(hdr[16:]),
			Length:  binary.BigEndian.Uint32(hdr[24:]),
		}
		handle := binary.BigEndian.Uint64(hdr[8:])
		if r.Command == CmdDisconnect {
			break
		}
		var pooled *[]byte
		var buf []byte
		if r.Command == CmdWrite || r.Command == CmdRead {
			if r.Length > MaxRequest {
				s.log().Info("nbd: request too large; closing", "export", exp.Name, "length", r.Length)
				break
			}
			pooled, buf = getBuf(int(r.Length))
			if r.Command == CmdWrite {
				if err := readPayload(br, c, buf); err != nil {
					putBuf(pooled)
					break
				}
			}
		}
		run(job{r: r, handle: handle, pooled: pooled, buf: buf})
	}
	close(jobs)
	wg.Wait()
}

// job is one request read from the connection, for a worker to run.
type job struct {
	r      Request
	handle uint64
	pooled *[]byte
	buf    []byte
}

// do runs one request and returns the reply's error (0 for success).
func (s *Server) do(ctx context.Context, exp *Export, r Request, buf []byte) Errno {
	if exp.Gone != nil {
		select {
		case <-exp.Gone:
			return ESHUTDOWN
		default:
		}
	}
	switch r.Command {
	case CmdRead, CmdWrite, CmdTrim, CmdWriteZeroes:
		if size := uint64(exp.size()); r.Offset > size || uint64(r.Length) > size-r.Offset {
			return EINVAL
		}
		if r.Command != CmdRead && exp.ReadOnly {
			return EPERM
		}
	case CmdFlush:
	default:
		return EINVAL
	}
	if exp.Admit != nil {
		done, err := exp.Admit(ctx, r)
		if err != nil {
			return toErrno(err)
		}
		if done != nil {
			defer done()
		}
	}
	off, n := int64(r.Offset), int64(r.Length)
	var err error
	switch r.Command {
	case CmdRead:
		var got int
		got, err = exp.Backend.ReadAt(buf, off)
		if errors.Is(err, io.EOF) {
			// An image shorter than its export reads as zeroes.
			clear(buf[got:])
			err = nil
		}
	case CmdWrite:
		_, err = exp.Backend.WriteAt(buf, off)
	case CmdFlush:
		err = exp.Backend.Sync()
	case CmdTrim:
		err = exp.Backend.Trim(off, n)
	case CmdWriteZeroes:
		err = exp.Backend.WriteZeroes(off, n, r.Flags&CmdFlagNoHole != 0)
	}
	if err == nil && r.Flags&CmdFlagFUA != 0 && r.Command != CmdRead && r.Command != CmdFlush {
		err = exp.Backend.Sync()
	}
	if err != nil {
		s.log().Warn("nbd: request failed", "export", exp.Name, "command", commandName(r.Command), "offset", off, "length", n, "err", err)
		return toErrno(err)
	}
	return 0
}

func toErrno(err error) Errno {
	var e Errno
	if errors.As(err, &e) {
		return e
	}
	switch {
	case errors.Is(err, context.Canceled):
		return ESHUTDOWN
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return ENOSPC
	}
	return EIO
}
