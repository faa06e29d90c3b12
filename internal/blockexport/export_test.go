package blockexport

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowage-io/stowage/internal/testutil/logbuf"
	"github.com/stowage-io/stowage/pkg/nbd"
)

type env struct {
	ex    *Exporter
	addr  string
	image string
	logs  *logbuf.Buffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	image := filepath.Join(t.TempDir(), "vol-1.img")
	if err := os.WriteFile(image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(image, 64<<20); err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	ex := New(slog.New(slog.NewTextHandler(logs, nil)))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ex.Serve(l)
	t.Cleanup(func() { ex.Close() })
	return &env{ex: ex, addr: l.Addr().String(), image: image, logs: logs}
}

func (e *env) attachment(id string, gen uint64, secret string) Attachment {
	return Attachment{ID: id, VolumeID: "vol-1", ImagePath: e.image, Generation: gen, Secret: secret}
}

func (e *env) dial(t *testing.T, id string, gen uint64, secret string) (*nbd.Client, error) {
	t.Helper()
	c, err := nbd.Dial(context.Background(), nbd.ClientOptions{Addr: e.addr, Export: id, Connections: 2, Reconnect: true,
		Auth: &nbd.Auth{Export: id, Generation: gen, Secret: []byte(secret)}})
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func TestExport_NewerGeneration_FencesOlderClient(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s1, s2 := NewSecret(), NewSecret()
	if err := e.ex.Export(ctx, e.attachment("att-1", 1, s1)); err != nil {
		t.Fatal(err)
	}
	old, err := e.dial(t, "att-1", 1, s1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.WriteAt(bytes.Repeat([]byte("1"), 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := e.ex.Export(ctx, e.attachment("att-2", 2, s2)); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := old.WriteAt(bytes.Repeat([]byte("X"), 4096), int64(i)*4096); err == nil {
			t.Fatalf("write %d of the fenced generation succeeded", i)
		}
	}
	if err := old.Flush(); err == nil {
		t.Fatal("flush of the fenced generation succeeded")
	}
	img, _ := os.ReadFile(e.image)
	if bytes.Contains(img[:3*4096], []byte("X")) {
		t.Fatal("a fenced write reached the image")
	}
	if _, err := e.dial(t, "att-1", 1, s1); !errors.Is(err, nbd.ErrRefused) {
		t.Fatalf("reconnect of the fenced attachment: %v, want ErrRefused", err)
	}
	cur, err := e.dial(t, "att-2", 2, s2)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := cur.ReadAt(got, 0); err != nil || got[0] != '1' {
		t.Fatalf("new generation reads %q, %v", got[:1], err)
	}
	if err := e.ex.Export(ctx, e.attachment("att-1", 1, s1)); !errors.Is(err, ErrStaleGeneration) {
		t.Fatalf("re-export of the fenced attachment: %v, want ErrStaleGeneration", err)
	}
	if err := e.ex.Export(ctx, e.attachment("att-3", 1, NewSecret())); !errors.Is(err, ErrStaleGeneration) {
		t.Fatalf("export at an older generation: %v, want ErrStaleGeneration", err)
	}
	if !strings.Contains(e.logs.String(), "attachment fenced") {
		t.Fatalf("fencing not logged:\n%s", e.logs)
	}
}

func TestExport_FenceWhileWriting_NoOldWriteAfterExportReturns(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s1 := NewSecret()
	if err := e.ex.Export(ctx, e.attachment("att-1", 1, s1)); err != nil {
		t.Fatal(err)
	}
	old, err := e.dial(t, "att-1", 1, s1)
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if _, err := old.WriteAt(bytes.Repeat([]byte("O"), 4096), int64(w)*4096); err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	if err := e.ex.Export(ctx, e.attachment("att-2", 2, NewSecret())); err != nil {
		t.Fatal(err)
	}
	// Overwrite with the new generation's data straight in the image: any
	// old write still landing would show up as "O".
	f, _ := os.OpenFile(e.image, os.O_RDWR, 0)
	f.WriteAt(bytes.Repeat([]byte("N"), 16*4096), 0)
	f.Close()
	time.Sleep(100 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	img, _ := os.ReadFile(e.image)
	if bytes.Contains(img[:16*4096], []byte("O")) {
		t.Fatal("a write of the fenced generation landed after the fence returned")
	}
}

func TestAuthenticate_WrongSecretOrGeneration_RefusedAndLoggedWithoutSecret(t *testing.T) {
	e := newEnv(t)
	secret := NewSecret()
	if err := e.ex.Export(context.Background(), e.attachment("att-1", 3, secret)); err != nil {
		t.Fatal(err)
	}
	const wrong = "not-the-secret-value"
	for _, tc := range []struct {
		name   string
		gen    uint64
		secret string
	}{{"wrong secret", 3, wrong}, {"wrong generation", 2, secret}} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.dial(t, "att-1", tc.gen, tc.secret); !errors.Is(err, nbd.ErrRefused) {
				t.Fatalf("err %v, want ErrRefused", err)
			}
		})
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "nbd client refused") || !strings.Contains(logs, "attachment=att-1") {
		t.Fatalf("refusal not logged with the attachment id:\n%s", logs)
	}
	if strings.Contains(logs, wrong) || strings.Contains(logs, secret) {
		t.Fatalf("a secret is in the log:\n%s", logs)
	}
	// Without OptAuth at all.
	_, err := nbd.Dial(context.Background(), nbd.ClientOptions{Addr: e.addr, Export: "att-1", Connections: 1})
	if !errors.Is(err, nbd.ErrRefused) {
		t.Fatalf("open without a secret: %v, want ErrRefused", err)
	}
}

func TestExport_SameAttachmentAgain_IdempotentOtherSecretExists(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := e.attachment("att-1", 1, NewSecret())
	for range 2 {
		if err := e.ex.Export(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	a.Limits = Limits{IOPS: 100}
	if err := e.ex.Export(ctx, a); err != nil {
		t.Fatalf("new limits: %v", err)
	}
	b := a
	b.Secret = NewSecret()
	if err := e.ex.Export(ctx, b); !errors.Is(err, ErrExists) {
		t.Fatalf("other secret: %v, want ErrExists", err)
	}
	if err := e.ex.Export(ctx, Attachment{ID: "x"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("incomplete: %v, want ErrInvalid", err)
	}
	if err := e.ex.Unexport(ctx, "att-1"); err != nil {
		t.Fatal(err)
	}
	if err := e.ex.Unexport(ctx, "att-1"); err != nil {
		t.Fatal(err)
	}
}

// measure runs workers requests of size bytes for d and returns the
// achieved IOPS and bytes per second.
func measure(t *testing.T, c *nbd.Client, size, workers int, d time.Duration) (float64, float64) {
	var n atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			for i := 0; time.Now().Before(deadline); i++ {
				if _, err := c.WriteAt(buf, int64((w*64+i%64)*size)%(32<<20)); err != nil {
					t.Error(err)
					return
				}
				n.Add(1)
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	s := time.Since(start).Seconds()
	return float64(n.Load()) / s, float64(n.Load()) * float64(size) / s
}

func TestLimits_IOPSAndThroughput_EnforcedInTheServer(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		limits Limits
		size   int
		check  func(iops, bps float64) (float64, float64) // measured, limit
	}{
		{"iops", Limits{IOPS: 500}, 4096, func(iops, _ float64) (float64, float64) { return iops, 500 }},
		{"throughput", Limits{BytesPerSecond: 16 << 20}, 1 << 20, func(_, bps float64) (float64, float64) { return bps, 16 << 20 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			secret := NewSecret()
			a := Attachment{ID: "att-" + tc.name, VolumeID: "vol-" + tc.name, ImagePath: e.image, Generation: 1, Secret: secret, Limits: tc.limits}
			if err := e.ex.Export(ctx, a); err != nil {
				t.Fatal(err)
			}
			c, err := e.dial(t, a.ID, 1, secret)
			if err != nil {
				t.Fatal(err)
			}
			iops, bps := measure(t, c, tc.size, 8, 1500*time.Millisecond)
			got, limit := tc.check(iops, bps)
			t.Logf("%s: measured %.0f, limit %.0f (%.2f×)", tc.name, got, limit, got/limit)
			if got > 1.15*limit || got < 0.7*limit {
				t.Fatalf("measured %.0f against a limit of %.0f", got, limit)
			}
		})
	}
}

func TestResize_ImageGrew_ClientsRefreshAndWriteAtTheNewEnd(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s := NewSecret()
	if err := e.ex.Export(ctx, e.attachment("att-1", 1, s)); err != nil {
		t.Fatal(err)
	}
	c, err := e.dial(t, "att-1", 1, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(e.image, 128<<20); err != nil {
		t.Fatal(err)
	}
	if got, err := c.RefreshSize(ctx); err != nil || got != 64<<20 {
		t.Fatalf("RefreshSize before Resize: %d %v, want the old size", got, err)
	}
	if err := e.ex.Resize(ctx, "vol-1"); err != nil {
		t.Fatal(err)
	}
	if err := e.ex.Resize(ctx, "vol-without-exports"); err != nil {
		t.Fatalf("Resize of a volume without exports: %v", err)
	}
	if !strings.Contains(e.logs.String(), "volume export grew") {
		t.Errorf("no log of the growth:\n%s", e.logs)
	}
	if got, err := c.RefreshSize(ctx); err != nil || got != 128<<20 {
		t.Fatalf("RefreshSize: %d %v, want %d", got, err, 128<<20)
	}
	end := bytes.Repeat([]byte("E"), 4096)
	if _, err := c.WriteAt(end, 128<<20-4096); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	img, _ := os.ReadFile(e.image)
	if !bytes.Equal(img[len(img)-4096:], end) {
		t.Fatal("the write at the new end is not in the image")
	}
	if err := os.Truncate(e.image, 64<<20); err != nil {
		t.Fatal(err)
	}
	if err := e.ex.Resize(ctx, "vol-1"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Resize after the image shrank: %v, want ErrInvalid", err)
	}
}

// A deleted volume's generation record goes with Forget, so the exporter
// does not keep one per volume it ever exported; a volume still exported
// keeps it, and its ended attachments stay refused either way.
func TestForget_DeletedVolumesRecordGoes_ExportedOneKept(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.ex.Export(ctx, e.attachment("vol-1.g1.node-a", 1, "s1")); err != nil {
		t.Fatal(err)
	}
	if err := e.ex.Export(ctx, e.attachment("vol-1.g2.node-b", 2, "s2")); err != nil {
		t.Fatal(err)
	}
	e.ex.Forget("vol-1")
	if n := e.ex.VolumesKnown(); n != 1 {
		t.Fatalf("after Forget of an exported volume the exporter knows %d volumes, want 1 (kept)", n)
	}
	if err := e.ex.Export(ctx, e.attachment("vol-1.g1.again", 1, "s3")); !errors.Is(err, ErrStaleGeneration) {
		t.Fatalf("export at generation 1 after generation 2, the volume still exported: %v, want ErrStaleGeneration", err)
	}
	if err := e.ex.Unexport(ctx, "vol-1.g2.node-b"); err != nil {
		t.Fatal(err)
	}
	e.ex.Forget("vol-1")
	if n := e.ex.VolumesKnown(); n != 0 {
		t.Fatalf("after the last export went and Forget, the exporter knows %d volumes, want 0", n)
	}
	for _, id := range []string{"vol-1.g1.node-a", "vol-1.g2.node-b"} {
		if _, err := e.dial(t, id, 1, "s1"); !errors.Is(err, nbd.ErrRefused) {
			t.Fatalf("dial ended attachment %s after Forget: %v, want refused", id, err)
		}
	}
}
