package metrics_test

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/csi"
	"github.com/stowage-io/stowage/internal/metrics"
	"github.com/stowage-io/stowage/internal/server"
	"github.com/stowage-io/stowage/internal/store/boltstore"
)

// These tests run the real API server (bbolt store, a copy-mode pool in a
// temp directory) and the real CSI services in-process, each wired to a
// metrics.Registry as the daemons wire them, and read the metrics the way
// Prometheus does: an HTTP scrape of /metrics on 127.0.0.1.

const gib = 1 << 30

// apiServer is a running Stowage API on loopback.
type apiServer struct {
	srv       *server.Server
	volumes   pb.VolumeServiceClient
	snapshots pb.SnapshotServiceClient
	nodes     pb.NodeServiceClient
	pools     pb.PoolServiceClient
}

// startAPI starts the API server; with m, its calls and inventory are
// reported to m.
func startAPI(t *testing.T, m *metrics.Registry) *apiServer {
	t.Helper()
	dir := t.TempDir()
	st, err := boltstore.Open(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pool, err := agent.Open(agent.Config{Dir: filepath.Join(dir, "pool-a"), Zone: "zone-a", Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Store: st, Pools: map[string]server.Pool{"pool-a": pool},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if m != nil {
		m.WatchInventory(srv)
		opts = append(opts, grpc.ChainUnaryInterceptor(m.APIInterceptor()))
	}
	g := grpc.NewServer(opts...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	conn := dial(t, lis.Addr().String())
	return &apiServer{srv: srv, volumes: pb.NewVolumeServiceClient(conn), snapshots: pb.NewSnapshotServiceClient(conn),
		nodes: pb.NewNodeServiceClient(conn), pools: pb.NewPoolServiceClient(conn)}
}

func dial(t *testing.T, target string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// startDriver serves the CSI services on a unix socket with m's CSI
// interceptor and returns a connection to it.
func startDriver(t *testing.T, m *metrics.Registry, ctrl *csi.ControllerService, node *csi.NodeService) *grpc.ClientConn {
	t.Helper()
	// Unix socket paths are limited to 108 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "stwm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "csi.sock")
	d := csi.NewDriver(ctrl, node)
	d.Interceptors = append(d.Interceptors, m.CSIInterceptor(csi.DriverName))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, "unix://"+sock) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("CSI driver: %v", err)
		}
	})
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i == 200 {
			t.Fatalf("CSI socket %s did not appear", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return dial(t, "unix://"+sock)
}

// serveMetrics serves m on 127.0.0.1 and returns the scrape URL.
func serveMetrics(t *testing.T, m *metrics.Registry) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	addr, err := m.Serve(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return "http://" + addr.String() + "/metrics"
}

// scrape reads url as Prometheus does and returns every sample by its
// series as the text format writes it: name{label="value",...} with the
// labels in name order.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", url, resp.Status)
	}
	samples := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("scrape %s: line %q is not a sample", url, line)
		}
		samples[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return samples
}

// want checks that each series is in the scrape with its value.
func want(t *testing.T, got map[string]float64, series map[string]float64) {
	t.Helper()
	for s, v := range series {
		if g, ok := got[s]; !ok {
			t.Errorf("%s is missing from the scrape", s)
		} else if g != v {
			t.Errorf("%s = %v, want %v", s, g, v)
		}
	}
}

// wantAbsent checks that no series of the scrape is one of these.
func wantAbsent(t *testing.T, got map[string]float64, series ...string) {
	t.Helper()
	for _, s := range series {
		if v, ok := got[s]; ok {
			t.Errorf("%s = %v, want no such series", s, v)
		}
	}
}

func TestServerMetrics_VolumeOperations_MoveRequestCountersAndInventory(t *testing.T) {
	m := metrics.New()
	api := startAPI(t, m)
	url := serveMetrics(t, m)
	ctx := context.Background()

	a, err := api.volumes.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "a", SizeGib: 1, Type: "gp3", Zone: "zone-a"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := api.volumes.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "b", SizeGib: 2, Type: "gp2", Zone: "zone-a"})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := api.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{Name: "s", VolumeId: a.Id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: "vol-00000000000000000"}); status.Code(err) != codes.NotFound {
		t.Fatalf("DescribeVolume of a missing volume: %v, want NotFound", err)
	}

	pool := `{node="node-a",pool="pool-a",zone="zone-a"}`
	got := scrape(t, url)
	want(t, got, map[string]float64{
		`stowage_api_requests_total{code="OK",method="/stowage.v1.VolumeService/CreateVolume"}`:                 2,
		`stowage_api_request_duration_seconds_count{code="OK",method="/stowage.v1.VolumeService/CreateVolume"}`: 2,
		`stowage_api_requests_total{code="OK",method="/stowage.v1.SnapshotService/CreateSnapshot"}`:             1,
		`stowage_api_requests_total{code="NotFound",method="/stowage.v1.VolumeService/DescribeVolume"}`:         1,
		`stowage_volumes{state="` + pb.StateWord(a.State.String()) + `",type="gp3"}`:                            1,
		`stowage_volumes{state="` + pb.StateWord(b.State.String()) + `",type="gp2"}`:                            1,
		`stowage_snapshots{state="` + pb.StateWord(snap.State.String()) + `"}`:                                  1,
		`stowage_pool_provisioned_bytes` + pool:                                                                 3 * gib,
		`stowage_inventory_up`:                                                                                  1,
	})
	if got[`stowage_api_request_duration_seconds_sum{code="OK",method="/stowage.v1.VolumeService/CreateVolume"}`] <= 0 {
		t.Errorf("CreateVolume's latency sum is not positive")
	}
	for _, s := range []string{"stowage_pool_size_bytes", "stowage_pool_free_bytes", "stowage_pool_allocated_bytes"} {
		if got[s+pool] <= 0 {
			t.Errorf("%s%s = %v, want > 0", s, pool, got[s+pool])
		}
	}
	if got["stowage_pool_free_bytes"+pool] > got["stowage_pool_size_bytes"+pool] {
		t.Errorf("pool free bytes %v exceed its size %v", got["stowage_pool_free_bytes"+pool], got["stowage_pool_size_bytes"+pool])
	}

	// The inventory is the server's at scrape time: a deleted volume is gone
	// from the next scrape.
	if _, err := api.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: b.Id}); err != nil {
		t.Fatal(err)
	}
	got = scrape(t, url)
	want(t, got, map[string]float64{
		`stowage_api_requests_total{code="OK",method="/stowage.v1.VolumeService/DeleteVolume"}`: 1,
		`stowage_volumes{state="` + pb.StateWord(a.State.String()) + `",type="gp3"}`:            1,
		`stowage_pool_provisioned_bytes` + pool:                                                 1 * gib,
	})
	wantAbsent(t, got, `stowage_volumes{state="`+pb.StateWord(b.State.String())+`",type="gp2"}`)
}

func TestControllerMetrics_CreateVolume_ObservesCSIOperationByCode(t *testing.T) {
	api := startAPI(t, nil)
	m := metrics.New()
	conn := startDriver(t, m, csi.NewControllerService(api.volumes, api.snapshots, api.pools), nil)
	url := serveMetrics(t, m)
	ctrl := csipb.NewControllerClient(conn)
	ctx := context.Background()

	capability := []*csipb.VolumeCapability{{
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
	if _, err := ctrl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "pvc-1", VolumeCapabilities: capability,
		CapacityRange: &csipb.CapacityRange{RequiredBytes: gib}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.CreateVolume(ctx, &csipb.CreateVolumeRequest{VolumeCapabilities: capability}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("CreateVolume without a name: %v, want InvalidArgument", err)
	}

	series := func(code string) string {
		return `stowage_csi_operations_seconds_count{driver_name="` + csi.DriverName + `",grpc_status_code="` + code + `",method_name="/csi.v1.Controller/CreateVolume"}`
	}
	got := scrape(t, url)
	want(t, got, map[string]float64{series("OK"): 1, series("InvalidArgument"): 1})
	if sum := strings.Replace(series("OK"), "_count{", "_sum{", 1); got[sum] <= 0 {
		t.Errorf("%s = %v, want > 0", sum, got[sum])
	}
	// The volume is the API's: the controller's endpoint reports calls, not
	// the inventory (that is the server's).
	wantAbsent(t, got, "stowage_inventory_up")
}

func TestNodeMetrics_StageAndLimits_Reported(t *testing.T) {
	api := startAPI(t, nil)
	node, err := csi.NewNodeService(csi.NodeConfig{NodeID: "node-a", Zone: "zone-a", MaxVolumes: 8, StateDir: t.TempDir()},
		api.volumes, api.nodes)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	var enforced atomic.Bool
	m.WatchNodeLimits(enforced.Load)
	conn := startDriver(t, m, nil, node)
	url := serveMetrics(t, m)
	client := csipb.NewNodeClient(conn)
	ctx := context.Background()

	if _, err := client.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{}); err != nil {
		t.Fatal(err)
	}
	// Without a staging path the stage is refused before it touches a device,
	// so the test needs no root; the latency is recorded all the same.
	if _, err := client.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "vol-00000000000000000"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("NodeStageVolume without a staging path: %v, want InvalidArgument", err)
	}
	op := func(method, code string) string {
		return `stowage_csi_operations_seconds_count{driver_name="` + csi.DriverName + `",grpc_status_code="` + code + `",method_name="/csi.v1.Node/` + method + `"}`
	}
	want(t, scrape(t, url), map[string]float64{
		op("NodeGetInfo", "OK"):                  1,
		op("NodeStageVolume", "InvalidArgument"): 1,
		"stowage_node_limits_enforced":           0,
	})
	enforced.Store(true)
	want(t, scrape(t, url), map[string]float64{"stowage_node_limits_enforced": 1})
}
