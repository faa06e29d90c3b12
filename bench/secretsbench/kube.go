package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/stowage-io/stowage/bench/benchkit"
	"github.com/stowage-io/stowage/internal/cluster"
)

// The bench's certificates, made with the local cluster's own PKI code.
const (
	certAPIServer = "apiserver"
	certAdmin     = "admin"
	// certReviewer is what `stowage server` calls TokenReview with. It is in
	// system:masters only to spare the bench an RBAC binding; the local
	// cluster binds stowage:stowage-server to system:auth-delegator.
	certReviewer = cluster.StowageServerCert
)

func makePKI(dir string) (cluster.PKI, error) {
	lo := net.ParseIP("127.0.0.1")
	p := cluster.PKI{Dir: dir}
	_, err := p.Ensure([]cluster.CertSpec{
		{Name: certAPIServer, Issuer: cluster.CA, CN: "kube-apiserver", Server: true, DNS: []string{"localhost"}, IPs: []net.IP{lo}},
		{Name: certAdmin, Issuer: cluster.CA, CN: "secretsbench-admin", Orgs: []string{"system:masters"}, Client: true},
		{Name: certReviewer, Issuer: cluster.CA, CN: "stowage:stowage-server", Orgs: []string{"system:masters"}, Client: true},
	}, time.Now())
	return p, err
}

// kube is one etcd + kube-apiserver pair of the bench's own, on loopback
// ports apart from the local cluster's (2379/2380, 6443).
type kube struct {
	name      string
	etcdURL   string // plain http on loopback: the bench reads keys through etcd's JSON gateway
	apiserver string // https://127.0.0.1:port
	client    *http.Client
}

// startKube starts etcd and kube-apiserver under dir; encryptionConfig, when
// not empty, is the apiserver's --encryption-provider-config.
func startKube(ctx context.Context, u *undoStack, bins, dir, logDir, name string, pki cluster.PKI, etcdPort, apiPort int, encryptionConfig string) (*kube, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	k := &kube{name: name, etcdURL: fmt.Sprintf("http://127.0.0.1:%d", etcdPort), apiserver: fmt.Sprintf("https://127.0.0.1:%d", apiPort)}
	peer := fmt.Sprintf("http://127.0.0.1:%d", etcdPort+1)
	progress("%s: starting etcd on %s (log: %s)", name, k.etcdURL, filepath.Join(logDir, name+"-etcd.log"))
	if _, err := benchkit.Daemon(u, name+" etcd", filepath.Join(logDir, name+"-etcd.log"), filepath.Join(bins, "etcd"),
		"--name=bench", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+k.etcdURL, "--advertise-client-urls="+k.etcdURL,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer, "--initial-cluster=bench="+peer,
		"--log-level=warn"); err != nil {
		return nil, err
	}
	if err := benchkit.WaitReady(ctx, name+" etcd", 30*time.Second, func(ctx context.Context) error {
		_, err := k.etcdGet(ctx, "health-probe")
		return err
	}); err != nil {
		return nil, err
	}
	args := []string{
		"--advertise-address=127.0.0.1", "--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		"--etcd-servers=" + k.etcdURL,
		"--service-cluster-ip-range=10.252.0.0/24",
		"--authorization-mode=RBAC",
		"--client-ca-file=" + pki.Cert(cluster.CA),
		"--tls-cert-file=" + pki.Cert(certAPIServer), "--tls-private-key-file=" + pki.Key(certAPIServer),
		"--service-account-issuer=https://secretsbench.invalid",
		"--service-account-key-file=" + pki.ServiceAccountPub(),
		"--service-account-signing-key-file=" + pki.ServiceAccountKey(),
		"--profiling=false", "--v=0",
	}
	if encryptionConfig != "" {
		args = append(args, "--encryption-provider-config="+encryptionConfig)
	}
	progress("%s: starting kube-apiserver on %s (log: %s)", name, k.apiserver, filepath.Join(logDir, name+"-apiserver.log"))
	if _, err := benchkit.Daemon(u, name+" kube-apiserver", filepath.Join(logDir, name+"-apiserver.log"), filepath.Join(bins, "kube-apiserver"), args...); err != nil {
		return nil, err
	}
	c, err := kubeClient(pki, certAdmin)
	if err != nil {
		return nil, err
	}
	k.client = c
	if err := benchkit.WaitReady(ctx, name+" kube-apiserver", 90*time.Second, func(ctx context.Context) error {
		b, err := k.do(ctx, "GET", "/readyz", nil)
		if err == nil && string(b) != "ok" {
			err = fmt.Errorf("readyz: %s", b)
		}
		return err
	}); err != nil {
		return nil, err
	}
	return k, nil
}

// kubeClient is an HTTP/2 client with the named client certificate, what
// client-go would build from a kubeconfig; the product module does not
// depend on client-go, and the bench needs a handful of REST calls.
func kubeClient(pki cluster.PKI, user string) (*http.Client, error) {
	ca, err := os.ReadFile(pki.Cert(cluster.CA))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(pki.Cert(user), pki.Key(user))
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64,
	}}, nil
}

// do sends one request; a status other than 2xx is an error naming it.
func (k *kube) do(ctx context.Context, method, path string, body any) ([]byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, k.apiserver+path, r)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	return send(k.client, req)
}

// send sends req and returns the body; a status other than 2xx is an error
// naming the request.
func send(c *http.Client, req *http.Request) ([]byte, error) {
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s %s: %s: %s", req.Method, req.URL.Path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

func (k *kube) createNamespace(ctx context.Context, ns string) error {
	_, err := k.do(ctx, "POST", "/api/v1/namespaces", map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}})
	return err
}

// serviceAccountToken creates the service account and returns a token for
// audience made with the TokenRequest API (what the kubelet asks for a
// pod's projected token).
func (k *kube) serviceAccountToken(ctx context.Context, ns, name, audience string) (string, error) {
	if _, err := k.do(ctx, "POST", "/api/v1/namespaces/"+ns+"/serviceaccounts",
		map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": name}}); err != nil {
		return "", err
	}
	b, err := k.do(ctx, "POST", "/api/v1/namespaces/"+ns+"/serviceaccounts/"+name+"/token", map[string]any{
		"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
		"spec": map[string]any{"audiences": []string{audience}, "expirationSeconds": 3600}})
	if err != nil {
		return "", err
	}
	var tr struct {
		Status struct {
			Token string `json:"token"`
		} `json:"status"`
	}
	if err := json.Unmarshal(b, &tr); err != nil || tr.Status.Token == "" {
		return "", fmt.Errorf("TokenRequest for %s/%s returned no token", ns, name)
	}
	return tr.Status.Token, nil
}

// tokenReview asks the apiserver what the Stowage server asks it for every
// call carrying a pod token.
func (k *kube) tokenReview(ctx context.Context, token, audience string) error {
	b, err := k.do(ctx, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", map[string]any{
		"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
		"spec": map[string]any{"token": token, "audiences": []string{audience}}})
	if err != nil {
		return err
	}
	var tr struct {
		Status struct {
			Authenticated bool `json:"authenticated"`
		} `json:"status"`
	}
	if err := json.Unmarshal(b, &tr); err != nil || !tr.Status.Authenticated {
		return errors.New("token review: not authenticated")
	}
	return nil
}

func secretObject(name string, value []byte) map[string]any {
	return map[string]any{"apiVersion": "v1", "kind": "Secret", "metadata": map[string]any{"name": name},
		"data": map[string]string{"value": base64.StdEncoding.EncodeToString(value)}}
}

// etcdGet reads one key's raw value through etcd's v3 JSON gateway ("" when
// the key is absent), which is what etcdctl get prints.
func (k *kube) etcdGet(ctx context.Context, key string) ([]byte, error) {
	body, _ := json.Marshal(map[string]string{"key": base64.StdEncoding.EncodeToString([]byte(key))})
	req, err := http.NewRequestWithContext(ctx, "POST", k.etcdURL+"/v3/kv/range", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	b, err := send(http.DefaultClient, req)
	if err != nil {
		return nil, err
	}
	var r struct {
		Kvs []struct {
			Value string `json:"value"`
		} `json:"kvs"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	if len(r.Kvs) == 0 {
		return nil, nil
	}
	return base64.StdEncoding.DecodeString(r.Kvs[0].Value)
}
