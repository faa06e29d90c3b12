// Package kubeapi calls the Kubernetes API in plain net/http, for the few
// requests Stowage's components make themselves (a TokenReview, their
// node's labels): the main module does not depend on client-go.
package kubeapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Config is where the apiserver is and how to trust and authenticate to
// it: file paths, so that no credential is a process argument.
type Config struct {
	// APIServer is https://host:port.
	APIServer string
	CAFile    string
	CertFile  string
	KeyFile   string
	// TokenFile, when set, is a bearer token, read again for each
	// request: a pod's projected service-account token is rotated by the
	// kubelet.
	TokenFile string
}

// The files a pod's service-account token volume holds.
const (
	ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
)

// InCluster is the Config of a pod: the apiserver from the environment the
// kubelet gives every pod (KUBERNETES_SERVICE_HOST and _PORT), the CA and
// token in dir (ServiceAccountDir, or a projected volume of the same
// shape).
func InCluster(dir string) (Config, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return Config{}, errors.New("not in a Kubernetes pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
	}
	return Config{APIServer: "https://" + net.JoinHostPort(host, port), CAFile: dir + "/ca.crt", TokenFile: dir + "/token"}, nil
}

// Client makes requests to the apiserver.
type Client struct {
	APIServer string
	HTTP      *http.Client
	// TokenFile is read for each request; Token is used when it cannot
	// be (the kubelet replaces the file by a symlink swap).
	TokenFile string
	Token     string
}

// New builds a Client from c.
func New(c Config) (*Client, error) {
	if c.APIServer == "" {
		return nil, errors.New("no apiserver address")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read the apiserver's CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" || c.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load the client certificate for the apiserver: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	cl := &Client{APIServer: strings.TrimRight(c.APIServer, "/"), TokenFile: c.TokenFile,
		HTTP: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}}
	if c.TokenFile != "" {
		t, err := ReadTokenFile(c.TokenFile)
		if err != nil {
			return nil, err
		}
		cl.Token = t
	}
	return cl, nil
}

// ReadTokenFile reads a token file that only its owner may read.
func ReadTokenFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("token file %s can be read by group or others (mode %o): chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return t, nil
}

// Do sends a request with body (JSON, or none when nil) to path and
// returns the reply's status and body (at most 1 MiB).
func (c *Client) Do(ctx context.Context, method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.APIServer+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	bearer := c.Token
	if c.TokenFile != "" {
		if t, err := ReadTokenFile(c.TokenFile); err == nil {
			bearer = t
		}
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s at %s: %w", method, path, c.APIServer, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// NodeLabel is label key of node, read with GET /api/v1/nodes/<node>. The
// errors say what to fix: the account's RBAC, a missing label.
func (c *Client) NodeLabel(ctx context.Context, node, key string) (string, error) {
	code, b, err := c.Do(ctx, http.MethodGet, "/api/v1/nodes/"+node, nil)
	if err != nil {
		return "", err
	}
	switch code {
	case http.StatusOK:
	case http.StatusUnauthorized:
		return "", fmt.Errorf("the apiserver at %s did not accept this pod's service-account token (HTTP 401) reading node %s", c.APIServer, node)
	case http.StatusForbidden:
		return "", fmt.Errorf("this pod's service account may not get node %s (HTTP 403): it needs a ClusterRole with get on nodes (the chart's <release>-csi-node)", node)
	case http.StatusNotFound:
		return "", fmt.Errorf("node %s does not exist (HTTP 404): is --node-id the Kubernetes node name (spec.nodeName)?", node)
	default:
		return "", fmt.Errorf("get node %s at %s: HTTP %d: %s", node, c.APIServer, code, strings.TrimSpace(string(b[:min(len(b), 200)])))
	}
	var n struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(b, &n); err != nil {
		return "", fmt.Errorf("get node %s: decode the reply: %w", node, err)
	}
	v := n.Metadata.Labels[key]
	if v == "" {
		return "", fmt.Errorf("node %s has no label %s: label it (kubectl label node %s %s=<zone>) or give the zone explicitly", node, key, node, key)
	}
	return v, nil
}
