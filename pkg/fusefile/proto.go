package fusefile

import (
	"encoding/binary"
	"syscall"
)

// The FUSE protocol as this package speaks it (include/uapi/linux/fuse.h):
// only what a file system of one regular file needs. All integers are in
// the machine's order; this package builds on little-endian Linux only.
var le = binary.LittleEndian

const (
	kernelMajor = 7
	// ourMinor is the protocol minor we answer with: struct sizes below are
	// those of minor 23 and later; io_uring needs nothing newer from it.
	ourMinor = 31
)

// Opcodes.
const (
	opLookup      = 1
	opForget      = 2
	opGetattr     = 3
	opSetattr     = 4
	opOpen        = 14
	opRead        = 15
	opWrite       = 16
	opStatfs      = 17
	opRelease     = 18
	opFsync       = 20
	opFlush       = 25
	opInit        = 26
	opOpendir     = 27
	opReaddir     = 28
	opReleasedir  = 29
	opFsyncdir    = 30
	opInterrupt   = 36
	opDestroy     = 38
	opPoll        = 40
	opBatchForget = 42
)

// INIT flags (flags | flags2<<32).
const (
	initAsyncRead     = 1 << 0
	initBigWrites     = 1 << 5
	initAsyncDIO      = 1 << 15
	initMaxPages      = 1 << 22
	initExt           = 1 << 30
	initOverIOURing   = 1 << 41
	initWanted        = initAsyncRead | initBigWrites | initAsyncDIO | initMaxPages | initOverIOURing
	fopenDirectIO     = 1 << 0
	fopenParallelDIOW = 1 << 6
	fattrSize         = 1 << 3
	notifyInvalInode  = 2
)

// Sizes of the structures this package reads or writes.
const (
	inHeaderSize  = 40
	outHeaderSize = 16
	initInSize    = 64 // what kernels of minor 36 and later send; older send 16
	initOutSize   = 64
	attrSize      = 88
	entryOutSize  = 40 + attrSize
	attrOutSize   = 16 + attrSize
	openOutSize   = 16
	writeOutSize  = 8
	statfsOutSize = 80
	readInSize    = 40
	writeInSize   = 40
	setattrInSize = 88
	direntSize    = 24
)

// inHeader is struct fuse_in_header.
type inHeader struct {
	Len    uint32
	Opcode uint32
	Unique uint64
	NodeID uint64
}

func parseInHeader(b []byte) inHeader {
	return inHeader{Len: le.Uint32(b), Opcode: le.Uint32(b[4:]), Unique: le.Uint64(b[8:]), NodeID: le.Uint64(b[16:])}
}

func putOutHeader(b []byte, length uint32, errno syscall.Errno, unique uint64) {
	le.PutUint32(b, length)
	le.PutUint32(b[4:], uint32(-int32(errno)))
	le.PutUint64(b[8:], unique)
}

// attr is the part of struct fuse_attr this package fills in.
type attr struct {
	ino, size, blocks uint64
	mode, nlink       uint32
	blksize           uint32
}

func putAttr(b []byte, a attr) {
	clear(b[:attrSize])
	le.PutUint64(b, a.ino)
	le.PutUint64(b[8:], a.size)
	le.PutUint64(b[16:], a.blocks)
	// atime, mtime, ctime (and their nanoseconds) stay 0.
	le.PutUint32(b[60:], a.mode)
	le.PutUint32(b[64:], a.nlink)
	// uid, gid: 0 (root); rdev 0.
	le.PutUint32(b[80:], a.blksize)
}

// putDirent appends one struct fuse_dirent (padded to 8 bytes) to b if it
// fits in max bytes.
func putDirent(b []byte, max int, ino, off uint64, typ uint32, name string) ([]byte, bool) {
	n := (direntSize + len(name) + 7) &^ 7
	if len(b)+n > max {
		return b, false
	}
	e := make([]byte, n)
	le.PutUint64(e, ino)
	le.PutUint64(e[8:], off)
	le.PutUint32(e[16:], uint32(len(name)))
	le.PutUint32(e[20:], typ)
	copy(e[direntSize:], name)
	return append(b, e...), true
}
