package handoff

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stowage-io/stowage/internal/testutil/logbuf"
)

// serve starts a handoff on a socket in a temp dir for this test's user
// (no root needed) and returns the socket and the server's log.
func serve(t *testing.T, open Opener, peerUID int) (string, *logbuf.Buffer) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "handoff.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	s := &Server{Open: open, PeerUID: peerUID, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(l) }()
	t.Cleanup(func() { l.Close(); <-done })
	return sock, logs
}

const secret = "the-attachment-secret"

func TestOpen_Authorized_ImageDescriptorArrivesReadableAndWritable(t *testing.T) {
	img := filepath.Join(t.TempDir(), "image")
	if err := os.WriteFile(img, []byte("image bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Channels, not variables: the race detector does not see the socket
	// order the opener's writes before the client's reads.
	askedC := make(chan Request, 1)
	sock, logs := serve(t, func(_ context.Context, r Request) (*os.File, bool, error) {
		askedC <- r
		f, err := os.OpenFile(img, os.O_RDWR, 0)
		return f, false, err
	}, os.Getuid())
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", fi.Mode(), err)
	}
	req := Request{VolumeID: "vol-1", NodeID: "node-a", Target: "lat-1", Secret: secret}
	f, ro, err := Open(context.Background(), sock, req)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if asked := <-askedC; asked != req || ro {
		t.Fatalf("server was asked %+v (read-only %t), want %+v", asked, ro, req)
	}
	b, err := io.ReadAll(f)
	if err != nil || string(b) != "image bytes" {
		t.Fatalf("read %q, %v from the handed descriptor", b, err)
	}
	if _, err := f.WriteAt([]byte("IMAGE"), 0); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(img); string(b) != "IMAGE bytes" {
		t.Fatalf("image now %q: the descriptor is not the image", b)
	}
	if strings.Contains(logs.String(), secret) {
		t.Fatal("the server logged the secret")
	}
}

func TestOpen_ReadOnlyAttachment_ReadOnlyDescriptor(t *testing.T) {
	img := filepath.Join(t.TempDir(), "image")
	os.WriteFile(img, []byte("x"), 0o600)
	sock, _ := serve(t, func(context.Context, Request) (*os.File, bool, error) {
		f, err := os.Open(img)
		return f, true, err
	}, os.Getuid())
	f, ro, err := Open(context.Background(), sock, Request{VolumeID: "vol-1", Target: "lat-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !ro {
		t.Error("not told read-only")
	}
	if _, err := f.WriteAt([]byte("y"), 0); err == nil {
		t.Error("wrote through a read-only attachment's descriptor")
	}
}

func TestOpen_Refusals_CodeAndMessageReachTheNode(t *testing.T) {
	t.Run("opener refuses", func(t *testing.T) {
		sock, logs := serve(t, func(context.Context, Request) (*os.File, bool, error) {
			return nil, false, status.Error(codes.PermissionDenied, "the secret is not this attachment's")
		}, os.Getuid())
		_, _, err := Open(context.Background(), sock, Request{VolumeID: "vol-1", NodeID: "node-a", Target: "lat-1", Secret: secret})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "not this attachment's") {
			t.Fatalf("Open = %v", err)
		}
		if !strings.Contains(logs.String(), "local handoff refused") || strings.Contains(logs.String(), secret) {
			t.Fatalf("log %q: want the refusal, without the secret", logs)
		}
	})
	t.Run("peer is not the node plugin's user", func(t *testing.T) {
		opened := make(chan bool, 1)
		sock, _ := serve(t, func(context.Context, Request) (*os.File, bool, error) { opened <- true; return nil, false, nil }, os.Getuid()+1)
		_, _, err := Open(context.Background(), sock, Request{VolumeID: "vol-1"})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "uid") || len(opened) > 0 {
			t.Fatalf("Open = %v (opener called: %t); want PermissionDenied naming the uid", err, len(opened) > 0)
		}
	})
	t.Run("nobody listens", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "none.sock")
		_, _, err := Open(context.Background(), sock, Request{})
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), sock) {
			t.Fatalf("Open = %v; want Unavailable naming the socket", err)
		}
	})
	t.Run("no socket configured", func(t *testing.T) {
		_, _, err := Open(context.Background(), "", Request{})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--local-handoff") {
			t.Fatalf("Open = %v; want FailedPrecondition naming the flag", err)
		}
	})
}
