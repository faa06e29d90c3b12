package auth

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// DefaultAudience is the audience Stowage asks of projected
// service-account tokens (the secrets provider's tokenRequests).
const DefaultAudience = "stowage"

// Verifier proves a Kubernetes service-account token and returns the
// service account's namespace and name. Its errors never contain the token.
type Verifier interface {
	Verify(ctx context.Context, token string) (namespace, name string, err error)
}

// TokenReview verifies tokens with the apiserver's TokenReview API
// (authentication.k8s.io/v1), asking for Audience. It is plain net/http:
// the main module does not depend on client-go.
type TokenReview struct {
	// APIServer is https://host:port.
	APIServer string
	Audience  string
	Client    *http.Client
	// BearerToken, when set, authenticates the server to the apiserver
	// (instead of, or beside, a client certificate in Client).
	BearerToken string
	// BearerTokenFile, when set, is read again for each review: a pod's
	// projected service-account token is rotated by the kubelet.
	BearerTokenFile string
}

// TokenReviewConfig is what NewTokenReview reads: file paths, so that no
// credential is a process argument.
type TokenReviewConfig struct {
	APIServer string
	CAFile    string
	CertFile  string
	KeyFile   string
	TokenFile string
	Audience  string
}

// NewTokenReview builds a TokenReview verifier from files.
func NewTokenReview(c TokenReviewConfig) (*TokenReview, error) {
	if c.APIServer == "" {
		return nil, errors.New("token review: no apiserver address")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("token review: read CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("token review: %s holds no PEM certificate", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" || c.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("token review: load client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	tr := &TokenReview{APIServer: strings.TrimRight(c.APIServer, "/"), Audience: c.Audience,
		Client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}}
	if tr.Audience == "" {
		tr.Audience = DefaultAudience
	}
	if c.TokenFile != "" {
		t, err := ReadTokenFile(c.TokenFile)
		if err != nil {
			return nil, err
		}
		tr.BearerToken, tr.BearerTokenFile = t, c.TokenFile
	}
	return tr, nil
}

type tokenReview struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Spec       struct {
		Token     string   `json:"token"`
		Audiences []string `json:"audiences,omitempty"`
	} `json:"spec"`
	Status struct {
		Authenticated bool     `json:"authenticated"`
		Audiences     []string `json:"audiences"`
		Error         string   `json:"error"`
		User          struct {
			Username string `json:"username"`
		} `json:"user"`
	} `json:"status"`
}

// Verify implements Verifier.
func (t *TokenReview) Verify(ctx context.Context, token string) (string, string, error) {
	var req tokenReview
	req.APIVersion, req.Kind = "authentication.k8s.io/v1", "TokenReview"
	req.Spec.Token, req.Spec.Audiences = token, []string{t.Audience}
	body, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, t.APIServer+"/apis/authentication.k8s.io/v1/tokenreviews", bytes.NewReader(body))
	if err != nil {
		return "", "", fmt.Errorf("token review: %v", err)
	}
	hr.Header.Set("Content-Type", "application/json")
	bearer := t.BearerToken
	if t.BearerTokenFile != "" {
		// The last token read stays in use when the file is briefly gone
		// (the kubelet replaces it by a symlink swap).
		if b, err := ReadTokenFile(t.BearerTokenFile); err == nil {
			bearer = b
		}
	}
	if bearer != "" {
		hr.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := t.Client.Do(hr)
	if err != nil {
		return "", "", fmt.Errorf("token review at %s: %v", t.APIServer, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return "", "", fmt.Errorf("token review at %s: HTTP %d", t.APIServer, resp.StatusCode)
	}
	var out tokenReview
	if err := json.Unmarshal(b, &out); err != nil {
		return "", "", fmt.Errorf("token review: decode the reply: %v", err)
	}
	if !out.Status.Authenticated {
		// The apiserver's error names no token, but keep it short.
		return "", "", fmt.Errorf("the apiserver did not authenticate it (audience %s)", t.Audience)
	}
	if len(out.Status.Audiences) > 0 && !contains(out.Status.Audiences, t.Audience) {
		return "", "", fmt.Errorf("the token is not for audience %s", t.Audience)
	}
	return SplitServiceAccount(out.Status.User.Username)
}

// SplitServiceAccount takes system:serviceaccount:<ns>:<name> apart.
func SplitServiceAccount(user string) (string, string, error) {
	rest, ok := strings.CutPrefix(user, serviceAccountPrefix)
	ns, name, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || name == "" {
		return "", "", fmt.Errorf("user %q is not a service account", user)
	}
	return ns, name, nil
}

// FakeVerifier maps tokens to service accounts, for tests.
type FakeVerifier map[string]string

// Verify implements Verifier.
func (f FakeVerifier) Verify(_ context.Context, token string) (string, string, error) {
	sa, ok := f[token]
	if !ok {
		return "", "", errors.New("unknown token")
	}
	return SplitServiceAccount(sa)
}

// ReadTokenFile reads a token from a file, refusing one others can read.
// Errors name the file, never its content.
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

// WriteTokenFile writes a token 0600 (through a temporary file renamed
// into place).
func WriteTokenFile(path, token string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write token file: %w", err)
	}
	if _, err := f.WriteString(token + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("write token file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write token file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write token file %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}
