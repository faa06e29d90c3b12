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
	c := h.m.client
	max := c.IOSize()
	n := 0
	for n < len(dest) {
		chunk := dest[n:min(len(dest), n+max)]
		k, eof, err := c.Read(ctx, cred(ctx), h.n.fh, h.stateid(), uint64(off)+uint64(n), chunk)
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

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if h.m.readOnly {
		return 0, syscall.EROFS
	}
	c := h.m.client
	max := c.IOSize()
	n := 0
	for n < len(data) {
		chunk := data[n:min(len(data), n+max)]
		res, err := c.Write(ctx, cred(ctx), h.n.fh, h.stateid(), uint64(off)+uint64(n), chunk, nfs4.Unstable)
		if nfs4.IsBadStateid(err) {
			h.dropStateid(err)
			continue
		}
		if err != nil {
			if n > 0 {
				break
			}
			return 0, h.m.errno("write", err)
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
	return uint32(n), 0
}

// commit makes the unstable writes durable. If the server's write
// verifier changed since they were sent, the server restarted and may have
// lost them; we do not keep copies to send again, so that is EIO.
func (h *handle) commit(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	dirty, verf, lost := h.dirty, h.verf, h.lost
	h.mu.Unlock()
	if !dirty {
		return 0
	}
	got, err := h.m.client.Commit(ctx, cred(ctx), h.n.fh)
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
	return 0
}

func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno { return h.commit(ctx) }

func (h *handle) Release(ctx context.Context) syscall.Errno {
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
