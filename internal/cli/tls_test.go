package cli

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/apitls"
	"github.com/stowage-io/stowage/internal/testutil/testcerts"
)

func freeTCP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// With --tls-cert-file the server's TCP addresses (gRPC and HTTP/JSON)
// speak TLS, and its unix socket stays in clear: a client with --ca-file
// is served over TCP, one without it or trusting another CA is not, and
// the unix socket needs no CA.
func TestServerTLS_TCPWithTLS_UnixInClear(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, dir, "ca")
	other := testcerts.NewCA(t, dir, "other")
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.Issue(t, cert, key, 1, []string{"127.0.0.1"})
	tcp, httpAddr := freeTCP(t), freeTCP(t)
	sock := filepath.Join(dir, "api.sock")
	tokens := filepath.Join(dir, "tokens")
	startServer(t, serverOptions{dataDir: dir, listen: "unix://" + sock, alsoListen: []string{tcp}, httpListen: httpAddr,
		zone: "zone-a", node: "node-a", pools: []string{"name=pool-a,zone=zone-a,node=node-a"},
		tlsCertFile: cert, tlsKeyFile: key, auth: authOptions{bootstrapTokensDir: tokens}})
	admin := filepath.Join(tokens, "admin")
	waitFile(t, admin)

	// Calls that should fail fail fast (UNAVAILABLE), as the CLI's do.
	list := func(endpoint, caFile string, served bool) error {
		t.Helper()
		defer func(old string) { apiCAFile = old }(apiCAFile)
		apiCAFile = caFile
		conn, err := dial(endpoint, admin)
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = pb.NewPoolServiceClient(conn).ListPools(ctx, &pb.ListPoolsRequest{}, grpc.WaitForReady(served))
		return err
	}
	t.Setenv("STOWAGE_CA_FILE", "")
	if err := list("unix://"+sock, "", true); err != nil {
		t.Fatalf("the unix socket without a CA: %v", err)
	}
	if err := list(tcp, ca.File, true); err != nil {
		t.Fatalf("TCP with the server's CA: %v", err)
	}
	// The user is told what to fix.
	if err := list(tcp, "", false); err == nil {
		t.Fatal("TCP in clear to a TLS server was served")
	} else if m := errorMessage(err); !strings.Contains(m, "--ca-file") {
		t.Errorf("in clear to a TLS server: %q does not say to give --ca-file", m)
	}
	if err := list(tcp, other.File, false); err == nil {
		t.Fatal("TCP trusting another CA was served")
	} else if m := errorMessage(err); !strings.Contains(m, "TLS certificate is not one that --ca-file") {
		t.Errorf("trusting another CA: %q does not say the certificate is not trusted", m)
	}
	// The CLI says the same: exit 5 (unreachable), naming --ca-file.
	var out, errOut strings.Builder
	if code := Execute([]string{"--endpoint", tcp, "--token-file", admin, "--timeout", "5s", "pool", "list"}, &out, &errOut); code != ExitUnavailable ||
		!strings.Contains(errOut.String(), "give the CA of its certificate with --ca-file") {
		t.Errorf("stowage pool list in clear to a TLS server: exit %d: %s", code, errOut.String())
	}
	out.Reset()
	if code := Execute([]string{"--endpoint", tcp, "--token-file", admin, "--ca-file", ca.File, "pool", "list"}, &out, &errOut); code != ExitOK || !strings.Contains(out.String(), "pool-a") {
		t.Errorf("stowage --ca-file pool list: exit %d: %s", code, out.String())
	}
	t.Setenv("STOWAGE_CA_FILE", ca.File)
	if err := list(tcp, "", true); err != nil {
		t.Fatalf("TCP with the CA from STOWAGE_CA_FILE: %v", err)
	}

	// The HTTP/JSON API: https with the CA.
	tc, err := apitls.ClientConfig(ca.File)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	token, _ := os.ReadFile(admin)
	req, _ := http.NewRequest(http.MethodPost, "https://"+httpAddr+"/stowage.v1.PoolService/ListPools", strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("HTTP/JSON API over https: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP/JSON API over https: %s", resp.Status)
	}
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{}}}
	if resp, err := plain.Post("https://"+httpAddr+"/stowage.v1.PoolService/ListPools", "application/json", strings.NewReader("{}")); err == nil {
		resp.Body.Close()
		t.Fatal("an https client without the CA trusted the server")
	}
}
