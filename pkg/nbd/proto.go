// Package nbd speaks the Network Block Device protocol: a server for
// exports backed by files (or anything with positional I/O) and a client
// with several connections, concurrent requests and reconnects.
//
// Only what Stowage uses is implemented: the fixed newstyle handshake with
// NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_EXPORT_NAME and NBD_OPT_ABORT, simple
// replies (no structured replies, no TLS), and the READ, WRITE, FLUSH,
// TRIM, WRITE_ZEROES and DISCONNECT commands with FUA. One option of our
// own, OptAuth, carries an attachment's secret and generation before GO;
// see auth.go. The protocol is
// https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md.
package nbd

import (
	"errors"
	"fmt"
)

// Handshake and transmission magics.
const (
	magicNBD         uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt         uint64 = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply    uint64 = 0x3e889045565a9
	magicRequest     uint32 = 0x25609513
	magicSimpleReply uint32 = 0x67446698
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle uint16 = 1 << 0
	flagNoZeroes      uint16 = 1 << 1
)

// Options.
const (
	optExportName uint32 = 1
	optAbort      uint32 = 2
	optList       uint32 = 3
	optInfo       uint32 = 6
	optGo         uint32 = 7
)

// Option reply types.
const (
	repAck        uint32 = 1
	repInfo       uint32 = 3
	repErrUnsup   uint32 = 1<<31 + 1
	repErrPolicy  uint32 = 1<<31 + 2
	repErrInvalid uint32 = 1<<31 + 3
	repErrUnknown uint32 = 1<<31 + 6
)

// Info types of NBD_REP_INFO.
const (
	infoExport    uint16 = 0
	infoBlockSize uint16 = 3
)

// Transmission flags.
const (
	FlagHasFlags        uint16 = 1 << 0
	FlagReadOnly        uint16 = 1 << 1
	FlagSendFlush       uint16 = 1 << 2
	FlagSendFUA         uint16 = 1 << 3
	FlagSendTrim        uint16 = 1 << 5
	FlagSendWriteZeroes uint16 = 1 << 6
	FlagCanMultiConn    uint16 = 1 << 8
)

// Commands.
const (
	CmdRead        uint16 = 0
	CmdWrite       uint16 = 1
	CmdDisconnect  uint16 = 2
	CmdFlush       uint16 = 3
	CmdTrim        uint16 = 4
	CmdWriteZeroes uint16 = 6
)

// Command flags.
const (
	CmdFlagFUA    uint16 = 1 << 0
	CmdFlagNoHole uint16 = 1 << 1
)

const (
	requestSize = 28
	replySize   = 16
	// MaxRequest is the largest READ or WRITE the server takes; the
	// kernel's and our client's requests are far smaller.
	MaxRequest = 32 << 20
	// maxOptionData bounds an option's payload (names, our auth option).
	maxOptionData = 64 << 10
)

// Errno is an NBD error as sent in a reply (the protocol uses Linux errno
// values).
type Errno uint32

// The errors the server sends.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	// ESHUTDOWN is the reply to every request of a fenced connection: the
	// export was superseded or removed. The connection closes after it.
	ESHUTDOWN Errno = 108
)

func (e Errno) Error() string {
	switch e {
	case EPERM:
		return "nbd: operation not permitted (read-only export)"
	case EIO:
		return "nbd: input/output error"
	case ENOMEM:
		return "nbd: out of memory"
	case EINVAL:
		return "nbd: invalid request"
	case ENOSPC:
		return "nbd: no space left"
	case EOVERFLOW:
		return "nbd: request beyond the end of the export"
	case ENOTSUP:
		return "nbd: not supported"
	case ESHUTDOWN:
		return "nbd: export shut down (fenced or removed)"
	}
	return fmt.Sprintf("nbd: error %d", uint32(e))
}

var (
	// ErrDisconnected means the connection broke before the request's
	// reply arrived; the request may or may not have run.
	ErrDisconnected = errors.New("nbd: connection lost")
	// ErrUnknownExport is the server's answer for an export it does not
	// have (NBD_REP_ERR_UNKNOWN). A Server's Lookup returns it too.
	ErrUnknownExport = errors.New("nbd: no such export")
	// ErrRefused is the server's policy refusal (NBD_REP_ERR_POLICY): a
	// wrong secret, a superseded generation. A Server's Authenticate and
	// Lookup return it (wrapped) to refuse.
	ErrRefused = errors.New("nbd: refused by the server")
	// ErrUnsupported is NBD_REP_ERR_UNSUP: the server does not know an
	// option.
	ErrUnsupported = errors.New("nbd: option not supported by the server")
)

func commandName(c uint16) string {
	switch c {
	case CmdRead:
		return "read"
	case CmdWrite:
		return "write"
	case CmdDisconnect:
		return "disconnect"
	case CmdFlush:
		return "flush"
	case CmdTrim:
		return "trim"
	case CmdWriteZeroes:
		return "write-zeroes"
	}
	return fmt.Sprintf("command %d", c)
}
