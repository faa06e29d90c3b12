package auth_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/store/boltstore"
)

// fakeAPIServer answers TokenReviews: good-token is shop/web for audience
// stowage, anything else is not authenticated.
func fakeAPIServer(t *testing.T) (*httptest.Server, string) {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
			http.Error(w, "no", http.StatusNotFound)
			return
		}
		if r.Header.Get("Authorization") != "Bearer server-cred" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		var req map[string]any
		json.NewDecoder(r.Body).Decode(&req)
		spec := req["spec"].(map[string]any)
		auds, _ := spec["audiences"].([]any)
		resp := map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": map[string]any{"authenticated": false, "error": "invalid bearer token"}}
		if spec["token"] == "good-token" && len(auds) == 1 && auds[0] == "stowage" {
			resp["status"] = map[string]any{"authenticated": true, "audiences": []string{"stowage"},
				"user": map[string]any{"username": "system:serviceaccount:shop:web"}}
		}
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(resp)
	}))
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return srv, ca
}

func TestTokenReview_VerifiesAgainstTheAPIServer(t *testing.T) {
	srv, ca := fakeAPIServer(t)
	cred := filepath.Join(t.TempDir(), "cred")
	if err := auth.WriteTokenFile(cred, "server-cred"); err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewTokenReview(auth.TokenReviewConfig{APIServer: srv.URL, CAFile: ca, TokenFile: cred})
	if err != nil {
		t.Fatal(err)
	}
	ns, name, err := v.Verify(context.Background(), "good-token")
	if err != nil || ns != "shop" || name != "web" {
		t.Fatalf("Verify(good) = %q %q %v", ns, name, err)
	}
	_, _, err = v.Verify(context.Background(), "bad-token-value")
	if err == nil || strings.Contains(err.Error(), "bad-token-value") {
		t.Errorf("Verify(bad) = %v", err)
	}
	// Another audience is refused by the apiserver.
	v.Audience = "vault"
	if _, _, err := v.Verify(context.Background(), "good-token"); err == nil {
		t.Error("a token for audience stowage passed as vault")
	}
	// Without the CA the apiserver is not trusted.
	v2, _ := auth.NewTokenReview(auth.TokenReviewConfig{APIServer: srv.URL, TokenFile: cred})
	if _, _, err := v2.Verify(context.Background(), "good-token"); err == nil {
		t.Error("verified against an apiserver whose certificate is not trusted")
	}
}

// The server's own token file is read for each review: a pod's projected
// service-account token is rotated by the kubelet, and the old one expires.
func TestTokenReview_RereadsItsTokenFile(t *testing.T) {
	srv, ca := fakeAPIServer(t)
	cred := filepath.Join(t.TempDir(), "cred")
	if err := auth.WriteTokenFile(cred, "expired-cred"); err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewTokenReview(auth.TokenReviewConfig{APIServer: srv.URL, CAFile: ca, TokenFile: cred})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.Verify(context.Background(), "good-token"); err == nil {
		t.Fatal("the fake apiserver took a credential it does not know")
	}
	if err := auth.WriteTokenFile(cred, "server-cred"); err != nil {
		t.Fatal(err)
	}
	if ns, name, err := v.Verify(context.Background(), "good-token"); err != nil || ns != "shop" || name != "web" {
		t.Fatalf("after the token file was rotated, Verify = %q %q %v", ns, name, err)
	}
}

func TestReadTokenFile_RefusesFilesOthersCanRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(p, []byte("stw_secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := auth.ReadTokenFile(p)
	if err == nil || !strings.Contains(err.Error(), "chmod 600") || strings.Contains(err.Error(), "stw_secret") {
		t.Errorf("ReadTokenFile(0644) = %v", err)
	}
	os.Chmod(p, 0o600)
	if tok, err := auth.ReadTokenFile(p); err != nil || tok != "stw_secret" {
		t.Errorf("ReadTokenFile(0600) = %q, %v", tok, err)
	}
}

func TestBootstrapTokens_IssuesMissingAndKeepsValid(t *testing.T) {
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := auth.Records{Store: st}
	dir := filepath.Join(t.TempDir(), "tokens")
	ctx := context.Background()
	comps := auth.ComponentPrincipals("node-a")
	issued, err := r.BootstrapTokens(ctx, dir, comps)
	if err != nil || len(issued) != len(comps) {
		t.Fatalf("first start: issued %v, %v", issued, err)
	}
	node, _ := auth.ReadTokenFile(filepath.Join(dir, "csi-node"))
	rec, err := r.LookupToken(ctx, node)
	if err != nil || rec.Principal != "stowage:csi-node:node-a" {
		t.Fatalf("csi-node token: %v %v", rec, err)
	}
	fi, _ := os.Stat(filepath.Join(dir, "csi-node"))
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v", fi.Mode())
	}
	// A restart keeps them; a lost one comes back.
	os.Remove(filepath.Join(dir, "csi-file"))
	issued, err = r.BootstrapTokens(ctx, dir, comps)
	if err != nil || len(issued) != 1 || issued[0] != "csi-file" {
		t.Fatalf("restart: issued %v, %v", issued, err)
	}
	if again, _ := auth.ReadTokenFile(filepath.Join(dir, "csi-node")); again != node {
		t.Error("a valid token was replaced")
	}
	// The stored record is a hash, not the token.
	toks, _ := r.ListTokens(ctx, "")
	for _, tk := range toks {
		if tk.Hash == node || !strings.HasPrefix(tk.ID, "tok-") {
			t.Errorf("record %+v", tk)
		}
	}
}
