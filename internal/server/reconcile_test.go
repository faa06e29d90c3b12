package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/store"
)

// putVolumeRecord writes a record as a crash would have left it, bypassing
// the API.
func putVolumeRecord(t *testing.T, e *testEnv, v *volumeRecord) {
	t.Helper()
	err := e.store.Update(testCtx(t), func(tx store.Tx) error {
		if v.Name != "" {
			if err := tx.Put(bucketVolumeNames, v.Name, []byte(v.ID)); err != nil {
				return err
			}
		}
		return store.PutJSON(tx, bucketVolumes, v.ID, v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func putSnapshotRecord(t *testing.T, e *testEnv, sn *snapshotRecord) {
	t.Helper()
	err := e.store.Update(testCtx(t), func(tx store.Tx) error {
		if sn.Name != "" {
			if err := tx.Put(bucketSnapshotNames, sn.Name, []byte(sn.ID)); err != nil {
				return err
			}
		}
		return store.PutJSON(tx, bucketSnapshots, sn.ID, sn)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// setState changes a volume's recorded state, as a crash in the middle of an
// operation would have left it.
func setState(t *testing.T, e *testEnv, id string, state pb.VolumeState) {
	t.Helper()
	v, err := e.srv.getVolume(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	v.State = state
	if err := e.srv.putVolume(testCtx(t), v); err != nil {
		t.Fatal(err)
	}
}

func touchImage(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

func TestReconcile_AfterCrash_MetadataAndPoolAgree(t *testing.T) {
	const name = "pvc-crashed"
	tests := []struct {
		name string
		// crash leaves the state a crash would and returns the ids involved.
		crash func(t *testing.T, e *testEnv) string
		check func(t *testing.T, e *testEnv, id string)
	}{
		{"create recorded, no image: rolled back", func(t *testing.T, e *testEnv) string {
			v := &volumeRecord{ID: "vol-0000000000000c001", Name: name, Pool: "pool-a", Zone: "zone-a", Node: "node-a",
				SizeGiB: 1, Type: "gp3", IOPS: 3000, Throughput: 125, State: StateCreating, Created: time.Now()}
			putVolumeRecord(t, e, v)
			return v.ID
		}, wantVolumeGone},
		{"create with image made, not marked available: rolled back", func(t *testing.T, e *testEnv) string {
			v := &volumeRecord{ID: "vol-0000000000000c002", Name: name, Pool: "pool-a", Zone: "zone-a", Node: "node-a",
				SizeGiB: 1, Type: "gp3", IOPS: 3000, Throughput: 125, State: StateCreating, Created: time.Now()}
			putVolumeRecord(t, e, v)
			touchImage(t, e.imagePath(v.ID), gib)
			return v.ID
		}, wantVolumeGone},
		{"delete marked, image still there: finished", func(t *testing.T, e *testEnv) string {
			v := e.create(t, &pb.CreateVolumeRequest{Name: name, SizeGib: 1})
			setState(t, e, v.Id, StateDeleting)
			return v.Id
		}, wantVolumeGone},
		{"delete marked, image already removed: finished", func(t *testing.T, e *testEnv) string {
			v := e.create(t, &pb.CreateVolumeRequest{Name: name, SizeGib: 1})
			setState(t, e, v.Id, StateDeleting)
			os.Remove(e.imagePath(v.Id))
			return v.Id
		}, wantVolumeGone},
		{"image without a record: removed", func(t *testing.T, e *testEnv) string {
			id := "vol-0000000000000c005"
			touchImage(t, e.imagePath(id), gib)
			return id
		}, wantVolumeGone},
		{"snapshot image without a record: removed", func(t *testing.T, e *testEnv) string {
			id := "snap-000000000000c006"
			touchImage(t, e.pools["pool-a"].SnapshotPath(id), gib)
			return id
		}, wantSnapshotGone},
		{"snapshot recorded pending with its image: removed", func(t *testing.T, e *testEnv) string {
			v := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1})
			sn := &snapshotRecord{ID: "snap-000000000000c007", Name: "snap-crashed", VolumeID: v.Id, Pool: "pool-a", Zone: "zone-a",
				SizeGiB: 1, SizeBytes: gib, State: SnapshotPending, Created: time.Now()}
			putSnapshotRecord(t, e, sn)
			touchImage(t, e.pools["pool-a"].SnapshotPath(sn.ID), gib)
			return sn.ID
		}, wantSnapshotGone},
		{"snapshot being deleted: finished", func(t *testing.T, e *testEnv) string {
			v := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1})
			sn := &snapshotRecord{ID: "snap-000000000000c008", Name: "snap-crashed", VolumeID: v.Id, Pool: "pool-a", Zone: "zone-a",
				SizeGiB: 1, SizeBytes: gib, State: SnapshotDeleting, Created: time.Now()}
			putSnapshotRecord(t, e, sn)
			return sn.ID
		}, wantSnapshotGone},
		{"available volume whose image vanished: state error with a reason", func(t *testing.T, e *testEnv) string {
			v := e.create(t, &pb.CreateVolumeRequest{Name: name, SizeGib: 1})
			if err := os.Remove(e.imagePath(v.Id)); err != nil {
				t.Fatal(err)
			}
			return v.Id
		}, func(t *testing.T, e *testEnv, id string) {
			v := e.describe(t, id)
			if v.State != StateError || !strings.Contains(v.StateReason, "image missing") || !strings.Contains(v.StateReason, "pool-a") {
				t.Errorf("volume is %q (%q), want error with a reason naming the missing image and pool-a", v.State, v.StateReason)
			}
		}},
		{"healthy volume and snapshot: untouched", func(t *testing.T, e *testEnv) string {
			v := e.create(t, &pb.CreateVolumeRequest{Name: name, SizeGib: 1})
			if _, err := e.snapshots.CreateSnapshot(testCtx(t), &pb.CreateSnapshotRequest{Name: "healthy", VolumeId: v.Id}); err != nil {
				t.Fatal(err)
			}
			return v.Id
		}, func(t *testing.T, e *testEnv, id string) {
			if v := e.describe(t, id); v.State != StateAvailable || !exists(e.imagePath(id)) {
				t.Errorf("healthy volume is %s, image present %t; want available with its image", v.State, exists(e.imagePath(id)))
			}
			if snaps, _ := e.pools["pool-a"].ListSnapshots(); len(snaps) != 1 {
				t.Errorf("snapshot images %v, want the healthy one", snaps)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			id := tt.crash(t, e)
			for i := range 2 { // Reconcile is idempotent.
				if err := e.srv.Reconcile(testCtx(t)); err != nil {
					t.Fatalf("Reconcile %d: %v", i+1, err)
				}
			}
			tt.check(t, e, id)
			checkPoolMatchesMetadata(t, e)
		})
	}
}

func wantVolumeGone(t *testing.T, e *testEnv, id string) {
	t.Helper()
	_, err := e.volumes.DescribeVolume(testCtx(t), &pb.DescribeVolumeRequest{VolumeId: id})
	if status.Code(err) != codes.NotFound {
		t.Errorf("volume %s after reconcile: %v, want NotFound", id, err)
	}
	if exists(e.imagePath(id)) {
		t.Errorf("image of %s is still in the pool", id)
	}
	// The name of a rolled-back create is free for the retry.
	v := e.create(t, &pb.CreateVolumeRequest{Name: "pvc-crashed", SizeGib: 1})
	if v.Id == id || v.State != StateAvailable {
		t.Errorf("retried create gave %s (%s), want a new available volume", v.Id, v.State)
	}
}

func wantSnapshotGone(t *testing.T, e *testEnv, id string) {
	t.Helper()
	_, err := e.snapshots.DescribeSnapshot(testCtx(t), &pb.DescribeSnapshotRequest{SnapshotId: id})
	if status.Code(err) != codes.NotFound {
		t.Errorf("snapshot %s after reconcile: %v, want NotFound", id, err)
	}
	if exists(e.pools["pool-a"].SnapshotPath(id)) {
		t.Errorf("image of snapshot %s is still in the pool", id)
	}
}

// checkPoolMatchesMetadata asserts the pool holds exactly the images the
// metadata knows, and nothing in its tmp directory.
func checkPoolMatchesMetadata(t *testing.T, e *testEnv) {
	t.Helper()
	p := e.pools["pool-a"]
	known := map[string]bool{}
	for _, v := range e.listAll(t, &pb.ListVolumesRequest{}) {
		if v.State != StateError {
			known[v.Id] = true
		}
	}
	images, err := p.ListImages()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range images {
		if !known[id] {
			t.Errorf("pool holds image %s that no volume record knows", id)
		}
		delete(known, id)
	}
	for id := range known {
		t.Errorf("volume %s has no image", id)
	}
	snaps, err := e.snapshots.ListSnapshots(testCtx(t), &pb.ListSnapshotsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	snapImages, err := p.ListSnapshots()
	if err != nil {
		t.Fatal(err)
	}
	if len(snapImages) != len(snaps.Snapshots) {
		t.Errorf("pool holds snapshot images %v, the API knows %d snapshots", snapImages, len(snaps.Snapshots))
	}
	if left, _ := os.ReadDir(filepath.Join(p.Dir(), "tmp")); len(left) != 0 {
		t.Errorf("pool tmp holds %d leftovers", len(left))
	}
}
