package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/internal/testutil/loopfs"
	"github.com/stowage-io/stowage/pkg/loopdev"
)

const (
	MiB = int64(1) << 20
	GiB = int64(1) << 30
)

// fileSystems are the pool file systems under test and the clone mode each
// must get.
var fileSystems = []struct {
	fstype string
	mode   CloneMode
}{
	{"xfs", CloneReflink},
	{"ext4", CloneCopy},
	{"btrfs", CloneReflink},
}

// newPool opens a pool on a fresh file system of fstype; loopfs unmounts
// and detaches it in t.Cleanup.
func newPool(t *testing.T, fstype string) *Pool {
	t.Helper()
	mnt := loopfs.New(t, fstype, 2*GiB)
	p, err := Open(Config{Dir: filepath.Join(mnt, "pool"), Zone: "zone-a", Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOpen_CloneModeFollowsFileSystem(t *testing.T) {
	for _, fs := range fileSystems {
		t.Run(fs.fstype, func(t *testing.T) {
			p := newPool(t, fs.fstype)
			if got := p.CloneMode(); got != fs.mode {
				t.Fatalf("CloneMode on %s = %q, want %q", fs.fstype, got, fs.mode)
			}
			for _, d := range []string{volumesDir, snapshotsDir, tmpDir} {
				if fi, err := os.Stat(filepath.Join(p.Dir(), d)); err != nil || !fi.IsDir() {
					t.Fatalf("%s/%s: %v", p.Dir(), d, err)
				}
			}
			if entries, _ := os.ReadDir(filepath.Join(p.Dir(), tmpDir)); len(entries) != 0 {
				t.Fatalf("probe left %v in tmp", entries)
			}
			if p.Zone() != "zone-a" || p.Node() != "node-1" {
				t.Fatalf("Zone, Node = %q, %q", p.Zone(), p.Node())
			}
		})
	}
}

func TestOpen_RemovesLeftoversInTmp(t *testing.T) {
	p := newPool(t, "ext4")
	ctx := context.Background()
	if err := p.CreateImage(ctx, "kept", 64*MiB); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(p.Dir(), tmpDir)
	// What a crash mid-create leaves: a half-written temp image, and
	// whatever else a future version might stage there.
	if err := os.WriteFile(filepath.Join(tmp, "volume-half-123.img"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(tmp, "staging", "deep"), 0o750); err != nil {
		t.Fatal(err)
	}

	p2, err := Open(Config{Dir: p.Dir()})
	if err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Fatalf("Open left %d entries in tmp: %v", len(entries), entries)
	}
	if ids, err := p2.ListImages(); err != nil || !slices.Equal(ids, []string{"kept"}) {
		t.Fatalf("ListImages after reopen = %v, %v; want [kept]", ids, err)
	}
}

func TestOpen_EmptyDir_ErrInvalid(t *testing.T) {
	if _, err := Open(Config{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Open with no Dir = %v, want ErrInvalid", err)
	}
}

func TestValidateID(t *testing.T) {
	tests := []struct {
		id    string
		valid bool
	}{
		{"vol-0123abc", true},
		{"a", true},
		{strings.Repeat("a", maxIDLen), true},
		{"", false},
		{strings.Repeat("a", maxIDLen+1), false},
		{"Vol", false},
		{"a/b", false},
		{"..", false},
		{"../etc", false},
		{"a.img", false},
		{"-rf", false},
		{"a b", false},
		{"a\x00b", false},
	}
	p := &Pool{cfg: Config{Dir: "/pool"}}
	for _, tt := range tests {
		err := validateID(tt.id)
		if (err == nil) != tt.valid {
			t.Errorf("validateID(%q) = %v, want valid = %v", tt.id, err, tt.valid)
		}
		if !tt.valid {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("validateID(%q) = %v, want ErrInvalid", tt.id, err)
			}
			if got := p.ImagePath(tt.id); got != "" {
				t.Errorf("ImagePath(%q) = %q, want \"\"", tt.id, got)
			}
			if got := p.SnapshotPath(tt.id); got != "" {
				t.Errorf("SnapshotPath(%q) = %q, want \"\"", tt.id, got)
			}
		}
	}
	if got, want := p.ImagePath("v1"), "/pool/volumes/v1.img"; got != want {
		t.Errorf("ImagePath = %q, want %q", got, want)
	}
	if got, want := p.SnapshotPath("s1"), "/pool/snapshots/s1.img"; got != want {
		t.Errorf("SnapshotPath = %q, want %q", got, want)
	}
}

func TestCapacity_TracksWrittenData(t *testing.T) {
	p := newPool(t, "ext4")
	before, err := p.Capacity()
	if err != nil {
		t.Fatal(err)
	}
	if before.TotalBytes < GiB || before.FreeBytes <= 0 || before.FreeBytes > before.TotalBytes {
		t.Fatalf("Capacity of a 2 GiB file system = %+v", before)
	}
	if err := p.CreateImage(context.Background(), "vol", 256*MiB); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, p.ImagePath("vol"), 0, 64*MiB, 1)
	after, err := p.Capacity()
	if err != nil {
		t.Fatal(err)
	}
	if grew := after.UsedBytes - before.UsedBytes; grew < 60*MiB {
		t.Fatalf("Used grew by %d bytes after writing 64 MiB", grew)
	}
	if shrank := before.FreeBytes - after.FreeBytes; shrank < 60*MiB {
		t.Fatalf("Free shrank by %d bytes after writing 64 MiB", shrank)
	}
}

func TestConcurrentCreateImage_SameID_OneImage(t *testing.T) {
	p := newPool(t, "xfs")
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = p.CreateImage(context.Background(), "vol", GiB) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if ids, _ := p.ListImages(); !slices.Equal(ids, []string{"vol"}) {
		t.Fatalf("ListImages = %v, want [vol]", ids)
	}
	if entries, _ := os.ReadDir(filepath.Join(p.Dir(), tmpDir)); len(entries) != 0 {
		t.Fatalf("tmp holds %v", entries)
	}
}

// writeRandom writes n pseudo-random bytes (from seed) at off and syncs.
func writeRandom(t testing.TB, path string, off, n int64, seed uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(randomBytes(n, seed), off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(n int64, seed uint64) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

// contentHash is a checksum of a file's contents that ignores how they are
// stored and trailing zeros: it covers every non-zero 4 KiB block with its
// offset (sizes are compared separately), reading only the data regions SEEK_DATA reports, so two sparse
// 10 GiB images compare in the time it takes to read their data.
func contentHash(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	const block = 4096
	zero := make([]byte, block)
	buf := make([]byte, 1<<20)
	fd := int(f.Fd())
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		// Blocks, not bytes, are the unit: align down so both files hash
		// the same blocks whatever their extent boundaries.
		for pos := data &^ (block - 1); pos < hole; pos += int64(len(buf)) {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if err != nil && n == 0 {
				t.Fatal(err)
			}
			for i := 0; i < n; i += block {
				b := buf[i:min(i+block, n)]
				if !bytes.Equal(b, zero[:len(b)]) {
					_ = binary.Write(h, binary.LittleEndian, pos+int64(i))
					h.Write(b)
				}
			}
		}
		off = hole
	}
	return hex.EncodeToString(h.Sum(nil))
}

// allocatedBytes is how much disk a file really uses.
func allocatedBytes(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// A volume's sector size must not change once its image shares extents (a
// snapshot or clone on xfs), or a file system made before could no longer
// be mounted: source, snapshot and clone all attach with loopdev.BlockSize.
func TestAttach_SourceSnapshotAndClone_SameSectorSize(t *testing.T) {
	p := newPool(t, "xfs")
	ctx := context.Background()
	if err := p.CreateImage(ctx, "src", GiB); err != nil {
		t.Fatal(err)
	}
	if err := p.SnapshotImage(ctx, "src", "snap"); err != nil {
		t.Fatal(err)
	}
	if err := p.CloneImage(ctx, "clone", "src", GiB); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{p.ImagePath("src"), p.SnapshotPath("snap"), p.ImagePath("clone")} {
		dev, err := loopdev.Attach(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { loopdev.Detach(context.Background(), f) })
		b, err := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/queue/logical_block_size")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(b)); got != strconv.Itoa(loopdev.BlockSize) {
			t.Errorf("%s on %s: logical block size %s, want %d", filepath.Base(f), dev, got, loopdev.BlockSize)
		}
	}
}
