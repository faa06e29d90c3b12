package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/stowage-io/stowage/internal/kubeapi"
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
// (authentication.k8s.io/v1), asking for Audience.
type TokenReview struct {
	API      *kubeapi.Client
	Audience string
}

// TokenReviewConfig is what NewTokenReview reads: file paths, so that no
// credential is a process argument.
type TokenReviewConfig struct {
	APIServer string
	CAFile    string
	CertFile  string
	KeyFile   string
	// TokenFile is read again for each review: a pod's projected
	// service-account token is rotated by the kubelet.
	TokenFile string
	Audience  string
}

// NewTokenReview builds a TokenReview verifier from files.
func NewTokenReview(c TokenReviewConfig) (*TokenReview, error) {
	api, err := kubeapi.New(kubeapi.Config{APIServer: c.APIServer, CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile, TokenFile: c.TokenFile})
	if err != nil {
		return nil, fmt.Errorf("token review: %w", err)
	}
	tr := &TokenReview{API: api, Audience: c.Audience}
	if tr.Audience == "" {
		tr.Audience = DefaultAudience
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
	code, b, err := t.API.Do(ctx, http.MethodPost, "/apis/authentication.k8s.io/v1/tokenreviews", req)
	if err != nil {
		return "", "", fmt.Errorf("token review: %v", err)
	}
	if code != http.StatusCreated && code != http.StatusOK {
		return "", "", fmt.Errorf("token review at %s: HTTP %d", t.API.APIServer, code)
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
func ReadTokenFile(path string) (string, error) { return kubeapi.ReadTokenFile(path) }

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
