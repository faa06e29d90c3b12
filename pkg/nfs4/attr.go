package nfs4

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Attribute numbers (RFC 8881 section 5).
const (
	AttrSupported     = 0
	AttrType          = 1
	AttrChange        = 3
	AttrSize          = 4
	AttrFSID          = 8
	AttrLeaseTime     = 10
	AttrRdattrError   = 11
	AttrFilehandle    = 19
	AttrFileid        = 20
	AttrFilesAvail    = 21
	AttrFilesFree     = 22
	AttrFilesTotal    = 23
	AttrMaxname       = 29
	AttrMaxread       = 30
	AttrMaxwrite      = 31
	AttrMode          = 33
	AttrNumlinks      = 35
	AttrOwner         = 36
	AttrOwnerGroup    = 37
	AttrRawdev        = 41
	AttrSpaceAvail    = 42
	AttrSpaceFree     = 43
	AttrSpaceTotal    = 44
	AttrSpaceUsed     = 45
	AttrTimeAccess    = 47
	AttrTimeAccessSet = 48
	AttrTimeMetadata  = 52
	AttrTimeModify    = 53
	AttrTimeModifySet = 54
)

// Bitmap is an NFSv4 bitmap4.
type Bitmap []uint32

// MakeBitmap sets the given attribute bits.
func MakeBitmap(bits ...int) Bitmap {
	var b Bitmap
	for _, n := range bits {
		b = b.Set(n)
	}
	return b
}

func (b Bitmap) Set(n int) Bitmap {
	for len(b) <= n/32 {
		b = append(b, 0)
	}
	b[n/32] |= 1 << (n % 32)
	return b
}

func (b Bitmap) Has(n int) bool { return n/32 < len(b) && b[n/32]&(1<<(n%32)) != 0 }

func (e *Encoder) Bitmap(b Bitmap) {
	e.Uint32(uint32(len(b)))
	for _, w := range b {
		e.Uint32(w)
	}
}

func (d *Decoder) Bitmap() Bitmap {
	n := d.Uint32()
	if n > 8 {
		d.fail(fmt.Errorf("xdr: bitmap of %d words", n))
		return nil
	}
	b := make(Bitmap, n)
	for i := range b {
		b[i] = d.Uint32()
	}
	return b
}

// FileAttrs is what GETATTR asks for about a file.
var FileAttrs = MakeBitmap(AttrType, AttrChange, AttrSize, AttrFSID, AttrFileid, AttrMode, AttrNumlinks,
	AttrOwner, AttrOwnerGroup, AttrRawdev, AttrSpaceUsed, AttrTimeAccess, AttrTimeMetadata, AttrTimeModify)

// FSAttrs is what StatFS asks for.
var FSAttrs = MakeBitmap(AttrFilesAvail, AttrFilesFree, AttrFilesTotal, AttrMaxname, AttrSpaceAvail, AttrSpaceFree, AttrSpaceTotal)

// Attr is a decoded fattr4. Mask says which fields the server returned.
type Attr struct {
	Mask                              Bitmap
	Type                              uint32
	Change, Size                      uint64
	FSIDMajor, FSIDMinor              uint64
	LeaseTime                         uint32
	RdattrError                       uint32
	FH                                FH
	FileID                            uint64
	FilesAvail, FilesFree, FilesTotal uint64
	MaxName                           uint32
	MaxRead, MaxWrite                 uint64
	Mode                              uint32 // permission bits (07777)
	Nlink                             uint32
	Owner, OwnerGroup                 string
	UID, GID                          uint32 // parsed from Owner, OwnerGroup
	RdevMajor, RdevMinor              uint32
	SpaceAvail, SpaceFree, SpaceTotal uint64
	SpaceUsed                         uint64
	Atime, Ctime, Mtime               time.Time
}

// Nobody is the id an owner string that is not numeric maps to.
const Nobody = 65534

// ParseOwner reads an NFSv4 owner string: "1234", "1234@domain",
// "root@domain" (0); anything else is nobody. Ganesha sends numbers when
// configured with Only_Numeric_Owners.
func ParseOwner(s string) (uint32, bool) {
	name := s
	if i := strings.IndexByte(s, '@'); i >= 0 {
		name = s[:i]
	}
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		return uint32(n), true
	}
	if name == "root" {
		return 0, true
	}
	return Nobody, false
}

func decodeTime(d *Decoder) time.Time {
	s := d.Int64()
	ns := d.Uint32()
	return time.Unix(s, int64(ns))
}

func encodeTime(e *Encoder, t time.Time) {
	e.Int64(t.Unix())
	e.Uint32(uint32(t.Nanosecond()))
}

// DecodeFattr reads a fattr4 (bitmap and attribute values).
func DecodeFattr(d *Decoder) (*Attr, error) {
	mask := d.Bitmap()
	vals := d.Opaque(0)
	if d.Err() != nil {
		return nil, d.Err()
	}
	return decodeAttrVals(mask, vals)
}

func decodeAttrVals(mask Bitmap, vals []byte) (*Attr, error) {
	a := &Attr{Mask: mask}
	d := NewDecoder(vals)
	for w, word := range mask {
		for bit := 0; bit < 32; bit++ {
			if word&(1<<bit) == 0 {
				continue
			}
			n := w*32 + bit
			switch n {
			case AttrSupported:
				d.Bitmap()
			case AttrType:
				a.Type = d.Uint32()
			case 2: // fh_expire_type
				d.Uint32()
			case AttrChange:
				a.Change = d.Uint64()
			case AttrSize:
				a.Size = d.Uint64()
			case 5, 6, 7, 9: // link_support, symlink_support, named_attr, unique_handles
				d.Bool()
			case AttrFSID:
				a.FSIDMajor = d.Uint64()
				a.FSIDMinor = d.Uint64()
			case AttrLeaseTime:
				a.LeaseTime = d.Uint32()
			case AttrRdattrError:
				a.RdattrError = d.Uint32()
			case AttrFilehandle:
				a.FH = FH(append([]byte(nil), d.Opaque(128)...))
			case AttrFileid:
				a.FileID = d.Uint64()
			case AttrFilesAvail:
				a.FilesAvail = d.Uint64()
			case AttrFilesFree:
				a.FilesFree = d.Uint64()
			case AttrFilesTotal:
				a.FilesTotal = d.Uint64()
			case AttrMaxname:
				a.MaxName = d.Uint32()
			case AttrMaxread:
				a.MaxRead = d.Uint64()
			case AttrMaxwrite:
				a.MaxWrite = d.Uint64()
			case AttrMode:
				a.Mode = d.Uint32() & 07777
			case AttrNumlinks:
				a.Nlink = d.Uint32()
			case AttrOwner:
				a.Owner = d.String(1024)
				a.UID, _ = ParseOwner(a.Owner)
			case AttrOwnerGroup:
				a.OwnerGroup = d.String(1024)
				a.GID, _ = ParseOwner(a.OwnerGroup)
			case AttrRawdev:
				a.RdevMajor = d.Uint32()
				a.RdevMinor = d.Uint32()
			case AttrSpaceAvail:
				a.SpaceAvail = d.Uint64()
			case AttrSpaceFree:
				a.SpaceFree = d.Uint64()
			case AttrSpaceTotal:
				a.SpaceTotal = d.Uint64()
			case AttrSpaceUsed:
				a.SpaceUsed = d.Uint64()
			case AttrTimeAccess:
				a.Atime = decodeTime(d)
			case AttrTimeMetadata:
				a.Ctime = decodeTime(d)
			case AttrTimeModify:
				a.Mtime = decodeTime(d)
			default:
				return nil, fmt.Errorf("nfs4: server returned attribute %d, which was not asked for", n)
			}
		}
	}
	if d.Err() != nil {
		return nil, fmt.Errorf("nfs4: attributes: %w", d.Err())
	}
	return a, nil
}

// SetAttr is what SETATTR (or a create) sets; nil fields are left alone.
type SetAttr struct {
	Size         *uint64
	Mode         *uint32
	UID, GID     *uint32
	Atime, Mtime *time.Time // a zero time means "the server's now"
}

func (s *SetAttr) empty() bool {
	return s == nil || (s.Size == nil && s.Mode == nil && s.UID == nil && s.GID == nil && s.Atime == nil && s.Mtime == nil)
}

// EncodeFattr writes s as a fattr4.
func (s *SetAttr) EncodeFattr(e *Encoder) {
	var mask Bitmap
	v := NewEncoder(nil)
	if s != nil {
		if s.Size != nil {
			mask = mask.Set(AttrSize)
			v.Uint64(*s.Size)
		}
		if s.Mode != nil {
			mask = mask.Set(AttrMode)
			v.Uint32(*s.Mode & 07777)
		}
		if s.UID != nil {
			mask = mask.Set(AttrOwner)
			v.String(strconv.FormatUint(uint64(*s.UID), 10))
		}
		if s.GID != nil {
			mask = mask.Set(AttrOwnerGroup)
			v.String(strconv.FormatUint(uint64(*s.GID), 10))
		}
		setTime := func(t *time.Time) {
			if t.IsZero() {
				v.Uint32(0) // SET_TO_SERVER_TIME4
			} else {
				v.Uint32(1)
				encodeTime(v, *t)
			}
		}
		if s.Atime != nil {
			mask = mask.Set(AttrTimeAccessSet)
			setTime(s.Atime)
		}
		if s.Mtime != nil {
			mask = mask.Set(AttrTimeModifySet)
			setTime(s.Mtime)
		}
	}
	e.Bitmap(mask)
	e.Opaque(v.Bytes())
}
