package nfsmount

import (
	"context"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/stowage-io/stowage/pkg/nfs4"
)

// handle is an open file: an NFSv4 open stateid, used for READ and WRITE
// and released by CLOSE. When the server no longer knows the stateid (it
// restarted without a grace period we could reclaim in, or the lease
// expired), I/O goes on with the anonymous stateid.
type handle struct {
	m *fsys
	n *node

	mu    sync.Mutex
	sid   nfs4.Stateid
	anon  bool
	dirty bool    // unstable writes since the last COMMIT
	verf  [8]byte // write verifier of those writes
	lost  bool    // the verifier changed: uncommitted writes may be lost
}

var (
	_ fs.FileReader   = (*handle)(nil)
	_ fs.FileWriter   = (*handle)(nil)
	_ fs.FileFlusher  = (*handle)(nil)
	_ fs.FileFsyncer  = (*handle)(nil)
	_ fs.FileReleaser = (*handle)(nil)
)

func newHandle(m *fsys, n *node, res *nfs4.OpenResult) *handle {
	return &handle{m: m, n: n, sid: res.Stateid}
}

func (h *handle) stateid() nfs4.Stateid {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sid
}

func (h *handle) dropStateid(err error) {
	h.mu.Lock()
	if !h.anon {
		h.anon = true
		h.sid = nfs4.AnonStateid
		h.m.log.Info("open state lost at the server; continuing with the anonymous stateid", "err", err)
	}
	h.mu.Unlock()
}

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.n.waitWrites()
	c := h.m.client
	max := c.IOSize()
	n := 0
	for n < len(dest) {
		chunk := dest[n:min(len(dest), n+max)]
		k, eof, err := c.Read(hard(ctx), cred(ctx), h.n.fh, h.stateid(), uint64(off)+uint64(n), chunk)
		if nfs4.IsBadStateid(err) {
			h.dropStateid(err)
			continue
		}
		if err != nil {
			if n > 0 {
				break
			}
			return nil, h.m.errno("read", err)
		}
		n += k
		if eof || k == 0 {
			break
		}
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Large writes are written behind: Write copies the data, starts the NFS
// WRITE and returns, with at most maxWriteBehind WRITEs of a file in
// flight, so that the kernel's next write overlaps the server's work on
// this one. A write-behind error (ENOSPC, EDQUOT, EIO…) is returned by the
// file's next write, flush (close) or fsync, as with the kernel NFS
// client. Reads, attribute requests and closes of the file wait for its
// writes first. Small writes are synchronous.
const (
	writeBehindMin = 64 << 10
	maxWriteBehind = 4
)

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if h.m.readOnly {
		return 0, syscall.EROFS
	}
	if e := h.n.takeWriteErr(); e != 0 {
		return 0, e
	}
	cr := cred(ctx)
	if len(data) < writeBehindMin {
		n, err := h.writeSync(hard(ctx), cr, data, off)
		if err != nil && n == 0 {
			return 0, h.m.errno("write", err)
		}
		return uint32(n), 0
	}
	buf := make([]byte, len(data))
	copy(buf, data)
	h.n.startWrite()
	go func() {
		defer h.n.endWrite()
		// Hard mount: retried until it succeeds or the client is closed.
		n, err := h.writeSync(context.Background(), cr, buf, off)
		if err == nil && n < len(buf) {
			err = syscall.EIO
		}
		if err != nil {
			h.n.setWriteErr(h.m.errno("write", err))
		}
	}()
	return uint32(len(data)), 0
}

// writeSync writes data at off with UNSTABLE WRITEs of at most the I/O
// size and records their verifier for the next COMMIT.
func (h *handle) writeSync(ctx context.Context, cr nfs4.Cred, data []byte, off int64) (int, error) {
	c := h.m.client
	max := c.IOSize()
	n := 0
	for n < len(data) {
		chunk := data[n:min(len(data), n+max)]
		res, err := c.Write(ctx, cr, h.n.fh, h.stateid(), uint64(off)+uint64(n), chunk, nfs4.Unstable)
		if nfs4.IsBadStateid(err) {
			h.dropStateid(err)
			continue
		}
		if err != nil {
			return n, err
		}
		if res.Committed == nfs4.Unstable {
			h.mu.Lock()
			if !h.dirty {
				h.dirty, h.verf = true, res.Verf
			} else if res.Verf != h.verf {
				h.lost = true
			}
			h.mu.Unlock()
		}
		if res.Count == 0 {
			break
		}
		n += int(res.Count)
	}
	return n, nil
}

// commit makes the unstable writes durable. If the server's write
// verifier changed since they were sent, the server restarted and may have
// lost them; we do not keep copies to send again, so that is EIO.
func (h *handle) commit(ctx context.Context) syscall.Errno {
	if e := h.n.drainWrites(); e != 0 {
		return e
	}
	h.mu.Lock()
	dirty, verf, lost := h.dirty, h.verf, h.lost
	h.mu.Unlock()
	if !dirty {
		return 0
	}
	got, err := h.m.client.Commit(hard(ctx), cred(ctx), h.n.fh)
	if err != nil {
		return h.m.errno("commit", err)
	}
	h.mu.Lock()
	h.dirty, h.lost = false, false
	h.mu.Unlock()
	if lost || got != verf {
		h.m.log.Error("nfs server restarted before unstable writes were committed; they may be lost", "fileid", h.n.StableAttr().Ino)
		return syscall.EIO
	}
	return 0
}

// Flush (close) does not COMMIT unless the mount asks for it: the data
// is at the server already (WRITE returned), so other clients see it; it
// becomes durable at fsync or when the server writes it back.
func (h *handle) Flush(ctx context.Context) syscall.Errno {
	if h.m.commitOnClose {
		return h.commit(ctx)
	}
	return h.n.drainWrites()
}

func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno { return h.commit(ctx) }

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.n.drainWrites()
	h.mu.Lock()
	anon, sid := h.anon, h.sid
	h.mu.Unlock()
	if anon {
		return 0
	}
	cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := h.m.client.CloseFile(cctx, nfs4.RootCred, h.n.fh, sid); err != nil {
		h.m.log.Warn("nfs close failed", "err", err)
	}
	return 0
}

// Write-behind bookkeeping of a node (shared by its handles).

func (n *node) wbInit() {
	if n.wbCond == nil {
		n.wbCond = sync.NewCond(&n.wbMu)
	}
}

func (n *node) startWrite() {
	n.wbMu.Lock()
	n.wbInit()
	for n.wbInflight >= maxWriteBehind {
		n.wbCond.Wait()
	}
	n.wbInflight++
	n.wbMu.Unlock()
}

func (n *node) endWrite() {
	n.wbMu.Lock()
	n.wbInflight--
	n.wbCond.Broadcast()
	n.wbMu.Unlock()
}

func (n *node) setWriteErr(e syscall.Errno) {
	n.wbMu.Lock()
	if n.wbErr == 0 {
		n.wbErr = e
	}
	n.wbMu.Unlock()
}

func (n *node) takeWriteErr() syscall.Errno {
	n.wbMu.Lock()
	e := n.wbErr
	n.wbErr = 0
	n.wbMu.Unlock()
	return e
}

// waitWrites waits until no write of the node is in flight and reports
// whether there were any.
func (n *node) waitWrites() bool {
	n.wbMu.Lock()
	defer n.wbMu.Unlock()
	if n.wbInflight == 0 {
		return false
	}
	n.wbInit()
	for n.wbInflight > 0 {
		n.wbCond.Wait()
	}
	return true
}

// drainWrites waits for the node's writes and returns (and clears) the
// first error among them.
func (n *node) drainWrites() syscall.Errno {
	n.waitWrites()
	return n.takeWriteErr()
}
