package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ClientOptions say which export to open and how.
type ClientOptions struct {
	Addr   string // host:port
	Export string
	// Auth, if set, is presented with OptAuth before every open, on the
	// first connection and on every reconnect alike.
	Auth *Auth
	// Connections is how many connections requests are spread over
	// (default 4); the server must advertise CAN_MULTI_CONN for more than 1.
	Connections int
	// Reconnect makes a broken connection be dialled again, for as long as
	// it takes, while its requests wait and are then sent again (a hard
	// mount). A refusal (ErrRefused: fenced, wrong secret) ends it.
	Reconnect   bool
	DialTimeout time.Duration // per attempt, default 5 s
	Logger      *slog.Logger
}

// Client is an open export over one or more connections.
type Client struct {
	o     ClientOptions
	info  Info // as of Dial; size is the current size
	size  atomic.Int64
	slots []*slot
	rr    atomic.Uint64
	// dead is set once the client can never serve again (closed, fenced).
	dead   atomic.Pointer[error]
	dying  chan struct{} // closed when dead is set
	closed chan struct{}
	wg     sync.WaitGroup
	log    *slog.Logger
}

type slot struct {
	mu    sync.Mutex
	conn  *Conn
	ready chan struct{} // closed when conn is set
}

// Dial opens the export on every connection. It fails at once when the
// server refuses; with Reconnect, connections after the first that
// cannot be made yet are retried in the background.
func Dial(ctx context.Context, o ClientOptions) (*Client, error) {
	if o.Connections <= 0 {
		o.Connections = 4
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = 5 * time.Second
	}
	c := &Client{o: o, closed: make(chan struct{}), dying: make(chan struct{}), log: o.Logger}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("server", o.Addr, "export", o.Export)
	first, err := c.dialOne(ctx)
	if err != nil {
		return nil, err
	}
	c.info = first.Info()
	c.size.Store(c.info.Size)
	if c.info.Flags&FlagCanMultiConn == 0 {
		o.Connections, c.o.Connections = 1, 1
	}
	for i := range o.Connections {
		s := &slot{ready: make(chan struct{})}
		c.slots = append(c.slots, s)
		if i == 0 {
			c.install(s, first)
			continue
		}
		cn, err := c.dialOne(ctx)
		if err != nil {
			if !o.Reconnect || errors.Is(err, ErrRefused) {
				c.Close()
				return nil, err
			}
			c.redial(s)
			continue
		}
		c.install(s, cn)
	}
	return c, nil
}

func (c *Client) dialOne(ctx context.Context) (*Conn, error) {
	nc, info, err := DialHandshake(ctx, c.o.Addr, c.o.Export, c.o.Auth, c.o.DialTimeout)
	if err != nil {
		return nil, err
	}
	// An export may grow (RefreshSize takes the new size), never shrink.
	if size := c.size.Load(); info.Size < size {
		nc.Close()
		return nil, fmt.Errorf("nbd: export %q shrank from %d to %d bytes", c.o.Export, size, info.Size)
	}
	return NewConn(nc, info), nil
}

// DialHandshake dials addr (within timeout, default 5 s), sets the TCP
// options an NBD connection wants (no delay, 5 s keepalives) and opens
// export with Handshake. The connection it returns is at the
// transmission phase: Client puts a Conn on it; the kernel NBD attacher
// hands its socket to the kernel.
func DialHandshake(ctx context.Context, addr, export string, auth *Auth, timeout time.Duration) (*net.TCPConn, Info, error) {
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, Info{}, fmt.Errorf("nbd: dial %s: %w", addr, err)
	}
	tc := nc.(*net.TCPConn)
	tc.SetNoDelay(true)
	tc.SetKeepAlivePeriod(5 * time.Second)
	tc.SetKeepAlive(true)
	info, err := Handshake(ctx, tc, export, auth)
	if err != nil {
		tc.Close()
		return nil, Info{}, err
	}
	return tc, info, nil
}

func (c *Client) install(s *slot, cn *Conn) {
	s.mu.Lock()
	s.conn = cn
	close(s.ready)
	s.mu.Unlock()
	// Watch the connection so a break is noticed (and redialled) even
	// when no request is waiting.
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		select {
		case <-cn.Done():
			c.broken(s, cn)
		case <-c.closed:
		}
	}()
}

// broken replaces cn in s, if it is still there, by a redial.
func (c *Client) broken(s *slot, cn *Conn) {
	s.mu.Lock()
	if s.conn != cn {
		s.mu.Unlock()
		return
	}
	s.conn = nil
	s.ready = make(chan struct{})
	s.mu.Unlock()
	cn.Close()
	if !c.o.Reconnect {
		c.kill(ErrDisconnected)
		return
	}
	if c.dead.Load() != nil {
		return
	}
	c.redial(s)
}

func (c *Client) redial(s *slot) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.log.Warn("nbd connection lost; reconnecting, requests wait")
		start := time.Now()
		for delay := 50 * time.Millisecond; ; delay = min(2*delay, time.Second) {
			select {
			case <-c.closed:
				return
			case <-time.After(delay):
			}
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				select {
				case <-c.closed:
				case <-ctx.Done():
				}
				cancel()
			}()
			cn, err := c.dialOne(ctx)
			cancel()
			if err == nil {
				c.log.Info("nbd reconnected", "after", time.Since(start).Round(time.Millisecond))
				c.install(s, cn)
				return
			}
			if errors.Is(err, ErrRefused) {
				c.log.Error("nbd reconnect refused; the export is gone for this client", "err", err)
				c.kill(err)
				return
			}
		}
	}()
}

// kill makes every present and future request fail with err.
func (c *Client) kill(err error) {
	if !c.dead.CompareAndSwap(nil, &err) {
		return
	}
	close(c.dying)
	for _, s := range c.slots {
		s.mu.Lock()
		cn := s.conn
		s.mu.Unlock()
		if cn != nil {
			cn.fail(err)
		}
	}
}

// Info is the export's size and flags.
func (c *Client) Info() Info {
	i := c.info
	i.Size = c.size.Load()
	return i
}

// Size is the export's size in bytes, as of Dial or the last RefreshSize.
func (c *Client) Size() int64 { return c.size.Load() }

// RefreshSize opens the export once more, on a connection of its own
// (with the same Auth), to learn its size now, and makes that the
// client's size: after an export grew, requests up to its new end are
// allowed. It returns the size; an export that shrank is an error.
func (c *Client) RefreshSize(ctx context.Context) (int64, error) {
	cn, err := c.dialOne(ctx)
	if err != nil {
		return 0, err
	}
	size := cn.Info().Size
	cn.Close()
	for {
		old := c.size.Load()
		if size <= old {
			return old, nil
		}
		if c.size.CompareAndSwap(old, size) {
			c.log.Info("nbd export grew", "from", old, "to", size)
			return size, nil
		}
	}
}

// Close disconnects every connection; waiting requests fail.
func (c *Client) Close() error {
	select {
	case <-c.closed:
		return nil
	default:
	}
	c.kill(errors.New("nbd: client closed"))
	close(c.closed)
	for _, s := range c.slots {
		s.mu.Lock()
		cn := s.conn
		s.mu.Unlock()
		if cn != nil {
			cn.Close()
		}
	}
	c.wg.Wait()
	return nil
}

// do sends one request on the next connection, waiting for it to be
// there, and sends it again after a reconnect. Re-sending is safe: every
// command is positional and idempotent, and a caller has not been told
// the first attempt finished.
func (c *Client) do(cmd, flags uint16, off int64, length int, data, dst []byte) error {
	if off < 0 || length < 0 || off+int64(length) > c.size.Load() {
		return EINVAL
	}
	for {
		if e := c.dead.Load(); e != nil {
			return *e
		}
		s := c.slots[c.rr.Add(1)%uint64(len(c.slots))]
		s.mu.Lock()
		cn, ready := s.conn, s.ready
		s.mu.Unlock()
		if cn == nil {
			select {
			case <-ready:
			case <-c.dying:
			}
			continue
		}
		err := cn.Do(cmd, flags, uint64(off), uint32(length), data, dst)
		if err == nil {
			return nil
		}
		if errors.Is(err, ESHUTDOWN) {
			c.kill(fmt.Errorf("export %q: %w", c.o.Export, ESHUTDOWN))
			return ESHUTDOWN
		}
		if !errors.Is(err, ErrDisconnected) || !c.o.Reconnect {
			return err
		}
		c.broken(s, cn)
	}
}

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if err := c.do(CmdRead, 0, off, len(p), nil, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAt writes p at off; the write may not be durable until Flush.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	if err := c.do(CmdWrite, 0, off, len(p), p, nil); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAtFUA writes p at off and returns once it is durable.
func (c *Client) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := c.do(CmdWrite, CmdFlagFUA, off, len(p), p, nil); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush makes every completed write durable.
func (c *Client) Flush() error { return c.do(CmdFlush, 0, 0, 0, nil, nil) }

// Trim discards length bytes at off.
func (c *Client) Trim(off, length int64) error {
	return c.do(CmdTrim, 0, off, int(length), nil, nil)
}
