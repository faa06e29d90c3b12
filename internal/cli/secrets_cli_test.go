package cli_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/cli"
	"github.com/stowage-io/stowage/internal/csi"
	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/server"
	"github.com/stowage-io/stowage/internal/store/boltstore"
)

// startAPI runs the API server with a KMS on a unix socket, with a pool in
// a temporary directory (copy mode): enough for keys, secrets and
// parameters, and no root needed.
func startAPI(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "stwcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	st, err := boltstore.Open(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pool, err := agent.Open(agent.Config{Dir: filepath.Join(dir, "pool"), Zone: "zone-a", Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kms.Open(st, filepath.Join(dir, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Store: st, Pools: map[string]server.Pool{"pool-a": pool}, KMS: keys,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "unix://" + filepath.Join(dir, "api.sock")
	lis, err := csi.Listen(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return endpoint
}

func jsonField(t *testing.T, s string, path ...string) string {
	t.Helper()
	var m any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, s)
	}
	for _, p := range path {
		mm, ok := m.(map[string]any)
		if !ok {
			return ""
		}
		m = mm[p]
	}
	switch v := m.(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return ""
}

func TestKeyCommands_LifecycleEncryptDecryptRotate(t *testing.T) {
	ep := startAPI(t)
	id := jsonField(t, mustRun(t, ep, "key", "create", "--alias", "alias/app", "-o", "json"), "id")
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, []byte("top secret"), 0o600)
	ct := mustRun(t, ep, "key", "encrypt", "alias/app", "--plaintext-file", plain, "--context", "app=billing")
	ctFile := filepath.Join(dir, "ct")
	os.WriteFile(ctFile, []byte(ct), 0o600)
	if got := mustRun(t, ep, "key", "decrypt", "--ciphertext-file", ctFile, "--context", "app=billing"); got != "top secret" {
		t.Fatalf("decrypt = %q", got)
	}
	if r := run(t, ep, "key", "decrypt", "--ciphertext-file", ctFile, "--context", "app=other"); r.code != cli.ExitInvalidInput || !strings.Contains(r.stderr, id) {
		t.Fatalf("decrypt with another context: exit %d, %s", r.code, r.stderr)
	}
	if v := jsonField(t, mustRun(t, ep, "key", "rotate", id, "-o", "json"), "currentVersion"); v != "1" {
		t.Fatalf("after rotate the current version is %q, want 1", v)
	}
	if got := mustRun(t, ep, "key", "decrypt", "--ciphertext-file", ctFile, "--context", "app=billing"); got != "top secret" {
		t.Fatalf("decrypt of a version-0 ciphertext after rotation = %q", got)
	}
	mustRun(t, ep, "key", "disable", "alias/app")
	if r := run(t, ep, "key", "encrypt", "alias/app", "--plaintext-file", plain); r.code != cli.ExitConflict || !strings.Contains(r.stderr, id+" is disabled") {
		t.Fatalf("encrypt with a disabled key: exit %d, %s", r.code, r.stderr)
	}
	mustRun(t, ep, "key", "enable", "alias/app")
	if r := run(t, ep, "key", "schedule-deletion", id, "--pending-window-days", "3"); r.code != cli.ExitInvalidInput {
		t.Fatalf("3-day window: exit %d, %s", r.code, r.stderr)
	}
	if s := jsonField(t, mustRun(t, ep, "key", "schedule-deletion", id, "--pending-window-days", "7", "-o", "json"), "state"); s != "PendingDeletion" {
		t.Fatalf("state %q", s)
	}
	if r := run(t, ep, "key", "decrypt", "--ciphertext-file", ctFile, "--context", "app=billing"); r.code != cli.ExitConflict || !strings.Contains(r.stderr, "pending deletion") {
		t.Fatalf("decrypt with a key pending deletion: exit %d, %s", r.code, r.stderr)
	}
	if s := jsonField(t, mustRun(t, ep, "key", "cancel-deletion", id, "-o", "json"), "state"); s != "Disabled" {
		t.Fatalf("after cancel-deletion state %q, want Disabled", s)
	}
	mustRun(t, ep, "key", "alias", "create", "alias/app2", id)
	if got := jsonField(t, mustRun(t, ep, "key", "describe", "alias/app2", "-o", "json"), "id"); got != id {
		t.Fatalf("alias/app2 is %q", got)
	}
	mustRun(t, ep, "key", "alias", "delete", "alias/app2")
	if r := run(t, ep, "key", "describe", "alias/app2"); r.code != cli.ExitNotFound {
		t.Fatalf("describe of a deleted alias: exit %d", r.code)
	}
	mustRun(t, ep, "key", "create", "--alias", "alias/dk")
	if out := mustRun(t, ep, "key", "generate-data-key", "alias/dk", "--bytes", "16"); !strings.Contains(out, "PLAINTEXT") {
		t.Fatalf("generate-data-key: %s", out)
	}
	if out := mustRun(t, ep, "key", "list"); !strings.Contains(out, id) || !strings.Contains(out, "Disabled") {
		t.Fatalf("key list: %s", out)
	}
}

func TestSecretCommands_CreateGetPutRotateStageDeleteRestore(t *testing.T) {
	ep := startAPI(t)
	dir := t.TempDir()
	valFile := filepath.Join(dir, "v")
	os.WriteFile(valFile, []byte(`{"username":"admin","password":"p@ssw0rd"}`), 0o600)
	out := mustRun(t, ep, "secret", "create", "prod/db", "--secret-string-file", valFile, "--tag", "team=a", "-o", "json")
	arn, v1 := jsonField(t, out, "arn"), jsonField(t, out, "versionId")
	if !strings.Contains(arn, ":secret:prod/db-") || v1 == "" {
		t.Fatalf("create: %s", out)
	}
	if got := mustRun(t, ep, "secret", "get-value", arn); got != `{"username":"admin","password":"p@ssw0rd"}`+"\n" {
		t.Fatalf("get-value by ARN = %q", got)
	}
	if r := run(t, ep, "secret", "create", "prod/db", "--secret-string-file", valFile); r.code != cli.ExitConflict {
		t.Fatalf("create again: exit %d, %s", r.code, r.stderr)
	}
	v2 := jsonField(t, mustRun(t, ep, "secret", "put-value", "prod/db", "--secret-string-file", writeFile(t, `{"username":"admin","password":"second"}`), "-o", "json"), "versionId")
	if got := mustRun(t, ep, "secret", "get-value", "prod/db", "--version-stage", "AWSPREVIOUS"); !strings.Contains(got, "p@ssw0rd") {
		t.Fatalf("AWSPREVIOUS = %q", got)
	}
	v3 := jsonField(t, mustRun(t, ep, "secret", "rotate", "prod/db", "--json-key", "password", "--password-length", "16", "-o", "json"), "versionId")
	var obj map[string]string
	json.Unmarshal([]byte(mustRun(t, ep, "secret", "get-value", "prod/db")), &obj)
	if len(obj["password"]) != 16 || obj["username"] != "admin" {
		t.Fatalf("after rotate: password of %d characters, username %q", len(obj["password"]), obj["username"])
	}
	// Roll back: AWSCURRENT to v2, from v3.
	mustRun(t, ep, "secret", "update-version-stage", "prod/db", "AWSCURRENT", "--move-to-version-id", v2, "--remove-from-version-id", v3)
	if got := jsonField(t, mustRun(t, ep, "secret", "get-value", "prod/db", "-o", "json"), "versionId"); got != v2 {
		t.Fatalf("AWSCURRENT after roll back is %s, want %s (v1 %s)", got, v2, v1)
	}
	if r := run(t, ep, "secret", "update-version-stage", "prod/db", "AWSCURRENT", "--move-to-version-id", v1); r.code != cli.ExitInvalidInput || !strings.Contains(r.stderr, v2) {
		t.Fatalf("move without naming the holder: exit %d, %s", r.code, r.stderr)
	}
	if out := mustRun(t, ep, "secret", "tag", "prod/db", "--tag", "env=prod", "--remove", "team"); !strings.Contains(out, "env=prod") || strings.Contains(out, "team=a") {
		t.Fatalf("tag: %s", out)
	}
	if out := mustRun(t, ep, "secret", "describe", "prod/db"); !strings.Contains(out, "AWSCURRENT") || !strings.Contains(out, v2) {
		t.Fatalf("describe: %s", out)
	}
	mustRun(t, ep, "secret", "delete", "prod/db", "--recovery-window-days", "7")
	if r := run(t, ep, "secret", "get-value", "prod/db"); r.code != cli.ExitConflict || !strings.Contains(r.stderr, "restore") {
		t.Fatalf("get-value of a deleted secret: exit %d, %s", r.code, r.stderr)
	}
	if out := mustRun(t, ep, "secret", "list"); strings.Contains(out, "prod/db") {
		t.Fatalf("list shows a deleted secret: %s", out)
	}
	mustRun(t, ep, "secret", "restore", "prod/db")
	if out := mustRun(t, ep, "secret", "list"); !strings.Contains(out, "prod/db") {
		t.Fatalf("list after restore: %s", out)
	}
	mustRun(t, ep, "secret", "delete", "prod/db", "--force-delete-without-recovery")
	if r := run(t, ep, "secret", "describe", "prod/db"); r.code != cli.ExitNotFound {
		t.Fatalf("describe after forced delete: exit %d", r.code)
	}
	if out := mustRun(t, ep, "secret", "delete", "prod/db"); !strings.Contains(out, "did not exist") {
		t.Fatalf("delete of a missing secret: %s", out)
	}
}

func TestParamCommands_PutGetPathLabelHistory(t *testing.T) {
	ep := startAPI(t)
	mustRun(t, ep, "param", "put", "/app/db/url", "--value-file", writeFile(t, "postgres://a"))
	mustRun(t, ep, "param", "put", "/app/db/password", "--type", "SecureString", "--value-file", writeFile(t, "hunter2\n"))
	mustRun(t, ep, "param", "put", "/app/name", "--value-file", writeFile(t, "app"))
	if r := run(t, ep, "param", "put", "/app/name", "--value-file", writeFile(t, "app2")); r.code != cli.ExitConflict || !strings.Contains(r.stderr, "overwrite") {
		t.Fatalf("put without --overwrite: exit %d, %s", r.code, r.stderr)
	}
	mustRun(t, ep, "param", "put", "/app/name", "--value-file", writeFile(t, "app2"), "--overwrite")
	mustRun(t, ep, "param", "label", "/app/name", "stable", "--version", "1")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"param", "get", "/app/name"}, "app2\n"},
		{[]string{"param", "get", "/app/name:1"}, "app\n"},
		{[]string{"param", "get", "/app/name:stable"}, "app\n"},
		{[]string{"param", "get", "/app/db/password", "--with-decryption"}, "hunter2\n"},
	} {
		if got := mustRun(t, ep, tc.args...); got != tc.want {
			t.Errorf("%v = %q, want %q", tc.args, got, tc.want)
		}
	}
	if r := run(t, ep, "param", "get", "/app/db/password"); r.code == cli.ExitOK || strings.Contains(r.stdout+r.stderr, "hunter2") {
		t.Fatalf("get of a SecureString without decryption: exit %d, %q", r.code, r.stdout)
	}
	out := mustRun(t, ep, "param", "get-by-path", "/app")
	if !strings.Contains(out, "/app/name") || strings.Contains(out, "/app/db/url") {
		t.Fatalf("get-by-path /app (not recursive): %s", out)
	}
	out = mustRun(t, ep, "param", "get-by-path", "/app", "--recursive")
	if !strings.Contains(out, "/app/db/url") || !strings.Contains(out, "(encrypted)") || strings.Contains(out, "hunter2") {
		t.Fatalf("get-by-path /app --recursive: %s", out)
	}
	if out := mustRun(t, ep, "param", "history", "/app/name"); !strings.Contains(out, "stable") || strings.Count(out, "\n") != 3 {
		t.Fatalf("history: %s", out)
	}
	mustRun(t, ep, "param", "delete", "/app/name")
	if r := run(t, ep, "param", "get", "/app/name"); r.code != cli.ExitNotFound {
		t.Fatalf("get after delete: exit %d", r.code)
	}
}

// writeFile puts s in a new file and returns its path.
func writeFile(t *testing.T, s string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "v")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return f.Name()
}

// No command takes a secret value in its argument list: the old flags say
// what replaced them and never echo the value.
func TestValueFlags_InArgumentList_RefusedNamingTheFileFlag(t *testing.T) {
	ep := startAPI(t)
	const value = "s3cret-in-argv"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"secret", "create", "prod/x", "--secret-string", value}, "--secret-string-file"},
		{[]string{"secret", "put-value", "prod/x", "--secret-string", value}, "--secret-string-file"},
		{[]string{"param", "put", "/x", "--value", value}, "--value-file"},
		{[]string{"param", "put", "/x"}, "--value-file"},
		{[]string{"key", "encrypt", "alias/x", "--plaintext", value}, "--plaintext-file"},
		{[]string{"key", "encrypt", "alias/x"}, "--plaintext-file"},
	} {
		r := run(t, ep, tc.args...)
		if r.code != cli.ExitUsage || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr+r.stdout, value) {
			t.Errorf("stowage %s: exit %d, %q; want a usage error naming %s without the value", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
		}
	}
	for _, c := range [][]string{{"secret", "create", "--help"}, {"param", "put", "--help"}, {"key", "encrypt", "--help"}} {
		if out := mustRun(t, ep, c...); strings.Contains(out, "--secret-string ") || strings.Contains(out, "--value ") || strings.Contains(out, "--plaintext ") {
			t.Errorf("stowage %s still shows a value flag:\n%s", strings.Join(c, " "), out)
		}
	}
}
