package nfs4

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// XDR (RFC 4506): big-endian 4-byte units, variable-length data carries
// its length and is padded to a multiple of four bytes.

// Encoder appends XDR items to a byte slice.
type Encoder struct{ buf []byte }

// NewEncoder starts an encoding into b[:0]'s backing array.
func NewEncoder(b []byte) *Encoder { return &Encoder{buf: b[:0]} }

// Bytes is everything encoded so far.
func (e *Encoder) Bytes() []byte { return e.buf }

func (e *Encoder) Uint32(v uint32) { e.buf = binary.BigEndian.AppendUint32(e.buf, v) }
func (e *Encoder) Int32(v int32)   { e.Uint32(uint32(v)) }
func (e *Encoder) Uint64(v uint64) { e.buf = binary.BigEndian.AppendUint64(e.buf, v) }
func (e *Encoder) Int64(v int64)   { e.Uint64(uint64(v)) }

func (e *Encoder) Bool(v bool) {
	if v {
		e.Uint32(1)
	} else {
		e.Uint32(0)
	}
}

// Fixed writes fixed-length opaque data (padded).
func (e *Encoder) Fixed(b []byte) {
	e.buf = append(e.buf, b...)
	e.pad(len(b))
}

// Opaque writes variable-length opaque data.
func (e *Encoder) Opaque(b []byte) {
	e.Uint32(uint32(len(b)))
	e.Fixed(b)
}

func (e *Encoder) String(s string) {
	e.Uint32(uint32(len(s)))
	e.buf = append(e.buf, s...)
	e.pad(len(s))
}

func (e *Encoder) pad(n int) {
	if r := n & 3; r != 0 {
		e.buf = append(e.buf, make([]byte, 4-r)...)
	}
}

// ErrShort is returned when a reply ends before its data.
var ErrShort = errors.New("xdr: short data")

// Decoder reads XDR items; the first error sticks and later reads return
// zero values, so callers check Err once.
type Decoder struct {
	buf []byte
	off int
	err error
}

func NewDecoder(b []byte) *Decoder { return &Decoder{buf: b} }

func (d *Decoder) Err() error { return d.err }

// Remaining is the number of unread bytes.
func (d *Decoder) Remaining() int { return len(d.buf) - d.off }

func (d *Decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *Decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || d.off+n > len(d.buf) {
		d.fail(ErrShort)
		return nil
	}
	b := d.buf[d.off : d.off+n]
	d.off += n
	return b
}

func (d *Decoder) Uint32() uint32 {
	b := d.take(4)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (d *Decoder) Int32() int32 { return int32(d.Uint32()) }

func (d *Decoder) Uint64() uint64 {
	b := d.take(8)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func (d *Decoder) Int64() int64 { return int64(d.Uint64()) }

func (d *Decoder) Bool() bool {
	v := d.Uint32()
	if v > 1 {
		d.fail(fmt.Errorf("xdr: bad bool %d", v))
	}
	return v == 1
}

// Fixed reads n bytes of fixed-length opaque data (and its padding). The
// result aliases the decoder's buffer.
func (d *Decoder) Fixed(n int) []byte {
	b := d.take(n)
	if r := n & 3; r != 0 {
		d.take(4 - r)
	}
	return b
}

// Opaque reads variable-length opaque data of at most max bytes (0: no
// limit). The result aliases the decoder's buffer.
func (d *Decoder) Opaque(max int) []byte {
	n := d.Uint32()
	if d.err != nil {
		return nil
	}
	if (max > 0 && int(n) > max) || int(n) > d.Remaining() {
		d.fail(fmt.Errorf("xdr: opaque of %d bytes too long", n))
		return nil
	}
	return d.Fixed(int(n))
}

func (d *Decoder) String(max int) string { return string(d.Opaque(max)) }
