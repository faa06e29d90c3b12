// Package apitest starts the real Stowage API server inside a test, with a
// KMS and a copy-mode pool in a temporary directory: enough for keys,
// secrets and parameters, and no root needed. Everything is stopped in
// t.Cleanup.
package apitest

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/csi"
	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/server"
	"github.com/stowage-io/stowage/internal/store/boltstore"
)

// Start runs the API server on a unix socket and returns its endpoint
// (unix:///…). opts are added to the gRPC server (e.g. an interceptor that
// records call metadata).
func Start(t testing.TB, opts ...grpc.ServerOption) string {
	t.Helper()
	// Not t.TempDir: a unix socket path must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "stwapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	st, err := boltstore.Open(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pool, err := agent.Open(agent.Config{Dir: filepath.Join(dir, "pool"), Zone: "zone-a", Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kms.Open(st, filepath.Join(dir, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Store: st, Pools: map[string]server.Pool{"pool-a": pool}, KMS: keys,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "unix://" + filepath.Join(dir, "api.sock")
	lis, err := csi.Listen(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(opts...)
	srv.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return endpoint
}

// Dial connects to endpoint.
func Dial(t testing.TB, endpoint string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
