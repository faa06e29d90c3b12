package fusefile

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FUSE over io_uring (Documentation/filesystems/fuse-io-uring.rst): after
// INIT the daemon registers ring entries, each a header buffer and a
// payload buffer, on every queue the kernel has (one per possible CPU);
// once all queues have one, the kernel sends requests (all but FORGET and
// INTERRUPT) by completing an entry's command with the request in its
// buffers, and the daemon replies with COMMIT_AND_FETCH on the same
// entry, which also re-arms it.
//
// One ring and one OS thread serve all queues. The ring is set up
// single-issuer with deferred task work: the kernel copies a request into
// an entry in the context of the task that submitted that entry, so all
// submissions come from that one thread, and it does that work whenever
// it waits — one wake-up takes every request queued meanwhile. Handlers
// run on goroutines and hand their commits back to the thread, waking it
// through an eventfd it always has a read pending on.

const (
	sysIOURingSetup = 425
	sysIOURingEnter = 426

	setupSQE128       = 1 << 10
	setupSingleIssuer = 1 << 12
	setupDeferTaskrun = 1 << 13
	enterGetEvents    = 1 << 0
	featSingleMMap    = 1 << 0

	iorOpRead     = 22
	iorOpURingCmd = 46

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000

	sqeSize = 128
	cqeSize = 16

	fuseCmdRegister       = 1
	fuseCmdCommitAndFetch = 2

	// struct fuse_uring_req_header: in_out[128], op_in[128],
	// struct fuse_uring_ent_in_out {flags, commit_id u64; payload_sz,
	// padding u32; reserved u64}.
	ringHdrSize      = 288
	ringOpInOff      = 128
	ringCommitIDOff  = 256 + 8
	ringPayloadSzOff = 256 + 16

	wakeTag = ^uint64(0)
)

type ringEnt struct {
	idx     int
	qid     uint16
	hdr     []byte
	payload []byte
}

type ring struct {
	s      *Server
	fd     int
	efd    int
	queues []int // the kernel's queues whose entries this ring holds
	ents   []*ringEnt

	sqMem, cqMem, sqeMem, bufMem, hdrMem []byte
	sqHead, sqTail, sqArray              *uint32
	sqMask, sqEntries                    uint32
	cqHead, cqTail                       *uint32
	cqMask                               uint32
	cqes                                 unsafe.Pointer
	sqes                                 unsafe.Pointer
	efdBuf                               unsafe.Pointer

	unsubmitted uint32 // entries put in the ring since the last enter

	mu         sync.Mutex
	commits    []commit
	sleeping   bool
	stopping   atomic.Bool
	work       chan *ringEnt // to idle workers
	start      chan struct{} // closed: register
	stop       chan struct{} // closed: go without registering
	stopOnce   sync.Once
	registered chan error
	done       chan struct{}
}

type commit struct {
	e  *ringEnt
	id uint64
}

// possibleCPUs counts /sys/devices/system/cpu/possible ("0-3,8").
func possibleCPUs() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, part := range strings.Split(strings.TrimSpace(string(b)), ",") {
		lo, hi, ok := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("parse possible CPUs %q: %w", b, err)
		}
		z := a
		if ok {
			if z, err = strconv.Atoi(hi); err != nil {
				return 0, fmt.Errorf("parse possible CPUs %q: %w", b, err)
			}
		}
		n += z - a + 1
	}
	return n, nil
}

// prepareRings sets the rings up, each on its own locked thread, with
// their memory, before the mount: INIT asks for FUSE over io_uring only
// if they exist, since once it is asked for the kernel holds every
// request until all queues have an entry. Queue q is served by ring q mod
// the number of rings: one ring per CPU this process may use (at most
// 8), so that the copies of requests into their entries, which each
// ring's thread does, run on several CPUs. Each ring waits for
// register.
func prepareRings(s *Server) ([]*ring, error) {
	nq, err := possibleCPUs()
	if err != nil {
		return nil, err
	}
	perQueue := max(2, s.o.URingEntries/nq)
	nr := max(1, min(nq, runtime.GOMAXPROCS(0), 8))
	var rings []*ring
	errs := make(chan error, nr)
	for i := range nr {
		r := &ring{s: s, work: make(chan *ringEnt), done: make(chan struct{}), start: make(chan struct{}), stop: make(chan struct{}), registered: make(chan error, 1)}
		for q := i; q < nq; q += nr {
			r.queues = append(r.queues, q)
		}
		rings = append(rings, r)
		go r.run(perQueue, errs)
	}
	var first error
	for range nr {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		closeRings(rings)
		return nil, first
	}
	return rings, nil
}

// registerRings registers every ring's entries with the kernel (after
// INIT) and starts serving.
func registerRings(rings []*ring) error {
	for _, r := range rings {
		close(r.start)
	}
	var first error
	for _, r := range rings {
		if err := <-r.registered; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func closeRings(rings []*ring) {
	for _, r := range rings {
		r.close()
	}
}

// faults, set by tests only, make a ring fail where the kernel or the
// machine could: at its setup (a seccomp profile refusing io_uring_setup,
// no memory) or on its own after INIT.
var faults struct{ prepare, register error }

// errRefused marks a REGISTER the kernel refused: it then stops holding
// requests for the ring, and they come over /dev/fuse.
type errRefused struct{ error }

func (r *ring) setup(entries int) error {
	var p [120]byte
	for _, flags := range []uint32{setupSQE128 | setupSingleIssuer | setupDeferTaskrun, setupSQE128} {
		clear(p[:])
		le.PutUint32(p[8:], flags)
		fd, _, errno := syscall.Syscall(sysIOURingSetup, uintptr(entries), uintptr(unsafe.Pointer(&p[0])), 0)
		if errno == syscall.EINVAL && flags != setupSQE128 {
			continue // a kernel without deferred task work
		}
		if errno != 0 {
			return fmt.Errorf("io_uring_setup: %w", errno)
		}
		r.fd = int(fd)
		break
	}
	sqEntries, cqEntries := le.Uint32(p[0:]), le.Uint32(p[4:])
	features := le.Uint32(p[20:])
	sqOff, cqOff := p[40:80], p[80:120]
	sqSize := int(le.Uint32(sqOff[24:])) + int(sqEntries)*4
	cqSize := int(le.Uint32(cqOff[20:])) + int(cqEntries)*cqeSize
	if features&featSingleMMap != 0 {
		sqSize = max(sqSize, cqSize)
		cqSize = sqSize
	}
	var err error
	if r.sqMem, err = unix.Mmap(r.fd, offSQRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("mmap the io_uring submission ring: %w", err)
	}
	r.cqMem = r.sqMem
	if features&featSingleMMap == 0 {
		if r.cqMem, err = unix.Mmap(r.fd, offCQRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
			return fmt.Errorf("mmap the io_uring completion ring: %w", err)
		}
	}
	if r.sqeMem, err = unix.Mmap(r.fd, offSQEs, int(sqEntries)*sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("mmap the io_uring entries: %w", err)
	}
	at := func(m []byte, off []byte) *uint32 { return (*uint32)(unsafe.Pointer(&m[le.Uint32(off)])) }
	r.sqHead, r.sqTail = at(r.sqMem, sqOff[0:]), at(r.sqMem, sqOff[4:])
	r.sqMask, r.sqEntries = *at(r.sqMem, sqOff[8:]), sqEntries
	r.sqArray = at(r.sqMem, sqOff[24:])
	r.cqHead, r.cqTail = at(r.cqMem, cqOff[0:]), at(r.cqMem, cqOff[4:])
	r.cqMask = *at(r.cqMem, cqOff[8:])
	r.cqes = unsafe.Pointer(&r.cqMem[le.Uint32(cqOff[20:])])
	r.sqes = unsafe.Pointer(&r.sqeMem[0])
	return nil
}

// sqe returns the next free submission entry, cleared, or nil if full.
func (r *ring) sqe() []byte {
	tail := *r.sqTail
	if tail-atomic.LoadUint32(r.sqHead) >= r.sqEntries {
		return nil
	}
	i := tail & r.sqMask
	b := unsafe.Slice((*byte)(unsafe.Add(r.sqes, uintptr(i)*sqeSize)), sqeSize)
	clear(b)
	*(*uint32)(unsafe.Add(unsafe.Pointer(r.sqArray), uintptr(i)*4)) = i
	atomic.StoreUint32(r.sqTail, tail+1)
	r.unsubmitted++
	return b
}

func (r *ring) putCmd(b []byte, e *ringEnt, cmd uint32, commitID uint64, iov unsafe.Pointer) {
	b[0] = iorOpURingCmd
	le.PutUint32(b[4:], uint32(r.s.fd))
	le.PutUint32(b[8:], cmd)
	if iov != nil {
		le.PutUint64(b[16:], uint64(uintptr(iov)))
		le.PutUint32(b[24:], 2)
	}
	le.PutUint64(b[32:], uint64(e.idx))
	// struct fuse_uring_cmd_req {flags, commit_id u64; qid u16}
	le.PutUint64(b[56:], commitID)
	le.PutUint16(b[64:], e.qid)
}

func (r *ring) armWake() bool {
	b := r.sqe()
	if b == nil {
		return false
	}
	b[0] = iorOpRead
	le.PutUint32(b[4:], uint32(r.efd))
	le.PutUint64(b[16:], uint64(uintptr(r.efdBuf)))
	le.PutUint32(b[24:], 8)
	le.PutUint64(b[32:], wakeTag)
	return true
}

// enter submits n entries and, with getEvents, runs the deferred task
// work (requests the kernel is handing over) and waits for wait
// completions.
func (r *ring) enter(n, wait uint32, getEvents bool) (int, error) {
	for {
		flags := uintptr(0)
		if getEvents {
			flags = enterGetEvents
		}
		got, _, errno := syscall.Syscall6(sysIOURingEnter, uintptr(r.fd), uintptr(n), uintptr(wait), flags, 0, 0)
		if got > 0 && n > 0 {
			r.unsubmitted -= min(uint32(got), r.unsubmitted)
			n -= min(uint32(got), n)
		}
		if errno == syscall.EINTR {
			if got > 0 || n == 0 {
				return int(got), nil
			}
			continue
		}
		if errno != 0 {
			return int(got), errno
		}
		return int(got), nil
	}
}

func (r *ring) run(perQueue int, prepared chan<- error) {
	runtime.LockOSThread() // single issuer: every submission from this thread
	defer close(r.done)
	fail := func(err error) {
		r.free()
		prepared <- err
	}
	total := perQueue * len(r.queues)
	if err := faults.prepare; err != nil {
		fail(err)
		return
	}
	if err := r.setup(total + 8); err != nil {
		fail(err)
		return
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		fail(fmt.Errorf("eventfd: %w", err))
		return
	}
	r.efd = efd
	// Buffers the kernel writes to outside of Go's heap: headers with their
	// iovecs, payloads of the largest request, and the eventfd's 8 bytes.
	payload := (r.s.o.MaxWrite + 4095) &^ 4095
	if r.bufMem, err = unix.Mmap(-1, 0, total*payload, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		fail(fmt.Errorf("allocate the ring's buffers: %w", err))
		return
	}
	if r.hdrMem, err = unix.Mmap(-1, 0, total*512+4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		fail(fmt.Errorf("allocate the ring's headers: %w", err))
		return
	}
	r.efdBuf = unsafe.Pointer(&r.hdrMem[total*512])
	for _, q := range r.queues {
		for range perQueue {
			i := len(r.ents)
			h := r.hdrMem[i*512 : i*512+512]
			e := &ringEnt{idx: i, qid: uint16(q), hdr: h[:ringHdrSize], payload: r.bufMem[i*payload : (i+1)*payload]}
			iov := h[320:352]
			le.PutUint64(iov, uint64(uintptr(unsafe.Pointer(&e.hdr[0]))))
			le.PutUint64(iov[8:], ringHdrSize)
			le.PutUint64(iov[16:], uint64(uintptr(unsafe.Pointer(&e.payload[0]))))
			le.PutUint64(iov[24:], uint64(payload))
			r.ents = append(r.ents, e)
		}
	}
	prepared <- nil
	select {
	case <-r.start:
	case <-r.stop:
		r.free()
		return
	}
	fail = func(err error) {
		r.free()
		r.registered <- err
	}
	if err := faults.register; err != nil {
		fail(err)
		return
	}
	// One entry at a time: a kernel that refuses says so at once, while
	// requests still come over /dev/fuse.
	register := func(e *ringEnt) error {
		b := r.sqe()
		r.putCmd(b, e, fuseCmdRegister, 0, unsafe.Pointer(&r.hdrMem[e.idx*512+320]))
		_, err := r.enter(r.unsubmitted, 0, false)
		if err != nil {
			return fmt.Errorf("register FUSE ring entry %d of queue %d: %w", e.idx, e.qid, err)
		}
		return nil
	}
	for _, e := range r.ents {
		if err := register(e); err != nil {
			fail(err)
			return
		}
		// A refused command completes at once with an error.
		if err := r.earlyError(); err != nil {
			fail(err)
			return
		}
	}
	if !r.armWake() {
		fail(errors.New("io_uring submission ring full"))
		return
	}
	r.registered <- nil
	r.loop()
}

// earlyError reports a completion with an error among those already
// there (a REGISTER the kernel refused).
func (r *ring) earlyError() error {
	head := *r.cqHead
	for tail := atomic.LoadUint32(r.cqTail); head != tail; head++ {
		c := unsafe.Add(r.cqes, uintptr(head&r.cqMask)*cqeSize)
		if res := *(*int32)(unsafe.Add(c, 8)); res < 0 {
			atomic.StoreUint32(r.cqHead, head+1)
			return errRefused{fmt.Errorf("the kernel refused a FUSE ring entry: %w", syscall.Errno(-res))}
		}
		// A request already: leave it for the loop.
		return nil
	}
	return nil
}

func (r *ring) loop() {
	live := len(r.ents)
	var pending []commit
	for live > 0 {
		r.mu.Lock()
		pending, r.commits = r.commits, pending[:0]
		stop := r.stopping.Load()
		r.sleeping = len(pending) == 0 && !stop
		r.mu.Unlock()
		n := 0
		for _, c := range pending {
			b := r.sqe()
			if b == nil {
				break // cannot happen: the ring holds every entry's command
			}
			r.putCmd(b, c.e, fuseCmdCommitAndFetch, c.id, nil)
			n++
		}
		if stop {
			r.enter(r.unsubmitted, 0, false)
			break
		}
		wait := uint32(1)
		if n > 0 {
			wait = 0 // commits went out: take what is there, then look again
		}
		if _, err := r.enter(r.unsubmitted, wait, true); err != nil {
			if errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.ENOMEM) {
				time.Sleep(time.Millisecond) // the completion ring is full, or memory is short: again
			} else {
				// The ring cannot go on, and the kernel sends every
				// request to it: end the connection, so that I/O fails
				// (EIO) rather than waits for ever.
				r.s.log.Error("io_uring_enter failed; ending the FUSE connection", "mountpoint", r.s.o.Mountpoint, "err", err)
				r.s.abortConn()
				break
			}
		}
		r.mu.Lock()
		r.sleeping = false
		r.mu.Unlock()
		head := *r.cqHead
		for tail := atomic.LoadUint32(r.cqTail); head != tail; head++ {
			c := unsafe.Add(r.cqes, uintptr(head&r.cqMask)*cqeSize)
			tag, res := *(*uint64)(c), *(*int32)(unsafe.Add(c, 8))
			if tag == wakeTag {
				r.armWake()
				continue
			}
			if res < 0 {
				// The connection ended (ENOTCONN, ECONNABORTED) or the
				// command was cancelled: this entry is done.
				live--
				continue
			}
			e := r.ents[tag]
			r.s.ringReqs.Add(1)
			// An idle worker takes it, or a new one: a goroutine
			// started per request grows its stack on every one. There
			// are never more workers than entries.
			select {
			case r.work <- e:
			default:
				go r.worker(e)
			}
		}
		atomic.StoreUint32(r.cqHead, head)
	}
	close(r.work)
	r.free()
}

func (r *ring) worker(e *ringEnt) {
	r.serve(e)
	for e := range r.work {
		r.serve(e)
	}
}

func (r *ring) serve(e *ringEnt) {
	h := parseInHeader(e.hdr)
	id := le.Uint64(e.hdr[ringCommitIDOff:])
	psz := int(le.Uint32(e.hdr[ringPayloadSzOff:]))
	op := e.hdr[ringOpInOff : ringOpInOff+128]
	data := e.payload[:min(psz, len(e.payload))]
	n, errno := r.s.handle(h, op, data, e.payload)
	if errno != 0 {
		n = 0
	}
	putOutHeader(e.hdr, uint32(outHeaderSize+n), errno, h.Unique)
	le.PutUint32(e.hdr[ringPayloadSzOff:], uint32(n))
	r.mu.Lock()
	r.commits = append(r.commits, commit{e: e, id: id})
	wake := r.sleeping
	r.sleeping = false
	r.mu.Unlock()
	if wake {
		r.wake()
	}
}

func (r *ring) wake() {
	var one [8]byte
	le.PutUint64(one[:], 1)
	r.mu.Lock()
	if r.efd > 0 {
		unix.Write(r.efd, one[:])
	}
	r.mu.Unlock()
}

// close stops the ring's thread (after the connection ended, its entries
// complete with errors by themselves) and frees it.
func (r *ring) close() {
	select {
	case <-r.done:
		return
	default:
	}
	r.stopOnce.Do(func() { close(r.stop) })
	r.mu.Lock()
	r.stopping.Store(true)
	r.mu.Unlock()
	r.wake()
	<-r.done
}

func (r *ring) free() {
	for _, m := range [][]byte{r.sqeMem, r.bufMem, r.hdrMem} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	if r.cqMem != nil && &r.cqMem[0] != &r.sqMem[0] {
		unix.Munmap(r.cqMem)
	}
	if r.sqMem != nil {
		unix.Munmap(r.sqMem)
	}
	if r.fd > 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
	r.mu.Lock()
	if r.efd > 0 {
		unix.Close(r.efd)
		r.efd = -1
	}
	r.mu.Unlock()
	r.sqMem, r.cqMem, r.sqeMem, r.bufMem, r.hdrMem = nil, nil, nil, nil, nil
}
