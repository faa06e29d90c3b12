package kubeapi

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A fake apiserver over TLS: node vm with a zone label, node bare without,
// node secret forbidden; it answers only the bearer token in want.
func fakeAPI(t *testing.T, want *string) (Config, *[]string) {
	t.Helper()
	var seen []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Header.Get("Authorization"))
		if r.Header.Get("Authorization") != "Bearer "+*want {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/api/v1/nodes/vm":
			w.Write([]byte(`{"metadata":{"name":"vm","labels":{"topology.kubernetes.io/zone":"zone-q"}}}`))
		case "/api/v1/nodes/bare":
			w.Write([]byte(`{"metadata":{"name":"bare","labels":{}}}`))
		case "/api/v1/nodes/secret":
			w.WriteHeader(http.StatusForbidden)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	tok := filepath.Join(dir, "token")
	os.WriteFile(tok, []byte(*want+"\n"), 0o400)
	return Config{APIServer: srv.URL, CAFile: ca, TokenFile: tok}, &seen
}

func TestNodeLabel_ReadsTheLabel_ErrorsSayWhatToFix(t *testing.T) {
	token := "first"
	cfg, _ := fakeAPI(t, &token)
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if z, err := c.NodeLabel(ctx, "vm", "topology.kubernetes.io/zone"); err != nil || z != "zone-q" {
		t.Fatalf("zone of vm: %q %v, want zone-q", z, err)
	}
	for node, want := range map[string]string{
		"bare":   "kubectl label node bare topology.kubernetes.io/zone=<zone>",
		"secret": "may not get node secret (HTTP 403): it needs a ClusterRole with get on nodes",
		"gone":   "node gone does not exist (HTTP 404)",
	} {
		_, err := c.NodeLabel(ctx, node, "topology.kubernetes.io/zone")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("node %s: %v, want an error saying %q", node, err, want)
		}
	}
	// The kubelet rotates the token: the next request reads it again.
	token = "second"
	os.Remove(cfg.TokenFile)
	os.WriteFile(cfg.TokenFile, []byte("second"), 0o400)
	if z, err := c.NodeLabel(ctx, "vm", "topology.kubernetes.io/zone"); err != nil || z != "zone-q" {
		t.Fatalf("after the token's rotation: %q %v", z, err)
	}
	// A token the apiserver does not take is named as such, never shown.
	token = "third"
	_, err = c.NodeLabel(ctx, "vm", "topology.kubernetes.io/zone")
	if err == nil || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "second") {
		t.Fatalf("with a stale token: %v, want HTTP 401 without the token", err)
	}
}

func TestNew_RefusesATokenOthersCanRead(t *testing.T) {
	token := "t"
	cfg, _ := fakeAPI(t, &token)
	os.Chmod(cfg.TokenFile, 0o644)
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("New with a 0644 token file: %v, want a refusal saying chmod 600", err)
	}
}

func TestInCluster_FromThePodsEnvironment(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := InCluster(ServiceAccountDir); err == nil || !strings.Contains(err.Error(), "KUBERNETES_SERVICE_HOST") {
		t.Fatalf("outside a pod: %v", err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	c, err := InCluster("/var/run/x")
	if err != nil || c.APIServer != "https://[fd00::1]:443" || c.TokenFile != "/var/run/x/token" || c.CAFile != "/var/run/x/ca.crt" {
		t.Fatalf("in a pod: %+v %v", c, err)
	}
}
