package cli

import (
	"context"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/server"
)

func TestParseAgentSpec(t *testing.T) {
	tests := []struct {
		in      string
		want    agentSpec
		wantErr string
	}{
		{"name=pool-b,address=10.0.0.5:7100,token-file=/etc/t", agentSpec{"pool-b", "10.0.0.5:7100", "/etc/t", ""}, ""},
		{" name=b , address=h:1 , token-file=f ", agentSpec{"b", "h:1", "f", ""}, ""},
		{"name=b,address=h:1,token-file=f,ca-file=/etc/ca.crt", agentSpec{"b", "h:1", "f", "/etc/ca.crt"}, ""},
		{"name=b,address=h:1", agentSpec{}, "token-file are all required"},
		{"name=b,address=h:1,token=x", agentSpec{}, `unknown key "token"`},
		{"name=b,h:1", agentSpec{}, "is not key=value"},
	}
	for _, tt := range tests {
		got, err := parseAgentSpec(tt.in)
		if tt.wantErr != "" {
			var u usageError
			if !errors.As(err, &u) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseAgentSpec(%q) err = %v, want a usage error saying %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseAgentSpec(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func writeToken(t *testing.T, token string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "agent.token")
	if err := os.WriteFile(f, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// stowage agent serves its pool to a server's --agent until it is stopped,
// then returns cleanly.
func TestRunAgent_ServesItsPoolToTheServersAgentFlagUntilStopped(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeToken(t, "the-agent-token")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type addrs struct{ api, nbd string }
	ready := make(chan addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- runAgent(ctx, agentOptions{listen: "127.0.0.1:0", nbdListen: "127.0.0.1:0", tokenFile: tokenFile,
			pool: "name=pool-b,dir=" + filepath.Join(dir, "pool") + ",zone=zone-b,node=storage-1"},
			func(api, nbd string) { ready <- addrs{api, nbd} })
	}()
	var a addrs
	select {
	case a = <-ready:
	case err := <-done:
		t.Fatalf("agent did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not start in 10 s")
	}

	pools := map[string]server.Pool{}
	exporters := map[string]server.BlockExporter{}
	closeAll, err := addAgentPools(ctx, []string{"name=remote-b,address=" + a.api + ",token-file=" + tokenFile}, pools, exporters, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll()
	p, ok := pools["remote-b"]
	if !ok || exporters["remote-b"] == nil {
		t.Fatalf("remote-b is not a pool and an exporter: %v %v", pools, exporters)
	}
	if p.Zone() != "zone-b" || p.Node() != "storage-1" || exporters["remote-b"].Address() != a.nbd {
		t.Fatalf("remote-b: zone %q node %q nbd %q; want zone-b storage-1 %s", p.Zone(), p.Node(), exporters["remote-b"].Address(), a.nbd)
	}
	if err := p.CreateImage(ctx, "vol-1", 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pool", "volumes", "vol-1.img")); err != nil {
		t.Fatalf("the image is not in the agent's pool directory: %v", err)
	}
	if _, err := p.ImageSize("vol-404"); !errors.Is(err, agent.ErrNotFound) {
		t.Fatalf("ImageSize of a missing volume: %v, want agent.ErrNotFound", err)
	}

	// Twice the same name is refused before dialling.
	if _, err := addAgentPools(ctx, []string{"name=remote-b,address=" + a.api + ",token-file=" + tokenFile}, pools, exporters, quietLog()); err == nil ||
		!strings.Contains(err.Error(), "given twice") {
		t.Fatalf("a second remote-b: %v, want 'given twice'", err)
	}
	// A server with the wrong token is refused, naming the agent.
	_, err = addAgentPools(ctx, []string{"name=remote-c,address=" + a.api + ",token-file=" + writeToken(t, "wrong")}, map[string]server.Pool{}, exporters, quietLog())
	if err == nil || !strings.Contains(err.Error(), "remote-c") || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Fatalf("wrong token: %v, want Unauthenticated naming remote-c", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("agent stopped with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop in 10 s")
	}
}

func TestRunAgent_WithoutListenOrTokenFile_UsageError(t *testing.T) {
	for _, o := range []agentOptions{{tokenFile: "/nonexistent"}, {listen: "127.0.0.1:0"}} {
		var u usageError
		if err := runAgent(context.Background(), o, nil); !errors.As(err, &u) {
			t.Errorf("runAgent(%+v) = %v, want a usage error", o, err)
		}
	}
}

func TestRunServer_AgentUnreachable_ErrorNamesAgentAndAddress(t *testing.T) {
	defer func(d time.Duration) { agentDialTimeout = d }(agentDialTimeout)
	agentDialTimeout = 300 * time.Millisecond
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	err = runServer(context.Background(), serverOptions{dataDir: dir, listen: "unix://" + filepath.Join(dir, "api.sock"), zone: "zone-a", node: "node-a",
		agents: []string{"name=remote-x,address=" + addr + ",token-file=" + writeToken(t, "t")}})
	if err == nil || !strings.Contains(err.Error(), "agent remote-x at "+addr) {
		t.Fatalf("runServer = %v, want an error naming agent remote-x at %s", err, addr)
	}
}

// An agent in a pod with --zone-label takes its pool's zone from its
// node's label through the Kubernetes API (here a fake apiserver, found as
// a pod finds it: KUBERNETES_SERVICE_HOST/PORT and the token directory),
// and refuses a --pool that names a zone too.
func TestRunAgent_ZoneLabel_ThePoolsZoneIsItsNodes(t *testing.T) {
	apiserver := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/nodes/storage-1" || r.Header.Get("Authorization") != "Bearer pod-token" {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.Write([]byte(`{"metadata":{"labels":{"topology.kubernetes.io/zone":"zone-from-label"}}}`))
	}))
	defer apiserver.Close()
	u, _ := url.Parse(apiserver.URL)
	t.Setenv("KUBERNETES_SERVICE_HOST", u.Hostname())
	t.Setenv("KUBERNETES_SERVICE_PORT", u.Port())
	kubeDir := t.TempDir()
	os.WriteFile(filepath.Join(kubeDir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: apiserver.Certificate().Raw}), 0o644)
	os.WriteFile(filepath.Join(kubeDir, "token"), []byte("pod-token"), 0o400)

	dir := t.TempDir()
	tokenFile := writeToken(t, "the-agent-token")
	bad := agentOptions{listen: "127.0.0.1:0", tokenFile: tokenFile, zoneLabel: "topology.kubernetes.io/zone", kubeDir: kubeDir,
		pool: "name=pool-z,dir=" + filepath.Join(dir, "bad") + ",zone=zone-b,node=storage-1"}
	var ue usageError
	if err := runAgent(context.Background(), bad, nil); !errors.As(err, &ue) || !strings.Contains(err.Error(), "give one of them") {
		t.Fatalf("--zone-label with a zone in --pool: %v, want a usage error", err)
	}
	api := startAgent(t, agentOptions{listen: "127.0.0.1:0", tokenFile: tokenFile, zoneLabel: "topology.kubernetes.io/zone", kubeDir: kubeDir,
		pool: "name=pool-z,dir=" + filepath.Join(dir, "pool") + ",node=storage-1"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pools := map[string]server.Pool{}
	closeAll, err := addAgentPools(ctx, []string{"name=pool-z,address=" + api + ",token-file=" + tokenFile}, pools, map[string]server.BlockExporter{}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll()
	if z := pools["pool-z"].Zone(); z != "zone-from-label" {
		t.Fatalf("the agent's pool is in zone %q, want zone-from-label (its node's label)", z)
	}
}
