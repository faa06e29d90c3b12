package metrics_test

import (
	"context"
	"errors"
	"strconv"
	"testing"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/metrics"
)

// fakeInventory serves its volumes and snapshots one per page, so that the
// collector has to follow page tokens, and fails where told.
type fakeInventory struct {
	volumes   []*pb.Volume
	snapshots []*pb.Snapshot
	pools     []*pb.Pool
	// volumesErr fails ListVolumes on its second page; sameToken makes it
	// return the token it was asked with.
	volumesErr error
	sameToken  bool
	poolsErr   error
}

func (f *fakeInventory) ListVolumes(_ context.Context, req *pb.ListVolumesRequest) (*pb.ListVolumesResponse, error) {
	i := page(req.PageToken)
	if i == 1 && f.volumesErr != nil {
		return nil, f.volumesErr
	}
	resp := &pb.ListVolumesResponse{}
	if i < len(f.volumes) {
		resp.Volumes = f.volumes[i : i+1]
	}
	if i+1 < len(f.volumes) {
		resp.NextPageToken = strconv.Itoa(i + 1)
	}
	if f.sameToken {
		resp.NextPageToken = req.PageToken
		if i == 0 {
			resp.NextPageToken = "1"
		}
	}
	return resp, nil
}

func (f *fakeInventory) ListSnapshots(_ context.Context, req *pb.ListSnapshotsRequest) (*pb.ListSnapshotsResponse, error) {
	i := page(req.PageToken)
	resp := &pb.ListSnapshotsResponse{}
	if i < len(f.snapshots) {
		resp.Snapshots = f.snapshots[i : i+1]
	}
	if i+1 < len(f.snapshots) {
		resp.NextPageToken = strconv.Itoa(i + 1)
	}
	return resp, nil
}

func (f *fakeInventory) ListPools(context.Context, *pb.ListPoolsRequest) (*pb.ListPoolsResponse, error) {
	return &pb.ListPoolsResponse{Pools: f.pools}, f.poolsErr
}

func page(token string) int {
	n, _ := strconv.Atoi(token)
	return n
}

func TestInventory_CountsEveryPage_AndAFailedListHidesOnlyItsOwnMetrics(t *testing.T) {
	vols := []*pb.Volume{
		{Id: "vol-1", State: pb.VolumeState_VOLUME_STATE_AVAILABLE, Type: "gp3"},
		{Id: "vol-2", State: pb.VolumeState_VOLUME_STATE_IN_USE, Type: "gp3"},
		{Id: "vol-3", State: pb.VolumeState_VOLUME_STATE_AVAILABLE, Type: "gp3"},
		{Id: "vol-4", State: pb.VolumeState_VOLUME_STATE_AVAILABLE, Type: "io2"},
	}
	snaps := []*pb.Snapshot{{Id: "snap-1", State: pb.SnapshotState_SNAPSHOT_STATE_COMPLETED}, {Id: "snap-2", State: pb.SnapshotState_SNAPSHOT_STATE_COMPLETED}, {Id: "snap-3", State: pb.SnapshotState_SNAPSHOT_STATE_PENDING}}
	pools := []*pb.Pool{{Name: "pool-a", Zone: "zone-a", Node: "n1", TotalBytes: 100, FreeBytes: 60, UsedBytes: 40, ProvisionedBytes: 500}}
	const poolLabels = `{node="n1",pool="pool-a",zone="zone-a"}`
	volumeSeries := map[string]float64{
		`stowage_volumes{state="available",type="gp3"}`: 2,
		`stowage_volumes{state="in-use",type="gp3"}`:    1,
		`stowage_volumes{state="available",type="io2"}`: 1,
	}
	snapshotSeries := map[string]float64{
		`stowage_snapshots{state="completed"}`: 2,
		`stowage_snapshots{state="pending"}`:   1,
	}
	poolSeries := map[string]float64{
		"stowage_pool_size_bytes" + poolLabels:        100,
		"stowage_pool_free_bytes" + poolLabels:        60,
		"stowage_pool_allocated_bytes" + poolLabels:   40,
		"stowage_pool_provisioned_bytes" + poolLabels: 500,
	}
	merge := func(ms ...map[string]float64) map[string]float64 {
		out := map[string]float64{}
		for _, m := range ms {
			for k, v := range m {
				out[k] = v
			}
		}
		return out
	}
	keys := func(m map[string]float64) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		inv    *fakeInventory
		want   map[string]float64
		absent []string
	}{
		{
			name: "all lists answer",
			inv:  &fakeInventory{volumes: vols, snapshots: snaps, pools: pools},
			want: merge(volumeSeries, snapshotSeries, poolSeries, map[string]float64{"stowage_inventory_up": 1}),
		},
		{
			name:   "volumes fail on a later page: no partial count",
			inv:    &fakeInventory{volumes: vols, snapshots: snaps, pools: pools, volumesErr: errors.New("store closed")},
			want:   merge(snapshotSeries, poolSeries, map[string]float64{"stowage_inventory_up": 0}),
			absent: keys(volumeSeries),
		},
		{
			name:   "a page token that repeats ends the scrape",
			inv:    &fakeInventory{volumes: vols, snapshots: snaps, pools: pools, sameToken: true},
			want:   merge(snapshotSeries, poolSeries, map[string]float64{"stowage_inventory_up": 0}),
			absent: keys(volumeSeries),
		},
		{
			name:   "pools fail",
			inv:    &fakeInventory{volumes: vols, snapshots: snaps, pools: pools, poolsErr: errors.New("statfs: no such file")},
			want:   merge(volumeSeries, snapshotSeries, map[string]float64{"stowage_inventory_up": 0}),
			absent: keys(poolSeries),
		},
		{
			name:   "nothing held",
			inv:    &fakeInventory{},
			want:   map[string]float64{"stowage_inventory_up": 1},
			absent: append(keys(volumeSeries), keys(snapshotSeries)...),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := metrics.New()
			m.WatchInventory(tc.inv)
			got := scrape(t, serveMetrics(t, m))
			want(t, got, tc.want)
			wantAbsent(t, got, tc.absent...)
		})
	}
}
