package nfs4

import (
	"context"
	"errors"
	"strings"
)

// FH is an NFSv4 file handle.
type FH []byte

// Stateid is an NFSv4 stateid4.
type Stateid struct {
	Seq   uint32
	Other [12]byte
}

// AnonStateid is the all-zero anonymous stateid.
var AnonStateid = Stateid{}

func (e *Encoder) stateid(s Stateid) {
	e.Uint32(s.Seq)
	e.Fixed(s.Other[:])
}

func (d *Decoder) stateid() Stateid {
	var s Stateid
	s.Seq = d.Uint32()
	copy(s.Other[:], d.Fixed(12))
	return s
}

func asStatus(err error, se **StatusError) bool { return errors.As(err, se) }

func isCtxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func (cp *compound) putfh(fh FH) { cp.add(opPutfh, nil).Opaque(fh) }

func (cp *compound) getfh(out *FH) {
	cp.add(opGetfh, func(d *Decoder) error {
		*out = FH(append([]byte(nil), d.Opaque(128)...))
		return d.Err()
	})
}

func (cp *compound) getattr(mask Bitmap, out **Attr) {
	cp.add(opGetattr, func(d *Decoder) (err error) {
		*out, err = DecodeFattr(d)
		return err
	}).Bitmap(mask)
}

func skipChangeInfo(d *Decoder) error {
	d.Bool()
	d.Uint64()
	d.Uint64()
	return d.Err()
}

// LookupPath resolves an absolute path from the server's root (the
// pseudo file system), e.g. "/fsap-0123/sub/dir".
func (c *Client) LookupPath(ctx context.Context, cred Cred, path string) (FH, *Attr, error) {
	cp := newCompound()
	cp.add(opPutrootfh, nil)
	for _, p := range strings.Split(path, "/") {
		if p == "" || p == "." {
			continue
		}
		cp.add(opLookup, nil).String(p)
	}
	var fh FH
	var a *Attr
	cp.getfh(&fh)
	cp.getattr(FileAttrs, &a)
	if err := c.do(ctx, cred, cp); err != nil {
		return nil, nil, err
	}
	return fh, a, nil
}

// GetAttr returns a file's attributes.
func (c *Client) GetAttr(ctx context.Context, cred Cred, fh FH) (*Attr, error) {
	cp := newCompound()
	cp.putfh(fh)
	var a *Attr
	cp.getattr(FileAttrs, &a)
	if err := c.do(ctx, cred, cp); err != nil {
		return nil, err
	}
	return a, nil
}

// StatFS returns the file system's space and file counts.
func (c *Client) StatFS(ctx context.Context, cred Cred, fh FH) (*Attr, error) {
	cp := newCompound()
	cp.putfh(fh)
	var a *Attr
	cp.getattr(FSAttrs, &a)
	if err := c.do(ctx, cred, cp); err != nil {
		return nil, err
	}
	return a, nil
}

// Lookup finds name in dir.
func (c *Client) Lookup(ctx context.Context, cred Cred, dir FH, name string) (FH, *Attr, error) {
	cp := newCompound()
	cp.putfh(dir)
	cp.add(opLookup, nil).String(name)
	var fh FH
	var a *Attr
	cp.getfh(&fh)
	cp.getattr(FileAttrs, &a)
	if err := c.do(ctx, cred, cp); err != nil {
		return nil, nil, err
	}
	return fh, a, nil
}

// Access asks which of the ACCESS bits in mask the caller has.
func (c *Client) Access(ctx context.Context, cred Cred, fh FH, mask uint32) (uint32, error) {
	cp := newCompound()
	cp.putfh(fh)
	var granted uint32
	cp.add(opAccess, func(d *Decoder) error {
		d.Uint32()
		granted = d.Uint32()
		return d.Err()
	}).Uint32(mask)
	err := c.do(ctx, cred, cp)
	return granted, err
}

// CreateMode is OPEN's createhow4 for a new file.
type CreateMode int

const (
	NoCreate  CreateMode = -1
	Unchecked CreateMode = 0 // create, or open the existing file
	Guarded   CreateMode = 1 // create; EXIST if it exists
)

// OpenResult is an open file.
type OpenResult struct {
	FH      FH
	Attr    *Attr
	Stateid Stateid
	Created bool // a create whose EXIST after a replay was taken as ours
}

func (c *Client) encodeOpenHead(e *Encoder, access uint32) {
	e.Uint32(0) // seqid, unused in 4.1
	e.Uint32(access | shareWantNoDeleg)
	e.Uint32(0) // deny none
	e.Uint64(c.currentClientID())
	e.Opaque(c.newOwner())
}

func decodeOpenRes(d *Decoder, sid *Stateid) error {
	*sid = d.stateid()
	skipChangeInfo(d)
	d.Uint32() // rflags
	d.Bitmap() // attrset
	switch dt := d.Uint32(); dt {
	case 0: // none
	case 3: // none_ext
		if why := d.Uint32(); why == 1 || why == 2 {
			d.Bool()
		}
	case 1, 2:
		// A delegation we did not want (no back channel): the server
		// cannot recall it, so it grants none; refuse to go on otherwise.
		return errors.New("nfs4: server granted a delegation that was not asked for")
	default:
		return errors.New("nfs4: bad delegation type")
	}
	return d.Err()
}

// Open opens (and with mode != NoCreate creates) name in dir, in one round
// trip: PUTFH, OPEN, GETFH, GETATTR. A Guarded create that was replayed
// after a server restart and then finds the file is opened without create
// (it was most likely created by our own earlier attempt).
func (c *Client) Open(ctx context.Context, cred Cred, dir FH, name string, access uint32, mode CreateMode, attrs *SetAttr) (*OpenResult, error) {
	build := func(m CreateMode) (*compound, *OpenResult) {
		res := &OpenResult{}
		cp := newCompound()
		cp.mutating = m != NoCreate
		cp.putfh(dir)
		e := cp.add(opOpen, func(d *Decoder) error { return decodeOpenRes(d, &res.Stateid) })
		c.encodeOpenHead(e, access)
		if m == NoCreate {
			e.Uint32(0)
		} else {
			e.Uint32(1)
			e.Uint32(uint32(m))
			attrs.EncodeFattr(e)
		}
		e.Uint32(0) // CLAIM_NULL
		e.String(name)
		cp.getfh(&res.FH)
		cp.getattr(FileAttrs, &res.Attr)
		return cp, res
	}
	cp, res := build(mode)
	err := c.do(ctx, cred, cp)
	if err != nil && mode == Guarded && cp.replayed && IsStatus(err, ErrExist) {
		cp, res = build(NoCreate)
		err = c.do(ctx, cred, cp)
		res.Created = true
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

// OpenFH opens a file by handle (CLAIM_FH) and returns its attributes.
func (c *Client) OpenFH(ctx context.Context, cred Cred, fh FH, access uint32) (*OpenResult, error) {
	res := &OpenResult{FH: fh}
	cp := newCompound()
	cp.putfh(fh)
	e := cp.add(opOpen, func(d *Decoder) error { return decodeOpenRes(d, &res.Stateid) })
	c.encodeOpenHead(e, access)
	e.Uint32(0) // no create
	e.Uint32(4) // CLAIM_FH
	cp.getattr(FileAttrs, &res.Attr)
	if err := c.do(ctx, cred, cp); err != nil {
		return nil, err
	}
	return res, nil
}

// CloseFile releases an open stateid. A stateid the server no longer knows
// (restart, expiry) is not an error: the open is gone either way.
func (c *Client) CloseFile(ctx context.Context, cred Cred, fh FH, sid Stateid) error {
	cp := newCompound()
	cp.putfh(fh)
	e := cp.add(opClose, nil)
	e.Uint32(0)
	e.stateid(sid)
	err := c.do(ctx, cred, cp)
	if IsStatus(err, ErrBadStateid) || IsStatus(err, ErrStaleStateid) || IsStatus(err, ErrExpired) ||
		IsStatus(err, ErrOldStateid) || IsStatus(err, ErrAdminRevoked) || IsStatus(err, ErrDelegRevoked) {
		return nil
	}
	return err
}

// IsBadStateid says that a stateid is no longer valid at the server (it
// restarted, or the state expired or was revoked).
func IsBadStateid(err error) bool {
	for _, s := range []uint32{ErrBadStateid, ErrStaleStateid, ErrExpired, ErrOldStateid, ErrAdminRevoked, ErrDelegRevoked} {
		if IsStatus(err, s) {
			return true
		}
	}
	return false
}

// Read reads up to count bytes at off into buf (which must hold count).
func (c *Client) Read(ctx context.Context, cred Cred, fh FH, sid Stateid, off uint64, buf []byte) (int, bool, error) {
	cp := newCompound()
	cp.putfh(fh)
	var n int
	var eof bool
	e := cp.add(opRead, func(d *Decoder) error {
		eof = d.Bool()
		data := d.Opaque(len(buf))
		n = copy(buf, data)
		return d.Err()
	})
	e.stateid(sid)
	e.Uint64(off)
	e.Uint32(uint32(len(buf)))
	if err := c.do(ctx, cred, cp); err != nil {
		return 0, false, err
	}
	return n, eof, nil
}

// WriteResult is WRITE's answer.
type WriteResult struct {
	Count     uint32
	Committed uint32
	Verf      [8]byte
}

// Write writes data at off with the given stability.
func (c *Client) Write(ctx context.Context, cred Cred, fh FH, sid Stateid, off uint64, data []byte, stable uint32) (WriteResult, error) {
	cp := newCompound()
	cp.putfh(fh)
	var res WriteResult
	e := cp.add(opWrite, func(d *Decoder) error {
		res.Count = d.Uint32()
		res.Committed = d.Uint32()
		copy(res.Verf[:], d.Fixed(8))
		return d.Err()
	})
	e.stateid(sid)
	e.Uint64(off)
	e.Uint32(stable)
	// The data is the tail of the compound, sent from the caller's buffer.
	e.Uint32(uint32(len(data)))
	cp.tail = data
	err := c.do(ctx, cred, cp)
	return res, err
}

// Commit makes unstable writes durable; the verifier tells whether the
// server restarted since the writes (then they may be lost).
func (c *Client) Commit(ctx context.Context, cred Cred, fh FH) ([8]byte, error) {
	cp := newCompound()
	cp.putfh(fh)
	var verf [8]byte
	e := cp.add(opCommit, func(d *Decoder) error {
		copy(verf[:], d.Fixed(8))
		return d.Err()
	})
	e.Uint64(0)
	e.Uint32(0)
	err := c.do(ctx, cred, cp)
	return verf, err
}

// SetAttr changes attributes (sid: the open stateid for a size change,
// or AnonStateid) and returns the new attributes.
func (c *Client) SetAttr(ctx context.Context, cred Cred, fh FH, sid Stateid, s *SetAttr) (*Attr, error) {
	cp := newCompound()
	cp.putfh(fh)
	if !s.empty() {
		e := cp.add(opSetattr, func(d *Decoder) error { d.Bitmap(); return d.Err() })
		e.stateid(sid)
		s.EncodeFattr(e)
	}
	var a *Attr
	cp.getattr(FileAttrs, &a)
	if err := c.do(ctx, cred, cp); err != nil {
		return nil, err
	}
	return a, nil
}

func (c *Client) create(ctx context.Context, cred Cred, dir FH, name string, typ uint32, linkData string, attrs *SetAttr) (FH, *Attr, error) {
	cp := newCompound()
	cp.mutating = true
	cp.putfh(dir)
	e := cp.add(opCreate, func(d *Decoder) error { skipChangeInfo(d); d.Bitmap(); return d.Err() })
	e.Uint32(typ)
	if typ == TypeLnk {
		e.String(linkData)
	}
	e.String(name)
	attrs.EncodeFattr(e)
	var fh FH
	var a *Attr
	cp.getfh(&fh)
	cp.getattr(FileAttrs, &a)
	err := c.do(ctx, cred, cp)
	if err != nil && cp.replayed && IsStatus(err, ErrExist) {
		// Our own earlier attempt, executed by a server that then lost
		// the reply: take what is there if it has the right type.
		fh, a, err2 := c.Lookup(ctx, cred, dir, name)
		if err2 == nil && a.Type == typ {
			return fh, a, nil
		}
	}
	if err != nil {
		return nil, nil, err
	}
	return fh, a, nil
}

// Mkdir creates a directory.
func (c *Client) Mkdir(ctx context.Context, cred Cred, dir FH, name string, attrs *SetAttr) (FH, *Attr, error) {
	return c.create(ctx, cred, dir, name, TypeDir, "", attrs)
}

// Symlink creates a symbolic link to target.
func (c *Client) Symlink(ctx context.Context, cred Cred, dir FH, name, target string, attrs *SetAttr) (FH, *Attr, error) {
	return c.create(ctx, cred, dir, name, TypeLnk, target, attrs)
}

// Remove removes a file or an empty directory. NOENT from a replayed
// attempt counts as success: the first attempt removed it.
func (c *Client) Remove(ctx context.Context, cred Cred, dir FH, name string) error {
	cp := newCompound()
	cp.mutating = true
	cp.putfh(dir)
	cp.add(opRemove, skipChangeInfo).String(name)
	err := c.do(ctx, cred, cp)
	if err != nil && cp.replayed && IsStatus(err, ErrNoent) {
		return nil
	}
	return err
}

// Rename moves srcDir/oldName to dstDir/newName. A replayed attempt that
// finds the source gone (NOENT) counts as success.
func (c *Client) Rename(ctx context.Context, cred Cred, srcDir FH, oldName string, dstDir FH, newName string) error {
	cp := newCompound()
	cp.mutating = true
	cp.putfh(srcDir)
	cp.add(opSavefh, nil)
	cp.putfh(dstDir)
	e := cp.add(opRename, func(d *Decoder) error { skipChangeInfo(d); return skipChangeInfo(d) })
	e.String(oldName)
	e.String(newName)
	err := c.do(ctx, cred, cp)
	if err != nil && cp.replayed && IsStatus(err, ErrNoent) {
		return nil
	}
	return err
}

// Link makes dir/name a new hard link to fh and returns fh's attributes.
// A replayed attempt that finds the name (EXIST) counts as success.
func (c *Client) Link(ctx context.Context, cred Cred, fh FH, dir FH, name string) (*Attr, error) {
	cp := newCompound()
	cp.mutating = true
	cp.putfh(fh)
	cp.add(opSavefh, nil)
	cp.putfh(dir)
	cp.add(opLink, skipChangeInfo).String(name)
	cp.add(opRestorefh, nil)
	var a *Attr
	cp.getattr(FileAttrs, &a)
	err := c.do(ctx, cred, cp)
	if err != nil && cp.replayed && IsStatus(err, ErrExist) {
		return c.GetAttr(ctx, cred, fh)
	}
	return a, err
}

// Readlink returns a symbolic link's target.
func (c *Client) Readlink(ctx context.Context, cred Cred, fh FH) (string, error) {
	cp := newCompound()
	cp.putfh(fh)
	var target string
	cp.add(opReadlink, func(d *Decoder) error { target = d.String(4096); return d.Err() })
	err := c.do(ctx, cred, cp)
	return target, err
}

// DirEntry is one READDIR entry with its attributes (and file handle).
type DirEntry struct {
	Name   string
	Cookie uint64
	Attr   *Attr
}

// ReadDirAttrs is what ReadDir asks for about each entry.
var ReadDirAttrs = func() Bitmap {
	b := append(Bitmap(nil), FileAttrs...)
	b = b.Set(AttrFilehandle)
	return b.Set(AttrRdattrError)
}()

// ReadDir reads one batch of entries after cookie (0: from the start).
func (c *Client) ReadDir(ctx context.Context, cred Cred, dir FH, cookie uint64, verf [8]byte) ([]DirEntry, [8]byte, bool, error) {
	cp := newCompound()
	cp.putfh(dir)
	var ents []DirEntry
	var eof bool
	var nverf [8]byte
	e := cp.add(opReaddir, func(d *Decoder) error {
		copy(nverf[:], d.Fixed(8))
		for d.Bool() {
			var de DirEntry
			de.Cookie = d.Uint64()
			de.Name = d.String(1024)
			a, err := DecodeFattr(d)
			if err != nil {
				return err
			}
			de.Attr = a
			ents = append(ents, de)
		}
		eof = d.Bool()
		return d.Err()
	})
	e.Uint64(cookie)
	e.Fixed(verf[:])
	e.Uint32(64 << 10)  // dircount
	e.Uint32(256 << 10) // maxcount
	e.Bitmap(ReadDirAttrs)
	if err := c.do(ctx, cred, cp); err != nil {
		return nil, nverf, false, err
	}
	return ents, nverf, eof, nil
}
