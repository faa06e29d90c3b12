package agent

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/pkg/loopdev"
)

func TestCreateImage(t *testing.T) {
	p := newPool(t, "ext4")
	// Steps run in order against one pool; each name says what that step
	// must do given the ones before it.
	steps := []struct {
		name    string
		id      string
		size    int64
		wantErr error
	}{
		{"New_CreatesSparseImage", "vol-1", 10 * GiB, nil},
		{"SameSizeAgain_Idempotent", "vol-1", 10 * GiB, nil},
		{"DifferentSize_ErrExists", "vol-1", 20 * GiB, ErrExists},
		{"InvalidID_ErrInvalid", "Vol/1", GiB, ErrInvalid},
		{"ZeroSize_ErrInvalid", "vol-2", 0, ErrInvalid},
		{"NegativeSize_ErrInvalid", "vol-2", -GiB, ErrInvalid},
		{"PartialSector_ErrInvalid", "vol-2", GiB + 100, ErrInvalid},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			err := p.CreateImage(context.Background(), s.id, s.size)
			if !errors.Is(err, s.wantErr) {
				t.Fatalf("CreateImage(%q, %d) = %v, want %v", s.id, s.size, err, s.wantErr)
			}
		})
	}
	if size, err := p.ImageSize("vol-1"); err != nil || size != 10*GiB {
		t.Fatalf("ImageSize(vol-1) = %d, %v; want %d", size, err, 10*GiB)
	}
	if got := allocatedBytes(t, p.ImagePath("vol-1")); got != 0 {
		t.Fatalf("new 10 GiB image allocates %d bytes, want 0 (sparse)", got)
	}
	if _, err := p.ImageSize("vol-2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ImageSize(vol-2) = %v, want ErrNotFound", err)
	}
	if ids, _ := p.ListImages(); !slices.Equal(ids, []string{"vol-1"}) {
		t.Fatalf("ListImages = %v, want [vol-1]", ids)
	}
}

// TestSnapshotImage_TenGiBImage is the core promise: a snapshot is equal to
// its source, independent of it afterwards, and with reflink O(1).
func TestSnapshotImage_TenGiBImage(t *testing.T) {
	for _, fs := range fileSystems {
		t.Run(fs.fstype, func(t *testing.T) {
			p := newPool(t, fs.fstype)
			ctx := context.Background()
			if err := p.CreateImage(ctx, "vol", 10*GiB); err != nil {
				t.Fatal(err)
			}
			// 100 MiB of data as 100 scattered 1 MiB extents, like a
			// file system that has been used for a while.
			img := p.ImagePath("vol")
			f, err := os.OpenFile(img, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			for i := range int64(100) {
				if _, err := f.WriteAt(randomBytes(MiB, uint64(i)), i*100*MiB+4096*i); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			f.Close()
			before := contentHash(t, img)

			start := time.Now()
			if err := p.SnapshotImage(ctx, "vol", "snap"); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			t.Logf("snapshot of a 10 GiB image holding 100 MiB on %s (%s): %v", fs.fstype, p.CloneMode(), took)
			// O(1) is shown by what the snapshot is, not by a time limit
			// (a loaded machine makes any limit flaky): every extent that
			// holds data is shared with the image, so nothing was copied.
			if p.CloneMode() == CloneReflink {
				if unshared := unsharedExtents(t, p.SnapshotPath("snap")); len(unshared) > 0 {
					t.Errorf("reflink snapshot has %d extents not shared with its image (copied data): %v", len(unshared), unshared)
				}
			}

			snap := p.SnapshotPath("snap")
			if size, err := p.SnapshotSize("snap"); err != nil || size != 10*GiB {
				t.Fatalf("SnapshotSize = %d, %v; want %d", size, err, 10*GiB)
			}
			if got := contentHash(t, snap); got != before {
				t.Fatal("snapshot content differs from the image")
			}
			writeRandom(t, img, 50*MiB, MiB, 1000)
			if contentHash(t, img) == before {
				t.Fatal("write to the image did not change it")
			}
			if got := contentHash(t, snap); got != before {
				t.Fatal("writing to the image after the snapshot changed the snapshot")
			}
			if ids, _ := p.ListSnapshots(); !slices.Equal(ids, []string{"snap"}) {
				t.Fatalf("ListSnapshots = %v, want [snap]", ids)
			}
		})
	}
}

// TestSnapshotImage_AttachedImage snapshots an image while a loop device
// with direct I/O has it open and has just written to it, as a live volume.
func TestSnapshotImage_AttachedImage(t *testing.T) {
	for _, fs := range fileSystems {
		t.Run(fs.fstype, func(t *testing.T) {
			p := newPool(t, fs.fstype)
			ctx := context.Background()
			if err := p.CreateImage(ctx, "vol", GiB); err != nil {
				t.Fatal(err)
			}
			img := p.ImagePath("vol")
			// Registered after newPool, so it detaches before loopfs unmounts.
			t.Cleanup(func() {
				if err := loopdev.Detach(context.Background(), img); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			})
			dev, err := loopdev.Attach(ctx, img)
			if err != nil {
				t.Fatal(err)
			}
			data := randomBytes(8*MiB, 7)
			writeDirect(t, dev, 300*MiB, data)

			if err := p.SnapshotImage(ctx, "vol", "snap"); err != nil {
				t.Fatal(err)
			}
			snapHash := contentHash(t, p.SnapshotPath("snap"))
			if snapHash != contentHash(t, img) {
				t.Fatal("snapshot of the attached image differs from it")
			}
			got := make([]byte, len(data))
			sf, err := os.Open(p.SnapshotPath("snap"))
			if err != nil {
				t.Fatal(err)
			}
			defer sf.Close()
			if _, err := sf.ReadAt(got, 300*MiB); err != nil {
				t.Fatal(err)
			}
			if string(got) != string(data) {
				t.Fatal("snapshot lacks data written through the device just before it")
			}
			writeDirect(t, dev, 300*MiB, randomBytes(8*MiB, 8))
			if contentHash(t, p.SnapshotPath("snap")) != snapHash {
				t.Fatal("writing through the device after the snapshot changed the snapshot")
			}
		})
	}
}

func TestSnapshotImage_Idempotency(t *testing.T) {
	p := newPool(t, "xfs")
	ctx := context.Background()
	for _, id := range []string{"vol-a", "vol-b"} {
		if err := p.CreateImage(ctx, id, 64*MiB); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name         string
		volume, snap string
		wantErr      error
	}{
		{"New_Created", "vol-a", "snap-1", nil},
		{"SameAgain_Idempotent", "vol-a", "snap-1", nil},
		{"SameIDOtherVolume_ErrExists", "vol-b", "snap-1", ErrExists},
		{"MissingVolume_ErrNotFound", "vol-missing", "snap-2", ErrNotFound},
		{"InvalidSnapshotID_ErrInvalid", "vol-a", "../snap", ErrInvalid},
		{"InvalidVolumeID_ErrInvalid", "vol.a", "snap-3", ErrInvalid},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			err := p.SnapshotImage(ctx, s.volume, s.snap)
			if !errors.Is(err, s.wantErr) {
				t.Fatalf("SnapshotImage(%q, %q) = %v, want %v", s.volume, s.snap, err, s.wantErr)
			}
		})
	}
	if ids, _ := p.ListSnapshots(); !slices.Equal(ids, []string{"snap-1"}) {
		t.Fatalf("ListSnapshots = %v, want [snap-1]", ids)
	}
	if entries, _ := os.ReadDir(filepath.Join(p.Dir(), tmpDir)); len(entries) != 0 {
		t.Fatalf("failed snapshots left %v in tmp", entries)
	}
}

func TestCreateImageFromSnapshot(t *testing.T) {
	for _, fs := range fileSystems {
		t.Run(fs.fstype, func(t *testing.T) {
			p := newPool(t, fs.fstype)
			ctx := context.Background()
			const srcSize = 256 * MiB
			if err := p.CreateImage(ctx, "src", srcSize); err != nil {
				t.Fatal(err)
			}
			writeRandom(t, p.ImagePath("src"), 10*MiB, 4*MiB, 1)
			if err := p.SnapshotImage(ctx, "src", "snap"); err != nil {
				t.Fatal(err)
			}
			if err := p.CreateImage(ctx, "blank", srcSize); err != nil {
				t.Fatal(err)
			}
			want := contentHash(t, p.SnapshotPath("snap"))

			steps := []struct {
				name     string
				volume   string
				snapshot string
				size     int64
				wantErr  error
			}{
				{"SameSize_Created", "same", "snap", srcSize, nil},
				{"Larger_CreatedAndGrown", "big", "snap", 4 * srcSize, nil},
				{"SameAgain_Idempotent", "big", "snap", 4 * srcSize, nil},
				{"SameIDDifferentSize_ErrExists", "big", "snap", 2 * srcSize, ErrExists},
				{"ExistingBlankImage_ErrExists", "blank", "snap", srcSize, ErrExists},
				{"Smaller_ErrInvalid", "small", "snap", srcSize / 2, ErrInvalid},
				{"MissingSnapshot_ErrNotFound", "orphan", "missing", srcSize, ErrNotFound},
				{"InvalidSnapshotID_ErrInvalid", "bad", "a/b", srcSize, ErrInvalid},
			}
			for _, s := range steps {
				t.Run(s.name, func(t *testing.T) {
					err := p.CreateImageFromSnapshot(ctx, s.volume, s.snapshot, s.size)
					if !errors.Is(err, s.wantErr) {
						t.Fatalf("CreateImageFromSnapshot(%q, %q, %d) = %v, want %v", s.volume, s.snapshot, s.size, err, s.wantErr)
					}
					if err != nil {
						return
					}
					if got, _ := p.ImageSize(s.volume); got != s.size {
						t.Fatalf("ImageSize(%s) = %d, want %d", s.volume, got, s.size)
					}
					if contentHash(t, p.ImagePath(s.volume)) != want {
						t.Fatalf("%s's content differs from the snapshot", s.volume)
					}
				})
			}
			if ids, _ := p.ListImages(); !slices.Equal(ids, []string{"big", "blank", "same", "src"}) {
				t.Fatalf("ListImages = %v", ids)
			}

			// The new volume and the snapshot are independent both ways.
			writeRandom(t, p.ImagePath("same"), 10*MiB, MiB, 2)
			if contentHash(t, p.SnapshotPath("snap")) != want {
				t.Fatal("writing to a volume changed the snapshot it came from")
			}
			if err := p.DeleteSnapshot(ctx, "snap"); err != nil {
				t.Fatal(err)
			}
			if contentHash(t, p.ImagePath("big")) != want {
				t.Fatal("deleting the snapshot changed a volume made from it")
			}
		})
	}
}

func TestCloneImage(t *testing.T) {
	for _, fs := range fileSystems {
		t.Run(fs.fstype, func(t *testing.T) {
			p := newPool(t, fs.fstype)
			ctx := context.Background()
			const srcSize = 256 * MiB
			if err := p.CreateImage(ctx, "src", srcSize); err != nil {
				t.Fatal(err)
			}
			writeRandom(t, p.ImagePath("src"), 0, 4*MiB, 1)
			want := contentHash(t, p.ImagePath("src"))

			steps := []struct {
				name    string
				volume  string
				source  string
				size    int64
				wantErr error
			}{
				{"SameSize_Created", "clone", "src", srcSize, nil},
				{"SameAgain_Idempotent", "clone", "src", srcSize, nil},
				{"SameIDOtherSource_ErrExists", "clone", "other", srcSize, ErrExists},
				{"Larger_CreatedAndGrown", "big", "src", 2 * srcSize, nil},
				{"Smaller_ErrInvalid", "small", "src", srcSize - 512, ErrInvalid},
				{"MissingSource_ErrNotFound", "orphan", "missing", srcSize, ErrNotFound},
			}
			for _, s := range steps {
				t.Run(s.name, func(t *testing.T) {
					err := p.CloneImage(ctx, s.volume, s.source, s.size)
					if !errors.Is(err, s.wantErr) {
						t.Fatalf("CloneImage(%q, %q, %d) = %v, want %v", s.volume, s.source, s.size, err, s.wantErr)
					}
					if err != nil {
						return
					}
					if got, _ := p.ImageSize(s.volume); got != s.size {
						t.Fatalf("ImageSize(%s) = %d, want %d", s.volume, got, s.size)
					}
					if contentHash(t, p.ImagePath(s.volume)) != want {
						t.Fatalf("%s's content differs from its source", s.volume)
					}
				})
			}

			writeRandom(t, p.ImagePath("clone"), 0, MiB, 2)
			if contentHash(t, p.ImagePath("src")) != want {
				t.Fatal("writing to the clone changed its source")
			}
			writeRandom(t, p.ImagePath("src"), 0, MiB, 3)
			if contentHash(t, p.ImagePath("big")) != want {
				t.Fatal("writing to the source changed a clone")
			}
		})
	}
}

// TestSparseCopy_PreservesHoles: a mostly empty image must copy in time and
// space proportional to its data, in both clone modes.
func TestSparseCopy_PreservesHoles(t *testing.T) {
	tests := []struct {
		name   string
		fstype string
		mode   CloneMode // forced, to test copy on a reflink file system too
	}{
		{"ext4_copy", "ext4", CloneCopy},
		{"xfs_copy", "xfs", CloneCopy},
		{"xfs_reflink", "xfs", CloneReflink},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPool(t, tt.fstype)
			p.mode = tt.mode
			ctx := context.Background()
			if err := p.CreateImage(ctx, "src", GiB); err != nil {
				t.Fatal(err)
			}
			// 4 MiB of data: the first and last MiB and two in between.
			for i, off := range []int64{0, 300 * MiB, 700 * MiB, GiB - MiB} {
				writeRandom(t, p.ImagePath("src"), off, MiB, uint64(i))
			}
			start := time.Now()
			if err := p.CloneImage(ctx, "copy", "src", GiB); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			alloc := allocatedBytes(t, p.ImagePath("copy"))
			t.Logf("clone of a 1 GiB image holding 4 MiB (%s): %v, %d KiB allocated", tt.mode, took, alloc>>10)
			// The allocation, not a time limit, shows that only data was
			// copied (a time limit breaks on a loaded machine).
			if alloc < 4*MiB || alloc > 5*MiB {
				t.Errorf("clone allocates %d bytes, want about 4 MiB", alloc)
			}
			if contentHash(t, p.ImagePath("copy")) != contentHash(t, p.ImagePath("src")) {
				t.Fatal("clone content differs from the source")
			}
		})
	}
}

func TestCloneImage_Canceled_LeavesNothing(t *testing.T) {
	p := newPool(t, "ext4")
	if err := p.CreateImage(context.Background(), "src", 256*MiB); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, p.ImagePath("src"), 0, 64*MiB, 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.CloneImage(ctx, "clone", "src", 256*MiB); !errors.Is(err, context.Canceled) {
		t.Fatalf("CloneImage with a canceled context = %v, want context.Canceled", err)
	}
	if _, err := p.ImageSize("clone"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("canceled clone: ImageSize = %v, want ErrNotFound", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(p.Dir(), tmpDir)); len(entries) != 0 {
		t.Fatalf("canceled clone left %v in tmp", entries)
	}
}

func TestResizeImage(t *testing.T) {
	p := newPool(t, "xfs")
	ctx := context.Background()
	if err := p.CreateImage(ctx, "vol", GiB); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, p.ImagePath("vol"), 0, MiB, 1)
	want := contentHash(t, p.ImagePath("vol"))
	steps := []struct {
		name     string
		id       string
		size     int64
		wantErr  error
		wantSize int64
	}{
		{"Grow_Grown", "vol", 2 * GiB, nil, 2 * GiB},
		{"SameSize_Idempotent", "vol", 2 * GiB, nil, 2 * GiB},
		{"Shrink_ErrInvalid", "vol", GiB, ErrInvalid, 2 * GiB},
		{"PartialSector_ErrInvalid", "vol", 3*GiB + 1, ErrInvalid, 2 * GiB},
		{"Missing_ErrNotFound", "missing", GiB, ErrNotFound, 0},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			err := p.ResizeImage(ctx, s.id, s.size)
			if !errors.Is(err, s.wantErr) {
				t.Fatalf("ResizeImage(%q, %d) = %v, want %v", s.id, s.size, err, s.wantErr)
			}
			if s.wantSize == 0 {
				return
			}
			if got, _ := p.ImageSize(s.id); got != s.wantSize {
				t.Fatalf("ImageSize(%s) = %d, want %d", s.id, got, s.wantSize)
			}
		})
	}
	if contentHash(t, p.ImagePath("vol")) != want {
		t.Fatal("resize changed the image's data")
	}
}

// TestResizeImage_AttachedRefresh checks the grow path end to end: the loop
// device sees the new size after loopdev.Refresh.
func TestResizeImage_AttachedRefresh(t *testing.T) {
	p := newPool(t, "xfs")
	ctx := context.Background()
	if err := p.CreateImage(ctx, "vol", GiB); err != nil {
		t.Fatal(err)
	}
	img := p.ImagePath("vol")
	t.Cleanup(func() {
		if err := loopdev.Detach(context.Background(), img); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	dev, err := loopdev.Attach(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ResizeImage(ctx, "vol", 3*GiB); err != nil {
		t.Fatal(err)
	}
	if got, err := loopdev.Refresh(dev); err != nil || got != 3*GiB {
		t.Fatalf("Refresh(%s) = %d, %v; want %d", dev, got, err, 3*GiB)
	}
}

func TestDelete(t *testing.T) {
	p := newPool(t, "ext4")
	ctx := context.Background()
	if err := p.CreateImage(ctx, "vol", 64*MiB); err != nil {
		t.Fatal(err)
	}
	if err := p.SnapshotImage(ctx, "vol", "snap"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		del     func() error
		wantErr error
	}{
		{"Image_Deleted", func() error { return p.DeleteImage(ctx, "vol") }, nil},
		{"ImageAgain_Idempotent", func() error { return p.DeleteImage(ctx, "vol") }, nil},
		{"MissingImage_Succeeds", func() error { return p.DeleteImage(ctx, "never") }, nil},
		{"InvalidImageID_ErrInvalid", func() error { return p.DeleteImage(ctx, "../tmp") }, ErrInvalid},
		{"Snapshot_Deleted", func() error { return p.DeleteSnapshot(ctx, "snap") }, nil},
		{"SnapshotAgain_Idempotent", func() error { return p.DeleteSnapshot(ctx, "snap") }, nil},
		{"InvalidSnapshotID_ErrInvalid", func() error { return p.DeleteSnapshot(ctx, "") }, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.del(); !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
	if _, err := p.ImageSize("vol"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ImageSize after delete = %v, want ErrNotFound", err)
	}
	if _, err := p.SnapshotSize("snap"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SnapshotSize after delete = %v, want ErrNotFound", err)
	}
	if imgs, snaps := mustList(t, p); len(imgs) != 0 || len(snaps) != 0 {
		t.Fatalf("after deletes: images %v, snapshots %v", imgs, snaps)
	}
}

func TestList_IgnoresForeignFiles(t *testing.T) {
	p := newPool(t, "ext4")
	if err := p.CreateImage(context.Background(), "vol", 64*MiB); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"README", "Upper.img", "vol.img.bak", ".hidden.img"} {
		if err := os.WriteFile(filepath.Join(p.Dir(), volumesDir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(p.Dir(), volumesDir, "dir.img"), 0o750); err != nil {
		t.Fatal(err)
	}
	if imgs, snaps := mustList(t, p); !slices.Equal(imgs, []string{"vol"}) || len(snaps) != 0 {
		t.Fatalf("ListImages = %v, ListSnapshots = %v; want [vol], []", imgs, snaps)
	}
}

func mustList(t *testing.T, p *Pool) (images, snapshots []string) {
	t.Helper()
	images, err := p.ListImages()
	if err != nil {
		t.Fatal(err)
	}
	snapshots, err = p.ListSnapshots()
	if err != nil {
		t.Fatal(err)
	}
	return images, snapshots
}

// writeDirect writes data at off through dev with O_DIRECT, as a guest file
// system on the volume would, so nothing sits in the device's page cache.
func writeDirect(t *testing.T, dev string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// O_DIRECT needs an aligned buffer; an anonymous mapping is page aligned.
	buf, err := unix.Mmap(-1, 0, len(data), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	copy(buf, data)
	if _, err := f.WriteAt(buf, off); err != nil {
		t.Fatalf("direct write to %s at %d: %v", dev, off, err)
	}
}

// unsharedExtents lists the extents of path that filefrag does not mark
// shared (reflinked).
func unsharedExtents(t *testing.T, path string) []string {
	t.Helper()
	out, err := exec.Command("filefrag", "-v", path).CombinedOutput()
	if err != nil {
		t.Fatalf("filefrag -v %s: %v\n%s", path, err, out)
	}
	var unshared []string
	extents := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasSuffix(f[0], ":") || f[0] == "ext:" {
			continue
		}
		if _, err := strconv.Atoi(strings.TrimSuffix(f[0], ":")); err != nil {
			continue
		}
		extents++
		if !strings.Contains(line, "shared") {
			unshared = append(unshared, strings.TrimSpace(line))
		}
	}
	if extents == 0 {
		t.Fatalf("filefrag -v %s shows no extents:\n%s", path, out)
	}
	return unshared
}
