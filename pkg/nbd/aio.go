package nbd

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// aioReads runs direct reads through Linux native AIO, so a read waiting
// for the disk parks a goroutine, not an OS thread. With a blocking pread
// per request every read in flight holds a thread in the kernel, and the Go
// scheduler hands each one's P to another thread and back: on a 2-CPU
// machine that was about half of the NBD server's CPU per 4 KiB read.
// Completions are signalled on an eventfd that the runtime's poller
// watches, so no thread blocks waiting for them either.
type aioReads struct {
	ctx uintptr
	efd *os.File

	mu         sync.Mutex
	next       uint64
	pending    map[uint64]*aioReq
	queue      []*iocb // to submit
	spare      []*iocb
	submitting bool
}

// iocb is struct iocb of linux/aio_abi.h (little-endian field order of
// aio_key and aio_rw_flags; every architecture Go runs Linux on for this
// project is little-endian).
type iocb struct {
	data      uint64
	key       uint32
	rwFlags   int32
	opcode    uint16
	reqprio   int16
	fildes    uint32
	buf       uint64
	nbytes    uint64
	offset    int64
	reserved2 uint64
	flags     uint32
	resfd     uint32
}

// ioEvent is struct io_event.
type ioEvent struct {
	data uint64
	obj  uint64
	res  int64
	res2 int64
}

const (
	iocbCmdPread = 0
	iocbFlagRes  = 1 // IOCB_FLAG_RESFD
	aioDepth     = 512
)

type aioReq struct {
	cb   iocb
	buf  []byte // kept referenced until the kernel is done with it
	done chan aioResult
}

type aioResult struct {
	n            int
	err          error
	notSubmitted bool
}

// aioCompleted counts reads completed through AIO, for tests and
// benchmarks.
var aioCompleted atomic.Int64

var (
	aioOnce   sync.Once
	aioShared *aioReads // nil where the kernel (or a seccomp profile) refuses AIO
	aioReqs   = sync.Pool{New: func() any { return &aioReq{done: make(chan aioResult, 1)} }}
)

// sharedAIO is the process's AIO context, set up on first use.
func sharedAIO() *aioReads {
	aioOnce.Do(func() {
		a, err := newAIOReads()
		if err == nil {
			aioShared = a
		}
	})
	return aioShared
}

func newAIOReads() (*aioReads, error) {
	var ctx uintptr
	if _, _, e := unix.Syscall(unix.SYS_IO_SETUP, aioDepth, uintptr(unsafe.Pointer(&ctx)), 0); e != 0 {
		return nil, fmt.Errorf("io_setup: %w", e)
	}
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Syscall(unix.SYS_IO_DESTROY, ctx, 0, 0)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	a := &aioReads{ctx: ctx, efd: os.NewFile(uintptr(fd), "nbd-aio-eventfd"), pending: map[uint64]*aioReq{}}
	go a.reap()
	return a, nil
}

// readAt reads len(p) bytes at off from f (opened O_DIRECT; p, off and
// len(p) aligned). ok is false when the request could not be submitted,
// and the caller reads some other way.
func (a *aioReads) readAt(f *os.File, p []byte, off int64) (n int, ok bool, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	// Control holds the file open until the read is done, so a Close
	// racing with it cannot hand the descriptor to another file first.
	if cerr := rc.Control(func(fd uintptr) { n, ok, err = a.readFD(fd, p, off) }); cerr != nil {
		return 0, false, nil
	}
	return n, ok, err
}

func (a *aioReads) readFD(fd uintptr, p []byte, off int64) (n int, ok bool, err error) {
	r := aioReqs.Get().(*aioReq)
	r.buf = p
	a.mu.Lock()
	a.next++
	r.cb = iocb{
		data:   a.next,
		opcode: iocbCmdPread,
		fildes: uint32(fd),
		buf:    uint64(uintptr(unsafe.Pointer(unsafe.SliceData(p)))),
		nbytes: uint64(len(p)),
		offset: off,
		flags:  iocbFlagRes,
		resfd:  uint32(a.efd.Fd()),
	}
	a.pending[r.cb.data] = r
	a.queue = append(a.queue, &r.cb)
	if !a.submitting {
		a.submitting = true
		a.mu.Unlock()
		a.submit()
	} else {
		a.mu.Unlock()
	}
	res := <-r.done
	r.buf = nil
	aioReqs.Put(r)
	return res.n, !res.notSubmitted, res.err
}

// submit sends every queued request in as few io_submit calls as it can:
// the kernel plugs the block queue across one call's requests, so a batch
// costs the device one notification instead of one per read. As
// batchWriter does, it first lets the goroutines runnable now queue
// their reads.
func (a *aioReads) submit() {
	runtime.Gosched()
	a.mu.Lock()
	for len(a.queue) > 0 {
		q := a.queue
		a.queue = a.spare[:0]
		a.mu.Unlock()
		for len(q) > 0 {
			got, _, e := unix.Syscall(unix.SYS_IO_SUBMIT, a.ctx, uintptr(len(q)), uintptr(unsafe.Pointer(&q[0])))
			switch {
			case e == unix.EINTR:
				continue
			case e != 0 || got == 0:
				// The first request was refused (EAGAIN: the context is
				// full): its caller reads without AIO.
				a.fail(q[0])
				q = q[1:]
			default:
				q = q[got:]
			}
		}
		a.mu.Lock()
		a.spare = q[:0]
	}
	a.submitting = false
	a.mu.Unlock()
}

func (a *aioReads) fail(cb *iocb) {
	a.mu.Lock()
	r := a.pending[cb.data]
	delete(a.pending, cb.data)
	a.mu.Unlock()
	if r != nil {
		r.done <- aioResult{notSubmitted: true}
	}
}

// reap waits on the eventfd through the runtime's poller and completes
// every finished read.
func (a *aioReads) reap() {
	var cnt [8]byte
	var events [64]ioEvent
	zero := unix.Timespec{}
	for {
		if _, err := a.efd.Read(cnt[:]); err != nil {
			return
		}
		for {
			got, _, e := unix.Syscall6(unix.SYS_IO_GETEVENTS, a.ctx, 0, uintptr(len(events)),
				uintptr(unsafe.Pointer(&events[0])), uintptr(unsafe.Pointer(&zero)), 0)
			if e == unix.EINTR {
				continue
			}
			if e != 0 || got == 0 {
				break
			}
			for _, ev := range events[:got] {
				a.mu.Lock()
				r := a.pending[ev.data]
				delete(a.pending, ev.data)
				a.mu.Unlock()
				if r == nil {
					continue
				}
				aioCompleted.Add(1)
				if ev.res < 0 {
					r.done <- aioResult{err: unix.Errno(-ev.res)}
				} else {
					r.done <- aioResult{n: int(ev.res)}
				}
			}
			if int(got) < len(events) {
				break
			}
		}
	}
}
