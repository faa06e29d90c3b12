package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/agent"
)

// failingPool makes one pool operation fail with a chosen error, the way
// the agent reports it (wrapped, with context).
type failingPool struct {
	LocalPool
	mu  sync.Mutex
	op  string
	err error
}

func (f *failingPool) failNext(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.op, f.err = op, err
}

func (f *failingPool) fail(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.op != op {
		return nil
	}
	err := f.err
	f.op, f.err = "", nil
	return fmt.Errorf("%s in pool: %w", op, err)
}

func (f *failingPool) CreateImage(ctx context.Context, id string, size int64) error {
	if err := f.fail("create"); err != nil {
		return err
	}
	return f.LocalPool.CreateImage(ctx, id, size)
}

func (f *failingPool) CreateImageFromSnapshot(ctx context.Context, id, snapshotID string, size int64) error {
	if err := f.fail("restore"); err != nil {
		return err
	}
	return f.LocalPool.CreateImageFromSnapshot(ctx, id, snapshotID, size)
}

func (f *failingPool) CloneImage(ctx context.Context, id, sourceID string, size int64) error {
	if err := f.fail("clone"); err != nil {
		return err
	}
	return f.LocalPool.CloneImage(ctx, id, sourceID, size)
}

func (f *failingPool) ResizeImage(ctx context.Context, id string, size int64) error {
	if err := f.fail("resize"); err != nil {
		return err
	}
	return f.LocalPool.ResizeImage(ctx, id, size)
}

func (f *failingPool) SnapshotImage(ctx context.Context, volumeID, snapshotID string) error {
	if err := f.fail("snapshot"); err != nil {
		return err
	}
	return f.LocalPool.SnapshotImage(ctx, volumeID, snapshotID)
}

func (f *failingPool) DeleteSnapshot(ctx context.Context, id string) error {
	if err := f.fail("delete-snapshot"); err != nil {
		return err
	}
	return f.LocalPool.DeleteSnapshot(ctx, id)
}

// TestPoolErrors_EverySentinel_MappedToActionableCode goes through every
// error the agent can name, on every API call that reaches a pool: none of
// them may reach the user as INTERNAL, and a full pool names itself and its
// free space.
func TestPoolErrors_EverySentinel_MappedToActionableCode(t *testing.T) {
	var fp *failingPool
	e := newEnv(t, envOptions{wrap: func(_ string, p LocalPool) LocalPool {
		fp = &failingPool{LocalPool: p}
		return fp
	}})
	ctx := testCtx(t)
	src := e.create(t, &pb.CreateVolumeRequest{Name: "source", SizeGib: 1})
	snap, err := e.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{VolumeId: src.Id})
	if err != nil {
		t.Fatal(err)
	}

	// Each call makes its own objects, so one failure does not change what
	// the next case sees. DeleteVolume is not here: its pool step comes
	// after the commit that deletes the volume, so a failure there is logged
	// and left to Reconcile, and the delete succeeds
	// (TestDelete_ImageRemovalFails_DeletedAndReconcileRemovesImage).
	calls := map[string]func() error{
		"create": func() error {
			_, err := e.volumes.CreateVolume(ctx, &pb.CreateVolumeRequest{SizeGib: 1})
			return err
		},
		"restore": func() error {
			_, err := e.volumes.CreateVolume(ctx, &pb.CreateVolumeRequest{SizeGib: 1, SnapshotId: snap.Id})
			return err
		},
		"clone": func() error {
			_, err := e.volumes.CreateVolume(ctx, &pb.CreateVolumeRequest{SizeGib: 1, SourceVolumeId: src.Id})
			return err
		},
		"resize": func() error {
			v := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1})
			_, err := e.volumes.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeId: v.Id, SizeGib: 2})
			return err
		},
		"snapshot": func() error {
			_, err := e.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{VolumeId: src.Id})
			return err
		},
		"delete-snapshot": func() error {
			sn, err := e.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{VolumeId: src.Id})
			if err != nil {
				t.Fatal(err)
			}
			_, err = e.snapshots.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{SnapshotId: sn.Id})
			return err
		},
	}
	sentinels := []struct {
		name string
		err  error
		code codes.Code
		want []string // words the message must contain
	}{
		{"not found", agent.ErrNotFound, codes.NotFound, []string{"not found"}},
		{"exists", agent.ErrExists, codes.AlreadyExists, []string{"already exists"}},
		{"invalid", agent.ErrInvalid, codes.InvalidArgument, []string{"invalid argument"}},
		{"ENOSPC from a write", &os.PathError{Op: "write", Path: "/pool/tmp/x", Err: syscall.ENOSPC},
			codes.ResourceExhausted, []string{"pool-a", "full", "free", "iB of "}},
		{"no space sentinel", agent.ErrNoSpace, codes.ResourceExhausted, []string{"pool-a", "free"}},
		{"unexpected error", errors.New("disk on fire"), codes.Internal, []string{"disk on fire"}},
	}
	for op, call := range calls {
		for _, s := range sentinels {
			t.Run(op+"/"+s.name, func(t *testing.T) {
				fp.failNext(op, s.err)
				err := call()
				fp.failNext("", nil)
				wantCode(t, err, s.code, s.want...)
			})
		}
	}
}
