package server

import (
	"slices"
	"sync"
)

// fileSet is the server's file-tree pools by name, with the NFS exporter
// of each that is exported and the address its clients mount: the pools of
// the command line, and the file trees of storage hosts that registered
// since (an agent's tree, served under its pool's name). Reads take the
// lock, so a registration never races a call that walks the pools.
type fileSet struct {
	mu        sync.RWMutex
	pools     map[string]FilePool
	exporters map[string]Exporter
	addresses map[string]string
	names     []string // sorted: placement walks the pools in one order
}

// newFileSet serves pools; those with an exporter are mounted at address.
func newFileSet(pools map[string]FilePool, exporters map[string]Exporter, address string) *fileSet {
	fs := &fileSet{pools: map[string]FilePool{}, exporters: map[string]Exporter{}, addresses: map[string]string{}}
	for name, p := range pools {
		e := exporters[name]
		fs.putLocked(name, p, e, address)
	}
	return fs
}

func (fs *fileSet) pool(name string) (FilePool, bool) {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	p, ok := fs.pools[name]
	return p, ok
}

// exporter is pool name's NFS exporter; false when it is not exported.
func (fs *fileSet) exporter(name string) (Exporter, bool) {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	e, ok := fs.exporters[name]
	return e, ok
}

// address is where clients mount pool name's exports; "" when it is not
// exported.
func (fs *fileSet) address(name string) string {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	return fs.addresses[name]
}

// list is the pools' names, sorted; the caller owns the slice.
func (fs *fileSet) list() []string {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	return slices.Clone(fs.names)
}

// put serves p as name (replacing what was there), exported by e at
// address when e is not nil.
func (fs *fileSet) put(name string, p FilePool, e Exporter, address string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.putLocked(name, p, e, address)
}

func (fs *fileSet) putLocked(name string, p FilePool, e Exporter, address string) {
	if _, had := fs.pools[name]; !had {
		i, _ := slices.BinarySearch(fs.names, name)
		fs.names = slices.Insert(fs.names, i, name)
	}
	fs.pools[name] = p
	delete(fs.exporters, name)
	delete(fs.addresses, name)
	if e != nil {
		fs.exporters[name] = e
		fs.addresses[name] = address
	}
}

// remove stops serving name; false when it was not served.
func (fs *fileSet) remove(name string) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if _, ok := fs.pools[name]; !ok {
		return false
	}
	delete(fs.pools, name)
	delete(fs.exporters, name)
	delete(fs.addresses, name)
	if i, ok := slices.BinarySearch(fs.names, name); ok {
		fs.names = slices.Delete(fs.names, i, i+1)
	}
	return true
}
