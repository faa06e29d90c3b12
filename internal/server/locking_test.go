package server

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// gatedPool calls gate before the pool operations a test may want to hold
// in the middle, so the test can act while the server is inside one.
type gatedPool struct {
	LocalPool
	gate func(op, id string)
}

func (g gatedPool) CreateImage(ctx context.Context, id string, size int64) error {
	g.gate("create-image", id)
	return g.LocalPool.CreateImage(ctx, id, size)
}

func (g gatedPool) CreateImageFromSnapshot(ctx context.Context, id, snapshotID string, size int64) error {
	g.gate("restore-image", snapshotID)
	return g.LocalPool.CreateImageFromSnapshot(ctx, id, snapshotID, size)
}

func (g gatedPool) CloneImage(ctx context.Context, id, sourceID string, size int64) error {
	g.gate("clone-image", sourceID)
	return g.LocalPool.CloneImage(ctx, id, sourceID, size)
}

func (g gatedPool) ResizeImage(ctx context.Context, id string, size int64) error {
	g.gate("resize-image", id)
	return g.LocalPool.ResizeImage(ctx, id, size)
}

func (g gatedPool) SnapshotImage(ctx context.Context, volumeID, snapshotID string) error {
	g.gate("snapshot-image", snapshotID)
	return g.LocalPool.SnapshotImage(ctx, volumeID, snapshotID)
}

// hold stops the first pool operation op until release is closed; entered
// gets the id the operation works on once it is held.
type hold struct {
	op      string
	entered chan string
	release chan struct{}
	once    sync.Once
}

func newHold(t *testing.T, op string) *hold {
	h := &hold{op: op, entered: make(chan string, 1), release: make(chan struct{})}
	// Never leave a held server goroutine behind, even when the test fails.
	t.Cleanup(h.Release)
	return h
}

// Release lets the held operation go on.
func (h *hold) Release() { h.once.Do(func() { close(h.release) }) }

func (h *hold) gate(op, id string) {
	if op != h.op {
		return
	}
	select {
	case h.entered <- id:
		<-h.release
	default:
	}
}

func (h *hold) wait(t *testing.T) string {
	t.Helper()
	select {
	case id := <-h.entered:
		return id
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s operation started", h.op)
		return ""
	}
}

func (h *hold) wrap(_ string, p LocalPool) LocalPool { return gatedPool{LocalPool: p, gate: h.gate} }

// otherOps are the calls that must wait for an operation in progress on the
// same volume.
func otherOps(e *testEnv, volumeID string) map[string]func(context.Context) error {
	return map[string]func(context.Context) error{
		"attach": func(ctx context.Context) error {
			_, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: volumeID, NodeId: "node-a"})
			return err
		},
		"detach": func(ctx context.Context) error {
			_, err := e.volumes.DetachVolume(ctx, &pb.DetachVolumeRequest{VolumeId: volumeID, NodeId: "node-a"})
			return err
		},
		"delete": func(ctx context.Context) error {
			_, err := e.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: volumeID})
			return err
		},
		"resize": func(ctx context.Context) error {
			_, err := e.volumes.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeId: volumeID, SizeGib: 30})
			return err
		},
		"modify": func(ctx context.Context) error {
			_, err := e.volumes.ModifyVolume(ctx, &pb.ModifyVolumeRequest{VolumeId: volumeID, Iops: 4000})
			return err
		},
		"snapshot": func(ctx context.Context) error {
			_, err := e.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{VolumeId: volumeID})
			return err
		},
	}
}

func TestResizeInProgress_OtherOpsOnSameVolumeAborted(t *testing.T) {
	h := newHold(t, "resize-image")
	e := newEnv(t, envOptions{lockWait: 50 * time.Millisecond, wrap: h.wrap})
	ctx := testCtx(t)
	v := e.create(t, &pb.CreateVolumeRequest{Name: "busy", SizeGib: 10})
	other := e.create(t, &pb.CreateVolumeRequest{Name: "idle", SizeGib: 10})

	resized := make(chan error, 1)
	go func() {
		_, err := e.volumes.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeId: v.Id, SizeGib: 20})
		resized <- err
	}()
	h.wait(t)
	for name, op := range otherOps(e, v.Id) {
		t.Run(name+" waits and is aborted", func(t *testing.T) {
			wantCode(t, op(ctx), codes.Aborted, "another operation on volume "+v.Id)
		})
	}
	t.Run("ops on another volume go on", func(t *testing.T) {
		if _, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: other.Id, NodeId: "node-a"}); err != nil {
			t.Errorf("attach of another volume during the resize: %v", err)
		}
	})
	h.Release()
	if err := <-resized; err != nil {
		t.Fatalf("held resize: %v", err)
	}
	got := e.describe(t, v.Id)
	if got.SizeGib != 20 || got.State != StateAvailable || len(got.Attachments) != 0 || got.Iops != 3000 {
		t.Errorf("after the resize and the aborted ops: %d GiB, %s, %d attachments, %d IOPS; want 20 GiB, available, none, 3000",
			got.SizeGib, got.State, len(got.Attachments), got.Iops)
	}
	if size := fileSize(t, e.imagePath(v.Id)); size != 20*gib {
		t.Errorf("image is %d bytes, want %d", size, 20*gib)
	}
	if snaps, _ := e.pools["pool-a"].ListSnapshots(); len(snaps) != 0 {
		t.Errorf("aborted snapshot left images %v", snaps)
	}
}

func TestCreateInProgress_OpsOnTheNewVolumeAborted(t *testing.T) {
	h := newHold(t, "create-image")
	e := newEnv(t, envOptions{lockWait: 50 * time.Millisecond, wrap: h.wrap})
	ctx := testCtx(t)

	created := make(chan *pb.Volume, 1)
	go func() {
		v, err := e.volumes.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "slow", SizeGib: 10})
		if err != nil {
			t.Errorf("held create: %v", err)
		}
		created <- v
	}()
	id := h.wait(t)
	// The image is made before anything is recorded: no caller can see the
	// volume yet.
	if vs := e.listAll(t, &pb.ListVolumesRequest{}); len(vs) != 0 {
		t.Fatalf("volumes listed while the first image is being made: %v, want none", vs)
	}
	// The id stays locked until the create ends.
	for name, op := range otherOps(e, id) {
		t.Run(name+" waits and is aborted", func(t *testing.T) {
			wantCode(t, op(ctx), codes.Aborted, id)
		})
	}
	t.Run("create of the same name waits and is aborted", func(t *testing.T) {
		_, err := e.volumes.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "slow", SizeGib: 10})
		wantCode(t, err, codes.Aborted, "slow")
	})
	h.Release()
	v := <-created
	if v == nil {
		t.FailNow()
	}
	got := e.describe(t, id)
	if got.State != StateAvailable || got.SizeGib != 10 || len(got.Attachments) != 0 {
		t.Errorf("created volume is %s, %d GiB, %d attachments; want available, 10 GiB, none", got.State, got.SizeGib, len(got.Attachments))
	}
	if size := fileSize(t, e.imagePath(id)); size != 10*gib {
		t.Errorf("image is %d bytes, want %d", size, 10*gib)
	}
	if again := e.create(t, &pb.CreateVolumeRequest{Name: "slow", SizeGib: 10}); again.Id != id {
		t.Errorf("name now resolves to %s, want %s", again.Id, id)
	}
}

// TestRestoreOrCloneInProgress_DeleteOfTheSourceAborted: while a restore or
// clone copies its source, a delete of that snapshot or volume waits and is
// aborted, and the copy then finishes with the source intact.
func TestRestoreOrCloneInProgress_DeleteOfTheSourceAborted(t *testing.T) {
	for _, tt := range []struct {
		name, op string
		create   func(src *pb.Volume, snap *pb.Snapshot) *pb.CreateVolumeRequest
	}{
		{"restore", "restore-image", func(_ *pb.Volume, snap *pb.Snapshot) *pb.CreateVolumeRequest {
			return &pb.CreateVolumeRequest{Name: "restored", SizeGib: 1, SnapshotId: snap.Id}
		}},
		{"clone", "clone-image", func(src *pb.Volume, _ *pb.Snapshot) *pb.CreateVolumeRequest {
			return &pb.CreateVolumeRequest{Name: "cloned", SizeGib: 1, SourceVolumeId: src.Id}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHold(t, tt.op)
			e := newEnv(t, envOptions{lockWait: 50 * time.Millisecond, wrap: h.wrap})
			ctx := testCtx(t)
			src := e.create(t, &pb.CreateVolumeRequest{Name: "source", SizeGib: 1})
			writeAt(t, e.imagePath(src.Id), 0, []byte("source data"))
			snap, err := e.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{VolumeId: src.Id})
			if err != nil {
				t.Fatal(err)
			}
			made := make(chan error, 1)
			var v *pb.Volume
			go func() {
				var err error
				v, err = e.volumes.CreateVolume(ctx, tt.create(src, snap))
				made <- err
			}()
			sourceID := h.wait(t)

			var delErr error
			if tt.name == "restore" {
				_, delErr = e.snapshots.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{SnapshotId: sourceID})
			} else {
				_, delErr = e.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: sourceID})
			}
			wantCode(t, delErr, codes.Aborted, sourceID)

			h.Release()
			if err := <-made; err != nil {
				t.Fatalf("held %s: %v", tt.name, err)
			}
			if got := string(readAt(t, e.imagePath(v.Id), 0, 11)); got != "source data" {
				t.Errorf("%s holds %q, want the source's data", tt.name, got)
			}
			if _, err := e.snapshots.DescribeSnapshot(ctx, &pb.DescribeSnapshotRequest{SnapshotId: snap.Id}); err != nil {
				t.Errorf("snapshot after the aborted delete: %v", err)
			}
			e.describe(t, src.Id)
		})
	}
}

func TestCreateSnapshotInProgress_DeleteOfTheSnapshotAborted(t *testing.T) {
	h := newHold(t, "snapshot-image")
	e := newEnv(t, envOptions{lockWait: 50 * time.Millisecond, wrap: h.wrap})
	ctx := testCtx(t)
	v := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1})
	done := make(chan error, 1)
	go func() {
		_, err := e.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{Name: "slow-snap", VolumeId: v.Id})
		done <- err
	}()
	id := h.wait(t)
	_, err := e.snapshots.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{SnapshotId: id})
	wantCode(t, err, codes.Aborted, id)
	h.Release()
	if err := <-done; err != nil {
		t.Fatalf("held snapshot: %v", err)
	}
	sn, err := e.snapshots.DescribeSnapshot(ctx, &pb.DescribeSnapshotRequest{SnapshotId: id})
	if err != nil || sn.State != SnapshotCompleted {
		t.Fatalf("snapshot after create: %v, %v; want completed", sn, err)
	}
	if !exists(e.pools["pool-a"].SnapshotPath(id)) {
		t.Error("completed snapshot has no image")
	}
}

func TestCreateVolume_ConcurrentSameName_OneVolume(t *testing.T) {
	e := newEnv(t, envOptions{})
	const n = 8
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			v, err := e.volumes.CreateVolume(testCtx(t), &pb.CreateVolumeRequest{Name: "racy", SizeGib: 1})
			if err != nil {
				t.Errorf("create %d: %v", i, err)
				return
			}
			ids[i] = v.Id
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("concurrent creates of one name made volumes %v, want one", ids)
		}
	}
	if imgs, _ := e.pools["pool-a"].ListImages(); len(imgs) != 1 {
		t.Errorf("pool holds images %v, want one", imgs)
	}
}

func TestConcurrentConflictingOps_StateStaysConsistent(t *testing.T) {
	tests := []struct {
		name     string
		lockWait time.Duration
		rounds   int
	}{
		{"default lock wait", 0, 6},
		// Most ops give up at once: Aborted must leave no trace either.
		{"tiny lock wait", time.Microsecond, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envOptions{lockWait: tt.lockWait})
			codesSeen := map[codes.Code]int{}
			var mu sync.Mutex
			for round := range tt.rounds {
				v := e.create(t, &pb.CreateVolumeRequest{Name: fmt.Sprintf("round-%d", round), SizeGib: 10})
				ops := otherOps(e, v.Id)
				ops["resize-small"] = func(ctx context.Context) error {
					_, err := e.volumes.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeId: v.Id, SizeGib: 15})
					return err
				}
				ops["attach-again"] = ops["attach"]
				start := make(chan struct{})
				var wg sync.WaitGroup
				for name, op := range ops {
					wg.Go(func() {
						<-start
						err := op(testCtx(t))
						mu.Lock()
						codesSeen[status.Code(err)]++
						mu.Unlock()
						switch status.Code(err) {
						case codes.OK, codes.NotFound, codes.FailedPrecondition, codes.InvalidArgument, codes.Aborted:
						default:
							t.Errorf("round %d: %s: unexpected error %v", round, name, err)
						}
					})
				}
				close(start)
				wg.Wait()
				checkConsistent(t, e, v.Id)
			}
			t.Logf("result codes: %v", codesSeen)
		})
	}
}

// checkConsistent asserts that what the API says about a volume and its
// snapshots is what the pool holds.
func checkConsistent(t *testing.T, e *testEnv, id string) {
	t.Helper()
	ctx := testCtx(t)
	p := e.pools["pool-a"]
	v, err := e.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: id})
	switch status.Code(err) {
	case codes.NotFound:
		if exists(p.ImagePath(id)) {
			t.Errorf("volume %s is gone but its image is still in the pool", id)
		}
	case codes.OK:
		wantState := StateAvailable
		if len(v.Attachments) > 0 {
			wantState = StateInUse
		}
		if v.State != wantState {
			t.Errorf("volume %s is %s with %d attachments, want %s", id, v.State, len(v.Attachments), wantState)
		}
		if len(v.Attachments) > 1 {
			t.Errorf("volume %s has %d attachments, want at most one", id, len(v.Attachments))
		}
		if size := fileSize(t, p.ImagePath(id)); size != v.SizeGib*gib {
			t.Errorf("volume %s records %d GiB but its image is %d bytes", id, v.SizeGib, size)
		}
		if v.Iops != 3000 && v.Iops != 4000 {
			t.Errorf("volume %s has %d IOPS, want 3000 or 4000", id, v.Iops)
		}
	default:
		t.Fatalf("describe %s: %v", id, err)
	}
	snaps, err := e.snapshots.ListSnapshots(ctx, &pb.ListSnapshotsRequest{VolumeId: id})
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range snaps.Snapshots {
		if sn.State != SnapshotCompleted || !exists(p.SnapshotPath(sn.Id)) {
			t.Errorf("snapshot %s of %s is %s, image present: %t; want completed with an image", sn.Id, id, sn.State, exists(p.SnapshotPath(sn.Id)))
		}
	}
	all, err := e.snapshots.ListSnapshots(ctx, &pb.ListSnapshotsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	images, _ := p.ListSnapshots()
	if len(images) != len(all.Snapshots) {
		t.Errorf("pool holds %d snapshot images, the API knows %d snapshots", len(images), len(all.Snapshots))
	}
	// Clean up, so the next round starts from an idle volume.
	if v != nil {
		e.volumes.DetachVolume(ctx, &pb.DetachVolumeRequest{VolumeId: id, NodeId: "node-a"})
	}
}
