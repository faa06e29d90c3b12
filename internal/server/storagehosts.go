package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/store"
)

// bucketStorageHosts holds the storage hosts that registered, by pool, so
// that a server that restarts (or a standby that takes over) connects to
// them again before they next register.
const bucketStorageHosts = "storage-hosts"

// StorageHostDialer connects the server to a storage host that registered
// its pool (the agent API client, with the server's agent token).
type StorageHostDialer interface {
	DialStorageHost(ctx context.Context, pool, address string) (StorageHostConn, error)
}

// AgentTokenIssuer is a StorageHostDialer that presents each storage host
// a token of its own (stowage server --agent-token-per-host): it can tell
// a host its token (GetStorageHostAgentToken).
type AgentTokenIssuer interface {
	// AgentToken is the token presented to pool's agent; false when one
	// token is presented to every host.
	AgentToken(pool string) (string, bool)
}

// StorageHostConn is a connection to a storage host: its pool, the
// exporter of its volumes when it exports over NBD (nil when it does not),
// its file-tree pool when it has one (served under the pool's name) with
// the NFS exporter of its access points and the address clients mount
// them at, and how to close it.
type StorageHostConn struct {
	Pool     Pool
	Exporter BlockExporter
	Files    FilePool
	// FileExporter is nil when the storage host serves no NFS.
	FileExporter Exporter
	NFSAddress   string
	Close        func() error
}

type storageHostRecord struct {
	Pool       string    `json:"pool"`
	Address    string    `json:"address"`
	Zone       string    `json:"zone"`
	Node       string    `json:"node"`
	Registered time.Time `json:"registered"`
}

// hostConns are the connections to the registered storage hosts, and the
// last error of each one not connected.
type hostConns struct {
	mu      sync.Mutex
	conns   map[string]hostConn
	pending map[string]error
}

type hostConn struct {
	address string
	close   func() error
}

// registered says whether pool is a registered storage host's with a
// connection (at any address).
func (h *hostConns) registered(pool string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.conns[pool]
	return ok
}

// connected says whether pool is a registered storage host's, connected
// at address.
func (h *hostConns) connected(pool, address string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.conns[pool]
	return ok && c.address == address
}

// notConnected is why a registered storage host's pool is not served, nil
// when it is not one waiting to be connected.
func (h *hostConns) notConnected(pool string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pending[pool]
}

func (h *hostConns) setPending(pool string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pending == nil {
		h.pending = map[string]error{}
	}
	h.pending[pool] = err
}

// RegisterStorageHost connects to the storage host's agent API at
// req.Address, checks that it serves req.Pool, records it and serves the
// pool. Again with the same address it only reports the pool.
func (s *Server) RegisterStorageHost(ctx context.Context, req *pb.RegisterStorageHostRequest) (*pb.Pool, error) {
	if req.Pool == "" || req.Address == "" {
		return nil, status.Error(codes.InvalidArgument, "a storage host registers with its pool's name and its agent API address (host:port)")
	}
	if p, ok := auth.FromContext(ctx); ok && p.StorageHost() != "" && p.StorageHost() != req.Pool {
		return nil, status.Errorf(codes.PermissionDenied, "%s may not pool:RegisterStorageHost on %s: a storage host registers its own pool only", p, req.Pool)
	}
	if _, _, err := net.SplitHostPort(req.Address); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "agent API address %q of pool %s is not host:port: %v", req.Address, req.Pool, err)
	}
	if s.storageHosts == nil {
		return nil, status.Errorf(codes.FailedPrecondition,
			"this Stowage server takes no storage host registrations (start it with --agent-token-file, the token it presents to the agents); pool %s was not added", req.Pool)
	}
	unlock, err := s.lock(ctx, "storage host "+req.Pool, "storage-host/"+req.Pool)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if !s.hosts.connected(req.Pool, req.Address) {
		if err := s.connectStorageHost(ctx, req.Pool, req.Address); err != nil {
			return nil, err
		}
	}
	p := s.pools.get(req.Pool)
	return &pb.Pool{Name: req.Pool, Zone: p.Zone(), Node: p.Node(), CloneMode: string(p.CloneMode()), Zonal: s.exportAddress(req.Pool) != ""}, nil
}

// GetStorageHostAgentToken tells a storage host the token the servers
// present to its agent API, so that it need not hold the secret it is
// derived from. Never logged.
func (s *Server) GetStorageHostAgentToken(ctx context.Context, req *pb.GetStorageHostAgentTokenRequest) (*pb.StorageHostAgentToken, error) {
	if req.Pool == "" {
		return nil, status.Error(codes.InvalidArgument, "name the pool whose agent token to get")
	}
	if p, ok := auth.FromContext(ctx); ok && p.StorageHost() != "" && p.StorageHost() != req.Pool {
		return nil, status.Errorf(codes.PermissionDenied, "%s may not pool:GetStorageHostAgentToken on %s: a storage host gets its own pool's agent token only", p, req.Pool)
	}
	issuer, ok := s.storageHosts.(AgentTokenIssuer)
	if s.storageHosts == nil || !ok {
		return nil, status.Errorf(codes.FailedPrecondition,
			"this Stowage server takes no storage host registrations (start it with --agent-token-file and --agent-token-per-host); no agent token for pool %s", req.Pool)
	}
	token, ok := issuer.AgentToken(req.Pool)
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition,
			"this Stowage server presents one agent token to every storage host (it runs without --agent-token-per-host), so it gives none out: give the agent of pool %s that token with --token-file", req.Pool)
	}
	return &pb.StorageHostAgentToken{Pool: req.Pool, Token: token}, nil
}

// DeregisterStorageHost forgets the storage host of req.Pool: its record,
// its connection and its pool, once no volume or snapshot of this server
// is in it.
func (s *Server) DeregisterStorageHost(ctx context.Context, req *pb.DeregisterStorageHostRequest) (*pb.DeregisterStorageHostResponse, error) {
	if req.Pool == "" {
		return nil, status.Error(codes.InvalidArgument, "name the pool whose storage host to deregister")
	}
	if p, ok := auth.FromContext(ctx); ok && p.StorageHost() != "" && p.StorageHost() != req.Pool {
		return nil, status.Errorf(codes.PermissionDenied, "%s may not pool:DeregisterStorageHost on %s: a storage host deregisters its own pool only", p, req.Pool)
	}
	unlock, err := s.lock(ctx, "storage host "+req.Pool, "storage-host/"+req.Pool)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var rec storageHostRecord
	err = s.store.View(ctx, func(tx store.Tx) error { return store.GetJSON(tx, bucketStorageHosts, req.Pool, &rec) })
	if errors.Is(err, store.ErrNotFound) {
		if _, ok := s.pools.lookup(req.Pool); ok {
			return nil, status.Errorf(codes.FailedPrecondition,
				"pool %s is configured on this server's command line (--pool or --agent), not registered by a storage host: remove it there", req.Pool)
		}
		return &pb.DeregisterStorageHostResponse{}, nil
	}
	if err != nil {
		return nil, internal(err, "read the storage host of pool %s", req.Pool)
	}
	if err := s.poolUnused(ctx, req.Pool); err != nil {
		return nil, err
	}
	// Out of placement, then its use read again: a volume placed there
	// meanwhile keeps it (a pool in use is never out of service).
	s.hosts.mu.Lock()
	pool, served := s.pools.lookup(req.Pool)
	exporter, _ := s.pools.exporter(req.Pool)
	tree, hasTree := s.files.pool(req.Pool)
	treeExporter, _ := s.files.exporter(req.Pool)
	nfsAddress := s.files.address(req.Pool)
	s.pools.remove(req.Pool)
	s.files.remove(req.Pool)
	s.hosts.mu.Unlock()
	restore := func() {
		s.hosts.mu.Lock()
		defer s.hosts.mu.Unlock()
		if served {
			s.pools.put(req.Pool, pool, exporter)
		}
		if hasTree {
			s.files.put(req.Pool, tree, treeExporter, nfsAddress)
		}
	}
	if err := s.poolUnused(ctx, req.Pool); err != nil {
		restore()
		return nil, err
	}
	if err := s.store.Update(ctx, func(tx store.Tx) error { return tx.Delete(bucketStorageHosts, req.Pool) }); err != nil {
		restore()
		return nil, internal(err, "remove the storage host record of pool %s", req.Pool)
	}
	s.hosts.mu.Lock()
	c, had := s.hosts.conns[req.Pool]
	delete(s.hosts.conns, req.Pool)
	delete(s.hosts.pending, req.Pool)
	s.hosts.mu.Unlock()
	if had {
		c.close()
	}
	s.log.Info("storage host deregistered: its pool is no longer served", "pool", req.Pool, "agent", rec.Address, "was_connected", had)
	return &pb.DeregisterStorageHostResponse{Deregistered: true, Address: rec.Address}, nil
}

// poolUnused is nil when no volume or snapshot of this server is in
// pool, else FAILED_PRECONDITION naming up to five of them.
func (s *Server) poolUnused(ctx context.Context, pool string) error {
	uses, err := s.poolUses(ctx)
	if err != nil {
		return err
	}
	u := uses[pool]
	if len(u.volumes)+len(u.snapshots)+len(u.fileSystems) == 0 {
		return nil
	}
	users := append(append(u.volumes, u.snapshots...), u.fileSystems...)
	shown := users[:min(len(users), 5)]
	more := ""
	if len(users) > len(shown) {
		more = fmt.Sprintf(" and %d more", len(users)-len(shown))
	}
	return status.Errorf(codes.FailedPrecondition,
		"pool %s still holds %d volumes, %d snapshots and %d file systems (%s%s): delete them first; its storage host stays registered",
		pool, len(u.volumes), len(u.snapshots), len(u.fileSystems), strings.Join(shown, ", "), more)
}

// connectStorageHost dials a storage host, records it and serves its pool
// in place of any earlier connection to it.
func (s *Server) connectStorageHost(ctx context.Context, pool, address string) error {
	registered := s.hosts.registered(pool)
	if _, ok := s.pools.lookup(pool); ok && !registered {
		return status.Errorf(codes.AlreadyExists,
			"pool %s is configured on this server's command line (--pool or --agent); a storage host may not register it too: rename its pool", pool)
	}
	if _, ok := s.files.pool(pool); ok && !registered {
		return status.Errorf(codes.AlreadyExists,
			"file-tree pool %s is configured on this server's command line (--file-pool); a storage host may not register a pool of that name: rename its pool", pool)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := s.storageHosts.DialStorageHost(dctx, pool, address)
	cancel()
	if err != nil {
		err = status.Errorf(codes.Unavailable, "the server could not reach the agent API of pool %s at %s (is the address reachable from the server, and does the agent hold the server's agent token?): %v", pool, address, err)
		if !registered {
			s.hosts.setPending(pool, err)
		}
		return err
	}
	rec := &storageHostRecord{Pool: pool, Address: address, Zone: c.Pool.Zone(), Node: c.Pool.Node(), Registered: time.Now().UTC()}
	if err := s.store.Update(ctx, func(tx store.Tx) error { return store.PutJSON(tx, bucketStorageHosts, pool, rec) }); err != nil {
		c.Close()
		return internal(err, "record storage host of pool %s", pool)
	}
	s.hosts.mu.Lock()
	old, had := s.hosts.conns[pool]
	if s.hosts.conns == nil {
		s.hosts.conns = map[string]hostConn{}
	}
	s.hosts.conns[pool] = hostConn{address: address, close: c.Close}
	delete(s.hosts.pending, pool)
	s.pools.put(pool, c.Pool, c.Exporter)
	if c.Files != nil {
		s.files.put(pool, c.Files, c.FileExporter, c.NFSAddress)
	} else {
		s.files.remove(pool)
	}
	s.hosts.mu.Unlock()
	if had {
		old.close()
	}
	s.log.Info("storage host registered: serving its pool", "pool", pool, "agent", address, "zone", rec.Zone, "node", rec.Node,
		"nbd", s.exportAddress(pool), "fileTree", c.Files != nil, "nfs", c.NFSAddress, "replaced", had && old.address != address)
	s.adoptPool(ctx, pool)
	if c.Files != nil {
		s.adoptFileTree(ctx, pool)
	}
	return nil
}

// adoptPool does for a pool that joined while serving what the start does
// for every pool: its node is registered, and a volume whose image it
// lacks says so. Images the store does not know are logged, never removed:
// a storage host registered under the wrong pool name loses nothing.
func (s *Server) adoptPool(ctx context.Context, pool string) {
	p := s.pools.get(pool)
	if _, err := s.getNode(ctx, p.Node()); status.Code(err) == codes.NotFound {
		if _, err := s.RegisterNode(ctx, &pb.RegisterNodeRequest{Id: p.Node(), Zone: p.Zone()}); err != nil {
			s.log.Error("register the node of a storage host's pool", "pool", pool, "node", p.Node(), "err", err)
		}
	}
	known := map[string]bool{}
	var missing []volumeRecord
	err := s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketVolumes, "", "", func(_ string, value []byte) error {
			var v volumeRecord
			if err := json.Unmarshal(value, &v); err != nil {
				return err
			}
			if v.Pool != pool {
				return nil
			}
			known[v.ID] = true
			if _, err := p.ImageSize(v.ID); err != nil && v.State != StateError && v.State != StateCreating && v.State != StateDeleting {
				missing = append(missing, v)
			}
			return nil
		})
	})
	if err != nil {
		s.log.Error("check the volumes of a storage host's pool", "pool", pool, "err", err)
		return
	}
	for i := range missing {
		s.log.Error("volume image is missing from its storage host", "volume", missing[i].ID, "pool", pool)
	}
	if images, err := p.ListImages(); err == nil {
		for _, id := range images {
			if !known[id] {
				s.log.Warn("storage host holds an image no volume of this server names (left in place)", "pool", pool, "volume", id)
			}
		}
	}
}

// StartStorageHosts connects, in the background, to every storage host
// that registered before this server led, retrying each until it answers
// or stop. stop also closes every storage host connection.
func (s *Server) StartStorageHosts(ctx context.Context) (stop func()) {
	if s.storageHosts == nil {
		return func() {}
	}
	var recs []storageHostRecord
	err := s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketStorageHosts, "", "", func(_ string, value []byte) error {
			var r storageHostRecord
			if err := json.Unmarshal(value, &r); err != nil {
				return err
			}
			recs = append(recs, r)
			return nil
		})
	})
	if err != nil {
		s.log.Error("read the registered storage hosts; they are served again when they register", "err", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, r := range recs {
		s.hosts.setPending(r.Pool, status.Errorf(codes.Unavailable, "the storage host of pool %s (registered at %s) is not connected yet", r.Pool, r.Address))
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.reconnect(ctx, r)
		}()
	}
	return func() {
		cancel()
		wg.Wait()
		s.hosts.mu.Lock()
		defer s.hosts.mu.Unlock()
		for pool, c := range s.hosts.conns {
			c.close()
			delete(s.hosts.conns, pool)
		}
	}
}

// reconnect dials a recorded storage host until it answers, backing off
// to 30 s; a registration in the meantime wins.
func (s *Server) reconnect(ctx context.Context, r storageHostRecord) {
	wait := time.Second
	for {
		unlock, err := s.lock(ctx, "storage host "+r.Pool, "storage-host/"+r.Pool)
		if err == nil {
			var rec storageHostRecord
			err = s.store.View(ctx, func(tx store.Tx) error { return store.GetJSON(tx, bucketStorageHosts, r.Pool, &rec) })
			if errors.Is(err, store.ErrNotFound) {
				// Deregistered meanwhile.
				unlock()
				return
			}
			if err == nil && !s.hosts.registered(r.Pool) {
				err = s.connectStorageHost(ctx, r.Pool, rec.Address)
			}
			unlock()
			if err == nil {
				return
			}
			if ctx.Err() == nil {
				s.log.Warn("registered storage host unreachable; retrying", "pool", r.Pool, "agent", r.Address, "in", wait, "err", status.Convert(err).Message())
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// errNotServed is why pool is not served: a registered storage host not
// connected, or a pool this server does not know.
func (s *Server) errNotServed(pool string) error {
	if err := s.hosts.notConnected(pool); err != nil {
		return err
	}
	return status.Errorf(codes.FailedPrecondition, "storage pool %q is not configured on this server (was it removed from --pool or --agent, or has its storage host not registered?)", pool)
}

// adoptFileTree exports again, on a storage host's file tree that
// (re)joined, every available file system and access point of its pool:
// the agent keeps its exports, but the records are what is served. Trees
// the records do not know are logged, never removed.
func (s *Server) adoptFileTree(ctx context.Context, pool string) {
	var fss []fileSystemRecord
	var aps []accessPointRecord
	known := map[string]bool{}
	err := s.store.View(ctx, func(tx store.Tx) error {
		if err := tx.Scan(bucketFileSystems, "", "", func(_ string, value []byte) error {
			var f fileSystemRecord
			if err := json.Unmarshal(value, &f); err != nil {
				return err
			}
			if f.Pool == pool {
				known[f.ID] = true
				fss = append(fss, f)
			}
			return nil
		}); err != nil {
			return err
		}
		return tx.Scan(bucketAccessPoints, "", "", func(_ string, value []byte) error {
			var a accessPointRecord
			if err := json.Unmarshal(value, &a); err != nil {
				return err
			}
			if a.Pool == pool {
				aps = append(aps, a)
			}
			return nil
		})
	})
	if err != nil {
		s.log.Error("read the file systems of a storage host's file tree", "pool", pool, "err", err)
		return
	}
	// What did not finish while the host was away first, as Reconcile
	// does at a start: access points, then file systems.
	for i := range aps {
		a := &aps[i]
		switch a.State {
		case apCreating, apDeleting:
			s.log.Warn("removing an access point whose create or delete did not finish while its storage host was away", "accessPoint", a.ID, "pool", pool)
			if err := s.removeAccessPoint(ctx, a, a.State == apCreating); err != nil {
				s.log.Error("remove an unfinished access point on its storage host", "accessPoint", a.ID, "pool", pool, "err", err)
			}
		case apAvailable:
			if ex, ok := s.files.exporter(pool); ok {
				if err := ex.Export(ctx, a.export()); err != nil {
					s.log.Error("export an access point on its storage host again", "accessPoint", a.ID, "pool", pool, "err", err)
				}
			}
		}
	}
	for i := range fss {
		f := &fss[i]
		switch f.State {
		case fsCreating, fsDeleting:
			s.log.Warn("removing a file system whose create or delete did not finish while its storage host was away", "fileSystem", f.ID, "pool", pool)
			if err := s.deleteFileSystem(ctx, f); err != nil {
				s.log.Error("remove an unfinished file system on its storage host", "fileSystem", f.ID, "pool", pool, "err", err)
			}
		case fsAvailable:
			if err := s.reexportFileSystem(ctx, f); err != nil {
				s.log.Error("export a file system on its storage host again", "fileSystem", f.ID, "pool", pool, "err", err)
			}
		}
	}
	if p, ok := s.files.pool(pool); ok {
		if ids, err := p.ListFileSystems(); err == nil {
			for _, id := range ids {
				if !known[id] {
					s.log.Warn("storage host holds a file system tree no record of this server names (left in place)", "pool", pool, "fileSystem", id)
				}
			}
		}
	}
}

// fileTreeAway is UNAVAILABLE when pool is the file tree of a registered
// storage host that is not connected: its tree cannot be changed now, so
// records of it are left for when it connects (adoptFileTree), never
// forgotten with the tree left behind. nil for a served pool and for a
// pool that is no storage host's (a --file-pool removed from the command
// line: its records go, as they always did).
func (s *Server) fileTreeAway(ctx context.Context, pool string) error {
	if _, ok := s.files.pool(pool); ok {
		return nil
	}
	var rec storageHostRecord
	if err := s.store.View(ctx, func(tx store.Tx) error { return store.GetJSON(tx, bucketStorageHosts, pool, &rec) }); err != nil {
		return nil
	}
	return status.Errorf(codes.Unavailable,
		"the file tree of pool %s is on storage host %s (agent %s), which is not connected to this server: try again once it is", pool, rec.Node, rec.Address)
}
