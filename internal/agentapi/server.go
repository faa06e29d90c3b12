// Package agentapi is the agent API: a storage host (`stowage agent`) serves
// its pool of volume images and their NBD exports over gRPC (Server), and
// the Stowage server uses it through Client, which is a server.Pool and a
// server.BlockExporter. Only ids cross the wire, never paths; every call is
// authenticated with the agent's bearer token.
package agentapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/agent/v1"
	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/blockexport"
	"github.com/stowage-io/stowage/internal/server"
)

// Server serves one pool and its exports.
type Server struct {
	pb.UnimplementedAgentServiceServer
	name  string
	pool  *agent.Pool
	local *server.LocalBlockExporter // nil: this agent exports nothing
	files *FileTreeServer            // nil: this agent has no file-tree pool
}

// NewServer serves pool, called name, and, when exporter is not nil, its
// exports, which nodes reach at nbdAddress.
func NewServer(name string, pool *agent.Pool, exporter *blockexport.Exporter, nbdAddress string) *Server {
	s := &Server{name: name, pool: pool}
	if exporter != nil {
		s.local = &server.LocalBlockExporter{Exporter: exporter, Pool: pool, Addr: nbdAddress}
	}
	return s
}

// WithFileTree serves ft (FileTreeService) beside the pool.
func (s *Server) WithFileTree(ft *FileTreeServer) *Server {
	s.files = ft
	return s
}

// Serve serves s on l until ctx ends, then stops gracefully. Every call
// must carry token.
func Serve(ctx context.Context, l net.Listener, s *Server, token string, log *slog.Logger) error {
	opts, err := ServerOptions(token, log)
	if err != nil {
		return err
	}
	g := grpc.NewServer(opts...)
	pb.RegisterAgentServiceServer(g, s)
	if s.files != nil {
		pb.RegisterFileTreeServiceServer(g, s.files)
	}
	done := make(chan error, 1)
	go func() { done <- g.Serve(l) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		g.GracefulStop()
		<-done
		return nil
	}
}

// ServerOptions are the interceptors that refuse every call not carrying
// `authorization: Bearer <token>`. Tokens are compared by their hashes in
// constant time; refusals are logged without what was presented.
func ServerOptions(token string, log *slog.Logger) ([]grpc.ServerOption, error) {
	if token == "" {
		return nil, errors.New("agent API: no token: the agent API is always authenticated (stowage agent --token-file)")
	}
	if log == nil {
		log = slog.Default()
	}
	want := sha256.Sum256([]byte(token))
	check := func(ctx context.Context, method string) error {
		err := checkToken(ctx, want)
		if err != nil {
			log.Warn("agent API call refused", "method", method, "reason", status.Convert(err).Message())
		}
		return err
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := check(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := check(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return h(srv, ss)
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream)}, nil
}

const howToAuthenticate = "send the agent's token as gRPC metadata `authorization: Bearer <token>` " +
	"(stowage server --agent name=N,address=A,token-file=F, F holding what the agent's --token-file holds; " +
	"a server with --agent-token-per-host presents the token `stowage token agent <pool>` derives for this agent's pool)"

func checkToken(ctx context.Context, want [32]byte) error {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return status.Error(codes.Unauthenticated, "no authorization metadata: "+howToAuthenticate)
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return status.Error(codes.Unauthenticated, "the authorization metadata is not `Bearer <token>`: "+howToAuthenticate)
	}
	got := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		return status.Error(codes.Unauthenticated, "the bearer token is not this agent's token: "+howToAuthenticate)
	}
	return nil
}

func (s *Server) GetPoolInfo(context.Context, *pb.GetPoolInfoRequest) (*pb.PoolInfo, error) {
	c, err := s.pool.Capacity()
	if err != nil {
		return nil, toStatus(err, poolErrors)
	}
	info := &pb.PoolInfo{Name: s.name, Zone: s.pool.Zone(), Node: s.pool.Node(), CloneMode: string(s.pool.CloneMode()),
		TotalBytes: c.TotalBytes, FreeBytes: c.FreeBytes, UsedBytes: c.UsedBytes}
	if s.local != nil {
		info.NbdAddress = s.local.Address()
	}
	if s.files != nil {
		info.FileTree = s.files.Info()
	}
	return info, nil
}

func (s *Server) CreateImage(ctx context.Context, r *pb.CreateImageRequest) (*pb.CreateImageResponse, error) {
	return &pb.CreateImageResponse{}, toStatus(s.pool.CreateImage(ctx, r.VolumeId, r.SizeBytes), poolErrors)
}

func (s *Server) CreateImageFromSnapshot(ctx context.Context, r *pb.CreateImageFromSnapshotRequest) (*pb.CreateImageResponse, error) {
	return &pb.CreateImageResponse{}, toStatus(s.pool.CreateImageFromSnapshot(ctx, r.VolumeId, r.SnapshotId, r.SizeBytes), poolErrors)
}

func (s *Server) CloneImage(ctx context.Context, r *pb.CloneImageRequest) (*pb.CreateImageResponse, error) {
	return &pb.CreateImageResponse{}, toStatus(s.pool.CloneImage(ctx, r.VolumeId, r.SourceVolumeId, r.SizeBytes), poolErrors)
}

func (s *Server) ResizeImage(ctx context.Context, r *pb.ResizeImageRequest) (*pb.ResizeImageResponse, error) {
	return &pb.ResizeImageResponse{}, toStatus(s.pool.ResizeImage(ctx, r.VolumeId, r.SizeBytes), poolErrors)
}

func (s *Server) DeleteImage(ctx context.Context, r *pb.DeleteImageRequest) (*pb.DeleteImageResponse, error) {
	err := s.pool.DeleteImage(ctx, r.VolumeId)
	if err == nil && s.local != nil {
		s.local.Forget(r.VolumeId)
	}
	return &pb.DeleteImageResponse{}, toStatus(err, poolErrors)
}

func (s *Server) SnapshotImage(ctx context.Context, r *pb.SnapshotImageRequest) (*pb.SnapshotImageResponse, error) {
	return &pb.SnapshotImageResponse{}, toStatus(s.pool.SnapshotImage(ctx, r.VolumeId, r.SnapshotId), poolErrors)
}

func (s *Server) DeleteSnapshot(ctx context.Context, r *pb.DeleteSnapshotRequest) (*pb.DeleteSnapshotResponse, error) {
	return &pb.DeleteSnapshotResponse{}, toStatus(s.pool.DeleteSnapshot(ctx, r.SnapshotId), poolErrors)
}

func (s *Server) ImageSize(_ context.Context, r *pb.ImageSizeRequest) (*pb.SizeResponse, error) {
	n, err := s.pool.ImageSize(r.VolumeId)
	return &pb.SizeResponse{SizeBytes: n}, toStatus(err, poolErrors)
}

func (s *Server) SnapshotSize(_ context.Context, r *pb.SnapshotSizeRequest) (*pb.SizeResponse, error) {
	n, err := s.pool.SnapshotSize(r.SnapshotId)
	return &pb.SizeResponse{SizeBytes: n}, toStatus(err, poolErrors)
}

func (s *Server) ListImages(context.Context, *pb.ListImagesRequest) (*pb.ListResponse, error) {
	ids, err := s.pool.ListImages()
	return &pb.ListResponse{Ids: ids}, toStatus(err, poolErrors)
}

func (s *Server) ListSnapshots(context.Context, *pb.ListSnapshotsRequest) (*pb.ListResponse, error) {
	ids, err := s.pool.ListSnapshots()
	return &pb.ListResponse{Ids: ids}, toStatus(err, poolErrors)
}

func (s *Server) Export(ctx context.Context, r *pb.ExportRequest) (*pb.ExportResponse, error) {
	if s.local == nil {
		return nil, status.Errorf(codes.Unimplemented, "export attachment %s of volume %s: agent %s exports nothing over NBD (start it with --nbd-listen)", r.AttachmentId, r.VolumeId, s.name)
	}
	err := s.local.Export(ctx, server.BlockExport{AttachmentID: r.AttachmentId, VolumeID: r.VolumeId, Generation: r.Generation,
		Secret: r.Secret, ReadOnly: r.ReadOnly, IOPS: r.Iops, BytesPerSecond: r.BytesPerSecond})
	if err != nil && r.VolumeId == "" {
		err = fmt.Errorf("%w: %v", blockexport.ErrInvalid, err)
	}
	return &pb.ExportResponse{}, toStatus(err, exportErrors)
}

func (s *Server) RefreshExports(ctx context.Context, r *pb.RefreshExportsRequest) (*pb.RefreshExportsResponse, error) {
	if s.local == nil {
		return &pb.RefreshExportsResponse{}, nil
	}
	return &pb.RefreshExportsResponse{}, toStatus(s.local.Refresh(ctx, r.VolumeId), exportErrors)
}

func (s *Server) Unexport(ctx context.Context, r *pb.UnexportRequest) (*pb.UnexportResponse, error) {
	if s.local == nil {
		return &pb.UnexportResponse{}, nil
	}
	return &pb.UnexportResponse{}, toStatus(s.local.Unexport(ctx, r.AttachmentId), exportErrors)
}
