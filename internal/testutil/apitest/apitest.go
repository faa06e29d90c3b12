// Package apitest starts the real Stowage API server inside a test, with a
// KMS and a copy-mode pool in a temporary directory: enough for keys,
// secrets and parameters, and no root needed. Everything is stopped in
// t.Cleanup.
package apitest

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/csi"
	"github.com/stowage-io/stowage/internal/files"
	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/server"
	"github.com/stowage-io/stowage/internal/store/boltstore"
)

// Start runs the API server on a unix socket and returns its endpoint
// (unix:///…). opts are added to the gRPC server (e.g. an interceptor that
// records call metadata).
func Start(t testing.TB, opts ...grpc.ServerOption) string {
	t.Helper()
	endpoint, _ := start(t, nil, opts...)
	return endpoint
}

// Files configures StartFiles.
type Files struct {
	// NFSAddress, when set, makes the server report access points as
	// exported at this address (through an exporter that serves nothing:
	// no nfs-ganesha runs).
	NFSAddress string
	// Dir is the file-tree pool's directory (default: in the server's
	// temporary directory). A btrfs mount (testutil/loopfs) gives quotas.
	Dir string
}

// StartFiles is Start with a file-tree pool "files-a" (zone-a, node-a) as
// well, and returns the pool's directory. Making access points' root
// directories with an owner needs root.
func StartFiles(t testing.TB, f Files, opts ...grpc.ServerOption) (endpoint, fileDir string) {
	t.Helper()
	return start(t, &f, opts...)
}

type nopExporter struct{}

func (nopExporter) Export(context.Context, files.Export) error { return nil }
func (nopExporter) Unexport(context.Context, string) error     { return nil }

func start(t testing.TB, f *Files, opts ...grpc.ServerOption) (string, string) {
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
	cfg := server.Config{Store: st, Pools: map[string]server.Pool{"pool-a": pool}, KMS: keys,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var fileDir string
	if f != nil {
		fileDir = filepath.Join(dir, "files")
		if f.Dir != "" {
			fileDir = f.Dir
		}
		tree, err := files.Open(files.Config{Dir: fileDir, Zone: "zone-a", Node: "node-a"})
		if err != nil {
			t.Fatal(err)
		}
		cfg.FilePools = map[string]server.FilePool{"files-a": tree}
		if f.NFSAddress != "" {
			cfg.Exporters = map[string]server.Exporter{"files-a": nopExporter{}}
			cfg.NFSAddress = f.NFSAddress
		}
	}
	srv, err := server.New(cfg)
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
	return endpoint, fileDir
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
