package server

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/store"
)

// countingStore counts the server's metadata commits and can fail them.
type countingStore struct {
	store.Store
	updates atomic.Int64
	fail    atomic.Bool
}

var errCommitFailed = errors.New("commit failed (test)")

func (c *countingStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	c.updates.Add(1)
	if c.fail.Load() {
		return errCommitFailed
	}
	return c.Store.Update(ctx, fn)
}

func withCountingStore(c *countingStore) func(store.Store) store.Store {
	return func(st store.Store) store.Store { c.Store = st; return c }
}

// afterPool makes the image operations a test names fail after (create)
// or instead of (delete) doing them.
type afterPool struct {
	LocalPool
	createErr, deleteErr error
}

func (f afterPool) CreateImage(ctx context.Context, id string, size int64) error {
	if err := f.LocalPool.CreateImage(ctx, id, size); err != nil {
		return err
	}
	// As if the image's name were made and the directory sync then failed.
	return f.createErr
}

func (f afterPool) DeleteImage(ctx context.Context, id string) error {
	if f.deleteErr != nil {
		return f.deleteErr
	}
	return f.LocalPool.DeleteImage(ctx, id)
}

func poolImages(t *testing.T, e *testEnv) []string {
	t.Helper()
	ids, err := e.pools["pool-a"].ListImages()
	if err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(filepath.Join(e.pools["pool-a"].Dir(), "tmp")); len(left) != 0 {
		t.Errorf("pool tmp holds %d leftovers", len(left))
	}
	return ids
}

// TestCreateAndDelete_OneCommitEach: a create (blank, restore, clone) is one
// metadata commit after its image is made, a delete one commit before its
// image is removed; a delete of a missing volume commits nothing.
func TestCreateAndDelete_OneCommitEach(t *testing.T) {
	c := &countingStore{}
	e := newEnv(t, envOptions{wrapStore: withCountingStore(c)})
	ctx := testCtx(t)
	commits := func(what string, want int64, do func()) {
		t.Helper()
		before := c.updates.Load()
		do()
		if got := c.updates.Load() - before; got != want {
			t.Errorf("%s: %d metadata commits, want %d", what, got, want)
		}
	}
	var v, restored, cloned *pb.Volume
	commits("create", 1, func() { v = e.create(t, &pb.CreateVolumeRequest{Name: "one", SizeGib: 1}) })
	commits("repeated create", 0, func() {
		if again := e.create(t, &pb.CreateVolumeRequest{Name: "one", SizeGib: 1}); again.Id != v.Id {
			t.Errorf("repeated create gave %s, want %s", again.Id, v.Id)
		}
	})
	snap, err := e.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{VolumeId: v.Id})
	if err != nil {
		t.Fatal(err)
	}
	commits("restore", 1, func() { restored = e.create(t, &pb.CreateVolumeRequest{SizeGib: 1, SnapshotId: snap.Id}) })
	commits("clone", 1, func() { cloned = e.create(t, &pb.CreateVolumeRequest{SizeGib: 1, SourceVolumeId: v.Id}) })
	if got := e.describe(t, restored.Id); got.State != StateAvailable || !exists(e.imagePath(got.Id)) {
		t.Errorf("restored volume is %s, image present %t", got.State, exists(e.imagePath(got.Id)))
	}
	for _, id := range []string{cloned.Id, restored.Id} {
		commits("delete", 1, func() {
			if _, err := e.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Fatal(err)
			}
		})
		if exists(e.imagePath(id)) {
			t.Errorf("image of deleted volume %s is still in the pool", id)
		}
	}
	commits("delete of a missing volume", 0, func() {
		resp, err := e.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: cloned.Id})
		if err != nil || resp.Deleted {
			t.Errorf("delete of a deleted volume: %v, %v; want success, deleted=false", resp, err)
		}
	})
}

// TestCreate_CommitFails_ImageRemovedNameFree: the image is made first; when
// the commit that records it fails, the image goes and the name stays free.
func TestCreate_CommitFails_ImageRemovedNameFree(t *testing.T) {
	c := &countingStore{}
	e := newEnv(t, envOptions{wrapStore: withCountingStore(c)})
	c.fail.Store(true)
	_, err := e.volumes.CreateVolume(testCtx(t), &pb.CreateVolumeRequest{Name: "unlucky", SizeGib: 1})
	wantCode(t, err, codes.Internal, "record volume", "commit failed")
	c.fail.Store(false)
	if ids := poolImages(t, e); len(ids) != 0 {
		t.Errorf("pool holds %v after the failed create, want nothing", ids)
	}
	if v := e.create(t, &pb.CreateVolumeRequest{Name: "unlucky", SizeGib: 1}); v.State != StateAvailable {
		t.Errorf("retried create is %s, want available", v.State)
	}
	checkPoolMatchesMetadata(t, e)
}

// TestCreate_ImageStepFails_NothingLeft: a pool step that fails after the
// image got its final name (a failed directory sync) leaves neither image
// nor record.
func TestCreate_ImageStepFails_NothingLeft(t *testing.T) {
	e := newEnv(t, envOptions{wrap: func(_ string, p LocalPool) LocalPool {
		return afterPool{LocalPool: p, createErr: errors.New("sync volumes/: input/output error (test)")}
	}})
	_, err := e.volumes.CreateVolume(testCtx(t), &pb.CreateVolumeRequest{Name: "half", SizeGib: 1})
	wantCode(t, err, codes.Internal, "create image")
	if ids := poolImages(t, e); len(ids) != 0 {
		t.Errorf("pool holds %v after the failed create, want nothing", ids)
	}
	if vs := e.listAll(t, &pb.ListVolumesRequest{}); len(vs) != 0 {
		t.Errorf("volumes after the failed create: %v, want none", vs)
	}
}

// TestCreate_NameTakenWhileImageMade_AbortedAndImageRemoved: the commit
// re-checks the name index, so a record of the same name that appeared
// while the image was made (another writer of the store) wins, and the
// loser's image goes.
func TestCreate_NameTakenWhileImageMade_AbortedAndImageRemoved(t *testing.T) {
	h := newHold(t, "create-image")
	e := newEnv(t, envOptions{wrap: h.wrap})
	made := make(chan error, 1)
	go func() {
		_, err := e.volumes.CreateVolume(testCtx(t), &pb.CreateVolumeRequest{Name: "contested", SizeGib: 1})
		made <- err
	}()
	loser := h.wait(t)
	winner := &volumeRecord{ID: "vol-0000000000000a001", Name: "contested", Pool: "pool-a", Zone: "zone-a", Node: "node-a",
		SizeGiB: 1, Type: "gp3", IOPS: 3000, Throughput: 125, State: StateAvailable, Created: time.Now()}
	putVolumeRecord(t, e, winner)
	h.Release()
	wantCode(t, <-made, codes.Aborted, "contested", winner.ID)
	if exists(e.imagePath(loser)) {
		t.Errorf("image of the aborted create %s is still in the pool", loser)
	}
	if got := e.describe(t, winner.ID); got.Name != "contested" {
		t.Errorf("winner is named %q", got.Name)
	}
}

// TestDelete_ImageRemovalFails_DeletedAndReconcileRemovesImage: the commit
// is the delete; an image that cannot be removed is logged and left for the
// next start's Reconcile, and the delete (and its retry) succeed.
func TestDelete_ImageRemovalFails_DeletedAndReconcileRemovesImage(t *testing.T) {
	e := newEnv(t, envOptions{wrap: func(_ string, p LocalPool) LocalPool {
		return afterPool{LocalPool: p, deleteErr: errors.New("unlink: input/output error (test)")}
	}})
	ctx := testCtx(t)
	v := e.create(t, &pb.CreateVolumeRequest{Name: "sticky", SizeGib: 1})
	for i, want := range []bool{true, false} {
		resp, err := e.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: v.Id})
		if err != nil || resp.Deleted != want {
			t.Fatalf("delete %d: %v, %v; want success, deleted=%t", i+1, resp, err, want)
		}
	}
	wantVolumeMissing(t, e, v.Id)
	if !exists(e.imagePath(v.Id)) {
		t.Fatal("image is gone although removing it failed; the test proves nothing")
	}
	if again := e.create(t, &pb.CreateVolumeRequest{Name: "sticky", SizeGib: 1}); again.Id == v.Id {
		t.Errorf("name still resolves to the deleted %s", v.Id)
	}
	// The next start (a server with a pool that works) removes the image.
	e2 := reopen(t, e)
	if err := e2.srv.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if exists(e.imagePath(v.Id)) {
		t.Errorf("image of deleted %s survived the reconcile", v.Id)
	}
}

func wantVolumeMissing(t *testing.T, e *testEnv, id string) {
	t.Helper()
	_, err := e.volumes.DescribeVolume(testCtx(t), &pb.DescribeVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.NotFound, id)
}

// reopen is a new server on e's store and pools, as after a restart.
func reopen(t *testing.T, e *testEnv) *testEnv {
	t.Helper()
	pools := map[string]Pool{}
	for name, p := range e.pools {
		pools[name] = p
	}
	srv, err := New(Config{Store: e.store, Pools: pools, Logger: e.srv.log})
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{srv: srv, store: e.store, pools: e.pools}
}
