package agentapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/agent/v1"
	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/blockexport"
	"github.com/stowage-io/stowage/internal/server"
	"github.com/stowage-io/stowage/internal/testutil/logbuf"
	"github.com/stowage-io/stowage/pkg/nbd"
)

const (
	testToken = "agent-token-for-the-test-0123456789"
	mib       = int64(1 << 20)
)

// env is a real pool in a temporary directory behind a real agent API and
// NBD exporter on loopback, and a Client of it.
type env struct {
	pool    *agent.Pool
	client  *Client
	apiAddr string
	nbdAddr string
	logs    *logbuf.Buffer
	ex      *blockexport.Exporter
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pool, err := agent.Open(agent.Config{Dir: filepath.Join(t.TempDir(), "pool"), Zone: "zone-b", Node: "storage-1"})
	if err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	ex := blockexport.New(log)
	nl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ex.Serve(nl)
	t.Cleanup(func() { ex.Close() })

	al, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, al, NewServer("pool-b", pool, ex, nl.Addr().String()), testToken, log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	c, err := Dial(testCtx(t), ClientConfig{Name: "remote-b", Address: al.Addr().String(), Token: testToken, CallTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &env{pool: pool, client: c, apiAddr: al.Addr().String(), nbdAddr: nl.Addr().String(), logs: logs, ex: ex}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestClient_EveryPoolMethod_RoundTripsToTheAgentsPool(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	c := e.client
	if c.Zone() != "zone-b" || c.Node() != "storage-1" || c.CloneMode() != e.pool.CloneMode() {
		t.Fatalf("info: zone %q node %q mode %q; the pool's: zone-b storage-1 %q",
			c.Zone(), c.Node(), c.CloneMode(), e.pool.CloneMode())
	}
	if c.Address() != e.nbdAddr {
		t.Errorf("Address() = %q, want the NBD address %q", c.Address(), e.nbdAddr)
	}
	// No path crosses the agent API, and a remote pool is not one whose
	// images this process could open.
	if _, local := any(c).(server.LocalPool); local {
		t.Error("agentapi.Client is a server.LocalPool")
	}

	steps := []struct {
		name string
		do   func() error
	}{
		{"CreateImage", func() error { return c.CreateImage(ctx, "vol-1", 4*mib) }},
		{"CreateImage again", func() error { return c.CreateImage(ctx, "vol-1", 4*mib) }},
		{"ResizeImage", func() error { return c.ResizeImage(ctx, "vol-1", 8*mib) }},
		{"SnapshotImage", func() error { return c.SnapshotImage(ctx, "vol-1", "snap-1") }},
		{"CreateImageFromSnapshot", func() error { return c.CreateImageFromSnapshot(ctx, "vol-2", "snap-1", 16*mib) }},
		{"CloneImage", func() error { return c.CloneImage(ctx, "vol-3", "vol-1", 8*mib) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	for id, want := range map[string]int64{"vol-1": 8 * mib, "vol-2": 16 * mib, "vol-3": 8 * mib} {
		got, err := c.ImageSize(id)
		if err != nil || got != want {
			t.Errorf("ImageSize(%s) = %d, %v; want %d", id, got, err, want)
		}
		if local, _ := e.pool.ImageSize(id); local != want {
			t.Errorf("the pool's own size of %s is %d, want %d", id, local, want)
		}
	}
	if n, err := c.SnapshotSize("snap-1"); err != nil || n != 8*mib {
		t.Errorf("SnapshotSize(snap-1) = %d, %v; want %d", n, err, 8*mib)
	}
	if ids, err := c.ListImages(); err != nil || !slices.Equal(ids, []string{"vol-1", "vol-2", "vol-3"}) {
		t.Errorf("ListImages() = %v, %v", ids, err)
	}
	if ids, err := c.ListSnapshots(); err != nil || !slices.Equal(ids, []string{"snap-1"}) {
		t.Errorf("ListSnapshots() = %v, %v", ids, err)
	}
	got, err := c.Capacity()
	if err != nil || got.TotalBytes <= 0 || got.FreeBytes <= 0 || got.FreeBytes > got.TotalBytes {
		t.Errorf("Capacity() = %+v, %v", got, err)
	}
	if err := c.DeleteSnapshot(ctx, "snap-1"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"vol-1", "vol-2", "vol-3", "vol-404"} {
		if err := c.DeleteImage(ctx, id); err != nil {
			t.Fatalf("DeleteImage(%s): %v", id, err)
		}
	}
	if err := c.DeleteSnapshot(ctx, "snap-404"); err != nil {
		t.Fatalf("DeleteSnapshot of a missing snapshot: %v", err)
	}
	if ids, err := c.ListImages(); err != nil || ids == nil || len(ids) != 0 {
		t.Errorf("ListImages() after deletes = %#v, %v; want an empty list", ids, err)
	}
	if ids, err := e.pool.ListSnapshots(); err != nil || len(ids) != 0 {
		t.Errorf("the pool still has snapshots %v, %v", ids, err)
	}
}

func TestClient_SentinelErrors_SurviveTheWire(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	c := e.client
	if err := c.CreateImage(ctx, "vol-1", 4*mib); err != nil {
		t.Fatal(err)
	}
	secret := blockexport.NewSecret()
	if err := c.Export(ctx, server.BlockExport{AttachmentID: "att-2", VolumeID: "vol-1", Generation: 2, Secret: secret}); err != nil {
		t.Fatal(err)
	}
	size := func(f func(string) (int64, error), id string) func() error {
		return func() error { _, err := f(id); return err }
	}
	tests := []struct {
		name string
		call func() error
		want error
		says string // in the message
	}{
		{"size of a missing volume", size(c.ImageSize, "vol-404"), agent.ErrNotFound, "vol-404"},
		{"size of a missing snapshot", size(c.SnapshotSize, "snap-404"), agent.ErrNotFound, "snap-404"},
		{"snapshot of a missing volume", func() error { return c.SnapshotImage(ctx, "vol-404", "snap-1") }, agent.ErrNotFound, "vol-404"},
		{"clone of a missing volume", func() error { return c.CloneImage(ctx, "vol-2", "vol-404", 4*mib) }, agent.ErrNotFound, "vol-404"},
		{"same id other size", func() error { return c.CreateImage(ctx, "vol-1", 8*mib) }, agent.ErrExists, "vol-1"},
		{"bad id", func() error { return c.CreateImage(ctx, "Bad_ID", 4*mib) }, agent.ErrInvalid, "Bad_ID"},
		{"shrink", func() error { return c.ResizeImage(ctx, "vol-1", 1*mib) }, agent.ErrInvalid, "vol-1"},
		{"export at a lower generation", func() error {
			return c.Export(ctx, server.BlockExport{AttachmentID: "att-1", VolumeID: "vol-1", Generation: 1, Secret: blockexport.NewSecret()})
		}, blockexport.ErrStaleGeneration, "att-1"},
		{"same attachment other secret", func() error {
			return c.Export(ctx, server.BlockExport{AttachmentID: "att-2", VolumeID: "vol-1", Generation: 2, Secret: blockexport.NewSecret()})
		}, blockexport.ErrExists, "att-2"},
		{"export without a secret", func() error {
			return c.Export(ctx, server.BlockExport{AttachmentID: "att-3", VolumeID: "vol-1", Generation: 3})
		}, blockexport.ErrInvalid, "att-3"},
		{"export without a volume", func() error {
			return c.Export(ctx, server.BlockExport{AttachmentID: "att-4", Generation: 3, Secret: secret})
		}, blockexport.ErrInvalid, "att-4"},
		{"export of a missing image", func() error {
			return c.Export(ctx, server.BlockExport{AttachmentID: "att-5", VolumeID: "vol-404", Generation: 1, Secret: secret})
		}, agent.ErrNotFound, "vol-404"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want errors.Is %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.says) || !strings.Contains(err.Error(), "agent remote-b") {
				t.Errorf("message %q does not name %q and the agent", err, tt.says)
			}
		})
	}
}

// A full pool cannot be made without root (a small file system); the
// mapping is the same code either way.
func TestErrorMapping_EverySentinel_ComesBackAsItself(t *testing.T) {
	c := &Client{name: "remote-b", address: "127.0.0.1:1"}
	full := fmt.Errorf("create volume vol-1: write: %w", &os.PathError{Op: "write", Path: "/pool/tmp/x", Err: unix.ENOSPC})
	for _, table := range [][]sentinel{poolErrors, exportErrors} {
		for _, s := range table {
			in := fmt.Errorf("volume vol-1: %w", s.err)
			if s.err == agent.ErrNoSpace {
				in = full
			}
			out := c.fromStatus(toStatus(in, table), table)
			if !errors.Is(out, s.err) || !strings.Contains(out.Error(), in.Error()) {
				t.Errorf("%v through the wire = %v, want errors.Is %v with the message", in, out, s.err)
			}
		}
	}
	if out := c.fromStatus(toStatus(errors.New("disk on fire"), poolErrors), poolErrors); status.Code(out) != codes.Internal {
		t.Errorf("an unknown error came back as %v, want INTERNAL", out)
	}
}

func TestAgentAPI_WrongOrMissingToken_Unauthenticated(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	for _, tc := range []struct {
		name  string
		token string
		says  string
	}{
		{"no token", "", "no authorization metadata"},
		{"wrong token", "not-the-agent-token", "not this agent's token"},
		{"the token with one byte more", testToken + "x", "not this agent's token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
			if tc.token != "" {
				opts = append(opts, grpc.WithPerRPCCredentials(auth.TokenCredentials{Token: tc.token}))
			}
			conn, err := grpc.NewClient(e.apiAddr, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			api := pb.NewAgentServiceClient(conn)
			_, err = api.DeleteImage(ctx, &pb.DeleteImageRequest{VolumeId: "vol-1"})
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err = %v, want UNAUTHENTICATED saying %q", err, tc.says)
			}
			if tc.token != "" {
				if _, err := Dial(ctx, ClientConfig{Name: "remote-b", Address: e.apiAddr, Token: tc.token}); status.Code(errors.Unwrap(err)) != codes.Unauthenticated ||
					!strings.Contains(err.Error(), "remote-b") || !strings.Contains(err.Error(), e.apiAddr) {
					t.Fatalf("Dial with a wrong token: %v, want UNAUTHENTICATED naming the agent and address", err)
				}
			}
		})
	}
	if _, err := Dial(ctx, ClientConfig{Name: "remote-b", Address: e.apiAddr}); err == nil {
		t.Fatal("Dial without a token succeeded")
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "agent API call refused") {
		t.Errorf("refusals not logged:\n%s", logs)
	}
	if strings.Contains(logs, "not-the-agent-token") || strings.Contains(logs, testToken) {
		t.Errorf("a token is in the log:\n%s", logs)
	}
}

func TestDial_AgentNotListening_ErrorNamesAgentAndAddress(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = Dial(testCtx(t), ClientConfig{Name: "remote-x", Address: addr, Token: testToken, CallTimeout: 500 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "remote-x") || !strings.Contains(err.Error(), addr) {
		t.Fatalf("err = %v, want one naming agent remote-x and %s", err, addr)
	}
}

func (e *env) nbdDial(t *testing.T, id string, gen uint64, secret string) (*nbd.Client, error) {
	t.Helper()
	c, err := nbd.Dial(context.Background(), nbd.ClientOptions{Addr: e.client.Address(), Export: id, Connections: 1,
		Auth: &nbd.Auth{Export: id, Generation: gen, Secret: []byte(secret)}})
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func TestExport_OverTheAPI_NBDClientReadsAndWritesTheImage(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	if err := e.client.CreateImage(ctx, "vol-1", 4*mib); err != nil {
		t.Fatal(err)
	}
	written := bytes.Repeat([]byte("stowage!"), 512)
	f, err := os.OpenFile(e.pool.ImagePath("vol-1"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(written, mib); err != nil {
		t.Fatal(err)
	}
	f.Close()
	secret := blockexport.NewSecret()
	att := server.BlockExport{AttachmentID: "att-1", VolumeID: "vol-1", Generation: 1, Secret: secret, IOPS: 1000}
	for range 2 {
		if err := e.client.Export(ctx, att); err != nil {
			t.Fatal(err)
		}
	}
	nc, err := e.nbdDial(t, "att-1", 1, secret)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(written))
	if _, err := nc.ReadAt(got, mib); err != nil || !bytes.Equal(got, written) {
		t.Fatalf("NBD read %q..., %v; want what was written in the image", got[:16], err)
	}
	if _, err := nc.WriteAt([]byte("over-nbd"), 0); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	img, _ := os.ReadFile(e.pool.ImagePath("vol-1"))
	if !bytes.HasPrefix(img, []byte("over-nbd")) {
		t.Fatalf("the NBD write is not in the image: %q", img[:8])
	}
	if _, err := e.nbdDial(t, "att-1", 1, "not-the-secret"); !errors.Is(err, nbd.ErrRefused) {
		t.Fatalf("open with a wrong secret: %v, want ErrRefused", err)
	}
	if strings.Contains(e.logs.String(), secret) {
		t.Fatal("the attachment secret is in the agent's log")
	}
	if err := e.client.Unexport(ctx, "att-1"); err != nil {
		t.Fatal(err)
	}
	if err := e.client.Unexport(ctx, "att-1"); err != nil {
		t.Fatalf("Unexport of a missing export: %v", err)
	}
	if _, err := nc.ReadAt(got, 0); err == nil {
		t.Fatal("read after Unexport succeeded")
	}
}

func TestExport_HigherGenerationOverTheAPI_FencesTheLower(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	if err := e.client.CreateImage(ctx, "vol-1", 4*mib); err != nil {
		t.Fatal(err)
	}
	s1, s2 := blockexport.NewSecret(), blockexport.NewSecret()
	if err := e.client.Export(ctx, server.BlockExport{AttachmentID: "att-1", VolumeID: "vol-1", Generation: 1, Secret: s1}); err != nil {
		t.Fatal(err)
	}
	old, err := e.nbdDial(t, "att-1", 1, s1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.WriteAt(bytes.Repeat([]byte("1"), 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := e.client.Export(ctx, server.BlockExport{AttachmentID: "att-2", VolumeID: "vol-1", Generation: 2, Secret: s2}); err != nil {
		t.Fatal(err)
	}
	if _, err := old.WriteAt(bytes.Repeat([]byte("X"), 4096), 0); err == nil {
		t.Fatal("a write of the fenced generation succeeded")
	}
	if _, err := e.nbdDial(t, "att-1", 1, s1); !errors.Is(err, nbd.ErrRefused) {
		t.Fatalf("reconnect of the fenced attachment: %v, want ErrRefused", err)
	}
	cur, err := e.nbdDial(t, "att-2", 2, s2)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := cur.ReadAt(got, 0); err != nil || !bytes.Equal(got, bytes.Repeat([]byte("1"), 4096)) {
		t.Fatalf("the new generation reads %q..., %v; want the old generation's last write", got[:4], err)
	}
	if err := e.client.Export(ctx, server.BlockExport{AttachmentID: "att-1", VolumeID: "vol-1", Generation: 1, Secret: s1}); !errors.Is(err, blockexport.ErrStaleGeneration) {
		t.Fatalf("re-export of the fenced attachment: %v, want ErrStaleGeneration", err)
	}
}
