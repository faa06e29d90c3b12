// Package apitest starts the real Stowage API server inside a test, with a
// KMS and a copy-mode pool in a temporary directory: enough for keys,
// secrets and parameters, and no root needed. Everything is stopped in
// t.Cleanup.
package apitest

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/csi"
	"github.com/stowage-io/stowage/internal/files"
	"github.com/stowage-io/stowage/internal/httpapi"
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

// Auth configures StartAuth.
type Auth struct {
	// Verifier checks service-account tokens (e.g. auth.FakeVerifier).
	Verifier auth.Verifier
	// TCP also serves the API on a loopback TCP port, where no caller has
	// peer credentials.
	TCP bool
	// HTTP also serves the HTTP/JSON API (internal/httpapi) on a loopback
	// TCP port.
	HTTP bool
	// Log receives the server's log lines (default: discarded).
	Log io.Writer
}

// API is a server started by StartAuth.
type API struct {
	Endpoint   string
	TCPAddress string
	// HTTPAddress is host:port of the HTTP/JSON API (with Auth.HTTP).
	HTTPAddress string
	Auth        *auth.Authorizer
	Server      *server.Server
}

// StartAuth is Start with the authentication options.
func StartAuth(t testing.TB, a Auth, opts ...grpc.ServerOption) *API {
	t.Helper()
	api, _ := startAuth(t, nil, a, opts...)
	return api
}

func start(t testing.TB, f *Files, opts ...grpc.ServerOption) (string, string) {
	t.Helper()
	api, fileDir := startAuth(t, f, Auth{}, opts...)
	return api.Endpoint, fileDir
}

// startAuth runs the server; every call goes through its Authorizer (root
// over the unix socket is the administrator, as the tests run).
func startAuth(t testing.TB, f *Files, a Auth, opts ...grpc.ServerOption) (*API, string) {
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
	if a.Log == nil {
		a.Log = io.Discard
	}
	logger := slog.New(slog.NewTextHandler(a.Log, nil))
	authz := auth.New(st, a.Verifier, logger)
	cfg := server.Config{Store: st, Pools: map[string]server.Pool{"pool-a": pool}, KMS: keys,
		Logger: logger, Auth: authz}
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
	// The Authorizer first: the callers' options see the proven principal.
	g := grpc.NewServer(append(authz.ServerOptions(), opts...)...)
	srv.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	api := &API{Endpoint: endpoint, Auth: authz, Server: srv}
	if os.Geteuid() != 0 {
		// No peer-credential admin: Dial sends an admin token instead.
		tok, _, err := authz.Records.CreateToken(context.Background(), auth.AdminName, "apitest")
		if err != nil {
			t.Fatal(err)
		}
		adminTokens.Store(endpoint, tok)
		t.Cleanup(func() { adminTokens.Delete(endpoint) })
	}
	if a.TCP {
		tl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go g.Serve(tl)
		api.TCPAddress = tl.Addr().String()
	}
	if a.HTTP {
		h, err := httpapi.Handler(g)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		addr, err := httpapi.Serve(ctx, "127.0.0.1:0", h, nil, logger)
		if err != nil {
			t.Fatal(err)
		}
		api.HTTPAddress = addr.String()
	}
	return api, fileDir
}

// adminTokens are the admin tokens of servers started by a non-root test,
// by endpoint.
var adminTokens sync.Map

// Dial connects to endpoint as the administrator: root by peer
// credentials, or an admin token when the test does not run as root.
func Dial(t testing.TB, endpoint string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if tok, ok := adminTokens.Load(endpoint); ok {
		opts = append(opts, grpc.WithPerRPCCredentials(auth.TokenCredentials{Token: tok.(string)}))
	}
	conn, err := grpc.NewClient(endpoint, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
