package nfs4

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

const seqHeader = 48 // tag, minor version, op count, SEQUENCE op

// compound is a COMPOUND's operations and the decoders of their results.
// The first seqHeader bytes are reserved for the header and SEQUENCE,
// which are filled in for each attempt.
type compound struct {
	e    *Encoder
	ops  []uint32
	decs []func(*Decoder) error
	// mutating: the compound changes the file system, so the server is
	// asked to cache the reply for a replay.
	mutating bool
	// replayed: a previous attempt may have been executed by a server
	// instance (or session) whose reply we never got, so an EXIST or
	// NOENT may be the result of our own earlier attempt.
	replayed  bool
	sequenced bool
	// tail is bulk data (WRITE's) sent after the encoded bytes without
	// being copied into them; it must be the end of the last operation.
	tail []byte
}

func newCompound() *compound {
	return &compound{e: &Encoder{buf: make([]byte, seqHeader, 512)}}
}

// add appends an operation; dec decodes its result when the status is
// NFS4_OK (nil: nothing more than the status). It returns the encoder for
// the operation's arguments.
func (c *compound) add(op uint32, dec func(*Decoder) error) *Encoder {
	c.e.Uint32(op)
	c.ops = append(c.ops, op)
	c.decs = append(c.decs, dec)
	return c.e
}

func (c *compound) patchSequence(s *session, sl slot, cachethis bool) {
	b := c.e.buf
	binary.BigEndian.PutUint32(b[0:], 0) // tag
	binary.BigEndian.PutUint32(b[4:], 1) // minor version
	binary.BigEndian.PutUint32(b[8:], uint32(len(c.ops)+1))
	binary.BigEndian.PutUint32(b[12:], opSequence)
	copy(b[16:32], s.id[:])
	binary.BigEndian.PutUint32(b[32:], sl.seq)
	binary.BigEndian.PutUint32(b[36:], sl.id)
	binary.BigEndian.PutUint32(b[40:], s.slots.highest())
	v := uint32(0)
	if cachethis {
		v = 1
	}
	binary.BigEndian.PutUint32(b[44:], v)
	c.sequenced = true
}

var zeroPad [4]byte

func (c *compound) bytes() [][]byte {
	b := c.e.buf
	if !c.sequenced {
		b = c.e.buf[36:]
		binary.BigEndian.PutUint32(b[0:], 0)
		binary.BigEndian.PutUint32(b[4:], 1)
		binary.BigEndian.PutUint32(b[8:], uint32(len(c.ops)))
	}
	if c.tail == nil {
		return [][]byte{b}
	}
	out := [][]byte{b, c.tail}
	if r := len(c.tail) & 3; r != 0 {
		out = append(out, zeroPad[:4-r])
	}
	return out
}

// decode reads a COMPOUND reply. seqStatus is SEQUENCE's status (OK for a
// compound without SEQUENCE); err is the first failing operation's status
// or a decoding error.
func (c *compound) decode(body []byte) (seqStatus uint32, err error) {
	d := NewDecoder(body)
	d.Uint32() // compound status
	d.Opaque(1024)
	n := int(d.Uint32())
	if d.Err() != nil {
		return ErrServerfault, fmt.Errorf("nfs4: bad compound reply: %w", d.Err())
	}
	i := 0
	if c.sequenced {
		if n == 0 {
			return ErrServerfault, errors.New("nfs4: empty compound reply")
		}
		op, st := d.Uint32(), d.Uint32()
		if op != opSequence {
			return ErrServerfault, fmt.Errorf("nfs4: reply starts with op %d, not SEQUENCE", op)
		}
		if st != OK {
			return st, &StatusError{Status: st, Op: opSequence}
		}
		d.Fixed(16)
		for k := 0; k < 5; k++ {
			d.Uint32()
		}
		n--
	}
	for ; i < n; i++ {
		op, st := d.Uint32(), d.Uint32()
		if d.Err() != nil {
			return OK, fmt.Errorf("nfs4: bad compound reply: %w", d.Err())
		}
		if i >= len(c.ops) || op != c.ops[i] {
			return OK, fmt.Errorf("nfs4: reply op %d does not match request", op)
		}
		if st != OK {
			return OK, &StatusError{Status: st, Op: op}
		}
		if dec := c.decs[i]; dec != nil {
			if err := dec(d); err != nil {
				return OK, err
			}
			if d.Err() != nil {
				return OK, fmt.Errorf("nfs4: bad reply to op %d: %w", op, d.Err())
			}
		}
	}
	if n < len(c.ops) {
		return OK, fmt.Errorf("nfs4: reply has %d of %d results", n, len(c.ops))
	}
	return OK, nil
}

// roundTrip sends cp once on conn and decodes the reply; for session
// set-up, where no retry policy applies.
func (c *Client) roundTrip(ctx context.Context, conn *rpcConn, cred Cred, cp *compound) (seqOK bool, err error) {
	pc, err := conn.start(cred, cp.bytes())
	if err != nil {
		return false, err
	}
	select {
	case r := <-pc.done:
		if r.err != nil {
			return false, r.err
		}
		st, err := cp.decode(r.body)
		return st == OK, err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// do runs a compound with hard-mount semantics: it returns only with the
// server's answer, an error that retrying cannot fix, or when ctx ends.
//
//   - Connection lost: the request is sent again on the same slot with the
//     same sequence id once reconnected; if the server had executed it, its
//     reply cache answers (exactly once within a session).
//   - BADSESSION/DEADSESSION, STALE_CLIENTID/EXPIRED: a new session (and
//     client id) is established and the request sent as a new one; if it
//     had been sent before, cp.replayed is set so that callers can read an
//     EXIST/NOENT as the possible effect of their own earlier attempt.
//   - DELAY, GRACE: wait and retry.
func (c *Client) do(ctx context.Context, cred Cred, cp *compound) error {
	delay := 50 * time.Millisecond
	backoff := func() error {
		err := sleepCtx(ctx, delay)
		if delay *= 2; delay > time.Second {
			delay = time.Second
		}
		return err
	}
	for {
		conn, sess, err := c.state(ctx)
		if err != nil {
			return err
		}
		sl, err := sess.slots.acquire(ctx)
		if errors.Is(err, errNoSlots) {
			c.invalidateSession(sess, "all slots retired")
			continue
		}
		if err != nil {
			return err
		}
		sent := false
	slotLoop:
		for {
			cp.patchSequence(sess, sl, cp.mutating)
			pc, err := conn.start(cred, cp.bytes())
			if err != nil {
				sess.slots.release(sl, false) // never sent
				c.connFailed(conn, err)
				break slotLoop
			}
			var r rpcResult
			select {
			case r = <-pc.done:
			case <-ctx.Done():
				go c.abandon(sess, sl, pc, cp)
				return ctx.Err()
			}
			var ce *ConnError
			if errors.As(r.err, &ce) {
				sent = true
				c.connFailed(conn, r.err)
				conn2, sess2, err := c.state(ctx)
				if err != nil {
					sess.slots.retire(sl)
					return err
				}
				if sess2 != sess {
					// The old session is gone with its slot.
					cp.replayed = cp.replayed || cp.mutating
					break slotLoop
				}
				conn = conn2
				continue
			}
			if r.err != nil {
				sess.slots.release(sl, false)
				return r.err
			}
			seqSt, err := cp.decode(r.body)
			switch seqSt {
			case OK:
				sess.slots.release(sl, true)
			case ErrBadsession, ErrDeadsession, ErrConnNotBound:
				c.invalidateSession(sess, statusNames[seqSt])
				cp.replayed = cp.replayed || (sent && cp.mutating)
				break slotLoop
			case ErrStaleClientid, ErrExpired:
				c.invalidateClient(sess, statusNames[seqSt])
				cp.replayed = cp.replayed || (sent && cp.mutating)
				break slotLoop
			case ErrSeqMisordered, ErrBadslot, ErrSeqFalseRetry, ErrBadHighSlot:
				sess.slots.retire(sl)
				cp.replayed = cp.replayed || (sent && cp.mutating)
				break slotLoop
			case ErrDelay:
				if err := backoff(); err != nil {
					sess.slots.retire(sl)
					return err
				}
				continue
			case ErrRetryUncachedRep:
				// Executed before, reply not kept: send it as a new request.
				sess.slots.release(sl, true)
				cp.replayed = cp.replayed || cp.mutating
				break slotLoop
			default:
				sess.slots.release(sl, false)
				return err
			}
			// SEQUENCE succeeded; look at the operations.
			var se *StatusError
			if errors.As(err, &se) {
				switch se.Status {
				case ErrDelay, ErrGrace:
					if se.Status == ErrGrace {
						delay = time.Second
					}
					if err := backoff(); err != nil {
						return err
					}
					break slotLoop
				case ErrRetryUncachedRep:
					// A replay of a request the server executed without
					// keeping the reply (ganesha answers so at the first
					// operation after SEQUENCE): send it again as new.
					cp.replayed = cp.replayed || cp.mutating
					break slotLoop
				case ErrStaleClientid, ErrExpired:
					c.invalidateClient(sess, statusNames[se.Status])
					break slotLoop
				case ErrBadsession, ErrDeadsession:
					c.invalidateSession(sess, statusNames[se.Status])
					break slotLoop
				}
			}
			return err
		}
	}
}

// abandon finishes the bookkeeping of a request whose caller gave up.
func (c *Client) abandon(s *session, sl slot, pc *pendingCall, cp *compound) {
	r := <-pc.done
	if r.err != nil {
		s.slots.retire(sl)
		return
	}
	if st, _ := cp.decode(r.body); st == OK {
		s.slots.release(sl, true)
	} else {
		s.slots.retire(sl)
	}
}
