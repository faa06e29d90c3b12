package agentapi

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/stowage-io/stowage/api/agent/v1"
	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/server"
)

// DefaultCallTimeout bounds the calls of server.Pool that take no context
// (sizes, lists, capacity) and the first GetPoolInfo of Dial.
const DefaultCallTimeout = 30 * time.Second

// ClientConfig says which agent to reach and how.
type ClientConfig struct {
	Name    string // what the server calls the pool; in every error
	Address string // host:port of the agent API
	Token   string // the agent's bearer token; never logged
	// TLS, when set, is how the agent's certificate is trusted (the agent
	// serves TLS: stowage agent --tls-cert-file); nil: in clear.
	TLS *tls.Config
	// CallTimeout bounds calls that take no context. Default
	// DefaultCallTimeout.
	CallTimeout time.Duration
}

// Client is a remote pool: a server.Pool and a server.BlockExporter whose
// pool is on an agent. The pool's zone, node and clone mode are read once,
// by Dial. Nothing crosses the agent API by path: images are named by
// volume id, and even a node on the storage host's machine attaches them
// over NBD (a Client is not a server.LocalPool).
type Client struct {
	name, address string
	timeout       time.Duration
	conn          *grpc.ClientConn
	api           pb.AgentServiceClient
	info          *pb.PoolInfo
}

var (
	_ server.Pool          = (*Client)(nil)
	_ server.BlockExporter = (*Client)(nil)
)

// Dial connects to the agent and reads its pool's info; an agent that does
// not answer within ctx (or CallTimeout) or refuses the token is an error
// naming the agent and its address.
func Dial(ctx context.Context, c ClientConfig) (*Client, error) {
	if c.Token == "" {
		return nil, fmt.Errorf("agent %s at %s: no token (the agent API is always authenticated: token-file=F)", c.Name, c.Address)
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	creds := insecure.NewCredentials()
	if c.TLS != nil {
		creds = credentials.NewTLS(c.TLS)
	}
	conn, err := grpc.NewClient(c.Address, grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(auth.TokenCredentials{Token: c.Token}))
	if err != nil {
		return nil, fmt.Errorf("agent %s at %s: %w", c.Name, c.Address, err)
	}
	cl := &Client{name: c.Name, address: c.Address, timeout: c.CallTimeout, conn: conn, api: pb.NewAgentServiceClient(conn)}
	ctx, cancel := context.WithTimeout(ctx, c.CallTimeout)
	defer cancel()
	// Wait for the connection rather than failing on the first refused
	// dial: an agent started together with the server may be a moment late.
	info, err := cl.api.GetPoolInfo(ctx, &pb.GetPoolInfoRequest{}, grpc.WaitForReady(true))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("agent %s at %s is unreachable or refused the server: %w", c.Name, c.Address, err)
	}
	cl.info = info
	return cl, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// PoolName is the pool's name on the agent.
func (c *Client) PoolName() string { return c.info.Name }

func (c *Client) Zone() string               { return c.info.Zone }
func (c *Client) Node() string               { return c.info.Node }
func (c *Client) CloneMode() agent.CloneMode { return agent.CloneMode(c.info.CloneMode) }

// Address is where nodes reach the agent's NBD exports.
func (c *Client) Address() string { return c.info.NbdAddress }

// bounded is the context of a call of server.Pool that takes none.
func (c *Client) bounded() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.timeout)
}

func (c *Client) Capacity() (agent.Capacity, error) {
	ctx, cancel := c.bounded()
	defer cancel()
	info, err := c.api.GetPoolInfo(ctx, &pb.GetPoolInfoRequest{})
	if err != nil {
		return agent.Capacity{}, c.fromStatus(err, poolErrors)
	}
	return agent.Capacity{TotalBytes: info.TotalBytes, FreeBytes: info.FreeBytes, UsedBytes: info.UsedBytes}, nil
}

func (c *Client) CreateImage(ctx context.Context, volumeID string, size int64) error {
	_, err := c.api.CreateImage(ctx, &pb.CreateImageRequest{VolumeId: volumeID, SizeBytes: size})
	return c.fromStatus(err, poolErrors)
}

func (c *Client) CreateImageFromSnapshot(ctx context.Context, volumeID, snapshotID string, size int64) error {
	_, err := c.api.CreateImageFromSnapshot(ctx, &pb.CreateImageFromSnapshotRequest{VolumeId: volumeID, SnapshotId: snapshotID, SizeBytes: size})
	return c.fromStatus(err, poolErrors)
}

func (c *Client) CloneImage(ctx context.Context, volumeID, sourceVolumeID string, size int64) error {
	_, err := c.api.CloneImage(ctx, &pb.CloneImageRequest{VolumeId: volumeID, SourceVolumeId: sourceVolumeID, SizeBytes: size})
	return c.fromStatus(err, poolErrors)
}

func (c *Client) ResizeImage(ctx context.Context, volumeID string, size int64) error {
	_, err := c.api.ResizeImage(ctx, &pb.ResizeImageRequest{VolumeId: volumeID, SizeBytes: size})
	return c.fromStatus(err, poolErrors)
}

func (c *Client) DeleteImage(ctx context.Context, volumeID string) error {
	_, err := c.api.DeleteImage(ctx, &pb.DeleteImageRequest{VolumeId: volumeID})
	return c.fromStatus(err, poolErrors)
}

func (c *Client) SnapshotImage(ctx context.Context, volumeID, snapshotID string) error {
	_, err := c.api.SnapshotImage(ctx, &pb.SnapshotImageRequest{VolumeId: volumeID, SnapshotId: snapshotID})
	return c.fromStatus(err, poolErrors)
}

func (c *Client) DeleteSnapshot(ctx context.Context, snapshotID string) error {
	_, err := c.api.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{SnapshotId: snapshotID})
	return c.fromStatus(err, poolErrors)
}

func (c *Client) ImageSize(volumeID string) (int64, error) {
	ctx, cancel := c.bounded()
	defer cancel()
	r, err := c.api.ImageSize(ctx, &pb.ImageSizeRequest{VolumeId: volumeID})
	if err != nil {
		return 0, c.fromStatus(err, poolErrors)
	}
	return r.SizeBytes, nil
}

func (c *Client) SnapshotSize(snapshotID string) (int64, error) {
	ctx, cancel := c.bounded()
	defer cancel()
	r, err := c.api.SnapshotSize(ctx, &pb.SnapshotSizeRequest{SnapshotId: snapshotID})
	if err != nil {
		return 0, c.fromStatus(err, poolErrors)
	}
	return r.SizeBytes, nil
}

func (c *Client) ListImages() ([]string, error) {
	ctx, cancel := c.bounded()
	defer cancel()
	r, err := c.api.ListImages(ctx, &pb.ListImagesRequest{})
	if err != nil {
		return nil, c.fromStatus(err, poolErrors)
	}
	return nonNil(r.Ids), nil
}

func (c *Client) ListSnapshots() ([]string, error) {
	ctx, cancel := c.bounded()
	defer cancel()
	r, err := c.api.ListSnapshots(ctx, &pb.ListSnapshotsRequest{})
	if err != nil {
		return nil, c.fromStatus(err, poolErrors)
	}
	return nonNil(r.Ids), nil
}

// nonNil keeps the pool's promise of an empty list, not nil, for no ids
// (protobuf does not tell them apart).
func nonNil(ids []string) []string {
	if ids == nil {
		return []string{}
	}
	return ids
}

func (c *Client) Export(ctx context.Context, e server.BlockExport) error {
	_, err := c.api.Export(ctx, &pb.ExportRequest{AttachmentId: e.AttachmentID, VolumeId: e.VolumeID, Generation: e.Generation,
		Secret: e.Secret, ReadOnly: e.ReadOnly, Iops: e.IOPS, BytesPerSecond: e.BytesPerSecond})
	return c.fromStatus(err, exportErrors)
}

func (c *Client) Refresh(ctx context.Context, volumeID string) error {
	_, err := c.api.RefreshExports(ctx, &pb.RefreshExportsRequest{VolumeId: volumeID})
	return c.fromStatus(err, exportErrors)
}

func (c *Client) Unexport(ctx context.Context, attachmentID string) error {
	_, err := c.api.Unexport(ctx, &pb.UnexportRequest{AttachmentId: attachmentID})
	return c.fromStatus(err, exportErrors)
}
