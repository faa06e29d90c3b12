package server

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/store"
)

// RegisterNode records a node that may attach volumes; it is idempotent and
// updates the zone and limit of a known node.
func (s *Server) RegisterNode(ctx context.Context, req *pb.RegisterNodeRequest) (*pb.Node, error) {
	if req.Id == "" {
		return nil, status.Error(codes.InvalidArgument, "node id is required")
	}
	if p, ok := auth.FromContext(ctx); ok && p.Node() != "" && p.Node() != req.Id {
		return nil, status.Errorf(codes.PermissionDenied, "%s may not node:RegisterNode on %s: a node plugin registers its own node only", p, req.Id)
	}
	if req.MaxVolumes < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "max volumes %d is negative", req.MaxVolumes)
	}
	n := &nodeRecord{ID: req.Id, Zone: req.Zone, MaxVolumes: req.MaxVolumes, Registered: time.Now().UTC()}
	if err := s.store.Update(ctx, func(tx store.Tx) error { return store.PutJSON(tx, bucketNodes, n.ID, n) }); err != nil {
		return nil, internal(err, "register node %s", n.ID)
	}
	s.log.Info("node registered", "node", n.ID, "zone", n.Zone, "maxVolumes", n.MaxVolumes)
	return s.nodeProto(n, 0), nil
}

// nodeProto is n with what the server knows of its pools.
func (s *Server) nodeProto(n *nodeRecord, attached int) *pb.Node {
	out := n.toProto(attached)
	out.NodeLocalPools = s.nodeLocalPools(n.ID)
	return out
}

// nodeLocalPools: some block pool on node attaches only there (no NBD
// export), so its volumes' topology names the node.
func (s *Server) nodeLocalPools(node string) bool {
	for _, name := range s.pools.list() {
		if s.pools.get(name).Node() == node && s.exportAddress(name) == "" {
			return true
		}
	}
	return false
}

func (n *nodeRecord) toProto(attached int) *pb.Node {
	return &pb.Node{Id: n.ID, Zone: n.Zone, MaxVolumes: n.MaxVolumes, RegisterTime: timestamppb.New(n.Registered), AttachedVolumes: int32(attached)}
}

func (s *Server) ListNodes(ctx context.Context, _ *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	resp := &pb.ListNodesResponse{}
	err := s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketNodes, "", "", func(_ string, value []byte) error {
			var n nodeRecord
			if err := json.Unmarshal(value, &n); err != nil {
				return err
			}
			resp.Nodes = append(resp.Nodes, s.nodeProto(&n, 0))
			return nil
		})
	})
	if err != nil {
		return nil, internal(err, "list nodes")
	}
	for _, n := range resp.Nodes {
		c, err := s.countAttached(ctx, n.Id)
		if err != nil {
			return nil, err
		}
		n.AttachedVolumes = int32(c)
	}
	return resp, nil
}

func (s *Server) getNode(ctx context.Context, id string) (*nodeRecord, error) {
	var n nodeRecord
	err := s.store.View(ctx, func(tx store.Tx) error { return store.GetJSON(tx, bucketNodes, id, &n) })
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "node %s is not registered with the Stowage server (is the Stowage node plugin running there?)", id)
	}
	if err != nil {
		return nil, internal(err, "read node %s", id)
	}
	return &n, nil
}

// ListPools reports every pool with its capacity and how much of it volumes
// have been promised (thin provisioning).
func (s *Server) ListPools(ctx context.Context, req *pb.ListPoolsRequest) (*pb.ListPoolsResponse, error) {
	uses, err := s.poolUses(ctx)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListPoolsResponse{}
	for _, name := range s.pools.list() {
		p := s.pools.get(name)
		if !s.placementMatches(&pb.Placement{Zone: req.Zone, Node: req.Node}, name) {
			continue
		}
		c, err := p.Capacity()
		if err != nil {
			return nil, internal(err, "capacity of pool %s", name)
		}
		resp.Pools = append(resp.Pools, &pb.Pool{
			Name: name, Zone: p.Zone(), Node: p.Node(), CloneMode: string(p.CloneMode()),
			TotalBytes: c.TotalBytes, FreeBytes: c.FreeBytes, UsedBytes: c.UsedBytes,
			ProvisionedBytes: uses[name].provisioned, VolumeCount: int32(len(uses[name].volumes)), SnapshotCount: int32(len(uses[name].snapshots)),
			Zonal: s.exportAddress(name) != "",
		})
	}
	return resp, nil
}

// poolUse is what the store puts in a pool: its volumes' provisioned
// bytes, and its volumes and snapshots by id.
type poolUse struct {
	provisioned        int64
	volumes, snapshots []string
	// fileSystems are those in the file-tree pool of that name.
	fileSystems []string
}

// poolUses is every pool's use, by pool name (a pool without volumes or
// snapshots has none).
func (s *Server) poolUses(ctx context.Context) (map[string]poolUse, error) {
	uses := map[string]poolUse{}
	err := s.store.View(ctx, func(tx store.Tx) error {
		if err := tx.Scan(bucketVolumes, "", "", func(_ string, value []byte) error {
			var v volumeRecord
			if err := json.Unmarshal(value, &v); err != nil {
				return err
			}
			u := uses[v.Pool]
			u.provisioned += v.SizeGiB << 30
			u.volumes = append(u.volumes, v.ID)
			uses[v.Pool] = u
			return nil
		}); err != nil {
			return err
		}
		if err := tx.Scan(bucketSnapshots, "", "", func(_ string, value []byte) error {
			var sn snapshotRecord
			if err := json.Unmarshal(value, &sn); err != nil {
				return err
			}
			u := uses[sn.Pool]
			u.snapshots = append(u.snapshots, sn.ID)
			uses[sn.Pool] = u
			return nil
		}); err != nil {
			return err
		}
		return tx.Scan(bucketFileSystems, "", "", func(_ string, value []byte) error {
			var f fileSystemRecord
			if err := json.Unmarshal(value, &f); err != nil {
				return err
			}
			u := uses[f.Pool]
			u.fileSystems = append(u.fileSystems, f.ID)
			uses[f.Pool] = u
			return nil
		})
	})
	if err != nil {
		return nil, internal(err, "read the pools' volumes and snapshots")
	}
	return uses, nil
}

// RegisterPoolNodes registers the node of every pool that is not known yet,
// so that the CLI can attach volumes on a machine without a node plugin.
func (s *Server) RegisterPoolNodes(ctx context.Context) error {
	for _, name := range s.pools.list() {
		p := s.pools.get(name)
		if _, err := s.getNode(ctx, p.Node()); status.Code(err) != codes.NotFound {
			if err != nil {
				return err
			}
			continue
		}
		if _, err := s.RegisterNode(ctx, &pb.RegisterNodeRequest{Id: p.Node(), Zone: p.Zone()}); err != nil {
			return err
		}
	}
	return nil
}
