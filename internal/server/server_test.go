package server

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/block"
	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/store"
	"github.com/stowage-io/stowage/internal/store/boltstore"
)

// These tests drive the server through its real gRPC API, with a bbolt store
// and agent pools in t.TempDir. Those pools run in copy mode (the temp file
// system has no reflink), which is all the API behaviour needs; reflink is
// covered by the agent's and the CSI sanity tests.

const gib = block.GiB

// testPool says where one pool of a test server lives in the cluster.
type testPool struct{ name, zone, node string }

type envOptions struct {
	pools    []testPool // default: pool-a in zone-a on node-a
	lockWait time.Duration
	withKMS  bool
	// wrap lets a test put a hand-written hook around a pool (to hold an
	// operation in the middle, for instance).
	wrap func(name string, p LocalPool) LocalPool
	// wrapStore lets a test watch or fail the server's metadata writes.
	wrapStore func(store.Store) store.Store
	// networked pools export their volumes over NBD on 127.0.0.1.
	networked []string
}

// testEnv is one running server and its clients.
type testEnv struct {
	srv       *Server
	store     store.Store
	pools     map[string]*agent.Pool
	exports   map[string]LocalBlockExporter
	volumes   pb.VolumeServiceClient
	snapshots pb.SnapshotServiceClient
	nodes     pb.NodeServiceClient
	poolSvc   pb.PoolServiceClient
}

func newEnv(t *testing.T, o envOptions) *testEnv {
	t.Helper()
	if len(o.pools) == 0 {
		o.pools = []testPool{{"pool-a", "zone-a", "node-a"}}
	}
	dir := t.TempDir()
	st, err := boltstore.Open(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &testEnv{store: st, pools: map[string]*agent.Pool{}}
	pools := map[string]Pool{}
	for _, tp := range o.pools {
		p, err := agent.Open(agent.Config{Dir: filepath.Join(dir, tp.name), Zone: tp.zone, Node: tp.node})
		if err != nil {
			t.Fatal(err)
		}
		e.pools[tp.name] = p
		pools[tp.name] = p
		if o.wrap != nil {
			pools[tp.name] = o.wrap(tp.name, p)
		}
	}
	logger := slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var keys *kms.Service
	if o.withKMS {
		if keys, err = kms.Open(st, filepath.Join(dir, "master.key")); err != nil {
			t.Fatal(err)
		}
	}
	var srvStore store.Store = st
	if o.wrapStore != nil {
		srvStore = o.wrapStore(st)
	}
	e.exports = map[string]LocalBlockExporter{}
	blockExports := map[string]BlockExporter{}
	for _, name := range o.networked {
		x := startExporter(t, e.pools[name])
		e.exports[name], blockExports[name] = x, x
	}
	e.srv, err = New(Config{Store: srvStore, Pools: pools, LockWait: o.lockWait, Logger: logger, KMS: keys, BlockExports: blockExports})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if err := e.srv.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.RegisterPoolNodes(ctx); err != nil {
		t.Fatal(err)
	}

	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer()
	e.srv.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("passthrough:///stowage",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.volumes, e.snapshots = pb.NewVolumeServiceClient(conn), pb.NewSnapshotServiceClient(conn)
	e.nodes, e.poolSvc = pb.NewNodeServiceClient(conn), pb.NewPoolServiceClient(conn)
	return e
}

// testLog sends the server's warnings and errors to the test log.
type testLog struct{ t testing.TB }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (e *testEnv) create(t testing.TB, req *pb.CreateVolumeRequest) *pb.Volume {
	t.Helper()
	v, err := e.volumes.CreateVolume(testCtx(t), req)
	if err != nil {
		t.Fatalf("CreateVolume %q: %v", req.Name, err)
	}
	return v
}

func (e *testEnv) describe(t testing.TB, id string) *pb.Volume {
	t.Helper()
	v, err := e.volumes.DescribeVolume(testCtx(t), &pb.DescribeVolumeRequest{VolumeId: id})
	if err != nil {
		t.Fatalf("DescribeVolume %s: %v", id, err)
	}
	return v
}

func (e *testEnv) registerNode(t testing.TB, id, zone string, maxVolumes int32) {
	t.Helper()
	if _, err := e.nodes.RegisterNode(testCtx(t), &pb.RegisterNodeRequest{Id: id, Zone: zone, MaxVolumes: maxVolumes}); err != nil {
		t.Fatalf("RegisterNode %s: %v", id, err)
	}
}

func (e *testEnv) listAll(t testing.TB, req *pb.ListVolumesRequest) []*pb.Volume {
	t.Helper()
	var all []*pb.Volume
	for {
		resp, err := e.volumes.ListVolumes(testCtx(t), req)
		if err != nil {
			t.Fatalf("ListVolumes: %v", err)
		}
		all = append(all, resp.Volumes...)
		if resp.NextPageToken == "" {
			return all
		}
		req.PageToken = resp.NextPageToken
	}
}

// imagePath is where pool-a keeps a volume's image.
func (e *testEnv) imagePath(id string) string { return e.pools["pool-a"].ImagePath(id) }

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return fi.Size()
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// wantCode fails unless err has code and its message holds every one of want.
func wantCode(t testing.TB, err error, code codes.Code, want ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got error %v (code %s), want code %s", err, status.Code(err), code)
	}
	msg := status.Convert(err).Message()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error message %q does not mention %q", msg, w)
		}
	}
}

func writeAt(t testing.TB, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readAt(t testing.TB, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	return b
}

func TestCreateVolume_SameNameSameParams_ReturnsSameVolume(t *testing.T) {
	e := newEnv(t, envOptions{})
	tests := []struct {
		name string
		req  *pb.CreateVolumeRequest
	}{
		{"default type", &pb.CreateVolumeRequest{Name: "pvc-default", SizeGib: 1}},
		{"gp3 with iops and throughput", &pb.CreateVolumeRequest{Name: "pvc-gp3", SizeGib: 10, Type: "gp3", Iops: 4000, ThroughputMibps: 200}},
		{"io2 with tags and zone", &pb.CreateVolumeRequest{Name: "pvc-io2", SizeGib: 8, Type: "io2", Iops: 800, Zone: "zone-a",
			Tags: map[string]string{"team": "storage", "env": "test"}}},
		{"type in upper case", &pb.CreateVolumeRequest{Name: "pvc-upper", SizeGib: 2, Type: "GP2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first := e.create(t, tt.req)
			second := e.create(t, tt.req)
			if first.Id != second.Id {
				t.Fatalf("second create with the same name and parameters made %s, want the first volume %s", second.Id, first.Id)
			}
			if second.State != StateAvailable {
				t.Errorf("state = %q, want %q", second.State, StateAvailable)
			}
			var named []string
			for _, v := range e.listAll(t, &pb.ListVolumesRequest{}) {
				if v.Name == tt.req.Name {
					named = append(named, v.Id)
				}
			}
			if len(named) != 1 {
				t.Errorf("volumes named %q: %v, want exactly one", tt.req.Name, named)
			}
			if got := fileSize(t, e.imagePath(first.Id)); got != tt.req.SizeGib*gib {
				t.Errorf("image size = %d, want %d", got, tt.req.SizeGib*gib)
			}
		})
	}
}

func TestCreateVolume_SameNameDifferentParams_AlreadyExists(t *testing.T) {
	e := newEnv(t, envOptions{})
	orig := &pb.CreateVolumeRequest{Name: "pvc-1", SizeGib: 10, Type: "gp3", Tags: map[string]string{"a": "1"}}
	v := e.create(t, orig)
	tests := []struct {
		name   string
		change func(r *pb.CreateVolumeRequest)
	}{
		{"different size", func(r *pb.CreateVolumeRequest) { r.SizeGib = 20 }},
		{"different type", func(r *pb.CreateVolumeRequest) { r.Type = "gp2" }},
		{"different iops", func(r *pb.CreateVolumeRequest) { r.Iops = 4000 }},
		{"different tags", func(r *pb.CreateVolumeRequest) { r.Tags = map[string]string{"a": "2"} }},
		{"multi-attach", func(r *pb.CreateVolumeRequest) { r.MultiAttach = true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &pb.CreateVolumeRequest{Name: orig.Name, SizeGib: orig.SizeGib, Type: orig.Type, Tags: map[string]string{"a": "1"}}
			tt.change(req)
			_, err := e.volumes.CreateVolume(testCtx(t), req)
			wantCode(t, err, codes.AlreadyExists, v.Id, orig.Name)
		})
	}
	if n := len(e.listAll(t, &pb.ListVolumesRequest{})); n != 1 {
		t.Errorf("%d volumes after the refused creates, want 1", n)
	}
}

func TestCreateVolume_InvalidParameters_InvalidArgumentNamingParameter(t *testing.T) {
	e := newEnv(t, envOptions{})
	tests := []struct {
		name string
		req  *pb.CreateVolumeRequest
		want []string
	}{
		{"gp3 iops above the per-GiB limit", &pb.CreateVolumeRequest{SizeGib: 10, Type: "gp3", Iops: 20000},
			[]string{"iops", "20000", "3000–16000", "5000 for 10 GiB"}},
		{"io1 without iops", &pb.CreateVolumeRequest{SizeGib: 10, Type: "io1"},
			[]string{"missing iops", "io1", "100–64000"}},
		{"size 0", &pb.CreateVolumeRequest{SizeGib: 0, Type: "gp3"},
			[]string{"size", "1–16384 GiB"}},
		{"st1 below its minimum size", &pb.CreateVolumeRequest{SizeGib: 10, Type: "st1"},
			[]string{"size", "125–16384 GiB"}},
		{"unknown type", &pb.CreateVolumeRequest{SizeGib: 10, Type: "gp9"},
			[]string{"type", "gp9", "gp2, gp3, io1, io2, st1, sc1, standard"}},
		{"throughput on gp2", &pb.CreateVolumeRequest{SizeGib: 10, Type: "gp2", ThroughputMibps: 200},
			[]string{"throughput", "gp3"}},
		{"gp3 throughput above 0.25 MiB/s per IOPS", &pb.CreateVolumeRequest{SizeGib: 10, Type: "gp3", ThroughputMibps: 900},
			[]string{"throughput", "900", "125–1000"}},
		{"snapshot and source volume", &pb.CreateVolumeRequest{SizeGib: 10, SnapshotId: "snap-1", SourceVolumeId: "vol-1"},
			[]string{"snapshot id", "source volume id"}},
		{"name too long", &pb.CreateVolumeRequest{Name: strings.Repeat("n", 129), SizeGib: 10},
			[]string{"129", "128"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.volumes.CreateVolume(testCtx(t), tt.req)
			wantCode(t, err, codes.InvalidArgument, tt.want...)
		})
	}
	if vs := e.listAll(t, &pb.ListVolumesRequest{}); len(vs) != 0 {
		t.Errorf("refused creates left %d volume records", len(vs))
	}
	if ids, _ := e.pools["pool-a"].ListImages(); len(ids) != 0 {
		t.Errorf("refused creates left images %v", ids)
	}
}

func TestCreateVolume_Encryption(t *testing.T) {
	plain := newEnv(t, envOptions{})
	withKMS := newEnv(t, envOptions{withKMS: true})
	src := withKMS.create(t, &pb.CreateVolumeRequest{Name: "plain-src", SizeGib: 1})
	sn, err := withKMS.snapshots.CreateSnapshot(testCtx(t), &pb.CreateSnapshotRequest{Name: "plain-snap", VolumeId: src.Id})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		e    *testEnv
		req  *pb.CreateVolumeRequest
		code codes.Code
		want []string
	}{
		{"encrypted on a server without KMS", plain, &pb.CreateVolumeRequest{SizeGib: 1, Encrypted: true},
			codes.FailedPrecondition, []string{"without a KMS", "encrypted/kmsKeyId"}},
		{"kms key on a server without KMS", plain, &pb.CreateVolumeRequest{SizeGib: 1, KmsKeyId: "alias/x"},
			codes.FailedPrecondition, []string{"without a KMS"}},
		{"unknown kms key", withKMS, &pb.CreateVolumeRequest{SizeGib: 1, KmsKeyId: "alias/nope"},
			codes.InvalidArgument, []string{"alias/nope", "does not exist"}},
		{"encrypted restore of a plain snapshot", withKMS, &pb.CreateVolumeRequest{SizeGib: 1, Encrypted: true, SnapshotId: sn.Id},
			codes.InvalidArgument, []string{"not encrypted"}},
		{"encrypted with the default key", withKMS, &pb.CreateVolumeRequest{Name: "enc", SizeGib: 1, Encrypted: true}, codes.OK, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := tt.e.volumes.CreateVolume(testCtx(t), tt.req)
			if tt.code != codes.OK {
				wantCode(t, err, tt.code, tt.want...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !v.Encrypted || v.KmsKeyId == "" {
				t.Errorf("volume encrypted=%t with key %q, want encrypted with the default key", v.Encrypted, v.KmsKeyId)
			}
			again, err := tt.e.volumes.CreateVolume(testCtx(t), tt.req)
			if err != nil || again.Id != v.Id {
				t.Errorf("retried encrypted create: %v, %v; want %s", again.GetId(), err, v.Id)
			}
		})
	}
	if vs := plain.listAll(t, &pb.ListVolumesRequest{}); len(vs) != 0 {
		t.Errorf("refused encrypted creates left %d volumes", len(vs))
	}
}

func TestCreateVolume_NoMatchingPool_ErrorNamesAvailablePools(t *testing.T) {
	e := newEnv(t, envOptions{pools: []testPool{{"pool-a", "zone-a", "node-a"}, {"pool-b", "zone-b", "node-b"}}})
	tests := []struct {
		name string
		req  *pb.CreateVolumeRequest
		code codes.Code
	}{
		{"unknown zone", &pb.CreateVolumeRequest{SizeGib: 1, Zone: "zone-x"}, codes.InvalidArgument},
		{"unknown node in a known zone", &pb.CreateVolumeRequest{SizeGib: 1, Zone: "zone-a", Node: "node-b"}, codes.InvalidArgument},
		{"requisite topology nobody has", &pb.CreateVolumeRequest{SizeGib: 1, Requisite: []*pb.Placement{{Zone: "zone-x"}}}, codes.ResourceExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.volumes.CreateVolume(testCtx(t), tt.req)
			wantCode(t, err, tt.code, "pool-a (zone zone-a, node node-a)", "pool-b (zone zone-b, node node-b)")
		})
	}
}

func TestCreateVolume_Placement_FollowsZoneNodeAndPreference(t *testing.T) {
	e := newEnv(t, envOptions{pools: []testPool{{"pool-a", "zone-a", "node-a"}, {"pool-b", "zone-b", "node-b"}}})
	tests := []struct {
		name     string
		req      *pb.CreateVolumeRequest
		wantPool string
	}{
		{"zone", &pb.CreateVolumeRequest{SizeGib: 1, Zone: "zone-b"}, "pool-b"},
		{"node", &pb.CreateVolumeRequest{SizeGib: 1, Node: "node-a"}, "pool-a"},
		{"requisite", &pb.CreateVolumeRequest{SizeGib: 1, Requisite: []*pb.Placement{{Zone: "zone-b"}}}, "pool-b"},
		{"preferred first", &pb.CreateVolumeRequest{SizeGib: 1, Preferred: []*pb.Placement{{Zone: "zone-b"}, {Zone: "zone-a"}}}, "pool-b"},
		{"preferred within requisite", &pb.CreateVolumeRequest{SizeGib: 1,
			Requisite: []*pb.Placement{{Zone: "zone-a"}, {Zone: "zone-b"}}, Preferred: []*pb.Placement{{Node: "node-a"}}}, "pool-a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := e.create(t, tt.req)
			p := e.pools[tt.wantPool]
			if v.Pool != tt.wantPool || v.Zone != p.Zone() || v.Node != p.Node() {
				t.Fatalf("placed in pool %s (zone %s, node %s), want %s (zone %s, node %s)", v.Pool, v.Zone, v.Node, tt.wantPool, p.Zone(), p.Node())
			}
			if !exists(p.ImagePath(v.Id)) {
				t.Errorf("image of %s is not in pool %s", v.Id, tt.wantPool)
			}
		})
	}
}

func TestCreateVolume_Defaults_RecordedAndImageSized(t *testing.T) {
	e := newEnv(t, envOptions{})
	tests := []struct {
		name                 string
		req                  *pb.CreateVolumeRequest
		wantType             string
		wantIOPS, wantThrput int64
	}{
		{"no type is gp3 with its baseline", &pb.CreateVolumeRequest{SizeGib: 10}, "gp3", 3000, 125},
		{"gp2 IOPS follow size", &pb.CreateVolumeRequest{SizeGib: 100, Type: "gp2"}, "gp2", 300, 128},
		{"io2 iopsPerGB", &pb.CreateVolumeRequest{SizeGib: 10, Type: "io2", IopsPerGb: 50}, "io2", 500, 125},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := e.create(t, tt.req)
			got := e.describe(t, v.Id)
			if got.Type != tt.wantType || got.Iops != tt.wantIOPS || got.ThroughputMibps != tt.wantThrput || got.SizeGib != tt.req.SizeGib {
				t.Errorf("volume is %s %d GiB %d IOPS %d MiB/s, want %s %d GiB %d IOPS %d MiB/s",
					got.Type, got.SizeGib, got.Iops, got.ThroughputMibps, tt.wantType, tt.req.SizeGib, tt.wantIOPS, tt.wantThrput)
			}
			if got.State != StateAvailable || got.Zone != "zone-a" || got.Node != "node-a" || got.Pool != "pool-a" || !strings.HasPrefix(got.Id, "vol-") {
				t.Errorf("volume = %+v, want available in pool-a, zone-a, node-a with a vol- id", got)
			}
			if size := fileSize(t, e.imagePath(v.Id)); size != tt.req.SizeGib*gib {
				t.Errorf("image is %d bytes, want %d", size, tt.req.SizeGib*gib)
			}
		})
	}
}

func TestVolumeState_AttachDetach_AvailableThenInUseThenAvailable(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := testCtx(t)
	v := e.create(t, &pb.CreateVolumeRequest{Name: "pvc-state", SizeGib: 1})
	steps := []struct {
		name      string
		do        func() error
		wantState pb.VolumeState
		wantNodes []string
	}{
		{"created", func() error { return nil }, StateAvailable, nil},
		{"attached", func() error {
			a, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"})
			if err == nil && (a.LocalTarget == "" || a.ExportName != "") {
				t.Errorf("attachment %v on the pool's node: want a local target", a)
			}
			return err
		}, StateInUse, []string{"node-a"}},
		{"detached", func() error {
			r, err := e.volumes.DetachVolume(ctx, &pb.DetachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"})
			if err == nil && !r.Detached {
				t.Error("DetachVolume of an attached volume reported detached=false")
			}
			return err
		}, StateAvailable, nil},
		{"detached again", func() error {
			r, err := e.volumes.DetachVolume(ctx, &pb.DetachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"})
			if err == nil && r.Detached {
				t.Error("DetachVolume of a detached volume reported detached=true")
			}
			return err
		}, StateAvailable, nil},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		got := e.describe(t, v.Id)
		var nodes []string
		for _, a := range got.Attachments {
			nodes = append(nodes, a.NodeId)
		}
		if got.State != s.wantState || !slices.Equal(nodes, s.wantNodes) {
			t.Errorf("%s: state %q attached to %v, want %q attached to %v", s.name, got.State, nodes, s.wantState, s.wantNodes)
		}
	}
}

func TestDeleteVolume(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := testCtx(t)
	tests := []struct {
		name        string
		setup       func(t *testing.T) string
		wantCode    codes.Code
		wantMsg     []string
		wantDeleted bool
	}{
		{"available volume is deleted with its image", func(t *testing.T) string {
			return e.create(t, &pb.CreateVolumeRequest{Name: "pvc-del", SizeGib: 1}).Id
		}, codes.OK, nil, true},
		{"attached volume is refused naming the node", func(t *testing.T) string {
			v := e.create(t, &pb.CreateVolumeRequest{Name: "pvc-attached", SizeGib: 1})
			if _, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"}); err != nil {
				t.Fatal(err)
			}
			return v.Id
		}, codes.FailedPrecondition, []string{"node-a", "detach"}, false},
		{"missing volume succeeds with deleted=false", func(t *testing.T) string {
			return "vol-0000000000000dead"
		}, codes.OK, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := tt.setup(t)
			resp, err := e.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: id})
			if tt.wantCode != codes.OK {
				wantCode(t, err, tt.wantCode, append(tt.wantMsg, id)...)
				if got := e.describe(t, id); got.State != StateInUse {
					t.Errorf("refused delete left state %q, want %q", got.State, StateInUse)
				}
				if !exists(e.imagePath(id)) {
					t.Error("refused delete removed the image")
				}
				return
			}
			if err != nil {
				t.Fatalf("DeleteVolume: %v", err)
			}
			if resp.Deleted != tt.wantDeleted {
				t.Errorf("deleted = %t, want %t", resp.Deleted, tt.wantDeleted)
			}
			_, err = e.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: id})
			wantCode(t, err, codes.NotFound, id)
			if exists(e.imagePath(id)) {
				t.Error("image is still in the pool")
			}
		})
	}

	t.Run("name is free again after delete", func(t *testing.T) {
		first := e.create(t, &pb.CreateVolumeRequest{Name: "pvc-reuse", SizeGib: 1})
		if _, err := e.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: first.Id}); err != nil {
			t.Fatal(err)
		}
		second := e.create(t, &pb.CreateVolumeRequest{Name: "pvc-reuse", SizeGib: 2})
		if second.Id == first.Id || second.SizeGib != 2 {
			t.Errorf("re-created volume %s (%d GiB), want a new 2 GiB volume", second.Id, second.SizeGib)
		}
	})
}

func TestDescribeVolume_MissingOrEmptyID(t *testing.T) {
	e := newEnv(t, envOptions{})
	tests := []struct {
		id   string
		code codes.Code
		want string
	}{
		{"vol-00000000000000001", codes.NotFound, "vol-00000000000000001 does not exist"},
		{"", codes.InvalidArgument, "volume id is required"},
	}
	for _, tt := range tests {
		_, err := e.volumes.DescribeVolume(testCtx(t), &pb.DescribeVolumeRequest{VolumeId: tt.id})
		wantCode(t, err, tt.code, tt.want)
	}
}

func TestAttachVolume(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := testCtx(t)
	// node-b is in the volume's zone but does not hold its pool.
	e.registerNode(t, "node-b", "zone-a", 0)
	attach := func(id, node string) error {
		_, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: id, NodeId: node})
		return err
	}
	tests := []struct {
		name     string
		setup    func(t *testing.T, id string)
		node     string
		readOnly bool
		code     codes.Code
		want     []string
	}{
		{"unknown node", nil, "node-x", false, codes.NotFound, []string{"node-x", "not registered"}},
		{"second node while attached", func(t *testing.T, id string) {
			if err := attach(id, "node-a"); err != nil {
				t.Fatal(err)
			}
		}, "node-b", false, codes.FailedPrecondition, []string{"is already attached to node node-a"}},
		{"node that does not hold the pool", nil, "node-b", false, codes.FailedPrecondition, []string{"is stored on node node-a", "not on node node-b"}},
		{"same node twice", func(t *testing.T, id string) {
			if err := attach(id, "node-a"); err != nil {
				t.Fatal(err)
			}
		}, "node-a", false, codes.OK, nil},
		{"same node with other read-only", func(t *testing.T, id string) {
			if err := attach(id, "node-a"); err != nil {
				t.Fatal(err)
			}
		}, "node-a", true, codes.AlreadyExists, []string{"node-a", "read-only=false"}},
		{"missing volume", nil, "node-a", false, codes.NotFound, []string{"does not exist"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := "vol-0000000000000beef"
			if tt.name != "missing volume" {
				id = e.create(t, &pb.CreateVolumeRequest{SizeGib: 1, Tags: map[string]string{"case": tt.name}}).Id
				t.Cleanup(func() {
					e.volumes.DetachVolume(context.Background(), &pb.DetachVolumeRequest{VolumeId: id, NodeId: "node-a"})
					e.volumes.DeleteVolume(context.Background(), &pb.DeleteVolumeRequest{VolumeId: id})
				})
			}
			if tt.setup != nil {
				tt.setup(t, id)
			}
			before, _ := e.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: id})
			a, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: id, NodeId: tt.node, ReadOnly: tt.readOnly})
			if tt.code != codes.OK {
				wantCode(t, err, tt.code, tt.want...)
				if tt.name != "unknown node" && !strings.Contains(status.Convert(err).Message(), id) {
					t.Errorf("error %q does not name volume %s", status.Convert(err).Message(), id)
				}
				if after, _ := e.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: id}); len(after.GetAttachments()) != len(before.GetAttachments()) {
					t.Errorf("refused attach changed the attachments from %v to %v", before.GetAttachments(), after.GetAttachments())
				}
				return
			}
			if err != nil {
				t.Fatalf("case %d: AttachVolume: %v", i, err)
			}
			got := e.describe(t, id)
			if len(got.Attachments) != 1 || got.Attachments[0].NodeId != tt.node || got.State != StateInUse {
				t.Fatalf("after attaching twice: state %s, attachments %v; want one attachment to %s", got.State, got.Attachments, tt.node)
			}
			if !a.AttachTime.AsTime().Equal(got.Attachments[0].AttachTime.AsTime()) {
				t.Errorf("repeated attach returned attach time %v, want the first one %v", a.AttachTime.AsTime(), got.Attachments[0].AttachTime.AsTime())
			}
		})
	}

	t.Run("node attach limit", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		e.registerNode(t, "node-a", "zone-a", 1)
		v1 := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1})
		v2 := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1})
		if err := func() error {
			_, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v1.Id, NodeId: "node-a"})
			return err
		}(); err != nil {
			t.Fatal(err)
		}
		_, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v2.Id, NodeId: "node-a"})
		wantCode(t, err, codes.ResourceExhausted, "node-a", "1 volumes attached")
		// The volume that holds the slot may still attach again.
		if _, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v1.Id, NodeId: "node-a"}); err != nil {
			t.Errorf("repeated attach of the volume that is attached: %v", err)
		}
		nodes, err := e.nodes.ListNodes(ctx, &pb.ListNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes.Nodes {
			if n.Id == "node-a" && (n.AttachedVolumes != 1 || n.MaxVolumes != 1) {
				t.Errorf("node-a reports %d of %d volumes attached, want 1 of 1", n.AttachedVolumes, n.MaxVolumes)
			}
		}
	})
}

func TestRegisterNode_Invalid_InvalidArgument(t *testing.T) {
	e := newEnv(t, envOptions{})
	tests := []struct {
		name string
		req  *pb.RegisterNodeRequest
		want string
	}{
		{"no id", &pb.RegisterNodeRequest{Zone: "zone-a"}, "node id is required"},
		{"negative limit", &pb.RegisterNodeRequest{Id: "node-z", MaxVolumes: -1}, "-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.nodes.RegisterNode(testCtx(t), tt.req)
			wantCode(t, err, codes.InvalidArgument, tt.want)
		})
	}
}

func TestResizeVolume(t *testing.T) {
	e := newEnv(t, envOptions{})
	tests := []struct {
		name               string
		create             *pb.CreateVolumeRequest
		newSize            int64
		code               codes.Code
		want               []string
		wantSize, wantIOPS int64
	}{
		{"grow gp3 keeps provisioned IOPS", &pb.CreateVolumeRequest{SizeGib: 10, Iops: 4000}, 20, codes.OK, nil, 20, 4000},
		{"grow gp2 recomputes IOPS", &pb.CreateVolumeRequest{SizeGib: 10, Type: "gp2"}, 100, codes.OK, nil, 100, 300},
		{"same size is a no-op", &pb.CreateVolumeRequest{SizeGib: 10}, 10, codes.OK, nil, 10, 3000},
		{"shrink is refused", &pb.CreateVolumeRequest{SizeGib: 10}, 5, codes.InvalidArgument, []string{"10 GiB", "5 GiB", "shrink"}, 10, 3000},
		{"above the type maximum", &pb.CreateVolumeRequest{SizeGib: 10, Type: "standard"}, 2000, codes.InvalidArgument, []string{"size", "1–1024 GiB"}, 10, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := e.create(t, tt.create)
			got, err := e.volumes.ResizeVolume(testCtx(t), &pb.ResizeVolumeRequest{VolumeId: v.Id, SizeGib: tt.newSize})
			if tt.code != codes.OK {
				wantCode(t, err, tt.code, tt.want...)
				got = e.describe(t, v.Id)
			} else if err != nil {
				t.Fatalf("ResizeVolume: %v", err)
			}
			if got.SizeGib != tt.wantSize || got.Iops != tt.wantIOPS {
				t.Errorf("volume is %d GiB with %d IOPS, want %d GiB with %d IOPS", got.SizeGib, got.Iops, tt.wantSize, tt.wantIOPS)
			}
			if d := e.describe(t, v.Id); d.SizeGib != tt.wantSize {
				t.Errorf("recorded size %d GiB, want %d", d.SizeGib, tt.wantSize)
			}
			if size := fileSize(t, e.imagePath(v.Id)); size != tt.wantSize*gib {
				t.Errorf("image is %d bytes, want %d", size, tt.wantSize*gib)
			}
		})
	}
	t.Run("missing volume", func(t *testing.T) {
		_, err := e.volumes.ResizeVolume(testCtx(t), &pb.ResizeVolumeRequest{VolumeId: "vol-0000000000000f00d", SizeGib: 2})
		wantCode(t, err, codes.NotFound, "vol-0000000000000f00d")
	})
}

func TestModifyVolume(t *testing.T) {
	e := newEnv(t, envOptions{})
	tests := []struct {
		name     string
		create   *pb.CreateVolumeRequest
		modify   *pb.ModifyVolumeRequest
		code     codes.Code
		want     []string
		wantType string
		wantIOPS int64
		wantTP   int64
	}{
		{"gp3 to io2 with iops", &pb.CreateVolumeRequest{SizeGib: 10}, &pb.ModifyVolumeRequest{Type: "io2", Iops: 5000},
			codes.OK, nil, "io2", 5000, 1250},
		{"gp3 throughput", &pb.CreateVolumeRequest{SizeGib: 10, Iops: 4000}, &pb.ModifyVolumeRequest{ThroughputMibps: 500},
			codes.OK, nil, "gp3", 4000, 500},
		{"gp2 to gp3 takes gp3 defaults", &pb.CreateVolumeRequest{SizeGib: 10, Type: "gp2"}, &pb.ModifyVolumeRequest{Type: "gp3"},
			codes.OK, nil, "gp3", 3000, 125},
		{"iops on gp2", &pb.CreateVolumeRequest{SizeGib: 10, Type: "gp2"}, &pb.ModifyVolumeRequest{Iops: 500},
			codes.InvalidArgument, []string{"iops", "gp2"}, "gp2", 100, 128},
		{"gp3 iops above the per-GiB limit", &pb.CreateVolumeRequest{SizeGib: 10}, &pb.ModifyVolumeRequest{Iops: 20000},
			codes.InvalidArgument, []string{"iops", "20000", "5000 for 10 GiB"}, "gp3", 3000, 125},
		{"gp2 to io1 without iops", &pb.CreateVolumeRequest{SizeGib: 10, Type: "gp2"}, &pb.ModifyVolumeRequest{Type: "io1"},
			codes.InvalidArgument, []string{"iops", "io1"}, "gp2", 100, 128},
		{"unknown type", &pb.CreateVolumeRequest{SizeGib: 10}, &pb.ModifyVolumeRequest{Type: "gp9"},
			codes.InvalidArgument, []string{"type", "gp9"}, "gp3", 3000, 125},
		{"throughput on io2", &pb.CreateVolumeRequest{SizeGib: 10, Type: "io2", Iops: 1000}, &pb.ModifyVolumeRequest{ThroughputMibps: 300},
			codes.InvalidArgument, []string{"throughput", "gp3"}, "io2", 1000, 250},
		{"st1 on a 10 GiB volume", &pb.CreateVolumeRequest{SizeGib: 10}, &pb.ModifyVolumeRequest{Type: "st1"},
			codes.InvalidArgument, []string{"st1", "125–16384 GiB", "10 GiB"}, "gp3", 3000, 125},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := e.create(t, tt.create)
			tt.modify.VolumeId = v.Id
			_, err := e.volumes.ModifyVolume(testCtx(t), tt.modify)
			if tt.code != codes.OK {
				wantCode(t, err, tt.code, tt.want...)
			} else if err != nil {
				t.Fatalf("ModifyVolume: %v", err)
			}
			got := e.describe(t, v.Id)
			if got.Type != tt.wantType || got.Iops != tt.wantIOPS || got.ThroughputMibps != tt.wantTP || got.SizeGib != tt.create.SizeGib {
				t.Errorf("volume is %s %d IOPS %d MiB/s %d GiB, want %s %d IOPS %d MiB/s %d GiB",
					got.Type, got.Iops, got.ThroughputMibps, got.SizeGib, tt.wantType, tt.wantIOPS, tt.wantTP, tt.create.SizeGib)
			}
		})
	}
	t.Run("add tags keeps the others", func(t *testing.T) {
		v := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1, Tags: map[string]string{"a": "1"}})
		got, err := e.volumes.ModifyVolume(testCtx(t), &pb.ModifyVolumeRequest{VolumeId: v.Id, AddTags: map[string]string{"b": "2", "a": "3"}})
		if err != nil {
			t.Fatal(err)
		}
		if got.Tags["a"] != "3" || got.Tags["b"] != "2" || len(got.Tags) != 2 {
			t.Errorf("tags = %v, want a=3 b=2", got.Tags)
		}
	})
}

func TestListVolumes_25VolumesPageSize10_ThreePagesEveryIDOnce(t *testing.T) {
	e := newEnv(t, envOptions{})
	want := map[string]bool{}
	for range 25 {
		want[e.create(t, &pb.CreateVolumeRequest{SizeGib: 1}).Id] = true
	}
	seen := map[string]int{}
	var pages []int
	token := ""
	for {
		resp, err := e.volumes.ListVolumes(testCtx(t), &pb.ListVolumesRequest{PageSize: 10, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages = append(pages, len(resp.Volumes))
		for _, v := range resp.Volumes {
			seen[v.Id]++
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
		if len(pages) > 10 {
			t.Fatal("paging does not end")
		}
	}
	if !slices.Equal(pages, []int{10, 10, 5}) {
		t.Errorf("page sizes %v, want [10 10 5]", pages)
	}
	for id, n := range seen {
		if n != 1 || !want[id] {
			t.Errorf("volume %s listed %d times (created here: %t)", id, n, want[id])
		}
	}
	if len(seen) != len(want) {
		t.Errorf("listed %d distinct volumes, want %d", len(seen), len(want))
	}
}

func TestListVolumes_Filters(t *testing.T) {
	e := newEnv(t, envOptions{pools: []testPool{{"pool-a", "zone-a", "node-a"}, {"pool-b", "zone-b", "node-b"}}})
	ctx := testCtx(t)
	a1 := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1, Zone: "zone-a", Tags: map[string]string{"team": "db"}})
	a2 := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1, Zone: "zone-a", Tags: map[string]string{"team": "web"}})
	b1 := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1, Zone: "zone-b", Tags: map[string]string{"team": "db", "env": "prod"}})
	if _, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: a2.Id, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  *pb.ListVolumesRequest
		want []string
	}{
		{"all", &pb.ListVolumesRequest{}, []string{a1.Id, a2.Id, b1.Id}},
		{"zone", &pb.ListVolumesRequest{Zone: "zone-b"}, []string{b1.Id}},
		{"state in-use", &pb.ListVolumesRequest{State: StateInUse}, []string{a2.Id}},
		{"state available", &pb.ListVolumesRequest{State: StateAvailable}, []string{a1.Id, b1.Id}},
		{"tag value", &pb.ListVolumesRequest{Tags: map[string]string{"team": "db"}}, []string{a1.Id, b1.Id}},
		{"tag key with any value", &pb.ListVolumesRequest{Tags: map[string]string{"env": ""}}, []string{b1.Id}},
		{"two tags", &pb.ListVolumesRequest{Tags: map[string]string{"team": "db", "env": "prod"}}, []string{b1.Id}},
		{"attached to node", &pb.ListVolumesRequest{Node: "node-a"}, []string{a2.Id}},
		{"ids", &pb.ListVolumesRequest{VolumeIds: []string{a1.Id, b1.Id, "vol-00000000000000000"}}, []string{a1.Id, b1.Id}},
		{"zone and tag, paged by one", &pb.ListVolumesRequest{Zone: "zone-a", Tags: map[string]string{"team": ""}, PageSize: 1}, []string{a1.Id, a2.Id}},
		{"nothing matches", &pb.ListVolumesRequest{Zone: "zone-x"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, v := range e.listAll(t, tt.req) {
				got = append(got, v.Id)
			}
			slices.Sort(got)
			want := slices.Clone(tt.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("listed %v, want %v", got, want)
			}
		})
	}
}

func TestListVolumes_BadPaging_Refused(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.create(t, &pb.CreateVolumeRequest{SizeGib: 1})
	tests := []struct {
		name string
		req  *pb.ListVolumesRequest
		code codes.Code
		want string
	}{
		{"token this server did not issue", &pb.ListVolumesRequest{PageToken: "garbage"}, codes.Aborted, "garbage"},
		{"negative page size", &pb.ListVolumesRequest{PageSize: -1}, codes.InvalidArgument, "-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.volumes.ListVolumes(testCtx(t), tt.req)
			wantCode(t, err, tt.code, tt.want)
		})
	}
	t.Run("token of a deleted volume continues after it", func(t *testing.T) {
		resp, err := e.volumes.ListVolumes(testCtx(t), &pb.ListVolumesRequest{PageToken: "vol-0"})
		if err != nil || len(resp.Volumes) != 1 {
			t.Fatalf("ListVolumes after vol-0: %v volumes, err %v; want 1 volume", len(resp.GetVolumes()), err)
		}
	})
}

func TestListPools_CountsVolumesSnapshotsAndProvisionedBytes(t *testing.T) {
	e := newEnv(t, envOptions{pools: []testPool{{"pool-a", "zone-a", "node-a"}, {"pool-b", "zone-b", "node-b"}}})
	ctx := testCtx(t)
	v := e.create(t, &pb.CreateVolumeRequest{SizeGib: 3, Zone: "zone-a"})
	e.create(t, &pb.CreateVolumeRequest{SizeGib: 2, Zone: "zone-a"})
	if _, err := e.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{VolumeId: v.Id}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		req                    *pb.ListPoolsRequest
		wantNames              []string
		wantVols, wantSnaps    int32
		wantProvisionedOfFirst int64
	}{
		{&pb.ListPoolsRequest{}, []string{"pool-a", "pool-b"}, 2, 1, 5 * gib},
		{&pb.ListPoolsRequest{Zone: "zone-b"}, []string{"pool-b"}, 0, 0, 0},
		{&pb.ListPoolsRequest{Node: "node-a"}, []string{"pool-a"}, 2, 1, 5 * gib},
	}
	for _, tt := range tests {
		resp, err := e.poolSvc.ListPools(ctx, tt.req)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, p := range resp.Pools {
			names = append(names, p.Name)
			if p.CloneMode == "" || p.TotalBytes <= 0 {
				t.Errorf("pool %s: clone mode %q, total %d; want both set", p.Name, p.CloneMode, p.TotalBytes)
			}
		}
		if !slices.Equal(names, tt.wantNames) {
			t.Fatalf("ListPools(%v) = %v, want %v", tt.req, names, tt.wantNames)
		}
		first := resp.Pools[0]
		if first.VolumeCount != tt.wantVols || first.SnapshotCount != tt.wantSnaps || first.ProvisionedBytes != tt.wantProvisionedOfFirst {
			t.Errorf("pool %s: %d volumes, %d snapshots, %d provisioned; want %d, %d, %d", first.Name,
				first.VolumeCount, first.SnapshotCount, first.ProvisionedBytes, tt.wantVols, tt.wantSnaps, tt.wantProvisionedOfFirst)
		}
	}
}
