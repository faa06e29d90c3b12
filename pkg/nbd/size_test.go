package nbd

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// TestExport_SizeGrows_NewOpensAndOpenConnectionsSeeIt grows an export
// with a SizeFunc: a connection opened before is allowed to its new end,
// a new open is told the new size, and a client learns it with
// RefreshSize.
func TestExport_SizeGrows_NewOpensAndOpenConnectionsSeeIt(t *testing.T) {
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "img"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const small, large = 1 << 20, 4 << 20
	f.Truncate(small)
	var size atomic.Int64
	size.Store(small)
	exp := &Export{Name: "vol", SizeFunc: size.Load, Backend: FileBackend{F: f}}
	srv := &Server{Lookup: func(context.Context, string, *Auth) (*Export, error) { return exp, nil }}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	ctx := context.Background()

	// A raw connection: no client-side bounds check, so the server's is
	// what answers.
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	info, err := Handshake(ctx, nc, "vol", nil)
	if err != nil || info.Size != small {
		t.Fatalf("handshake: %+v %v, want size %d", info, err, small)
	}
	raw := NewConn(nc, info)
	defer raw.Close()
	c, err := Dial(ctx, ClientOptions{Addr: l.Addr().String(), Export: "vol", Connections: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := []byte("at the new end")
	off := int64(large - len(data))
	if err := raw.Do(CmdWrite, 0, uint64(off), uint32(len(data)), data, nil); !errors.Is(err, EINVAL) {
		t.Fatalf("write beyond the size before growing: %v, want EINVAL", err)
	}

	f.Truncate(large)
	size.Store(large)
	if err := raw.Do(CmdWrite, 0, uint64(off), uint32(len(data)), data, nil); err != nil {
		t.Fatalf("write at the new end on a connection opened before: %v", err)
	}
	if _, err := c.WriteAt(data, off); !errors.Is(err, EINVAL) {
		t.Fatalf("client write beyond the size it knows: %v, want EINVAL", err)
	}
	if got, err := c.RefreshSize(ctx); err != nil || got != large || c.Size() != large || c.Info().Size != large {
		t.Fatalf("RefreshSize: %d %v (Size %d), want %d", got, err, c.Size(), large)
	}
	if _, err := c.WriteAt(data, off); err != nil {
		t.Fatalf("client write at the new end after RefreshSize: %v", err)
	}
	got := make([]byte, len(data))
	if _, err := c.ReadAt(got, off); err != nil || string(got) != string(data) {
		t.Fatalf("read back %q %v", got, err)
	}
	c2, err := Dial(ctx, ClientOptions{Addr: l.Addr().String(), Export: "vol", Connections: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c2.Size() != large {
		t.Fatalf("new open sees %d, want %d", c2.Size(), large)
	}

	size.Store(small)
	if _, err := c.RefreshSize(ctx); err == nil {
		t.Fatal("RefreshSize of an export that shrank succeeded")
	}
}
