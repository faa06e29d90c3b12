package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/blockexport"
	"github.com/stowage-io/stowage/internal/handoff"
	"github.com/stowage-io/stowage/internal/store"
	"github.com/stowage-io/stowage/pkg/nbd"
)

// startExporter serves pool's volumes over NBD on a loopback port until
// the test ends.
func startExporter(t *testing.T, pool LocalPool) LocalBlockExporter {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x := blockexport.New(slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})))
	go x.Serve(l)
	t.Cleanup(func() { x.Close() })
	return LocalBlockExporter{Exporter: x, Pool: pool, Addr: l.Addr().String()}
}

// dialAttachment connects to a network attachment as its node would.
func dialAttachment(t *testing.T, a *pb.Attachment, secret string) (*nbd.Client, error) {
	t.Helper()
	return nbd.Dial(testCtx(t), nbd.ClientOptions{Addr: a.ExportAddress, Export: a.ExportName, Connections: 1,
		Auth: &nbd.Auth{Export: a.ExportName, Generation: a.Generation, Secret: []byte(secret)}})
}

func TestAttachVolume_OtherNodeOfZone_OverNBDWithSecretAndFencing(t *testing.T) {
	e := newEnv(t, envOptions{networked: []string{"pool-a"}})
	ctx := testCtx(t)
	e.registerNode(t, "node-b", "zone-a", 0)
	e.registerNode(t, "node-c", "zone-b", 0)
	v := e.create(t, &pb.CreateVolumeRequest{Name: "net", SizeGib: 1, Zone: "zone-a"})
	if !v.Zonal {
		t.Fatalf("volume of a networked pool is not zonal: %v", v)
	}

	_, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-c"})
	wantCode(t, err, codes.FailedPrecondition, v.Id, "zone-a", "node-c", "zone-b")

	a, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	if a.LocalTarget != "" || a.ExportAddress != e.exports["pool-a"].Addr || a.ExportName == "" || a.Generation != 1 {
		t.Fatalf("network attachment %v: want no local target, the exporter's address, an export name and generation 1", a)
	}
	again, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-b"})
	if err != nil || again.ExportName != a.ExportName || again.Generation != 1 {
		t.Fatalf("attach again: %v, %v; want the same attachment", again, err)
	}

	// The secret goes to the attached node only, never with the volume.
	_, err = e.volumes.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: v.Id, NodeId: "node-c"})
	wantCode(t, err, codes.PermissionDenied, v.Id, "node-c")
	sec, err := e.volumes.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: v.Id, NodeId: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	if len(sec.Secret) < 32 || sec.ExportName != a.ExportName || sec.Generation != 1 {
		t.Fatalf("attachment secret %v", sec)
	}
	if d := e.describe(t, v.Id); strings.Contains(d.String(), sec.Secret) {
		t.Fatal("DescribeVolume shows the attachment secret")
	}

	if _, err := dialAttachment(t, a, "not-the-secret"); !errors.Is(err, nbd.ErrRefused) {
		t.Fatalf("dial with a wrong secret: %v, want refused", err)
	}
	c, err := dialAttachment(t, a, sec.Secret)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := []byte("written by node-b over the network")
	if _, err := c.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := readAt(t, e.imagePath(v.Id), 4096, len(data)); !bytes.Equal(got, data) {
		t.Fatalf("image holds %q, want %q", got, data)
	}

	// A second node's attach of the RWO volume is refused, naming the holder.
	_, err = e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"})
	wantCode(t, err, codes.FailedPrecondition, v.Id, "already attached to node node-b")

	// Detach ends the export: node-b's writes fail and it cannot come back.
	if _, err := e.volumes.DetachVolume(ctx, &pb.DetachVolumeRequest{VolumeId: v.Id, NodeId: "node-b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt([]byte("stale"), 0); err == nil {
		t.Fatal("a write of a detached attachment succeeded")
	}
	if _, err := dialAttachment(t, a, sec.Secret); !errors.Is(err, nbd.ErrRefused) {
		t.Fatalf("dial a detached attachment: %v, want refused", err)
	}
	if got := readAt(t, e.imagePath(v.Id), 0, 5); bytes.Equal(got, []byte("stale")) {
		t.Fatal("a write after detach reached the image")
	}

	// On its storage host the volume attaches locally, without an export:
	// an opaque local target and a secret, for the local handoff.
	local, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	if local.LocalTarget == "" || local.ExportName != "" || local.Generation != 0 {
		t.Fatalf("local attachment %v", local)
	}
	lsec, err := e.volumes.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: v.Id, NodeId: "node-a"})
	if err != nil || lsec.LocalTarget != local.LocalTarget || lsec.Secret == "" || lsec.ExportName != "" {
		t.Fatalf("secret of the local attachment %v, %v", lsec, err)
	}
	if _, err := e.volumes.DetachVolume(ctx, &pb.DetachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	next, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	if next.Generation != 2 || next.ExportName == a.ExportName {
		t.Fatalf("attach after detach: %v; want generation 2 and a new export", next)
	}

	// Deleted, the volume leaves nothing in the exporter.
	if _, err := e.volumes.DetachVolume(ctx, &pb.DetachVolumeRequest{VolumeId: v.Id, NodeId: "node-b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: v.Id}); err != nil {
		t.Fatal(err)
	}
	if n := e.exports["pool-a"].Exporter.VolumesKnown(); n != 0 {
		t.Fatalf("after the volume's delete its exporter keeps %d volume records, want 0", n)
	}
}

func TestAttachVolume_PoolWithoutExporter_OnlyOnItsNode(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.registerNode(t, "node-b", "zone-a", 0)
	v := e.create(t, &pb.CreateVolumeRequest{Name: "local", SizeGib: 1})
	if v.Zonal {
		t.Fatal("a volume of a pool without exporter is zonal")
	}
	_, err := e.volumes.AttachVolume(testCtx(t), &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-b"})
	wantCode(t, err, codes.FailedPrecondition, v.Id, "node-a", "node-b", "--nbd-listen")
}

func TestCreateVolume_NetworkedPool_AnyNodeOfItsZoneMatches(t *testing.T) {
	e := newEnv(t, envOptions{networked: []string{"pool-a", "pool-b"},
		pools: []testPool{{"pool-a", "zone-a", "node-a"}, {"pool-b", "zone-b", "node-b"}}})
	v := e.create(t, &pb.CreateVolumeRequest{Name: "wffc", SizeGib: 1,
		Requisite: []*pb.Placement{{Zone: "zone-b", Node: "node-b2"}}, Preferred: []*pb.Placement{{Zone: "zone-b", Node: "node-b2"}}})
	if v.Pool != "pool-b" || v.Zone != "zone-b" {
		t.Fatalf("volume for node-b2 of zone-b placed in %s (%s)", v.Pool, v.Zone)
	}
	// Capacity for a node of zone-b (CSIStorageCapacity per node) counts
	// the zone's networked pool.
	pools, err := e.poolSvc.ListPools(testCtx(t), &pb.ListPoolsRequest{Zone: "zone-b", Node: "node-b2"})
	if err != nil || len(pools.Pools) != 1 || pools.Pools[0].Name != "pool-b" || !pools.Pools[0].Zonal {
		t.Errorf("pools usable on node-b2 of zone-b: %v, %v; want the zonal pool-b", pools, err)
	}
	_, err = e.volumes.CreateVolume(testCtx(t), &pb.CreateVolumeRequest{Name: "nowhere", SizeGib: 1,
		Requisite: []*pb.Placement{{Zone: "zone-c", Node: "node-c"}}})
	wantCode(t, err, codes.ResourceExhausted)
}

func TestReconcile_NewExporter_NetworkAttachmentsExportedAgain(t *testing.T) {
	e := newEnv(t, envOptions{networked: []string{"pool-a"}})
	ctx := testCtx(t)
	_, a, sec := e.attachToNodeB(t, "restart")
	// A server start: a fresh exporter knows nothing until Reconcile.
	x := startExporter(t, e.pools["pool-a"])
	srv, err := New(Config{Store: e.store, Pools: map[string]Pool{"pool-a": e.pools["pool-a"]}, BlockExports: map[string]BlockExporter{"pool-a": x}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	a.ExportAddress = x.Addr
	c, err := dialAttachment(t, a, sec.Secret)
	if err != nil {
		t.Fatalf("the attachment is not exported again after the restart: %v", err)
	}
	c.Close()
}

// attachToNodeB makes a volume and attaches it over the network to
// node-b (not its storage host), returning it, the attachment and the
// attachment's secret.
func (e *testEnv) attachToNodeB(t *testing.T, name string) (*pb.Volume, *pb.Attachment, *pb.AttachmentSecret) {
	t.Helper()
	ctx := testCtx(t)
	e.registerNode(t, "node-b", "zone-a", 0)
	v := e.create(t, &pb.CreateVolumeRequest{Name: name, SizeGib: 1})
	a, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := e.volumes.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: v.Id, NodeId: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	return v, a, sec
}

// refreshFails is an exporter whose storage host cannot be reached for a
// Refresh.
type refreshFails struct{ LocalBlockExporter }

func (refreshFails) Refresh(context.Context, string) error { return errors.New("connection refused") }

func TestResizeVolume_NetworkAttachment_ExportServesTheNewSize(t *testing.T) {
	e := newEnv(t, envOptions{networked: []string{"pool-a"}})
	ctx := testCtx(t)
	v, a, sec := e.attachToNodeB(t, "grow")
	c, err := dialAttachment(t, a, sec.Secret)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The storage host unreachable: the resize fails, Unavailable, and the
	// volume keeps its recorded size, so the retry does it all again.
	other, err := New(Config{Store: e.store, Pools: map[string]Pool{"pool-a": e.pools["pool-a"]},
		BlockExports: map[string]BlockExporter{"pool-a": refreshFails{e.exports["pool-a"]}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = other.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeId: v.Id, SizeGib: 2})
	wantCode(t, err, codes.Unavailable, v.Id, "pool-a", "connection refused")
	if d := e.describe(t, v.Id); d.SizeGib != 1 {
		t.Fatalf("after a failed refresh the volume is recorded at %d GiB, want 1", d.SizeGib)
	}

	if _, err := e.volumes.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeId: v.Id, SizeGib: 2}); err != nil {
		t.Fatal(err)
	}
	if got, err := c.RefreshSize(ctx); err != nil || got != 2<<30 {
		t.Fatalf("the node's client sees %d bytes (%v), want 2 GiB", got, err)
	}
	if _, err := c.WriteAt([]byte("end"), 2<<30-3); err != nil {
		t.Fatalf("write at the new end: %v", err)
	}
}

// flakyExporter is a storage host that can restart (a fresh exporter,
// knowing nothing) or be unreachable.
type flakyExporter struct {
	t    *testing.T
	pool LocalPool
	cur  LocalBlockExporter
	down bool
}

func (f *flakyExporter) Address() string { return f.cur.Addr }
func (f *flakyExporter) Export(ctx context.Context, e BlockExport) error {
	if f.down {
		return errors.New("dial tcp " + f.cur.Addr + ": connect: no route to host")
	}
	return f.cur.Export(ctx, e)
}
func (f *flakyExporter) Unexport(ctx context.Context, id string) error {
	return f.cur.Unexport(ctx, id)
}
func (f *flakyExporter) Refresh(ctx context.Context, id string) error { return f.cur.Refresh(ctx, id) }
func (f *flakyExporter) restart()                                     { f.cur = startExporter(f.t, f.pool) }

func TestReexports_StorageHostRestartsOrIsUnreachable_ExportedAgainAndStateSaysSo(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := testCtx(t)
	f := &flakyExporter{t: t, pool: e.pools["pool-a"]}
	f.restart()
	srv, err := New(Config{Store: e.store, Pools: map[string]Pool{"pool-a": e.pools["pool-a"]}, BlockExports: map[string]BlockExporter{"pool-a": f}})
	if err != nil {
		t.Fatal(err)
	}
	e.registerNode(t, "node-b", "zone-a", 0)
	v := e.create(t, &pb.CreateVolumeRequest{Name: "flaky", SizeGib: 1})
	a, err := srv.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := srv.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: v.Id, NodeId: "node-b"})
	if err != nil {
		t.Fatal(err)
	}

	// The storage host restarts: its new exporter knows nothing until the
	// server declares the export again.
	f.restart()
	a.ExportAddress = f.cur.Addr
	srv.reexportAll(ctx)
	c, err := dialAttachment(t, a, sec.Secret)
	if err != nil {
		t.Fatalf("after the storage host restarted and one re-export round: %v", err)
	}
	c.Close()

	// Unreachable: the volume says so, naming the pool and the address.
	f.down = true
	srv.reexportAll(ctx)
	got, err := srv.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: v.Id})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got.StateReason, "storage host unreachable") || !strings.Contains(got.StateReason, "pool-a") || !strings.Contains(got.StateReason, f.cur.Addr) {
		t.Errorf("state reason %q: want it to say the storage host of pool-a at %s is unreachable", got.StateReason, f.cur.Addr)
	}
	// An attach elsewhere fails the same way, naming it.
	e.registerNode(t, "node-c", "zone-a", 0)
	v2 := e.create(t, &pb.CreateVolumeRequest{Name: "flaky-2", SizeGib: 1})
	_, err = srv.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v2.Id, NodeId: "node-c"})
	wantCode(t, err, codes.Unavailable, "pool-a", f.cur.Addr)

	f.down = false
	srv.reexportAll(ctx)
	if got, _ := srv.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: v.Id}); got.GetStateReason() != "" {
		t.Errorf("state reason %q after the storage host came back, want none", got.GetStateReason())
	}
}

// A node tells its node plugin whether some pool on it attaches only
// there: then its volumes' topology names the node, and the node plugin
// reports the node key; where its pools are exported over the network, the
// zone alone.
func TestRegisterNode_NodeLocalPools(t *testing.T) {
	for _, tc := range []struct {
		networked []string
		want      bool
	}{{nil, true}, {[]string{"pool-a"}, false}} {
		e := newEnv(t, envOptions{networked: tc.networked})
		n, err := e.nodes.RegisterNode(testCtx(t), &pb.RegisterNodeRequest{Id: "node-a", Zone: "zone-a"})
		if err != nil {
			t.Fatal(err)
		}
		if n.NodeLocalPools != tc.want {
			t.Errorf("networked pools %v: node-a's NodeLocalPools %v, want %v", tc.networked, n.NodeLocalPools, tc.want)
		}
		// A node with no pool of its own: the zone alone.
		other, err := e.nodes.RegisterNode(testCtx(t), &pb.RegisterNodeRequest{Id: "node-b", Zone: "zone-a"})
		if err != nil || other.NodeLocalPools {
			t.Errorf("node-b (no pool): NodeLocalPools %v, %v", other.GetNodeLocalPools(), err)
		}
		list, err := e.nodes.ListNodes(testCtx(t), &pb.ListNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range list.Nodes {
			if l.Id == "node-a" && l.NodeLocalPools != tc.want {
				t.Errorf("ListNodes: node-a's NodeLocalPools %v, want %v", l.NodeLocalPools, tc.want)
			}
		}
	}
}

// With a KMS, attachment secrets are stored sealed by its master key: the
// metadata store (an etcd backup of it) holds no secret that opens an
// export, the node still gets its secret and the export takes it, and a
// sealed secret moved to another attachment does not open.
func TestAttachmentSecret_SealedInTheStore_ExportStillTakesIt(t *testing.T) {
	e := newEnv(t, envOptions{networked: []string{"pool-a"}, withKMS: true})
	ctx := testCtx(t)
	e.registerNode(t, "node-b", "zone-a", 0)
	v := e.create(t, &pb.CreateVolumeRequest{Name: "net", SizeGib: 1, Zone: "zone-a"})
	w := e.create(t, &pb.CreateVolumeRequest{Name: "local", SizeGib: 1, Zone: "zone-a"})
	a, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := e.volumes.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: v.Id, NodeId: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	lreq := e.attachLocal(t, w, false)

	raw := func(id string) []byte {
		var b []byte
		if err := e.store.View(ctx, func(tx store.Tx) error {
			var err error
			b, err = tx.Get(bucketVolumes, id)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return b
	}
	for id, secret := range map[string]string{v.Id: sec.Secret, w.Id: lreq.Secret} {
		b := raw(id)
		if len(secret) < 32 || bytes.Contains(b, []byte(secret)) {
			t.Fatalf("the stored record of volume %s holds its attachment secret in the clear: %s", id, b)
		}
		if !bytes.Contains(b, []byte(`"sealedSecret"`)) || bytes.Contains(b, []byte(`"secret"`)) {
			t.Fatalf("the stored record of volume %s has no sealed secret, or a clear one: %s", id, b)
		}
	}

	c, err := dialAttachment(t, a, sec.Secret)
	if err != nil {
		t.Fatalf("the export refuses the secret its node was given: %v", err)
	}
	c.Close()
	sock := serveHandoff(t, e)
	f, _, err := handoff.Open(ctx, sock, lreq)
	if err != nil {
		t.Fatalf("the local handoff refuses the secret its node was given: %v", err)
	}
	f.Close()

	// The network attachment's sealed secret, moved into the local one's
	// record, does not open there: it is bound to its attachment.
	var vr, wr volumeRecord
	if err := json.Unmarshal(raw(v.Id), &vr); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw(w.Id), &wr); err != nil {
		t.Fatal(err)
	}
	wr.Attachments[0].SealedSecret = vr.Attachments[0].SealedSecret
	b, err := json.Marshal(wr)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.Update(ctx, func(tx store.Tx) error { return tx.Put(bucketVolumes, w.Id, b) }); err != nil {
		t.Fatal(err)
	}
	_, err = e.volumes.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: w.Id, NodeId: "node-a"})
	wantCode(t, err, codes.FailedPrecondition, w.Id, "node-a", "does not open")
}
