package csi

import (
	"context"
	"testing"

	"google.golang.org/grpc"

	"github.com/container-storage-interface/spec/lib/go/csi"
	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// fakeNodes answers RegisterNode as a server with or without a pool that
// attaches only on the node.
type fakeNodes struct {
	pb.NodeServiceClient
	local bool
}

func (f fakeNodes) RegisterNode(_ context.Context, req *pb.RegisterNodeRequest, _ ...grpc.CallOption) (*pb.Node, error) {
	return &pb.Node{Id: req.Id, Zone: req.Zone, NodeLocalPools: f.local}, nil
}

// The node reports its zone, and itself only when a pool on it attaches
// only there (the server says at Register): where every pool is exported
// over the network, the provisioner then publishes one CSIStorageCapacity
// per zone. Before Register it reports both: the node key never hides a
// volume that needs it.
func TestNodeGetInfo_TopologyFollowsTheNodesPools(t *testing.T) {
	f := newNodeFixture(t)
	f.n.cfg.Zone = "zone-a"
	info := func() map[string]string {
		t.Helper()
		resp, err := f.n.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return resp.AccessibleTopology.Segments
	}
	if seg := info(); seg[TopologyZoneKey] != "zone-a" || seg[TopologyNodeKey] != "node-a" {
		t.Errorf("before Register: %v, want the zone and the node", seg)
	}
	for _, local := range []bool{false, true} {
		f.n.nodes = fakeNodes{local: local}
		if err := f.n.Register(context.Background()); err != nil {
			t.Fatal(err)
		}
		seg := info()
		_, hasNode := seg[TopologyNodeKey]
		if seg[TopologyZoneKey] != "zone-a" || hasNode != local || len(seg) != map[bool]int{false: 1, true: 2}[local] {
			t.Errorf("node-local pools %v: topology %v", local, seg)
		}
	}
}
