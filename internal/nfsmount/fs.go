// Package nfsmount is a FUSE file system over Stowage's NFSv4.1 client
// (pkg/nfs4): it lets pods mount an access point's NFS export on nodes
// without a kernel NFS client.
//
// Consistency is NFS's close-to-open: attributes and entries are cached
// for about a second, and an open keeps the kernel's page cache only if
// the file's change attribute is the one seen at the previous open.
// Permissions are the NFS server's: default_permissions is off, and every
// request carries the calling process's uid and gid (AUTH_SYS).
package nfsmount

import (
	"context"
	"hash/fnv"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/stowage-io/stowage/pkg/nfs4"
)

// fsys is what all nodes of one mount share.
type fsys struct {
	client   *nfs4.Client
	rootFH   nfs4.FH
	readOnly bool
	// commitOnClose makes close(2) COMMIT unstable writes, as the kernel
	// NFS client does.
	commitOnClose bool
	timeout       time.Duration
	log           *slog.Logger
}

type node struct {
	fs.Inode
	m  *fsys
	fh nfs4.FH

	mu         sync.Mutex
	openChange uint64 // change attribute seen at the last open
	haveChange bool
	// entries from the last READDIR (with attributes and handles), so the
	// LOOKUPs of a READDIRPLUS cost no round trip.
	dirCache   map[string]*nfs4.Attr
	dirCacheAt time.Time

	// write-behind (file.go)
	wbMu       sync.Mutex
	wbCond     *sync.Cond
	wbInflight int
	wbErr      syscall.Errno
}

var (
	_ fs.NodeLookuper   = (*node)(nil)
	_ fs.NodeGetattrer  = (*node)(nil)
	_ fs.NodeSetattrer  = (*node)(nil)
	_ fs.NodeCreater    = (*node)(nil)
	_ fs.NodeOpener     = (*node)(nil)
	_ fs.NodeMkdirer    = (*node)(nil)
	_ fs.NodeRmdirer    = (*node)(nil)
	_ fs.NodeUnlinker   = (*node)(nil)
	_ fs.NodeRenamer    = (*node)(nil)
	_ fs.NodeLinker     = (*node)(nil)
	_ fs.NodeSymlinker  = (*node)(nil)
	_ fs.NodeReadlinker = (*node)(nil)
	_ fs.NodeReaddirer  = (*node)(nil)
	_ fs.NodeStatfser   = (*node)(nil)
	_ fs.NodeAccesser   = (*node)(nil)
)

// cred is the calling process's identity, sent as AUTH_SYS: uid and gid
// from the FUSE request, supplementary groups from /proc/<pid>/status
// (cached for a second per pid).
func cred(ctx context.Context) nfs4.Cred {
	if c, ok := fuse.FromContext(ctx); ok {
		return nfs4.Cred{UID: c.Uid, GID: c.Gid, GIDs: groupsOf(c.Pid, c.Uid)}
	}
	return nfs4.RootCred
}

type groupsEntry struct {
	uid  uint32
	gids []uint32
	at   time.Time
}

var groupsCache = struct {
	sync.Mutex
	m map[uint32]groupsEntry
}{m: map[uint32]groupsEntry{}}

func groupsOf(pid, uid uint32) []uint32 {
	if pid == 0 {
		return nil
	}
	now := time.Now()
	groupsCache.Lock()
	if e, ok := groupsCache.m[pid]; ok && e.uid == uid && now.Sub(e.at) < time.Second {
		groupsCache.Unlock()
		return e.gids
	}
	groupsCache.Unlock()
	var gids []uint32
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/status")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
				for _, f := range strings.Fields(rest) {
					if g, err := strconv.ParseUint(f, 10, 32); err == nil {
						gids = append(gids, uint32(g))
					}
				}
				break
			}
		}
	}
	groupsCache.Lock()
	if len(groupsCache.m) > 4096 {
		groupsCache.m = map[uint32]groupsEntry{}
	}
	groupsCache.m[pid] = groupsEntry{uid: uid, gids: gids, at: now}
	groupsCache.Unlock()
	return gids
}

func typeBits(t uint32) uint32 {
	switch t {
	case nfs4.TypeDir:
		return syscall.S_IFDIR
	case nfs4.TypeLnk:
		return syscall.S_IFLNK
	case nfs4.TypeBlk:
		return syscall.S_IFBLK
	case nfs4.TypeChr:
		return syscall.S_IFCHR
	case nfs4.TypeSock:
		return syscall.S_IFSOCK
	case nfs4.TypeFifo:
		return syscall.S_IFIFO
	}
	return syscall.S_IFREG
}

func fillAttr(a *nfs4.Attr, out *fuse.Attr) {
	out.Ino = a.FileID
	out.Size = a.Size
	out.Blocks = (a.SpaceUsed + 511) / 512
	out.Blksize = 4096
	out.Mode = typeBits(a.Type) | a.Mode
	out.Nlink = a.Nlink
	out.Uid, out.Gid = a.UID, a.GID
	out.Rdev = uint32(a.RdevMajor<<8 | a.RdevMinor&0xff)
	set := func(t time.Time, s *uint64, ns *uint32) {
		if !t.IsZero() {
			*s, *ns = uint64(t.Unix()), uint32(t.Nanosecond())
		}
	}
	set(a.Atime, &out.Atime, &out.Atimensec)
	set(a.Mtime, &out.Mtime, &out.Mtimensec)
	set(a.Ctime, &out.Ctime, &out.Ctimensec)
}

// errno maps an error to what the kernel gets, logging the unexpected.
func (m *fsys) errno(op string, err error) syscall.Errno {
	e := nfs4.Errno(err)
	if e == syscall.EIO {
		m.log.Warn("nfs operation failed", "op", op, "err", err)
	}
	return e
}

func (n *node) newChild(ctx context.Context, fh nfs4.FH, a *nfs4.Attr, out *fuse.EntryOut) *fs.Inode {
	fillAttr(a, &out.Attr)
	out.SetEntryTimeout(n.m.timeout)
	out.SetAttrTimeout(n.m.timeout)
	child := &node{m: n.m, fh: fh}
	ino := n.NewInode(ctx, child, fs.StableAttr{Mode: typeBits(a.Type), Ino: a.FileID, Gen: generation(fh)})
	if old, ok := ino.Operations().(*node); ok && old != child && old.waitWrites() {
		// Attributes fetched while writes were in flight: fetch again.
		if a2, err := n.m.client.GetAttr(hard(ctx), cred(ctx), fh); err == nil {
			fillAttr(a2, &out.Attr)
		}
	}
	return ino
}

// generation tells apart files that had the same file id (inode number)
// one after another: file systems reuse the inode numbers of removed
// files at once, and go-fuse returns the existing Inode for a known
// (Ino, Gen), which would then carry the removed file's handle (wrong
// ENOENT, EEXIST and ESTALE for the new file). The handle names the file
// for good, so its hash is the generation.
func generation(fh nfs4.FH) uint64 {
	h := fnv.New64a()
	h.Write(fh)
	return h.Sum64()
}

func (n *node) forget(name string) {
	n.mu.Lock()
	delete(n.dirCache, name)
	n.mu.Unlock()
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.mu.Lock()
	a := n.dirCache[name]
	if a != nil {
		delete(n.dirCache, name)
		if time.Since(n.dirCacheAt) > n.m.timeout {
			a = nil
		}
	}
	n.mu.Unlock()
	if a != nil && len(a.FH) > 0 {
		return n.newChild(ctx, a.FH, a, out), 0
	}
	fh, a, err := n.m.client.Lookup(hard(ctx), cred(ctx), n.fh, name)
	if err != nil {
		return nil, n.m.errno("lookup", err)
	}
	return n.newChild(ctx, fh, a, out), 0
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.waitWrites() // the server's size must include what the kernel thinks is written
	a, err := n.m.client.GetAttr(hard(ctx), cred(ctx), n.fh)
	if err != nil {
		return n.m.errno("getattr", err)
	}
	fillAttr(a, &out.Attr)
	out.SetTimeout(n.m.timeout)
	return 0
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	var s nfs4.SetAttr
	if v, ok := in.GetMode(); ok {
		v &= 07777
		s.Mode = &v
	}
	if v, ok := in.GetUID(); ok {
		s.UID = &v
	}
	if v, ok := in.GetGID(); ok {
		s.GID = &v
	}
	if v, ok := in.GetSize(); ok {
		s.Size = &v
	}
	if t, ok := in.GetATime(); ok {
		if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
			t = time.Time{} // the server's clock
		}
		s.Atime = &t
	}
	if t, ok := in.GetMTime(); ok {
		if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
			t = time.Time{}
		}
		s.Mtime = &t
	}
	changes := s.Mode != nil || s.UID != nil || s.GID != nil || s.Size != nil || s.Atime != nil || s.Mtime != nil
	if changes && n.m.readOnly {
		return syscall.EROFS
	}
	n.waitWrites()
	sid := nfs4.AnonStateid
	if h, ok := f.(*handle); ok && s.Size != nil {
		sid = h.stateid()
	}
	a, err := n.m.client.SetAttr(hard(ctx), cred(ctx), n.fh, sid, &s)
	if nfs4.IsBadStateid(err) {
		a, err = n.m.client.SetAttr(hard(ctx), cred(ctx), n.fh, nfs4.AnonStateid, &s)
	}
	if err != nil {
		return n.m.errno("setattr", err)
	}
	fillAttr(a, &out.Attr)
	out.SetTimeout(n.m.timeout)
	return 0
}

func shareAccess(flags uint32) uint32 {
	switch flags & syscall.O_ACCMODE {
	case syscall.O_WRONLY:
		return nfs4.ShareWrite
	case syscall.O_RDWR:
		return nfs4.ShareBoth
	}
	return nfs4.ShareRead
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if n.m.readOnly {
		return nil, nil, 0, syscall.EROFS
	}
	how := nfs4.Unchecked
	if flags&syscall.O_EXCL != 0 {
		how = nfs4.Guarded
	}
	perm := mode & 07777
	attrs := &nfs4.SetAttr{Mode: &perm}
	if flags&syscall.O_TRUNC != 0 && how == nfs4.Unchecked {
		zero := uint64(0)
		attrs.Size = &zero
	}
	n.forget(name)
	res, err := n.m.client.Open(hard(ctx), cred(ctx), n.fh, name, shareAccess(flags), how, attrs)
	if err != nil {
		return nil, nil, 0, n.m.errno("create", err)
	}
	ino := n.newChild(ctx, res.FH, res.Attr, out)
	if c, ok := ino.Operations().(*node); ok {
		c.mu.Lock()
		c.openChange, c.haveChange = res.Attr.Change, true
		c.mu.Unlock()
	}
	return ino, newHandle(n.m, ino.Operations().(*node), res), 0, 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	acc := shareAccess(flags)
	if n.m.readOnly && (acc&nfs4.ShareWrite != 0 || flags&syscall.O_TRUNC != 0) {
		return nil, 0, syscall.EROFS
	}
	res, err := n.m.client.OpenFH(hard(ctx), cred(ctx), n.fh, acc)
	if err != nil {
		return nil, 0, n.m.errno("open", err)
	}
	var fuseFlags uint32
	n.mu.Lock()
	if n.haveChange && n.openChange == res.Attr.Change {
		fuseFlags |= fuse.FOPEN_KEEP_CACHE
	}
	n.openChange, n.haveChange = res.Attr.Change, true
	n.mu.Unlock()
	return newHandle(n.m, n, res), fuseFlags, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.m.readOnly {
		return nil, syscall.EROFS
	}
	perm := mode & 07777
	n.forget(name)
	fh, a, err := n.m.client.Mkdir(hard(ctx), cred(ctx), n.fh, name, &nfs4.SetAttr{Mode: &perm})
	if err != nil {
		return nil, n.m.errno("mkdir", err)
	}
	return n.newChild(ctx, fh, a, out), 0
}

func (n *node) remove(ctx context.Context, op, name string) syscall.Errno {
	if n.m.readOnly {
		return syscall.EROFS
	}
	n.forget(name)
	if err := n.m.client.Remove(hard(ctx), cred(ctx), n.fh, name); err != nil {
		return n.m.errno(op, err)
	}
	return 0
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	return n.remove(ctx, "rmdir", name)
}
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.remove(ctx, "unlink", name)
}

const renameNoReplace = 1 // RENAME_NOREPLACE

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if n.m.readOnly {
		return syscall.EROFS
	}
	dst, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	if flags&^renameNoReplace != 0 {
		return syscall.EINVAL // RENAME_EXCHANGE, RENAME_WHITEOUT: NFS has no such thing
	}
	if flags&renameNoReplace != 0 {
		// Not atomic: NFSv4 RENAME always replaces.
		if _, _, err := n.m.client.Lookup(hard(ctx), cred(ctx), dst.fh, newName); err == nil {
			return syscall.EEXIST
		} else if !nfs4.IsStatus(err, nfs4.ErrNoent) {
			return n.m.errno("rename", err)
		}
	}
	n.forget(name)
	dst.forget(newName)
	if err := n.m.client.Rename(hard(ctx), cred(ctx), n.fh, name, dst.fh, newName); err != nil {
		return n.m.errno("rename", err)
	}
	return 0
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.m.readOnly {
		return nil, syscall.EROFS
	}
	t, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	n.forget(name)
	a, err := n.m.client.Link(hard(ctx), cred(ctx), t.fh, n.fh, name)
	if err != nil {
		return nil, n.m.errno("link", err)
	}
	return n.newChild(ctx, t.fh, a, out), 0
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.m.readOnly {
		return nil, syscall.EROFS
	}
	n.forget(name)
	fh, a, err := n.m.client.Symlink(hard(ctx), cred(ctx), n.fh, name, target, nil)
	if err != nil {
		return nil, n.m.errno("symlink", err)
	}
	return n.newChild(ctx, fh, a, out), 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	t, err := n.m.client.Readlink(hard(ctx), cred(ctx), n.fh)
	if err != nil {
		return nil, n.m.errno("readlink", err)
	}
	return []byte(t), 0
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	var list []fuse.DirEntry
	cache := map[string]*nfs4.Attr{}
	var cookie uint64
	var verf [8]byte
	for {
		ents, nverf, eof, err := n.m.client.ReadDir(hard(ctx), cred(ctx), n.fh, cookie, verf)
		if err != nil {
			return nil, n.m.errno("readdir", err)
		}
		for _, e := range ents {
			list = append(list, fuse.DirEntry{Name: e.Name, Ino: e.Attr.FileID, Mode: typeBits(e.Attr.Type)})
			if e.Attr.RdattrError == 0 && len(e.Attr.FH) > 0 && e.Attr.Mask.Has(nfs4.AttrType) {
				cache[e.Name] = e.Attr
			}
			cookie = e.Cookie
		}
		verf = nverf
		if eof || len(ents) == 0 {
			break
		}
	}
	n.mu.Lock()
	n.dirCache, n.dirCacheAt = cache, time.Now()
	n.mu.Unlock()
	return fs.NewListDirStream(list), 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	a, err := n.m.client.StatFS(hard(ctx), cred(ctx), n.m.rootFH)
	if err != nil {
		return n.m.errno("statfs", err)
	}
	const bs = 4096
	out.Bsize, out.Frsize = bs, bs
	out.Blocks = a.SpaceTotal / bs
	out.Bfree = a.SpaceFree / bs
	out.Bavail = a.SpaceAvail / bs
	out.Files = a.FilesTotal
	out.Ffree = a.FilesAvail
	out.NameLen = a.MaxName
	if out.NameLen == 0 {
		out.NameLen = 255
	}
	return 0
}

func (n *node) Access(ctx context.Context, mask uint32) syscall.Errno {
	if mask == 0 {
		return 0
	}
	if mask&2 != 0 && n.m.readOnly {
		return syscall.EROFS
	}
	dir := n.StableAttr().Mode&syscall.S_IFMT == syscall.S_IFDIR
	var want uint32
	if mask&4 != 0 {
		want |= nfs4.AccessRead
	}
	if mask&2 != 0 {
		want |= nfs4.AccessModify | nfs4.AccessExtend
		if dir {
			want |= nfs4.AccessDelete
		}
	}
	if mask&1 != 0 {
		if dir {
			want |= nfs4.AccessLookup
		} else {
			want |= nfs4.AccessExecute
		}
	}
	got, err := n.m.client.Access(hard(ctx), cred(ctx), n.fh, want)
	if err != nil {
		return n.m.errno("access", err)
	}
	if got&want != want {
		return syscall.EACCES
	}
	return 0
}

// hard is the context of an NFS request made for a FUSE request: it is not
// cancelled when the kernel interrupts the FUSE request. A signal to the
// calling process (Go's runtime preempts goroutines with SIGURG) makes the
// kernel send FUSE_INTERRUPT; giving up then would return EINTR while the
// server may have done the operation, and the caller's retry (Go retries
// EINTR) would see its own effect: EEXIST from an O_EXCL create, ENOENT
// from an unlink. As with a hard NFS mount, the request runs to its end; a
// fatal signal still ends the waiting process, the kernel does not wait.
func hard(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }
