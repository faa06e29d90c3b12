// Package server implements the Stowage API: it validates requests, checks
// who may do what, and orchestrates the metadata store and the storage pools.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/block"
	"github.com/stowage-io/stowage/internal/keylock"
	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/params"
	"github.com/stowage-io/stowage/internal/secrets"
	"github.com/stowage-io/stowage/internal/store"
)

// Pool is a storage pool as the server uses it: *agent.Pool in-process
// (a LocalPool), or a storage host of its own behind the agent API
// (agentapi.Client). It names images by volume and snapshot ids only.
type Pool interface {
	Zone() string
	Node() string
	CloneMode() agent.CloneMode
	CreateImage(ctx context.Context, volumeID string, size int64) error
	CreateImageFromSnapshot(ctx context.Context, volumeID, snapshotID string, size int64) error
	CloneImage(ctx context.Context, volumeID, sourceVolumeID string, size int64) error
	ResizeImage(ctx context.Context, volumeID string, size int64) error
	DeleteImage(ctx context.Context, volumeID string) error
	SnapshotImage(ctx context.Context, volumeID, snapshotID string) error
	DeleteSnapshot(ctx context.Context, snapshotID string) error
	ImageSize(volumeID string) (int64, error)
	SnapshotSize(snapshotID string) (int64, error)
	ListImages() ([]string, error)
	ListSnapshots() ([]string, error)
	Capacity() (agent.Capacity, error)
}

// LocalPool is a pool in this process (*agent.Pool): its images are files
// here, which the NBD exporter serves (LocalBlockExporter) and the local
// handoff opens for a node plugin on this machine (OpenLocalImage). Only
// such a pool attaches volumes locally; a node on the machine of a
// remote storage host attaches over NBD like any other.
type LocalPool interface {
	Pool
	ImagePath(volumeID string) string
	OpenImage(volumeID string, readOnly bool) (*os.File, error)
}

// Config is what a Server is built from.
type Config struct {
	Store store.Store
	// Pools by name.
	Pools map[string]Pool
	// LockWait is how long an operation waits for another one on the same
	// object before it fails with ABORTED. Default 5 s.
	LockWait time.Duration
	Logger   *slog.Logger
	// KMS wraps the data keys of encrypted volumes; without it encrypted
	// volumes are refused.
	KMS *kms.Service
	// FilePools are the file-tree pools by name; without any, file
	// systems are refused.
	FilePools map[string]FilePool
	// Exporters serve the access points of the file-tree pool of the same
	// name over NFS; a pool without one makes access points unexported.
	Exporters map[string]Exporter
	// BlockExports serve the volumes of the pool of the same name over NBD
	// to the nodes of its zone other than its own. A pool without one
	// attaches only on its node.
	BlockExports map[string]BlockExporter
	// AccessPointLimit is the most access points a new file system may
	// have. Default DefaultAccessPointLimit.
	AccessPointLimit int
	// NFSAddress is the host:port clients reach the Exporters' NFS server
	// at, reported with file systems and access points (the CSI driver
	// hands it to nodes).
	NFSAddress string
	// Auth, when set, is the Authorizer whose interceptor is in front of
	// the server (auth.Authorizer.ServerOptions): the handlers that decide
	// per object (GetVolumeDataKey, BatchGetValues) and the PolicyService
	// use it. Without it the API trusts every caller, as before issue 8.
	Auth *auth.Authorizer
	// StorageHosts, when set, connects the storage hosts that register
	// (RegisterStorageHost); without it registrations are refused.
	StorageHosts StorageHostDialer
}

// Server serves the Stowage API.
type Server struct {
	pb.UnimplementedVolumeServiceServer
	pb.UnimplementedSnapshotServiceServer
	pb.UnimplementedPoolServiceServer
	pb.UnimplementedNodeServiceServer
	pb.UnimplementedKeyServiceServer
	pb.UnimplementedSecretServiceServer
	pb.UnimplementedParameterServiceServer
	pb.UnimplementedFileSystemServiceServer
	pb.UnimplementedAccessPointServiceServer
	pb.UnimplementedPolicyServiceServer

	store   store.Store
	pools   *poolSet
	locks   *keylock.Set
	log     *slog.Logger
	kms     *kms.Service
	secrets *secrets.Service
	params  *params.Service

	files        *fileSet
	apLimit      int
	storageHosts StorageHostDialer
	// hosts are the registered storage hosts' connections (storagehosts.go).
	hosts hostConns
	auth  *auth.Authorizer
	// now is the clock of scheduled rotations (tests move it).
	now func() time.Time
}

// New returns a Server; call Reconcile before serving.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("server: no metadata store")
	}
	if len(cfg.Pools) == 0 && len(cfg.FilePools) == 0 && cfg.StorageHosts == nil {
		return nil, errors.New("server: no storage pool configured (give at least one --pool or --file-pool, or let storage hosts register with --agent-token-file)")
	}
	if cfg.LockWait == 0 {
		cfg.LockWait = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.AccessPointLimit <= 0 {
		cfg.AccessPointLimit = DefaultAccessPointLimit
	}
	s := &Server{store: cfg.Store, pools: newPoolSet(cfg.Pools, cfg.BlockExports), locks: keylock.New(cfg.LockWait), log: cfg.Logger, kms: cfg.KMS,
		files: newFileSet(cfg.FilePools, cfg.Exporters, cfg.NFSAddress), apLimit: cfg.AccessPointLimit, auth: cfg.Auth,
		storageHosts: cfg.StorageHosts, now: time.Now}
	for name := range cfg.BlockExports {
		if _, ok := cfg.Pools[name]; !ok {
			return nil, fmt.Errorf("server: a block exporter is given for pool %q, which is not configured", name)
		}
	}
	if cfg.KMS != nil {
		// One clock for the rotation loop and the dates it compares.
		s.secrets = secrets.New(cfg.Store, cfg.KMS, secrets.Options{Now: func() time.Time { return s.now() }})
		s.params = params.New(cfg.Store, cfg.KMS, params.Options{})
	}
	return s, nil
}

// Register adds every Stowage service to g.
func (s *Server) Register(g *grpc.Server) {
	pb.RegisterVolumeServiceServer(g, s)
	pb.RegisterSnapshotServiceServer(g, s)
	pb.RegisterPoolServiceServer(g, s)
	pb.RegisterNodeServiceServer(g, s)
	pb.RegisterKeyServiceServer(g, s)
	pb.RegisterSecretServiceServer(g, s)
	pb.RegisterParameterServiceServer(g, s)
	pb.RegisterFileSystemServiceServer(g, s)
	pb.RegisterAccessPointServiceServer(g, s)
	pb.RegisterPolicyServiceServer(g, s)
	// The standard health check (every authenticated caller may ask it):
	// the drivers' readiness (internal/readiness).
	healthpb.RegisterHealthServer(g, health.NewServer())
}

// lock takes the per-object locks or returns ABORTED naming the object.
func (s *Server) lock(ctx context.Context, what string, keys ...string) (func(), error) {
	unlock, err := s.locks.Lock(ctx, keys...)
	if errors.Is(err, keylock.ErrBusy) {
		return nil, status.Errorf(codes.Aborted, "another operation on %s is in progress; retry later", what)
	}
	if err != nil {
		return nil, status.FromContextError(err).Err()
	}
	return unlock, nil
}

// internal turns an unexpected backend error into INTERNAL with context,
// keeping gRPC statuses that are already set.
func internal(err error, format string, args ...any) error {
	if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	if errors.Is(err, store.ErrNotLeader) {
		return status.Error(codes.Unavailable, errNotLeaderMessage)
	}
	return status.Errorf(codes.Internal, "%s: %v", fmt.Sprintf(format, args...), err)
}

// poolError maps an error of pool poolName to the gRPC code a user can act
// on: the agent's sentinels become NOT_FOUND, ALREADY_EXISTS and
// INVALID_ARGUMENT, a full pool RESOURCE_EXHAUSTED with its free space;
// anything else is INTERNAL.
func (s *Server) poolError(err error, poolName string, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	switch {
	case errors.Is(err, agent.ErrNotFound):
		return status.Errorf(codes.NotFound, "%s: %v", what, err)
	case errors.Is(err, agent.ErrExists):
		return status.Errorf(codes.AlreadyExists, "%s: %v", what, err)
	case errors.Is(err, agent.ErrInvalid):
		return status.Errorf(codes.InvalidArgument, "%s: %v", what, err)
	case errors.Is(err, agent.ErrNoSpace):
		free := "unknown"
		if p, ok := s.pools.lookup(poolName); ok {
			if c, cerr := p.Capacity(); cerr == nil {
				free = fmt.Sprintf("%s of %s", block.FormatBytes(c.FreeBytes), block.FormatBytes(c.TotalBytes))
			}
		}
		return status.Errorf(codes.ResourceExhausted,
			"%s: storage pool %s is full (free: %s); delete volumes or snapshots in it, or add space to the pool", what, poolName, free)
	}
	return internal(err, "%s", what)
}

// invalid maps a model validation error to INVALID_ARGUMENT.
func invalid(err error) error {
	if errors.Is(err, block.ErrInvalid) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return internal(err, "validate")
}

func (s *Server) getVolume(ctx context.Context, id string) (*volumeRecord, error) {
	return getRecord[volumeRecord](ctx, s.store, bucketVolumes, "volume", id)
}

func (s *Server) putVolume(ctx context.Context, v *volumeRecord) error {
	return putRecord(ctx, s.store, bucketVolumes, "volume", v.ID, v)
}

func (s *Server) getSnapshot(ctx context.Context, id string) (*snapshotRecord, error) {
	return getRecord[snapshotRecord](ctx, s.store, bucketSnapshots, "snapshot", id)
}

func (s *Server) pool(name string) (Pool, error) {
	p, ok := s.pools.lookup(name)
	if !ok {
		return nil, s.errNotServed(name)
	}
	return p, nil
}
