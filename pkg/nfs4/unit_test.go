package nfs4

import (
	"bytes"
	"context"
	"encoding/hex"
	"syscall"
	"testing"
	"time"
)

func TestXDR_RoundTripAndPadding(t *testing.T) {
	e := NewEncoder(nil)
	e.Uint32(7)
	e.Uint64(1 << 40)
	e.Bool(true)
	e.String("abcde")  // 4 + 5 + 3 pad
	e.Opaque([]byte{}) // 4
	e.Fixed([]byte{1, 2})
	want := "00000007" + "0000010000000000" + "00000001" + "00000005" + "6162636465000000" + "00000000" + "01020000"
	if got := hex.EncodeToString(e.Bytes()); got != want {
		t.Fatalf("encoding\n got %s\nwant %s", got, want)
	}
	d := NewDecoder(e.Bytes())
	if d.Uint32() != 7 || d.Uint64() != 1<<40 || !d.Bool() || d.String(10) != "abcde" || len(d.Opaque(0)) != 0 ||
		!bytes.Equal(d.Fixed(2), []byte{1, 2}) || d.Err() != nil || d.Remaining() != 0 {
		t.Fatalf("decoding failed: %v", d.Err())
	}
}

func TestXDR_ShortAndOversizedDataFail(t *testing.T) {
	d := NewDecoder([]byte{0, 0, 0, 9, 'a'})
	if d.Opaque(0); d.Err() == nil {
		t.Error("opaque longer than the data decoded")
	}
	d = NewDecoder([]byte{0, 0, 0, 3, 'a', 'b', 'c', 0})
	if d.String(2); d.Err() == nil {
		t.Error("string over its limit decoded")
	}
	d = NewDecoder([]byte{0, 0})
	if d.Uint32() != 0 || d.Err() == nil {
		t.Error("short uint32 decoded")
	}
	if d.Uint64(); d.Err() == nil {
		t.Error("error did not stick")
	}
}

func TestAttr_DecodeFattr(t *testing.T) {
	mask := MakeBitmap(AttrType, AttrChange, AttrSize, AttrFileid, AttrMode, AttrNumlinks, AttrOwner, AttrOwnerGroup, AttrTimeModify)
	v := NewEncoder(nil)
	v.Uint32(TypeReg)
	v.Uint64(99)       // change
	v.Uint64(4096)     // size
	v.Uint64(123456)   // fileid
	v.Uint32(0o100644) // mode with type bits: only permission bits kept
	v.Uint32(2)
	v.String("1234")
	v.String("2345@localdomain")
	v.Int64(1700000000)
	v.Uint32(5)
	e := NewEncoder(nil)
	e.Bitmap(mask)
	e.Opaque(v.Bytes())
	a, err := DecodeFattr(NewDecoder(e.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if a.Type != TypeReg || a.Change != 99 || a.Size != 4096 || a.FileID != 123456 || a.Mode != 0o644 || a.Nlink != 2 ||
		a.UID != 1234 || a.GID != 2345 || !a.Mtime.Equal(time.Unix(1700000000, 5)) {
		t.Errorf("decoded %+v", a)
	}
	if !a.Mask.Has(AttrOwner) || a.Mask.Has(AttrSpaceUsed) {
		t.Errorf("mask %v", a.Mask)
	}
	// An attribute that was not asked for (and whose size we do not know)
	// is an error, not garbage.
	e = NewEncoder(nil)
	e.Bitmap(MakeBitmap(60))
	e.Opaque([]byte{0, 0, 0, 0})
	if _, err := DecodeFattr(NewDecoder(e.Bytes())); err == nil {
		t.Error("unknown attribute decoded")
	}
}

func TestAttr_SetAttrEncodingIsAscending(t *testing.T) {
	sz, mode, uid := uint64(10), uint32(0o1755), uint32(42)
	mt := time.Unix(100, 7)
	at := time.Time{} // server time
	s := &SetAttr{Size: &sz, Mode: &mode, UID: &uid, Atime: &at, Mtime: &mt}
	e := NewEncoder(nil)
	s.EncodeFattr(e)
	d := NewDecoder(e.Bytes())
	mask := d.Bitmap()
	for _, b := range []int{AttrSize, AttrMode, AttrOwner, AttrTimeAccessSet, AttrTimeModifySet} {
		if !mask.Has(b) {
			t.Errorf("bit %d missing", b)
		}
	}
	vd := NewDecoder(d.Opaque(0))
	if vd.Uint64() != 10 || vd.Uint32() != 0o1755 || vd.String(10) != "42" || vd.Uint32() != 0 || vd.Uint32() != 1 ||
		vd.Int64() != 100 || vd.Uint32() != 7 || vd.Err() != nil || vd.Remaining() != 0 {
		t.Error("values not in attribute order")
	}
}

func TestParseOwner(t *testing.T) {
	for s, want := range map[string]uint32{"1234": 1234, "1234@example.com": 1234, "root@localdomain": 0, "alice@x": Nobody, "": Nobody} {
		if got, _ := ParseOwner(s); got != want {
			t.Errorf("ParseOwner(%q) = %d, want %d", s, got, want)
		}
	}
}

func TestErrnoMapping(t *testing.T) {
	for st, want := range map[uint32]syscall.Errno{
		ErrNoent: syscall.ENOENT, ErrExist: syscall.EEXIST, ErrAccess: syscall.EACCES, ErrPerm: syscall.EPERM,
		ErrNotempty: syscall.ENOTEMPTY, ErrNotdir: syscall.ENOTDIR, ErrIsdir: syscall.EISDIR, ErrDquot: syscall.EDQUOT,
		ErrNospc: syscall.ENOSPC, ErrRofs: syscall.EROFS, ErrNametoolong: syscall.ENAMETOOLONG, ErrStale: syscall.ESTALE,
		ErrFbig: syscall.EFBIG, ErrInval: syscall.EINVAL, ErrXdev: syscall.EXDEV, ErrServerfault: syscall.EIO,
	} {
		if got := Errno(&StatusError{Status: st}); got != want {
			t.Errorf("status %d -> %v, want %v", st, got, want)
		}
	}
	if Errno(context.Canceled) != syscall.EINTR || Errno(&ConnError{}) != syscall.EIO || Errno(nil) != 0 {
		t.Error("non-status errors")
	}
}

func TestSlotTable_SequenceIDsAndWaiting(t *testing.T) {
	st := newSlotTable(2)
	ctx := context.Background()
	a, _ := st.acquire(ctx)
	b, _ := st.acquire(ctx)
	if a.id == b.id || a.seq != 1 || b.seq != 1 {
		t.Fatalf("slots %+v %+v", a, b)
	}
	// Both busy: the next acquire waits until one is released.
	got := make(chan slot)
	go func() { s, _ := st.acquire(ctx); got <- s }()
	select {
	case <-got:
		t.Fatal("acquired a third slot of two")
	case <-time.After(50 * time.Millisecond):
	}
	st.release(a, true)
	s := <-got
	if s.id != a.id || s.seq != 2 {
		t.Errorf("after an advancing release: %+v, want slot %d seq 2", s, a.id)
	}
	st.release(s, false) // not processed: same sequence id next time
	if s2, _ := st.acquire(ctx); s2.seq != 2 {
		t.Errorf("after a non-advancing release: seq %d", s2.seq)
	} else {
		st.retire(s2)
	}
	st.retire(b)
	if _, err := st.acquire(ctx); err != errNoSlots {
		t.Errorf("all retired: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	st2 := newSlotTable(1)
	st2.acquire(ctx)
	if _, err := st2.acquire(cctx); err != context.Canceled {
		t.Errorf("cancelled wait: %v", err)
	}
}

func TestCompound_DecodeStopsAtFailingOp(t *testing.T) {
	cp := newCompound()
	cp.putfh(FH{1, 2, 3})
	var fh FH
	cp.add(opLookup, nil).String("x")
	cp.getfh(&fh)
	st := newSlotTable(1)
	cp.patchSequence(&session{slots: st}, slot{id: 0, seq: 5}, true)
	if n := len(cp.bytes()[0]); n%4 != 0 {
		t.Fatalf("compound of %d bytes", n)
	}
	r := NewEncoder(nil)
	r.Uint32(ErrNoent)
	r.String("")
	r.Uint32(3)
	r.Uint32(opSequence)
	r.Uint32(OK)
	r.Fixed(make([]byte, 16))
	for i := 0; i < 5; i++ {
		r.Uint32(0)
	}
	r.Uint32(opPutfh)
	r.Uint32(OK)
	r.Uint32(opLookup)
	r.Uint32(ErrNoent)
	seqSt, err := cp.decode(r.Bytes())
	if seqSt != OK || !IsStatus(err, ErrNoent) || Errno(err) != syscall.ENOENT {
		t.Errorf("decode: %d %v", seqSt, err)
	}
}
