package agentapi

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	spb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/server"
	"github.com/stowage-io/stowage/internal/store/boltstore"
)

// newRemoteServer is the Stowage server with its only pool, remote-b, behind
// the agent API, and the agent as that pool's block exporter.
func newRemoteServer(t *testing.T, e *env) *server.Server {
	t.Helper()
	ctx := testCtx(t)
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv, err := server.New(server.Config{Store: st, Pools: map[string]server.Pool{"remote-b": e.client},
		BlockExports: map[string]server.BlockExporter{"remote-b": e.client},
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if err := srv.RegisterPoolNodes(ctx); err != nil {
		t.Fatal(err)
	}
	return srv
}

// The Stowage server with its only pool behind the agent API: what it does
// to volumes and snapshots happens in the agent's pool.
func TestServer_VolumeAndSnapshotLifecycle_ThroughTheRemotePool(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	srv := newRemoteServer(t, e)
	pools, err := srv.ListPools(ctx, &spb.ListPoolsRequest{})
	if err != nil || len(pools.Pools) != 1 {
		t.Fatalf("ListPools = %v, %v", pools, err)
	}
	if p := pools.Pools[0]; p.Name != "remote-b" || p.Zone != "zone-b" || p.Node != "storage-1" || p.TotalBytes <= 0 {
		t.Fatalf("pool = %+v, want remote-b in zone-b on storage-1 with its capacity", p)
	}

	v, err := srv.CreateVolume(ctx, &spb.CreateVolumeRequest{Name: "pvc-1", SizeGib: 1})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := e.pool.ImageSize(v.Id); err != nil || n != 1<<30 {
		t.Fatalf("the agent's image of %s: %d, %v; want 1 GiB", v.Id, n, err)
	}
	if _, err := srv.ResizeVolume(ctx, &spb.ResizeVolumeRequest{VolumeId: v.Id, SizeGib: 2}); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.pool.ImageSize(v.Id); n != 2<<30 {
		t.Fatalf("the agent's image after resize: %d bytes, want 2 GiB", n)
	}
	sn, err := srv.CreateSnapshot(ctx, &spb.CreateSnapshotRequest{Name: "snap-1", VolumeId: v.Id})
	if err != nil {
		t.Fatal(err)
	}
	if ids, _ := e.pool.ListSnapshots(); !slices.Contains(ids, sn.Id) {
		t.Fatalf("snapshot %s is not in the agent's pool: %v", sn.Id, ids)
	}
	restored, err := srv.CreateVolume(ctx, &spb.CreateVolumeRequest{Name: "pvc-2", SizeGib: 2, SnapshotId: sn.Id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.DeleteSnapshot(ctx, &spb.DeleteSnapshotRequest{SnapshotId: sn.Id}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{v.Id} {
		if _, err := srv.DeleteVolume(ctx, &spb.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if ids, _ := e.pool.ListImages(); !slices.Equal(ids, []string{restored.Id}) {
		t.Fatalf("images in the agent's pool: %v, want only %s", ids, restored.Id)
	}
	if ids, _ := e.pool.ListSnapshots(); len(ids) != 0 {
		t.Fatalf("snapshots left in the agent's pool: %v", ids)
	}
	// The agent's pool refuses: the server's poolError still sees the
	// sentinel (a snapshot gone from the agent behind the server's back).
	sn2, err := srv.CreateSnapshot(ctx, &spb.CreateSnapshotRequest{Name: "snap-2", VolumeId: restored.Id})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.pool.DeleteSnapshot(ctx, sn2.Id); err != nil {
		t.Fatal(err)
	}
	_, err = srv.CreateVolume(ctx, &spb.CreateVolumeRequest{Name: "pvc-3", SizeGib: 2, SnapshotId: sn2.Id})
	if c := status.Code(err); c != codes.NotFound {
		t.Fatalf("restore from a snapshot the agent lost: %v, want NOT_FOUND", err)
	}
}

// A volume of the remote pool attached to another node of its zone is
// exported by the agent (the server asks over the API); on the storage
// host's own node it attaches locally, at the agent's image path.
func TestServer_NetworkAttachment_ExportedByTheAgent(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	srv := newRemoteServer(t, e)
	if _, err := srv.RegisterNode(ctx, &spb.RegisterNodeRequest{Id: "compute-1", Zone: "zone-b"}); err != nil {
		t.Fatal(err)
	}
	v, err := srv.CreateVolume(ctx, &spb.CreateVolumeRequest{Name: "pvc-net", SizeGib: 1, Zone: "zone-b"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := srv.AttachVolume(ctx, &spb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "compute-1"})
	if err != nil {
		t.Fatal(err)
	}
	if a.ExportAddress != e.nbdAddr || a.ExportName == "" || a.LocalTarget != "" {
		t.Fatalf("attachment %v: want an export at the agent's NBD address %s and no local target", a, e.nbdAddr)
	}
	sec, err := srv.GetAttachmentSecret(ctx, &spb.GetAttachmentSecretRequest{VolumeId: v.Id, NodeId: "compute-1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.nbdDial(t, a.ExportName, a.Generation, sec.Secret)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("written by compute-1 through the agent")
	if _, err := c.WriteAt(data, 8192); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(e.pool.ImagePath(v.Id))
	if err != nil || !bytes.Equal(img[8192:8192+len(data)], data) {
		t.Fatalf("the agent's image does not hold the NBD write (%v)", err)
	}
	if _, err := srv.DetachVolume(ctx, &spb.DetachVolumeRequest{VolumeId: v.Id, NodeId: "compute-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt([]byte("stale"), 0); err == nil {
		t.Fatal("a write of the detached attachment succeeded")
	}
	local, err := srv.AttachVolume(ctx, &spb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "storage-1"})
	if err != nil {
		t.Fatal(err)
	}
	// The storage host's own node too attaches over NBD: the agent hands
	// nothing over by path.
	if local.LocalTarget != "" || local.ExportAddress != e.nbdAddr || local.ExportName == "" {
		t.Fatalf("attachment on the storage host's node %v: want an NBD export at %s, no local target", local, e.nbdAddr)
	}
	// Deleted through the agent API, the volume leaves nothing in the
	// agent's exporter.
	if _, err := srv.DetachVolume(ctx, &spb.DetachVolumeRequest{VolumeId: v.Id, NodeId: "storage-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.DeleteVolume(ctx, &spb.DeleteVolumeRequest{VolumeId: v.Id}); err != nil {
		t.Fatal(err)
	}
	if n := e.ex.VolumesKnown(); n != 0 {
		t.Fatalf("after the volume's delete the agent's exporter keeps %d volume records, want 0", n)
	}
}
