package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// Inventory lists what the server holds; *server.Server is one. The
// collector asks it at every scrape rather than counting events itself, so
// the numbers are the metadata store's and cannot drift from it.
type Inventory interface {
	ListVolumes(context.Context, *pb.ListVolumesRequest) (*pb.ListVolumesResponse, error)
	ListSnapshots(context.Context, *pb.ListSnapshotsRequest) (*pb.ListSnapshotsResponse, error)
	ListPools(context.Context, *pb.ListPoolsRequest) (*pb.ListPoolsResponse, error)
}

const (
	// inventoryTimeout bounds one scrape's questions to the server.
	inventoryTimeout = 10 * time.Second
	// inventoryPageSize is large so that a scrape takes few store
	// transactions; each page is one read transaction.
	inventoryPageSize = 1000
)

type inventoryCollector struct {
	inv Inventory

	volumes, snapshots                       *prometheus.Desc
	poolSize, poolProvisioned, poolAllocated *prometheus.Desc
	poolFree, up                             *prometheus.Desc
}

func newInventoryCollector(inv Inventory) *inventoryCollector {
	pool := []string{"pool", "zone", "node"}
	return &inventoryCollector{
		inv:             inv,
		volumes:         prometheus.NewDesc("stowage_volumes", "Volumes the server holds, by state and volume type.", []string{"state", "type"}, nil),
		snapshots:       prometheus.NewDesc("stowage_snapshots", "Snapshots the server holds, by state.", []string{"state"}, nil),
		poolSize:        prometheus.NewDesc("stowage_pool_size_bytes", "Size of the pool's file system.", pool, nil),
		poolProvisioned: prometheus.NewDesc("stowage_pool_provisioned_bytes", "Sum of the sizes of the pool's volumes (pools are thin: this may exceed the pool's size).", pool, nil),
		poolAllocated:   prometheus.NewDesc("stowage_pool_allocated_bytes", "Bytes in use on the pool's file system (written blocks of images and snapshots, and metadata).", pool, nil),
		poolFree:        prometheus.NewDesc("stowage_pool_free_bytes", "Bytes still free on the pool's file system.", pool, nil),
		up:              prometheus.NewDesc("stowage_inventory_up", "1 when this scrape could list volumes, snapshots and pools; 0 when one failed (its metrics are then missing from the scrape and the server's log says why).", nil, nil),
	}
}

func (c *inventoryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.volumes, c.snapshots, c.poolSize, c.poolProvisioned, c.poolAllocated, c.poolFree, c.up} {
		ch <- d
	}
}

func (c *inventoryCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), inventoryTimeout)
	defer cancel()
	up := 1.0
	for what, collect := range map[string]func(context.Context, chan<- prometheus.Metric) error{
		"volumes": c.collectVolumes, "snapshots": c.collectSnapshots, "pools": c.collectPools,
	} {
		if err := collect(ctx, ch); err != nil {
			slog.Error("metrics: cannot list "+what, "err", err)
			up = 0
		}
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
}

// collectVolumes sends nothing when any page fails: a partial count would
// look like volumes that went away.
func (c *inventoryCollector) collectVolumes(ctx context.Context, ch chan<- prometheus.Metric) error {
	type key struct{ state, typ string }
	counts := map[key]int{}
	err := eachPage(func(token string) (string, error) {
		resp, err := c.inv.ListVolumes(ctx, &pb.ListVolumesRequest{PageSize: inventoryPageSize, PageToken: token})
		for _, v := range resp.GetVolumes() {
			counts[key{pb.StateWord(v.GetState().String()), v.GetType()}]++
		}
		return resp.GetNextPageToken(), err
	})
	if err != nil {
		return fmt.Errorf("list volumes: %w", err)
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.volumes, prometheus.GaugeValue, float64(n), k.state, k.typ)
	}
	return nil
}

func (c *inventoryCollector) collectSnapshots(ctx context.Context, ch chan<- prometheus.Metric) error {
	counts := map[string]int{}
	err := eachPage(func(token string) (string, error) {
		resp, err := c.inv.ListSnapshots(ctx, &pb.ListSnapshotsRequest{PageSize: inventoryPageSize, PageToken: token})
		for _, s := range resp.GetSnapshots() {
			counts[pb.StateWord(s.GetState().String())]++
		}
		return resp.GetNextPageToken(), err
	})
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.snapshots, prometheus.GaugeValue, float64(n), state)
	}
	return nil
}

// eachPage calls list with the first page's token (""), then with each
// token it returns, until it returns none or fails. A server that hands
// back the token it was given would loop forever: that is an error.
func eachPage(list func(token string) (next string, err error)) error {
	token := ""
	for {
		next, err := list(token)
		if err != nil {
			return err
		}
		if next == "" {
			return nil
		}
		if next == token {
			return fmt.Errorf("the server returned page token %q again", next)
		}
		token = next
	}
}

func (c *inventoryCollector) collectPools(ctx context.Context, ch chan<- prometheus.Metric) error {
	resp, err := c.inv.ListPools(ctx, &pb.ListPoolsRequest{})
	if err != nil {
		return err
	}
	for _, p := range resp.GetPools() {
		labels := []string{p.GetName(), p.GetZone(), p.GetNode()}
		for _, m := range []struct {
			desc  *prometheus.Desc
			bytes int64
		}{
			{c.poolSize, p.GetTotalBytes()},
			{c.poolProvisioned, p.GetProvisionedBytes()},
			{c.poolAllocated, p.GetUsedBytes()},
			{c.poolFree, p.GetFreeBytes()},
		} {
			ch <- prometheus.MustNewConstMetric(m.desc, prometheus.GaugeValue, float64(m.bytes), labels...)
		}
	}
	return nil
}
