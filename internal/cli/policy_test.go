package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stowage-io/stowage/internal/cli"
	"github.com/stowage-io/stowage/internal/testutil/apitest"
)

func TestTokenAndPolicyCommands_TokenFileRestrictsTheCaller(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the administrator is root over the unix socket")
	}
	api := apitest.StartAuth(t, apitest.Auth{TCP: true})
	admin := api.Endpoint
	tcp := "tcp://" + api.TCPAddress
	mustRun(t, admin, "secret", "create", "db-pass", "--secret-string-file", writeFile(t, "p@ssw0rd"))

	tokenFile := filepath.Join(t.TempDir(), "ctrl.token")
	r := run(t, admin, "token", "create", "--principal", "stowage:csi-controller", "--out-file", tokenFile)
	if r.code != cli.ExitOK {
		t.Fatalf("token create: %d %s", r.code, r.stderr)
	}
	fi, err := os.Stat(tokenFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v mode %v", err, fi.Mode())
	}
	b, _ := os.ReadFile(tokenFile)
	token := strings.TrimSpace(string(b))
	if !strings.HasPrefix(token, "stw_") || strings.Contains(r.stdout+r.stderr, token) {
		t.Fatalf("token %q..., output %q %q", token[:4], r.stdout, r.stderr)
	}

	// No credentials over TCP.
	if r := run(t, tcp, "volume", "list"); r.code == cli.ExitOK || !strings.Contains(r.stderr, "--token-file") {
		t.Errorf("volume list over TCP without a token: exit %d, %s", r.code, r.stderr)
	}
	mustRun(t, tcp, "--token-file", tokenFile, "volume", "list")
	t.Setenv("STOWAGE_TOKEN_FILE", tokenFile)
	mustRun(t, tcp, "volume", "list")
	r = run(t, tcp, "secret", "get-value", "db-pass")
	if r.code == cli.ExitOK || !strings.Contains(r.stderr, "secretsmanager:GetSecretValue on db-pass") || strings.Contains(r.stderr+r.stdout, token) {
		t.Errorf("controller reads a secret: exit %d: %s", r.code, r.stderr)
	}
	t.Setenv("STOWAGE_TOKEN_FILE", "")

	// Policies, the document on stdin.
	doc := writeFile(t, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:GetSecretValue","Resource":"db-*"}]}`)
	mustRun(t, admin, "policy", "create", "--name", "shop-db", "--document-file", doc)
	mustRun(t, admin, "policy", "attach", "shop-db", "--principal", "system:serviceaccount:shop:web")
	if out := mustRun(t, admin, "policy", "list"); !strings.Contains(out, "system:serviceaccount:shop:web") {
		t.Errorf("policy list: %s", out)
	}
	if out := mustRun(t, admin, "policy", "get", "shop-db"); !strings.Contains(out, `"Resource":"db-*"`) {
		t.Errorf("policy get: %s", out)
	}
	if r := run(t, admin, "policy", "delete", "shop-db"); r.code != cli.ExitConflict {
		t.Errorf("deleting an attached policy: exit %d %s", r.code, r.stderr)
	}
	mustRun(t, admin, "policy", "detach", "shop-db", "--principal", "system:serviceaccount:shop:web")
	mustRun(t, admin, "policy", "delete", "shop-db")
	if out := mustRun(t, admin, "token", "list"); !strings.Contains(out, "stowage:csi-controller") || strings.Contains(out, token) {
		t.Errorf("token list: %s", out)
	}
}

// token secret issues the chart's component tokens as one Secret: a key per
// component and per node, each a token the server accepts for its
// principal; stderr counts them and shows none.
func TestTokenSecret_TheChartsTokensAsASecret(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the administrator is root over the unix socket")
	}
	api := apitest.StartAuth(t, apitest.Auth{TCP: true})
	if r := run(t, api.Endpoint, "token", "secret"); r.code != cli.ExitUsage || !strings.Contains(r.stderr, "--nodes") {
		t.Errorf("without --nodes: exit %d %s", r.code, r.stderr)
	}
	r := run(t, api.Endpoint, "token", "secret", "--nodes", "node-a,node-b", "--storage-hosts", "node-b", "--namespace", "storage")
	if r.code != cli.ExitOK {
		t.Fatalf("token secret: %d %s", r.code, r.stderr)
	}
	var s struct {
		APIVersion, Kind string
		Metadata         struct{ Name, Namespace string }
		StringData       map[string]string
	}
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("not a JSON Secret: %v\n%s", err, r.stdout)
	}
	if s.APIVersion != "v1" || s.Kind != "Secret" || s.Metadata.Name != "stowage-tokens" || s.Metadata.Namespace != "storage" {
		t.Errorf("Secret %+v", s.Metadata)
	}
	want := []string{"csi-controller", "csi-file", "secrets-provider", "csi-node-node-a", "csi-node-node-b", "storage-host-node-b"}
	if len(s.StringData) != len(want) {
		t.Errorf("keys %v, want %v", s.StringData, want)
	}
	for _, k := range want {
		tok := s.StringData[k]
		if !strings.HasPrefix(tok, "stw_") || strings.Contains(r.stderr, tok) {
			t.Errorf("key %s: %q... (or in stderr)", k, tok[:min(4, len(tok))])
		}
	}
	if !strings.Contains(r.stderr, "6 tokens issued for Secret storage/stowage-tokens") {
		t.Errorf("stderr: %q", r.stderr)
	}
	// Each token is its principal's: the controller's lists volumes over
	// TCP, and the server knows the node tokens by their nodes.
	tf := writeFile(t, s.StringData["csi-controller"])
	mustRun(t, "tcp://"+api.TCPAddress, "--token-file", tf, "volume", "list")
	// With --ca-file (the server's TLS CA) the Secret holds it as ca.crt,
	// which the chart's components trust with apiTLS.enabled.
	ca := writeFile(t, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	r = run(t, api.Endpoint, "--ca-file", ca, "token", "secret", "--nodes", "node-c")
	if err := json.Unmarshal([]byte(r.stdout), &s); r.code != cli.ExitOK || err != nil || !strings.HasPrefix(s.StringData["ca.crt"], "-----BEGIN CERTIFICATE-----") {
		t.Errorf("token secret --ca-file: exit %d, ca.crt %q (%v) %s", r.code, s.StringData["ca.crt"], err, r.stderr)
	}
	out := mustRun(t, api.Endpoint, "token", "list")
	for _, p := range []string{"stowage:csi-node:node-a", "stowage:csi-node:node-b", "stowage:secrets-provider", "stowage:csi-file", "stowage:storage-host:pool-node-b"} {
		if !strings.Contains(out, p) {
			t.Errorf("token list has no %s:\n%s", p, out)
		}
	}
}
