package server

import (
	"slices"
	"sort"
	"sync"
)

// poolSet is the server's block pools by name with their NBD exporters:
// the ones it was started with and the storage hosts that registered since
// (RegisterStorageHost). Every read takes a snapshot under the lock, so a
// registration never races a call that walks the pools.
type poolSet struct {
	mu      sync.RWMutex
	pools   map[string]Pool
	exports map[string]BlockExporter
	// names is sorted: placement and listings walk pools in one order.
	names []string
}

func newPoolSet(pools map[string]Pool, exports map[string]BlockExporter) *poolSet {
	ps := &poolSet{pools: map[string]Pool{}, exports: map[string]BlockExporter{}}
	for name, p := range pools {
		ps.pools[name] = p
		ps.names = append(ps.names, name)
	}
	for name, e := range exports {
		ps.exports[name] = e
	}
	sort.Strings(ps.names)
	return ps
}

// get is pool name, nil when there is none.
func (ps *poolSet) get(name string) Pool {
	p, _ := ps.lookup(name)
	return p
}

func (ps *poolSet) lookup(name string) (Pool, bool) {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	p, ok := ps.pools[name]
	return p, ok
}

// list is the pools' names, sorted; the caller owns the slice.
func (ps *poolSet) list() []string {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	return append([]string(nil), ps.names...)
}

// exporter is the NBD exporter of pool name, if its volumes are exported.
func (ps *poolSet) exporter(name string) (BlockExporter, bool) {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	e, ok := ps.exports[name]
	return e, ok
}

func (ps *poolSet) anyExporter() bool {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	return len(ps.exports) > 0
}

// put adds pool name or replaces it (a storage host that registered again
// at another address), with its exporter or none. It returns what it
// replaced.
func (ps *poolSet) put(name string, p Pool, e BlockExporter) (old Pool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	old, had := ps.pools[name]
	ps.pools[name] = p
	if e != nil {
		ps.exports[name] = e
	} else {
		delete(ps.exports, name)
	}
	if !had {
		ps.names = append(ps.names, name)
		sort.Strings(ps.names)
	}
	return old
}

// remove drops pool name and its exporter; it says whether it was there.
func (ps *poolSet) remove(name string) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if _, had := ps.pools[name]; !had {
		return false
	}
	delete(ps.pools, name)
	delete(ps.exports, name)
	ps.names = slices.DeleteFunc(ps.names, func(n string) bool { return n == name })
	return true
}
