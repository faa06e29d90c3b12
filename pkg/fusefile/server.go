// Package fusefile serves one file of a fixed size through FUSE: a mount
// whose only entry is that file, its reads and writes going to a Backend
// (for stowage, an NBD export under a loop device). Requests come over
// /dev/fuse, and over io_uring (FUSE_OVER_IO_URING, Linux 6.14 and later)
// where the kernel offers it: there a reply and the wait for the next
// request are one submission, and the ring's one thread takes the kernel's
// requests in batches, instead of a write and a read of /dev/fuse each.
package fusefile

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Backend is the file's content.
type Backend interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Sync makes every completed write durable (fsync of the file).
	Sync() error
	// Size is the file's size; it changes only before Invalidate.
	Size() int64
}

// Options say where to mount and how.
type Options struct {
	Mountpoint string // an empty directory
	Name       string // the file's name in the mount (default "disk")
	FsName     string // the mount's source in /proc/mounts
	Subtype    string // the type is fuse.<Subtype> (default fuse)
	// MaxWrite is the largest request (default and at most 1 MiB).
	MaxWrite int
	// URing serves requests over io_uring when the kernel offers it (the
	// fuse module's enable_uring parameter is Y); otherwise, or when it
	// fails to start, over /dev/fuse only. Stats says which.
	URing bool
	// URingEntries is the number of requests the ring holds at once, over
	// all of its queues (default 64; each queue, one per possible CPU,
	// gets at least 2). Each entry has a MaxWrite buffer.
	URingEntries int
	Logger       *slog.Logger
}

// Stats counts the requests served by each transport.
type Stats struct {
	DevRequests  uint64 // read from /dev/fuse
	RingRequests uint64 // taken from the io_uring
	// URing says whether the ring is in use; URingError why not, if it
	// was asked for.
	URing      bool
	URingError string
}

// Server is a mounted file.
type Server struct {
	o       Options
	b       Backend
	fd      int
	log     *slog.Logger
	readers sync.WaitGroup
	done    chan struct{} // closed when the readers have ended

	initOnce   sync.Once
	initDone   chan struct{}
	initErr    error
	uringAsked bool // INIT asked for FUSE_OVER_IO_URING

	rings  []*ring
	connID int // the connection's number in /sys/fs/fuse/connections, or -1

	devReqs, ringReqs atomic.Uint64
	polls             atomic.Uint64 // FUSE_POLL requests answered
	uringErr          atomic.Value  // string

	closeOnce sync.Once
}

const rootID, fileID = 1, 2

// uringParamFile offers FUSE over io_uring to FUSE servers while it is Y.
const uringParamFile = "/sys/module/fuse/parameters/enable_uring"

// Mount mounts the file system and returns once the kernel has finished
// its handshake (and the ring, if asked for, is running or has failed).
func Mount(o Options, b Backend) (*Server, error) {
	if o.Name == "" {
		o.Name = "disk"
	}
	if o.MaxWrite <= 0 || o.MaxWrite > 1<<20 {
		o.MaxWrite = 1 << 20
	}
	if o.URingEntries <= 0 {
		o.URingEntries = 64
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	var rings []*ring
	var uringErr string
	if o.URing {
		// Only where the kernel would offer it: the rings' memory is
		// locked in a process that has called mlockall.
		if v, err := os.ReadFile(uringParamFile); err != nil || strings.TrimSpace(string(v)) != "Y" {
			uringErr = "the kernel does not offer FUSE over io_uring (fuse module parameter enable_uring is N, or the kernel is older than 6.14)"
		} else if rings, err = prepareRings(&Server{o: o}); err != nil {
			uringErr = "FUSE over io_uring could not be set up: " + err.Error()
			o.Logger.Warn("FUSE over io_uring could not be set up; serving over /dev/fuse", "mountpoint", o.Mountpoint, "err", err)
		}
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		closeRings(rings)
		return nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	fstype := "fuse"
	if o.Subtype != "" {
		fstype = "fuse." + o.Subtype
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=%d,group_id=%d,allow_other,max_read=%d", fd, os.Geteuid(), os.Getegid(), o.MaxWrite)
	source := o.FsName
	if source == "" {
		source = fstype
	}
	if err := unix.Mount(source, o.Mountpoint, fstype, unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		unix.Close(fd)
		closeRings(rings)
		return nil, fmt.Errorf("mount %s on %s: %w", fstype, o.Mountpoint, err)
	}
	s := &Server{o: o, b: b, fd: fd, log: o.Logger, done: make(chan struct{}), initDone: make(chan struct{}), connID: -1, rings: rings}
	for _, r := range rings {
		r.s = s
	}
	if uringErr != "" {
		s.uringErr.Store(uringErr)
	}
	// Two readers: each hands a request to its own goroutine and reads on.
	for range 2 {
		s.readers.Add(1)
		go s.readLoop()
	}
	go func() { s.readers.Wait(); close(s.done) }()
	select {
	case <-s.initDone:
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.Unmount()
		return nil, fmt.Errorf("mount on %s: the kernel sent no INIT in 30 s", o.Mountpoint)
	}
	if s.initErr != nil {
		s.Unmount()
		return nil, s.initErr
	}
	select {
	case <-s.done:
		return nil, fmt.Errorf("mount on %s: ended during the handshake", o.Mountpoint)
	default:
	}
	// The connection's number in fusectl is the mount's device number
	// (major 0: its minor), learnt now: later a stat might wait on the
	// very connection that has to be ended. DONT_SYNC: no GETATTR.
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, o.Mountpoint, unix.AT_STATX_DONT_SYNC, 0, &stx); err == nil {
		s.connID = int(stx.Dev_minor)
	}
	switch {
	case len(s.rings) > 0 && s.uringAsked:
		if err := registerRings(s.rings); err != nil {
			closeRings(s.rings)
			s.rings = nil
			var refused errRefused
			if !errors.As(err, &refused) {
				// The kernel holds every request for the ring still.
				s.Unmount()
				return nil, fmt.Errorf("mount on %s: FUSE over io_uring did not start (%w); set the fuse module's enable_uring to N, or serve without it (nbd-attach --no-fuse-uring)", o.Mountpoint, err)
			}
			s.uringErr.Store(err.Error())
			s.log.Warn("FUSE over io_uring refused by the kernel; serving over /dev/fuse", "mountpoint", o.Mountpoint, "err", err)
		}
	case len(s.rings) > 0:
		closeRings(s.rings)
		s.rings = nil
		s.uringErr.Store("the kernel did not offer FUSE over io_uring at INIT")
	}
	if err := s.pollOnce(); err != nil {
		s.Unmount()
		return nil, fmt.Errorf("mount on %s: %w", o.Mountpoint, err)
	}
	return s, nil
}

// pollOnce has the kernel send its first FUSE_POLL now, which is
// answered ENOSYS, so it never sends another. Otherwise the first
// os.Open of the file in this process (loopdev.Attach does one) would:
// the Go runtime adds every file it opens to its epoll set, in a system
// call during which the runtime cannot stop the world, and a garbage
// collection starting then would wait for that call while the call waits
// for this process to answer the poll — a deadlock. Here the poll comes
// from an ordinary system call (ppoll), which a collection does not wait
// for.
func (s *Server) pollOnce() error {
	fd, err := unix.Open(s.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", s.Path(), err)
	}
	defer unix.Close(fd)
	// ppoll, not epoll_ctl: golang.org/x/sys makes epoll_ctl a raw system
	// call (one the runtime does not step aside for), which would be the
	// very deadlock this avoids. Its result does not matter, only that
	// the kernel asked.
	for {
		_, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		if !errors.Is(err, unix.EINTR) {
			return nil
		}
	}
}

// Path is the file's path.
func (s *Server) Path() string { return filepath.Join(s.o.Mountpoint, s.o.Name) }

// Stats says how requests were served so far.
func (s *Server) Stats() Stats {
	st := Stats{DevRequests: s.devReqs.Load(), RingRequests: s.ringReqs.Load(), URing: len(s.rings) > 0}
	if e, ok := s.uringErr.Load().(string); ok {
		st.URingError = e
	}
	return st
}

// Wait returns when the file system is unmounted (by Unmount or anyone).
func (s *Server) Wait() { <-s.done }

// Unmount unmounts (lazily if still busy after a few tries) and stops
// serving.
func (s *Server) Unmount() error {
	var err error
	s.closeOnce.Do(func() {
		delay := 5 * time.Millisecond
		for try := 0; try < 5; try++ {
			if err = unix.Unmount(s.o.Mountpoint, 0); err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				err = nil
				break
			}
			time.Sleep(delay)
			delay *= 2
		}
		if err != nil {
			err = unix.Unmount(s.o.Mountpoint, unix.MNT_DETACH)
		}
		// An unmount ends the connection, so the readers see ENODEV. A
		// lazy one may leave it open while the file is in use: then the
		// abort file of the connection ends it.
		select {
		case <-s.done:
		case <-time.After(2 * time.Second):
			s.abortConn()
			<-s.done
		}
		for _, r := range s.rings {
			r.close()
		}
		unix.Close(s.fd)
	})
	return err
}

// abortConn ends the connection through its abort file in fusectl
// (mounting fusectl first if nothing has): every request waiting, and
// every one after, fails with ENOTCONN.
func (s *Server) abortConn() {
	if s.connID < 0 {
		s.log.Error("cannot end the FUSE connection: its number is not known", "mountpoint", s.o.Mountpoint)
		return
	}
	const ctl = "/sys/fs/fuse/connections"
	abort := fmt.Sprintf("%s/%d/abort", ctl, s.connID)
	if _, err := os.Stat(abort); err != nil {
		unix.Mount("fusectl", ctl, "fusectl", 0, "")
	}
	if err := os.WriteFile(abort, []byte("1"), 0); err != nil {
		s.log.Error("cannot end the FUSE connection", "mountpoint", s.o.Mountpoint, "err", err)
	}
}

// Invalidate makes the kernel forget the file's attributes (after its
// size changed), so the next stat asks again.
func (s *Server) Invalidate() error {
	b := make([]byte, outHeaderSize+24)
	le.PutUint32(b, uint32(len(b)))
	le.PutUint32(b[4:], notifyInvalInode) // a notification's code goes where an error would
	le.PutUint64(b[outHeaderSize:], fileID)
	le.PutUint64(b[outHeaderSize+8:], ^uint64(0)) // offset -1: the attributes only
	_, err := unix.Write(s.fd, b)
	if err != nil {
		return fmt.Errorf("invalidate the attributes of %s: %w", s.Path(), err)
	}
	return nil
}

// Buffers for requests and replies. A request read from /dev/fuse needs
// room for the largest write; reads' replies get one of their size class.
var (
	bigBufs   sync.Pool
	smallBufs = sync.Pool{New: func() any { b := make([]byte, outHeaderSize+64<<10); return &b }}
)

func (s *Server) bigBuf() *[]byte {
	if p, ok := bigBufs.Get().(*[]byte); ok && len(*p) >= s.o.MaxWrite+4096 {
		return p
	}
	b := make([]byte, s.o.MaxWrite+4096)
	return &b
}

func (s *Server) readLoop() {
	defer s.readers.Done()
	p := s.bigBuf()
	for {
		n, err := unix.Read(s.fd, *p)
		if err != nil {
			switch {
			case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOENT):
				continue // interrupted, or a request the kernel took back
			case errors.Is(err, unix.ENODEV):
				return // unmounted
			}
			s.log.Error("read /dev/fuse", "mountpoint", s.o.Mountpoint, "err", err)
			return
		}
		if n < inHeaderSize {
			continue
		}
		s.devReqs.Add(1)
		h := parseInHeader(*p)
		switch h.Opcode {
		case opForget, opBatchForget, opInterrupt:
			continue // one inode that never goes; nothing to interrupt
		case opInit:
			s.doInit(h, (*p)[inHeaderSize:n])
			continue
		case opDestroy:
			s.replyDev(h, 0, nil)
			continue
		}
		body := (*p)[inHeaderSize:n]
		if h.Opcode == opWrite {
			q := p
			p = s.bigBuf() // the write's data stays in q until it is done
			go func() { s.serveDev(h, body); bigBufs.Put(q) }()
			continue
		}
		body = append([]byte(nil), body...)
		go s.serveDev(h, body)
	}
}

// serveDev handles one request read from /dev/fuse and writes its reply.
func (s *Server) serveDev(h inHeader, body []byte) {
	op, data := splitBody(h.Opcode, body)
	var p *[]byte
	var out []byte
	if h.Opcode == opRead && le.Uint32(op[16:]) > 64<<10 {
		p = s.bigBuf()
		defer bigBufs.Put(p)
	} else {
		p = smallBufs.Get().(*[]byte)
		defer smallBufs.Put(p)
	}
	out = (*p)[outHeaderSize:]
	n, errno := s.handle(h, op, data, out)
	s.replyDev(h, errno, (*p)[:outHeaderSize+n])
}

func (s *Server) replyDev(h inHeader, errno syscall.Errno, b []byte) {
	if b == nil {
		b = make([]byte, outHeaderSize)
	}
	if errno != 0 {
		b = b[:outHeaderSize]
	}
	putOutHeader(b, uint32(len(b)), errno, h.Unique)
	if _, err := unix.Write(s.fd, b); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
		s.log.Warn("reply to /dev/fuse", "mountpoint", s.o.Mountpoint, "opcode", h.Opcode, "err", err)
	}
}

// opArgSize is the size of each opcode's first argument (its own header);
// what follows is the payload (a write's data, a lookup's name).
func opArgSize(opcode uint32) int {
	switch opcode {
	case opGetattr, opFsync, opFsyncdir:
		return 16
	case opSetattr:
		return setattrInSize
	case opOpen, opOpendir:
		return 8
	case opRead, opReaddir:
		return readInSize
	case opWrite:
		return writeInSize
	case opRelease, opReleasedir, opFlush:
		return 24
	}
	return 0
}

func splitBody(opcode uint32, body []byte) (op, data []byte) {
	n := opArgSize(opcode)
	if len(body) < n {
		// Too short for its opcode: hand the handler zeroes, not a panic.
		b := make([]byte, n)
		copy(b, body)
		return b, nil
	}
	return body[:n], body[n:]
}

func (s *Server) doInit(h inHeader, body []byte) {
	s.initOnce.Do(func() {
		defer close(s.initDone)
		if len(body) < 16 {
			s.initErr = errors.New("FUSE INIT too short")
			s.replyDev(h, syscall.EIO, nil)
			return
		}
		major, minor := le.Uint32(body), le.Uint32(body[4:])
		readahead := le.Uint32(body[8:])
		kflags := uint64(le.Uint32(body[12:]))
		if len(body) >= 20 && kflags&initExt != 0 {
			kflags |= uint64(le.Uint32(body[16:])) << 32
		}
		if major != kernelMajor || minor < 23 {
			s.initErr = fmt.Errorf("FUSE protocol %d.%d of the kernel is not supported (need 7.23 or later)", major, minor)
			s.replyDev(h, syscall.EPROTO, nil)
			return
		}
		flags := kflags & initWanted
		if len(s.rings) == 0 {
			flags &^= initOverIOURing
		}
		s.uringAsked = flags&initOverIOURing != 0
		b := make([]byte, outHeaderSize+initOutSize)
		o := b[outHeaderSize:]
		le.PutUint32(o, kernelMajor)
		le.PutUint32(o[4:], ourMinor)
		le.PutUint32(o[8:], readahead)
		le.PutUint32(o[12:], uint32(flags)|initExt)
		le.PutUint16(o[16:], 256) // max_background
		le.PutUint16(o[18:], 192) // congestion_threshold
		le.PutUint32(o[20:], uint32(s.o.MaxWrite))
		le.PutUint32(o[24:], 1) // time_gran
		le.PutUint16(o[28:], uint16((s.o.MaxWrite+4095)/4096))
		le.PutUint32(o[32:], uint32(flags>>32))
		s.replyDev(h, 0, b)
	})
}

// handle runs one request and writes its reply's arguments to out; it
// returns their length, or an errno.
func (s *Server) handle(h inHeader, op, data, out []byte) (int, syscall.Errno) {
	switch h.Opcode {
	case opLookup:
		name := data
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if h.NodeID != rootID || string(name) != s.o.Name {
			return 0, syscall.ENOENT
		}
		clear(out[:40])
		le.PutUint64(out, fileID)
		le.PutUint64(out[8:], 1)     // generation
		le.PutUint64(out[16:], 3600) // entry_valid: the name never changes
		le.PutUint64(out[24:], 3600) // attr_valid: Invalidate when the size does
		putAttr(out[40:], s.attr(fileID))
		return entryOutSize, 0
	case opGetattr:
		return s.attrOut(h.NodeID, out)
	case opSetattr:
		// Only what changes nothing is accepted: the size is the backend's.
		if h.NodeID == fileID && le.Uint32(op)&fattrSize != 0 && int64(le.Uint64(op[16:])) != s.b.Size() {
			return 0, syscall.EPERM
		}
		return s.attrOut(h.NodeID, out)
	case opOpen:
		if h.NodeID != fileID {
			return 0, syscall.EISDIR
		}
		// FOPEN_DIRECT_IO: no page cache here (the loop device above has
		// its own, and a FUSE page cache under memory pressure is how a
		// writeback deadlock happens).
		clear(out[:openOutSize])
		le.PutUint64(out, 1)
		le.PutUint32(out[8:], fopenDirectIO|fopenParallelDIOW)
		return openOutSize, 0
	case opOpendir:
		if h.NodeID != rootID {
			return 0, syscall.ENOTDIR
		}
		clear(out[:openOutSize])
		return openOutSize, 0
	case opReaddir:
		return s.readdir(op, out)
	case opRead:
		off, size := int64(le.Uint64(op[8:])), int64(le.Uint32(op[16:]))
		fsize := s.b.Size()
		if off >= fsize {
			return 0, 0
		}
		size = min(size, fsize-off, int64(len(out)))
		if _, err := s.b.ReadAt(out[:size], off); err != nil {
			return 0, syscall.EIO
		}
		return int(size), 0
	case opWrite:
		off, size := int64(le.Uint64(op[8:])), int(le.Uint32(op[16:]))
		if size > len(data) {
			return 0, syscall.EINVAL
		}
		if off+int64(size) > s.b.Size() {
			return 0, syscall.ENOSPC
		}
		if _, err := s.b.WriteAt(data[:size], off); err != nil {
			return 0, syscall.EIO
		}
		le.PutUint64(out, uint64(uint32(size)))
		return writeOutSize, 0
	case opFsync:
		if err := s.b.Sync(); err != nil {
			return 0, syscall.EIO
		}
		return 0, 0
	case opFlush, opRelease, opReleasedir, opFsyncdir:
		return 0, 0
	case opStatfs:
		clear(out[:statfsOutSize])
		le.PutUint64(out, uint64(s.b.Size())/4096)
		le.PutUint32(out[40:], 4096) // bsize
		le.PutUint32(out[44:], 255)  // namelen
		le.PutUint32(out[48:], 4096) // frsize
		return statfsOutSize, 0
	case opPoll:
		// ENOSYS: the kernel polls no more (see pollOnce).
		s.polls.Add(1)
		return 0, syscall.ENOSYS
	}
	// Everything else (xattrs, access, locks, fallocate, ...) is not
	// there; the kernel stops asking for most after the first ENOSYS.
	return 0, syscall.ENOSYS
}

func (s *Server) attr(id uint64) attr {
	if id == rootID {
		return attr{ino: rootID, mode: syscall.S_IFDIR | 0o755, nlink: 2, blksize: 4096}
	}
	size := uint64(s.b.Size())
	return attr{ino: fileID, size: size, blocks: (size + 511) / 512, mode: syscall.S_IFREG | 0o600, nlink: 1, blksize: 4096}
}

func (s *Server) attrOut(id uint64, out []byte) (int, syscall.Errno) {
	if id != rootID && id != fileID {
		return 0, syscall.ENOENT
	}
	clear(out[:16])
	le.PutUint64(out, 3600)
	putAttr(out[16:], s.attr(id))
	return attrOutSize, 0
}

func (s *Server) readdir(op, out []byte) (int, syscall.Errno) {
	off := le.Uint64(op[8:])
	max := min(int(le.Uint32(op[16:])), len(out))
	entries := []struct {
		ino  uint64
		typ  uint32
		name string
	}{{rootID, syscall.DT_DIR, "."}, {rootID, syscall.DT_DIR, ".."}, {fileID, syscall.DT_REG, s.o.Name}}
	var b []byte
	for i := off; i < uint64(len(entries)); i++ {
		e := entries[i]
		var ok bool
		if b, ok = putDirent(b, max, e.ino, i+1, e.typ, e.name); !ok {
			break
		}
	}
	return copy(out, b), 0
}
