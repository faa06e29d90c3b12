package csi_test

import (
	"context"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	stowcsi "github.com/stowage-io/stowage/internal/csi"
)

// GetCapacity: the pools' real free space, and as the largest volume the
// type's maximum (pools are thin); nothing where no pool is.
func TestGetCapacity_ThinPoolsPerTopology(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	topo := func(zone, node string) *csi.Topology {
		return &csi.Topology{Segments: map[string]string{stowcsi.TopologyZoneKey: zone, stowcsi.TopologyNodeKey: node}}
	}
	for _, tc := range []struct {
		typ    string
		maxGiB int64
	}{{"", 16384}, {"gp3", 16384}, {"io2", 65536}, {"standard", 1024}} {
		got, err := d.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{
			Parameters: map[string]string{"type": tc.typ}, AccessibleTopology: topo(d.s.Zone, d.s.Node),
		})
		if err != nil {
			t.Fatalf("type %q: %v", tc.typ, err)
		}
		if got.AvailableCapacity <= 0 || got.AvailableCapacity > 32<<30 {
			t.Errorf("type %q: available %d, want the 32 GiB pool's free space", tc.typ, got.AvailableCapacity)
		}
		if got.GetMaximumVolumeSize().GetValue() != tc.maxGiB<<30 {
			t.Errorf("type %q: maximum volume size %d, want %d GiB", tc.typ, got.GetMaximumVolumeSize().GetValue(), tc.maxGiB)
		}
	}
	got, err := d.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{AccessibleTopology: topo("zone-b", d.s.Node)})
	if err != nil || got.AvailableCapacity != 0 || got.MaximumVolumeSize != nil {
		t.Errorf("zone without a pool: %v, %v; want 0 and no maximum", got, err)
	}
	if _, err := d.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"type": "gp9"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("unknown type: %v, want InvalidArgument", err)
	}
}
