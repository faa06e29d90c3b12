package nfs4

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Config says which server to talk to and as which client.
type Config struct {
	// Server is host:port.
	Server string
	// Owner is the client owner string (EXCHANGE_ID co_ownerid), unique
	// per client instance that holds its own state, e.g. one per mount.
	Owner string
	// Slots is the fore channel's slot count (concurrent requests), 32 by
	// default.
	Slots int
	// MaxIO caps READ and WRITE sizes; 1 MiB by default. The session's
	// and the file system's limits may lower it.
	MaxIO  int
	Logger *slog.Logger
}

var (
	// ErrClosed is returned by calls on a closed client.
	ErrClosed  = errors.New("nfs4: client closed")
	errNoSlots = errors.New("nfs4: every slot of the session was retired")
)

type session struct {
	id       [16]byte
	clientID uint64
	slots    *slotTable
	maxReq   uint32
	maxResp  uint32
}

// Client is an NFSv4.1 client over one TCP connection, with hard-mount
// semantics: calls are retried until their context ends, across lost
// connections, server restarts (new client id and session), DELAY and GRACE.
type Client struct {
	cfg      Config
	log      *slog.Logger
	verifier [8]byte

	mu           sync.Mutex
	conn         *rpcConn
	sess         *session
	haveClientID bool
	clientID     uint64
	csSeq        uint32
	repairing    chan struct{}
	closed       bool
	lease        time.Duration
	ioSize       int
	everUp       bool

	closeCh chan struct{}
	bg      context.Context // ends at Close: background calls (renewal)
	stopBg  context.CancelFunc
	wg      sync.WaitGroup

	ownerSeq uint64 // open owners, under mu
}

// Dial creates a client and waits (until ctx ends) for the server to
// answer and a session to be established. It then keeps the lease alive
// in the background until Close.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Slots <= 0 {
		cfg.Slots = 32
	}
	if cfg.MaxIO <= 0 {
		cfg.MaxIO = 1 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Owner == "" {
		return nil, errors.New("nfs4: no client owner")
	}
	c := &Client{cfg: cfg, log: cfg.Logger.With("server", cfg.Server), closeCh: make(chan struct{}), lease: 60 * time.Second, ioSize: cfg.MaxIO}
	c.bg, c.stopBg = context.WithCancel(context.Background())
	if _, err := rand.Read(c.verifier[:]); err != nil {
		return nil, err
	}
	if _, _, err := c.state(ctx); err != nil {
		c.Close()
		return nil, err
	}
	c.wg.Add(1)
	go c.renew()
	return c, nil
}

// IOSize is the largest READ or WRITE this client sends.
func (c *Client) IOSize() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ioSize
}

// state returns a live connection and session, waiting for a repair.
func (c *Client) state(ctx context.Context) (*rpcConn, *session, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, nil, ErrClosed
		}
		if c.conn != nil && c.sess != nil {
			conn, sess := c.conn, c.sess
			c.mu.Unlock()
			return conn, sess, nil
		}
		if c.repairing == nil {
			c.repairing = make(chan struct{})
			go c.repair(c.repairing)
		}
		ch := c.repairing
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-ch:
		}
	}
}

func (c *Client) connFailed(conn *rpcConn, err error) {
	c.mu.Lock()
	if c.conn == conn {
		c.conn = nil
		if !c.closed {
			c.log.Warn("nfs connection lost; reconnecting", "err", err)
		}
	}
	c.mu.Unlock()
	conn.close(errors.New("connection abandoned"))
}

func (c *Client) invalidateSession(s *session, why string) {
	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
		c.log.Warn("nfs session lost; establishing a new one", "reason", why)
	}
	c.mu.Unlock()
}

func (c *Client) invalidateClient(s *session, why string) {
	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
		if c.clientID == s.clientID {
			c.haveClientID = false
		}
		c.log.Warn("nfs client id lost (server restarted?); establishing a new one", "reason", why)
	}
	c.mu.Unlock()
}

// repair (re)connects and (re)establishes the session, with backoff.
func (c *Client) repair(done chan struct{}) {
	defer func() {
		c.mu.Lock()
		c.repairing = nil
		c.mu.Unlock()
		close(done)
	}()
	backoff := 100 * time.Millisecond
	failures := 0
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		conn := c.conn
		c.mu.Unlock()
		err := func() error {
			if conn == nil {
				nc, err := dialRPC(c.cfg.Server, 5*time.Second)
				if err != nil {
					return err
				}
				c.mu.Lock()
				c.conn = nc
				c.mu.Unlock()
				conn = nc
				c.log.Info("nfs connected", "after_failures", failures)
			}
			c.mu.Lock()
			have := c.sess != nil
			c.mu.Unlock()
			if have {
				return nil
			}
			return c.establish(conn)
		}()
		if err == nil {
			return
		}
		var ce *ConnError
		if errors.As(err, &ce) && conn != nil {
			c.connFailed(conn, err)
		}
		if failures == 0 || failures%20 == 0 {
			c.log.Warn("nfs server not reachable yet; retrying", "err", err, "attempt", failures+1)
		}
		failures++
		select {
		case <-c.closeCh:
			return
		case <-time.After(backoff):
		}
		if backoff *= 2; backoff > 3*time.Second {
			backoff = 3 * time.Second
		}
	}
}

// establish runs EXCHANGE_ID (when needed), CREATE_SESSION and
// RECLAIM_COMPLETE on conn.
func (c *Client) establish(conn *rpcConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for attempt := 0; ; attempt++ {
		if attempt > 5 {
			return errors.New("nfs4: could not create a session")
		}
		c.mu.Lock()
		have, clientID, seq := c.haveClientID, c.clientID, c.csSeq
		c.mu.Unlock()
		if !have {
			var err error
			clientID, seq, err = c.exchangeID(ctx, conn)
			if err != nil {
				return err
			}
			c.mu.Lock()
			if c.everUp && clientID != c.clientID {
				c.log.Warn("nfs server forgot this client (restart); new client id", "client_id", fmt.Sprintf("%016x", clientID))
			}
			c.haveClientID, c.clientID, c.csSeq = true, clientID, seq
			c.mu.Unlock()
		}
		s, err := c.createSession(ctx, conn, clientID, seq)
		if IsStatus(err, ErrStaleClientid) || IsStatus(err, ErrSeqMisordered) || IsStatus(err, ErrExpired) {
			c.mu.Lock()
			c.haveClientID = false
			c.mu.Unlock()
			continue
		}
		if IsStatus(err, ErrDelay) {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.csSeq = seq + 1
		c.mu.Unlock()
		// RECLAIM_COMPLETE: we reclaim nothing; a server in grace may then
		// admit our new opens once grace ends. Also learns the lease time
		// and I/O limits.
		cp := newCompound()
		cp.add(opReclaimComplete, nil).Bool(false)
		cp.add(opPutrootfh, nil)
		var a *Attr
		cp.add(opGetattr, func(d *Decoder) (err error) { a, err = DecodeFattr(d); return }).Bitmap(MakeBitmap(AttrLeaseTime, AttrMaxread, AttrMaxwrite))
		cp.patchSequence(s, slot{id: 0, seq: 1}, false)
		seqOK, err := c.roundTrip(ctx, conn, RootCred, cp)
		if err != nil && !IsStatus(err, ErrCompleteAlready) {
			return err
		}
		if seqOK {
			s.slots.seq[0] = 2
		}
		if err == nil || IsStatus(err, ErrCompleteAlready) {
			if IsStatus(err, ErrCompleteAlready) {
				// Stopped at RECLAIM_COMPLETE: fetch limits separately.
				cp2 := newCompound()
				cp2.add(opPutrootfh, nil)
				cp2.add(opGetattr, func(d *Decoder) (err error) { a, err = DecodeFattr(d); return }).Bitmap(MakeBitmap(AttrLeaseTime, AttrMaxread, AttrMaxwrite))
				cp2.patchSequence(s, slot{id: 0, seq: s.slots.seq[0]}, false)
				if ok, err := c.roundTrip(ctx, conn, RootCred, cp2); err != nil {
					return err
				} else if ok {
					s.slots.seq[0]++
				}
			}
		}
		c.mu.Lock()
		if a != nil {
			if a.LeaseTime > 0 {
				c.lease = time.Duration(a.LeaseTime) * time.Second
			}
			io := c.cfg.MaxIO
			lim := func(v int) {
				if v > 0 && v < io {
					io = v
				}
			}
			lim(int(a.MaxRead))
			lim(int(a.MaxWrite))
			lim(int(s.maxReq) - 1024)
			lim(int(s.maxResp) - 1024)
			c.ioSize = io
		}
		c.sess = s
		c.everUp = true
		c.log.Info("nfs session established", "client_id", fmt.Sprintf("%016x", clientID), "slots", len(s.slots.seq),
			"io_size", c.ioSize, "lease", c.lease)
		c.mu.Unlock()
		return nil
	}
}

func (c *Client) exchangeID(ctx context.Context, conn *rpcConn) (uint64, uint32, error) {
	cp := newCompound()
	var clientID uint64
	var seq uint32
	e := cp.add(opExchangeID, func(d *Decoder) error {
		clientID = d.Uint64()
		seq = d.Uint32()
		return d.Err() // the rest (flags, server owner, scope, impl id) is not needed
	})
	e.Fixed(c.verifier[:])
	e.Opaque([]byte(c.cfg.Owner))
	e.Uint32(0x00010000) // EXCHGID4_FLAG_USE_NON_PNFS
	e.Uint32(0)          // SP4_NONE
	e.Uint32(0)          // no implementation id
	_, err := c.roundTrip(ctx, conn, RootCred, cp)
	return clientID, seq, err
}

func encodeChannelAttrs(e *Encoder, maxReq, maxResp, maxCached, maxOps, maxReqs uint32) {
	e.Uint32(0) // header pad
	e.Uint32(maxReq)
	e.Uint32(maxResp)
	e.Uint32(maxCached)
	e.Uint32(maxOps)
	e.Uint32(maxReqs)
	e.Uint32(0) // no RDMA ird
}

func (c *Client) createSession(ctx context.Context, conn *rpcConn, clientID uint64, seq uint32) (*session, error) {
	cp := newCompound()
	s := &session{clientID: clientID}
	var slots uint32
	e := cp.add(opCreateSession, func(d *Decoder) error {
		copy(s.id[:], d.Fixed(16))
		d.Uint32() // sequence
		d.Uint32() // flags
		d.Uint32() // header pad
		s.maxReq = d.Uint32()
		s.maxResp = d.Uint32()
		d.Uint32() // max cached
		d.Uint32() // max ops
		slots = d.Uint32()
		return d.Err()
	})
	io := uint32(c.cfg.MaxIO)
	e.Uint64(clientID)
	e.Uint32(seq)
	e.Uint32(0) // no persistence, no back channel
	encodeChannelAttrs(e, io+64<<10, io+64<<10, 64<<10, 16, uint32(c.cfg.Slots))
	encodeChannelAttrs(e, 4096, 4096, 0, 2, 1)
	e.Uint32(0x40000000) // callback program (unused)
	e.Uint32(1)
	e.Uint32(authNone)
	if _, err := c.roundTrip(ctx, conn, RootCred, cp); err != nil {
		return nil, err
	}
	if slots == 0 || slots > uint32(c.cfg.Slots) {
		slots = uint32(c.cfg.Slots)
	}
	s.slots = newSlotTable(int(slots))
	return s, nil
}

// renew sends a SEQUENCE every lease/3 so that the lease (and with it the
// open state) does not expire while the mount is idle.
func (c *Client) renew() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		d := c.lease / 3
		c.mu.Unlock()
		select {
		case <-c.closeCh:
			return
		case <-time.After(d):
		}
		ctx, cancel := context.WithTimeout(c.bg, 2*d)
		err := c.do(ctx, RootCred, newCompound())
		cancel()
		if err != nil && !errors.Is(err, ErrClosed) && c.bg.Err() == nil {
			c.log.Warn("nfs lease renewal failed", "err", err)
		}
	}
}

// Close destroys the session and the client id and closes the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.closeCh)
	conn, sess := c.conn, c.sess
	c.mu.Unlock()
	c.stopBg()
	c.wg.Wait()
	if conn != nil && sess != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cp := newCompound()
		cp.add(opDestroySession, nil).Fixed(sess.id[:])
		if _, err := c.roundTrip(ctx, conn, RootCred, cp); err == nil {
			cp = newCompound()
			cp.add(opDestroyClientID, nil).Uint64(sess.clientID)
			_, _ = c.roundTrip(ctx, conn, RootCred, cp)
		}
	}
	if conn != nil {
		conn.close(ErrClosed)
	}
	return nil
}

// newOwner returns a unique open owner: every open gets its own, so that
// each FUSE file handle has its own open stateid.
func (c *Client) newOwner() []byte {
	c.mu.Lock()
	c.ownerSeq++
	n := c.ownerSeq
	c.mu.Unlock()
	b := make([]byte, 16)
	copy(b, c.verifier[:])
	binary.BigEndian.PutUint64(b[8:], n)
	return b
}

func (c *Client) currentClientID() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clientID
}

// String names the client in logs.
func (c *Client) String() string {
	return fmt.Sprintf("nfs4 client %s@%s (%s)", c.cfg.Owner, c.cfg.Server, hex.EncodeToString(c.verifier[:4]))
}
