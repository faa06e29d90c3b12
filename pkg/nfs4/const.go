package nfs4

import (
	"fmt"
	"syscall"
)

// Operation numbers (RFC 8881 section 18).
const (
	opAccess          = 3
	opClose           = 4
	opCommit          = 5
	opCreate          = 6
	opGetattr         = 9
	opGetfh           = 10
	opLink            = 11
	opLookup          = 15
	opOpen            = 18
	opPutfh           = 22
	opPutrootfh       = 24
	opRead            = 25
	opReaddir         = 26
	opReadlink        = 27
	opRemove          = 28
	opRename          = 29
	opRestorefh       = 31
	opSavefh          = 32
	opSetattr         = 34
	opWrite           = 38
	opExchangeID      = 42
	opCreateSession   = 43
	opDestroySession  = 44
	opDestroyClientID = 57
	opSequence        = 53
	opReclaimComplete = 58
)

// File types (nfs_ftype4).
const (
	TypeReg  = 1
	TypeDir  = 2
	TypeBlk  = 3
	TypeChr  = 4
	TypeLnk  = 5
	TypeSock = 6
	TypeFifo = 7
)

// ACCESS bits.
const (
	AccessRead    = 0x01
	AccessLookup  = 0x02
	AccessModify  = 0x04
	AccessExtend  = 0x08
	AccessDelete  = 0x10
	AccessExecute = 0x20
)

// OPEN share access.
const (
	ShareRead        = 1
	ShareWrite       = 2
	ShareBoth        = 3
	shareWantNoDeleg = 0x0400
)

// WRITE stability.
const (
	Unstable = 0
	DataSync = 1
	FileSync = 2
)

// Status codes.
const (
	OK                  = 0
	ErrPerm             = 1
	ErrNoent            = 2
	ErrIO               = 5
	ErrNxio             = 6
	ErrAccess           = 13
	ErrExist            = 17
	ErrXdev             = 18
	ErrNotdir           = 20
	ErrIsdir            = 21
	ErrInval            = 22
	ErrFbig             = 27
	ErrNospc            = 28
	ErrRofs             = 30
	ErrMlink            = 31
	ErrNametoolong      = 63
	ErrNotempty         = 66
	ErrDquot            = 69
	ErrStale            = 70
	ErrBadhandle        = 10001
	ErrBadCookie        = 10003
	ErrNotsupp          = 10004
	ErrToosmall         = 10005
	ErrServerfault      = 10006
	ErrBadtype          = 10007
	ErrDelay            = 10008
	ErrDenied           = 10010
	ErrExpired          = 10011
	ErrLocked           = 10012
	ErrGrace            = 10013
	ErrFhexpired        = 10014
	ErrShareDenied      = 10015
	ErrWrongsec         = 10016
	ErrResource         = 10018
	ErrMoved            = 10019
	ErrNofilehandle     = 10020
	ErrStaleClientid    = 10022
	ErrStaleStateid     = 10023
	ErrOldStateid       = 10024
	ErrBadStateid       = 10025
	ErrSymlink          = 10029
	ErrAttrnotsupp      = 10032
	ErrBadxdr           = 10036
	ErrOpenmode         = 10038
	ErrBadowner         = 10039
	ErrBadchar          = 10040
	ErrBadname          = 10041
	ErrFileOpen         = 10046
	ErrAdminRevoked     = 10047
	ErrBadsession       = 10052
	ErrBadslot          = 10053
	ErrCompleteAlready  = 10054
	ErrConnNotBound     = 10055
	ErrSeqMisordered    = 10063
	ErrReqTooBig        = 10065
	ErrRepTooBig        = 10066
	ErrRepTooBigToCache = 10067
	ErrRetryUncachedRep = 10068
	ErrTooManyOps       = 10070
	ErrSeqFalseRetry    = 10076
	ErrBadHighSlot      = 10077
	ErrDeadsession      = 10078
	ErrDelegRevoked     = 10087
)

var statusNames = map[uint32]string{
	ErrPerm: "PERM", ErrNoent: "NOENT", ErrIO: "IO", ErrNxio: "NXIO", ErrAccess: "ACCESS", ErrExist: "EXIST",
	ErrXdev: "XDEV", ErrNotdir: "NOTDIR", ErrIsdir: "ISDIR", ErrInval: "INVAL", ErrFbig: "FBIG", ErrNospc: "NOSPC",
	ErrRofs: "ROFS", ErrMlink: "MLINK", ErrNametoolong: "NAMETOOLONG", ErrNotempty: "NOTEMPTY", ErrDquot: "DQUOT",
	ErrStale: "STALE", ErrBadhandle: "BADHANDLE", ErrBadCookie: "BAD_COOKIE", ErrNotsupp: "NOTSUPP",
	ErrToosmall: "TOOSMALL", ErrServerfault: "SERVERFAULT", ErrBadtype: "BADTYPE", ErrDelay: "DELAY",
	ErrDenied: "DENIED", ErrExpired: "EXPIRED", ErrLocked: "LOCKED", ErrGrace: "GRACE", ErrFhexpired: "FHEXPIRED",
	ErrShareDenied: "SHARE_DENIED", ErrWrongsec: "WRONGSEC", ErrResource: "RESOURCE", ErrMoved: "MOVED",
	ErrNofilehandle: "NOFILEHANDLE", ErrStaleClientid: "STALE_CLIENTID", ErrStaleStateid: "STALE_STATEID",
	ErrOldStateid: "OLD_STATEID", ErrBadStateid: "BAD_STATEID", ErrSymlink: "SYMLINK", ErrAttrnotsupp: "ATTRNOTSUPP",
	ErrBadxdr: "BADXDR", ErrOpenmode: "OPENMODE", ErrBadowner: "BADOWNER", ErrBadchar: "BADCHAR", ErrBadname: "BADNAME",
	ErrFileOpen: "FILE_OPEN", ErrAdminRevoked: "ADMIN_REVOKED", ErrBadsession: "BADSESSION", ErrBadslot: "BADSLOT",
	ErrCompleteAlready: "COMPLETE_ALREADY", ErrConnNotBound: "CONN_NOT_BOUND_TO_SESSION", ErrSeqMisordered: "SEQ_MISORDERED",
	ErrReqTooBig: "REQ_TOO_BIG", ErrRepTooBig: "REP_TOO_BIG", ErrRepTooBigToCache: "REP_TOO_BIG_TO_CACHE",
	ErrRetryUncachedRep: "RETRY_UNCACHED_REP", ErrTooManyOps: "TOO_MANY_OPS", ErrSeqFalseRetry: "SEQ_FALSE_RETRY",
	ErrBadHighSlot: "BAD_HIGH_SLOT", ErrDeadsession: "DEADSESSION", ErrDelegRevoked: "DELEG_REVOKED",
}

// StatusError is an NFSv4 status other than NFS4_OK returned by an
// operation of a compound.
type StatusError struct {
	Status uint32
	Op     uint32 // operation number that failed
}

func (e *StatusError) Error() string {
	n := statusNames[e.Status]
	if n == "" {
		n = fmt.Sprintf("%d", e.Status)
	}
	return fmt.Sprintf("NFS4ERR_%s (op %d)", n, e.Op)
}

// Errno maps the status to the errno a POSIX caller expects.
func (e *StatusError) Errno() syscall.Errno { return StatusErrno(e.Status) }

// StatusErrno maps an NFSv4 status to a syscall errno (EIO for anything
// without a closer meaning).
func StatusErrno(s uint32) syscall.Errno {
	switch s {
	case OK:
		return 0
	case ErrPerm:
		return syscall.EPERM
	case ErrNoent:
		return syscall.ENOENT
	case ErrNxio:
		return syscall.ENXIO
	case ErrAccess, ErrWrongsec:
		return syscall.EACCES
	case ErrExist:
		return syscall.EEXIST
	case ErrXdev:
		return syscall.EXDEV
	case ErrNotdir:
		return syscall.ENOTDIR
	case ErrIsdir:
		return syscall.EISDIR
	case ErrInval, ErrBadowner, ErrBadchar, ErrBadname, ErrBadtype, ErrAttrnotsupp, ErrBadxdr:
		return syscall.EINVAL
	case ErrFbig:
		return syscall.EFBIG
	case ErrNospc:
		return syscall.ENOSPC
	case ErrRofs:
		return syscall.EROFS
	case ErrMlink:
		return syscall.EMLINK
	case ErrNametoolong:
		return syscall.ENAMETOOLONG
	case ErrNotempty:
		return syscall.ENOTEMPTY
	case ErrDquot:
		return syscall.EDQUOT
	case ErrStale, ErrBadhandle, ErrFhexpired:
		return syscall.ESTALE
	case ErrNotsupp:
		return syscall.EOPNOTSUPP
	case ErrToosmall:
		return syscall.ERANGE
	case ErrShareDenied, ErrLocked, ErrFileOpen:
		return syscall.EBUSY
	case ErrDenied:
		return syscall.EAGAIN
	case ErrSymlink:
		return syscall.ELOOP
	case ErrOpenmode:
		return syscall.EBADF
	case ErrDelay, ErrGrace:
		return syscall.EAGAIN
	}
	return syscall.EIO
}

// Errno maps any error of this package to an errno: status errors by
// their status, everything else to EIO (a cancelled context to EINTR).
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var se *StatusError
	if asStatus(err, &se) {
		return se.Errno()
	}
	if isCtxErr(err) {
		return syscall.EINTR
	}
	return syscall.EIO
}

// IsStatus reports whether err is a StatusError with status s.
func IsStatus(err error, s uint32) bool {
	var se *StatusError
	return asStatus(err, &se) && se.Status == s
}
