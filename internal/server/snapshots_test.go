package server

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/codes"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

func TestCreateSnapshot_ByName(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := testCtx(t)
	v1 := e.create(t, &pb.CreateVolumeRequest{Name: "src-1", SizeGib: 2})
	v2 := e.create(t, &pb.CreateVolumeRequest{Name: "src-2", SizeGib: 2})
	first, err := e.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{Name: "snap-a", VolumeId: v1.Id, Description: "nightly"})
	if err != nil {
		t.Fatal(err)
	}
	if first.State != SnapshotCompleted || first.SizeGib != 2 || first.VolumeId != v1.Id || first.Zone != "zone-a" {
		t.Errorf("snapshot = %+v, want completed, 2 GiB, of %s in zone-a", first, v1.Id)
	}
	tests := []struct {
		name   string
		req    *pb.CreateSnapshotRequest
		code   codes.Code
		want   []string
		sameID bool
	}{
		{"same name same volume returns the snapshot", &pb.CreateSnapshotRequest{Name: "snap-a", VolumeId: v1.Id}, codes.OK, nil, true},
		{"same name other volume", &pb.CreateSnapshotRequest{Name: "snap-a", VolumeId: v2.Id}, codes.AlreadyExists,
			[]string{"snap-a", first.Id, v1.Id, v2.Id}, false},
		{"missing volume", &pb.CreateSnapshotRequest{Name: "snap-b", VolumeId: "vol-00000000000000404"}, codes.NotFound,
			[]string{"vol-00000000000000404"}, false},
		{"no volume id", &pb.CreateSnapshotRequest{Name: "snap-c"}, codes.InvalidArgument, []string{"volume id"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := e.snapshots.CreateSnapshot(ctx, tt.req)
			if tt.code != codes.OK {
				wantCode(t, err, tt.code, tt.want...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.sameID && got.Id != first.Id {
				t.Errorf("got snapshot %s, want the existing %s", got.Id, first.Id)
			}
		})
	}
	list, err := e.snapshots.ListSnapshots(ctx, &pb.ListSnapshotsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Snapshots) != 1 {
		t.Errorf("%d snapshots exist, want 1", len(list.Snapshots))
	}
	if snaps, _ := e.pools["pool-a"].ListSnapshots(); len(snaps) != 1 || snaps[0] != first.Id {
		t.Errorf("pool holds snapshots %v, want [%s]", snaps, first.Id)
	}
}

func TestRestoreAndClone_HaveTheSourceData(t *testing.T) {
	const off = 3 << 20
	before := bytes.Repeat([]byte("before snapshot "), 256)
	after := bytes.Repeat([]byte("after  snapshot "), 256)
	tests := []struct {
		name string
		// make creates the new volume from src once src holds before and
		// then returns what the new volume must hold.
		make func(t *testing.T, e *testEnv, src *pb.Volume) (*pb.Volume, []byte)
	}{
		{"restore from snapshot has the snapshot's data", func(t *testing.T, e *testEnv, src *pb.Volume) (*pb.Volume, []byte) {
			sn, err := e.snapshots.CreateSnapshot(testCtx(t), &pb.CreateSnapshotRequest{Name: "snap", VolumeId: src.Id})
			if err != nil {
				t.Fatal(err)
			}
			writeAt(t, e.imagePath(src.Id), off, after)
			return e.create(t, &pb.CreateVolumeRequest{Name: "restored", SizeGib: 2, SnapshotId: sn.Id}), before
		}},
		{"restore into a larger volume keeps the data", func(t *testing.T, e *testEnv, src *pb.Volume) (*pb.Volume, []byte) {
			sn, err := e.snapshots.CreateSnapshot(testCtx(t), &pb.CreateSnapshotRequest{Name: "snap", VolumeId: src.Id})
			if err != nil {
				t.Fatal(err)
			}
			writeAt(t, e.imagePath(src.Id), off, after)
			return e.create(t, &pb.CreateVolumeRequest{Name: "restored", SizeGib: 5, SnapshotId: sn.Id}), before
		}},
		{"restore after the source volume is deleted", func(t *testing.T, e *testEnv, src *pb.Volume) (*pb.Volume, []byte) {
			sn, err := e.snapshots.CreateSnapshot(testCtx(t), &pb.CreateSnapshotRequest{Name: "snap", VolumeId: src.Id})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.volumes.DeleteVolume(testCtx(t), &pb.DeleteVolumeRequest{VolumeId: src.Id}); err != nil {
				t.Fatal(err)
			}
			return e.create(t, &pb.CreateVolumeRequest{Name: "restored", SizeGib: 2, SnapshotId: sn.Id}), before
		}},
		{"clone has the source's current data", func(t *testing.T, e *testEnv, src *pb.Volume) (*pb.Volume, []byte) {
			writeAt(t, e.imagePath(src.Id), off, after)
			return e.create(t, &pb.CreateVolumeRequest{Name: "clone", SizeGib: 2, SourceVolumeId: src.Id}), after
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			src := e.create(t, &pb.CreateVolumeRequest{Name: "src", SizeGib: 2})
			writeAt(t, e.imagePath(src.Id), off, before)
			v, want := tt.make(t, e, src)
			if v.State != StateAvailable || v.Pool != src.Pool {
				t.Errorf("new volume is %s in pool %s, want available in the source's pool %s", v.State, v.Pool, src.Pool)
			}
			if v.SnapshotId == "" && v.SourceVolumeId != src.Id {
				t.Errorf("new volume records neither a snapshot nor source %s: %+v", src.Id, v)
			}
			if got := readAt(t, e.imagePath(v.Id), off, len(want)); !bytes.Equal(got, want) {
				t.Errorf("new volume holds %.32q…, want %.32q…", got, want)
			}
			if size := fileSize(t, e.imagePath(v.Id)); size != v.SizeGib*gib {
				t.Errorf("new image is %d bytes, want %d", size, v.SizeGib*gib)
			}
			if exists(e.imagePath(src.Id)) {
				if got := readAt(t, e.imagePath(src.Id), off, len(after)); !bytes.Equal(got, after) {
					t.Errorf("source holds %.32q…, want its own latest data", got)
				}
			}
			// Writes to the new volume must not reach the source.
			writeAt(t, e.imagePath(v.Id), off, bytes.Repeat([]byte("x"), len(after)))
			if exists(e.imagePath(src.Id)) {
				if got := readAt(t, e.imagePath(src.Id), off, len(after)); !bytes.Equal(got, after) {
					t.Error("a write to the new volume changed the source")
				}
			}
		})
	}
}

func TestCreateVolumeFromSource_Refused(t *testing.T) {
	e := newEnv(t, envOptions{pools: []testPool{{"pool-a", "zone-a", "node-a"}, {"pool-b", "zone-b", "node-b"}}})
	src := e.create(t, &pb.CreateVolumeRequest{Name: "src", SizeGib: 10, Zone: "zone-a"})
	sn, err := e.snapshots.CreateSnapshot(testCtx(t), &pb.CreateSnapshotRequest{Name: "snap", VolumeId: src.Id})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  *pb.CreateVolumeRequest
		code codes.Code
		want []string
	}{
		{"restore smaller than the snapshot", &pb.CreateVolumeRequest{SizeGib: 5, SnapshotId: sn.Id}, codes.InvalidArgument,
			[]string{"5 GiB", "smaller", sn.Id, "10 GiB"}},
		{"clone smaller than the source", &pb.CreateVolumeRequest{SizeGib: 5, SourceVolumeId: src.Id}, codes.InvalidArgument,
			[]string{"5 GiB", "smaller", src.Id}},
		{"restore from a missing snapshot", &pb.CreateVolumeRequest{SizeGib: 10, SnapshotId: "snap-00000000000000404"}, codes.NotFound,
			[]string{"snap-00000000000000404"}},
		{"clone of a missing volume", &pb.CreateVolumeRequest{SizeGib: 10, SourceVolumeId: "vol-00000000000000404"}, codes.NotFound,
			[]string{"vol-00000000000000404"}},
		{"restore into another zone", &pb.CreateVolumeRequest{SizeGib: 10, SnapshotId: sn.Id, Zone: "zone-b"}, codes.ResourceExhausted,
			[]string{sn.Id, "zone zone-a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.volumes.CreateVolume(testCtx(t), tt.req)
			wantCode(t, err, tt.code, tt.want...)
		})
	}
	if vs := e.listAll(t, &pb.ListVolumesRequest{}); len(vs) != 1 {
		t.Errorf("%d volumes after refused restores and clones, want only the source", len(vs))
	}
}

func TestDeleteSnapshot(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := testCtx(t)
	v := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1})
	sn, err := e.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{Name: "snap", VolumeId: v.Id})
	if err != nil {
		t.Fatal(err)
	}
	snapPath := e.pools["pool-a"].SnapshotPath(sn.Id)
	if !exists(snapPath) {
		t.Fatalf("snapshot image %s was not made", snapPath)
	}
	tests := []struct {
		name        string
		id          string
		wantDeleted bool
	}{
		{"existing snapshot is deleted with its image", sn.Id, true},
		{"deleting it again succeeds with deleted=false", sn.Id, false},
		{"missing snapshot succeeds with deleted=false", "snap-00000000000000404", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := e.snapshots.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{SnapshotId: tt.id})
			if err != nil {
				t.Fatal(err)
			}
			if resp.Deleted != tt.wantDeleted {
				t.Errorf("deleted = %t, want %t", resp.Deleted, tt.wantDeleted)
			}
			_, err = e.snapshots.DescribeSnapshot(ctx, &pb.DescribeSnapshotRequest{SnapshotId: tt.id})
			wantCode(t, err, codes.NotFound, tt.id)
		})
	}
	if exists(snapPath) {
		t.Error("snapshot image is still in the pool")
	}
	// The name is free again.
	again, err := e.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{Name: "snap", VolumeId: v.Id})
	if err != nil || again.Id == sn.Id {
		t.Errorf("re-creating snapshot name after delete: %v, %v; want a new snapshot", again, err)
	}
}

func TestListSnapshots_FiltersAndPages(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := testCtx(t)
	v1 := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1})
	v2 := e.create(t, &pb.CreateVolumeRequest{SizeGib: 1})
	of := map[string][]string{}
	for i := range 5 {
		v := v1
		if i%2 == 1 {
			v = v2
		}
		sn, err := e.snapshots.CreateSnapshot(ctx, &pb.CreateSnapshotRequest{VolumeId: v.Id})
		if err != nil {
			t.Fatal(err)
		}
		of[v.Id] = append(of[v.Id], sn.Id)
	}
	tests := []struct {
		name      string
		req       *pb.ListSnapshotsRequest
		wantCount int
		wantPages int
	}{
		{"all in pages of 2", &pb.ListSnapshotsRequest{PageSize: 2}, 5, 3},
		{"of one volume", &pb.ListSnapshotsRequest{VolumeId: v1.Id}, 3, 1},
		{"by id", &pb.ListSnapshotsRequest{SnapshotIds: []string{of[v2.Id][0]}}, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := map[string]bool{}
			pages := 0
			for {
				resp, err := e.snapshots.ListSnapshots(ctx, tt.req)
				if err != nil {
					t.Fatal(err)
				}
				pages++
				for _, s := range resp.Snapshots {
					if seen[s.Id] {
						t.Errorf("snapshot %s listed twice", s.Id)
					}
					seen[s.Id] = true
				}
				if resp.NextPageToken == "" || pages > 10 {
					break
				}
				tt.req.PageToken = resp.NextPageToken
			}
			if len(seen) != tt.wantCount || pages != tt.wantPages {
				t.Errorf("listed %d snapshots in %d pages, want %d in %d", len(seen), pages, tt.wantCount, tt.wantPages)
			}
		})
	}
	_, err := e.snapshots.ListSnapshots(ctx, &pb.ListSnapshotsRequest{PageToken: "vol-x"})
	wantCode(t, err, codes.Aborted, "vol-x")
}
