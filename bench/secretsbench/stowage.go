package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/bench/benchkit"
	"github.com/stowage-io/stowage/internal/cluster"
	"github.com/stowage-io/stowage/internal/provider"
)

// stowage is the running Stowage side: `stowage server` with TokenReview
// against the bench's apiserver, `stowage secrets-provider` and `stowage
// kms-plugin`, each a separate process talking over unix sockets, as on a
// node.
type stowage struct {
	bin, work, logDir string
	apiSock           string
	metricsURL        string
	api               *grpc.ClientConn
	secrets           pb.SecretServiceClient
	params            pb.ParameterServiceClient
	adminToken        string
	providerToken     string
	provConn          *grpc.ClientConn
	prov              v1alpha1.CSIDriverProviderClient
	kmsSock           string
}

func startStowage(ctx context.Context, u *undoStack, bin, work, logDir string, k *kube, pki cluster.PKI, metricsPort int) (*stowage, error) {
	s := &stowage{bin: bin, work: work, logDir: logDir, apiSock: filepath.Join(work, "api.sock"),
		metricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)}
	tokens := filepath.Join(work, "tokens")
	progress("starting `stowage server` (log: %s)", filepath.Join(logDir, "server.log"))
	if _, err := benchkit.Daemon(u, "stowage server", filepath.Join(logDir, "server.log"), bin, "server",
		"--data-dir", filepath.Join(work, "server"), "--listen", "unix://"+s.apiSock,
		"--node", "bench-node", "--bootstrap-tokens-dir", tokens,
		"--metrics-address", fmt.Sprintf("127.0.0.1:%d", metricsPort),
		"--kube-apiserver", k.apiserver, "--kube-ca-file", pki.Cert(cluster.CA),
		"--kube-client-cert-file", pki.Cert(certReviewer), "--kube-client-key-file", pki.Key(certReviewer)); err != nil {
		return nil, err
	}
	var err error
	if s.api, err = benchkit.DialUnix(s.apiSock, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(provider.MaxReply))); err != nil {
		return nil, err
	}
	u.Push("close the API connection", s.api.Close)
	s.secrets, s.params = pb.NewSecretServiceClient(s.api), pb.NewParameterServiceClient(s.api)
	if err := benchkit.WaitReady(ctx, "Stowage API", 30*time.Second, func(ctx context.Context) error {
		_, err := s.secrets.ListSecrets(ctx, &pb.ListSecretsRequest{})
		return err
	}); err != nil {
		return nil, err
	}
	for name, dst := range map[string]*string{"admin": &s.adminToken, "secrets-provider": &s.providerToken} {
		b, err := os.ReadFile(filepath.Join(tokens, name))
		if err != nil {
			return nil, fmt.Errorf("the server's bootstrap token: %w", err)
		}
		*dst = strings.TrimSpace(string(b))
	}

	provDir := filepath.Join(work, "providers")
	if err := os.MkdirAll(provDir, 0o700); err != nil {
		return nil, err
	}
	progress("starting `stowage secrets-provider` (log: %s)", filepath.Join(logDir, "secrets-provider.log"))
	if _, err := benchkit.Daemon(u, "stowage secrets-provider", filepath.Join(logDir, "secrets-provider.log"), bin, "secrets-provider",
		"--providers-dir", provDir, "--api", "unix://"+s.apiSock, "--token-file", filepath.Join(tokens, "secrets-provider")); err != nil {
		return nil, err
	}
	// As the driver dials <providers dir>/stowage.sock.
	if s.provConn, err = benchkit.DialUnix(provider.SocketPath(provDir), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(provider.MaxReply))); err != nil {
		return nil, err
	}
	u.Push("close the provider connection", s.provConn.Close)
	s.prov = v1alpha1.NewCSIDriverProviderClient(s.provConn)
	if err := benchkit.WaitReady(ctx, "secrets provider", 30*time.Second, func(ctx context.Context) error {
		_, err := s.prov.Version(ctx, &v1alpha1.VersionRequest{Version: "v1alpha1"})
		return err
	}); err != nil {
		return nil, err
	}
	return s, nil
}

// startKMSPlugin makes the KMS key (with the CLI, as a user would) and
// starts `stowage kms-plugin` on <work>/kms.sock.
func (s *stowage) startKMSPlugin(ctx context.Context, u *undoStack, alias string) error {
	if _, err := s.cli(ctx, nil, "key", "create", "--alias", alias, "--description", "secretsbench: Kubernetes Secrets"); err != nil {
		return err
	}
	s.kmsSock = filepath.Join(s.work, "kms.sock")
	progress("starting `stowage kms-plugin` (log: %s)", filepath.Join(s.logDir, "kms-plugin.log"))
	if _, err := benchkit.Daemon(u, "stowage kms-plugin", filepath.Join(s.logDir, "kms-plugin.log"), s.bin, "kms-plugin",
		"--listen", "unix://"+s.kmsSock, "--api", "unix://"+s.apiSock, "--key", alias,
		"--token-file", filepath.Join(s.work, "tokens", "kms-plugin")); err != nil {
		return err
	}
	return benchkit.WaitReady(ctx, "kms-plugin socket", 30*time.Second, func(context.Context) error {
		_, err := os.Stat(s.kmsSock)
		return err
	})
}

// cli runs a stowage client command against the bench's server with the
// admin token the server bootstrapped.
func (s *stowage) cli(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, s.bin, append([]string{"--endpoint", "unix://" + s.apiSock, "--token-file", filepath.Join(s.work, "tokens", "admin")}, args...)...)
	cmd.Stdin = stdin
	b, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("stowage %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}

func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// scrape returns the server's metric lines that start with prefix and
// carry every label in labels, as label set → value.
func (s *stowage) scrape(ctx context.Context, prefix string, labels ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", s.metricsURL, nil)
	if err != nil {
		return nil, err
	}
	b, err := send(http.DefaultClient, req)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
next:
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, prefix+"{") {
			continue
		}
		for _, want := range labels {
			if !strings.Contains(l, want) {
				continue next
			}
		}
		set, val, ok := strings.Cut(strings.TrimPrefix(l, prefix), "} ")
		if !ok {
			continue
		}
		var n float64
		fmt.Sscan(val, &n)
		out[set+"}"] = n
	}
	return out, nil
}

// apiHistogram reads the server's stowage_api_request_duration_seconds
// buckets of one method's successful calls (cumulative counts by upper
// bound, in seconds).
func (s *stowage) apiHistogram(ctx context.Context, method string) (map[string]float64, error) {
	lines, err := s.scrape(ctx, "stowage_api_request_duration_seconds_bucket", `method="`+method+`"`, `code="OK"`)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for set, n := range lines {
		_, le, _ := strings.Cut(set, `le="`)
		le, _, _ = strings.Cut(le, `"`)
		out[le] = n
	}
	return out, nil
}

// apiCalls is stowage_api_requests_total by method and code.
func (s *stowage) apiCalls(ctx context.Context) (map[string]float64, error) {
	return s.scrape(ctx, "stowage_api_requests_total")
}
