package provider_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/provider"
	"github.com/stowage-io/stowage/internal/testutil/apitest"
)

// calls records the API calls the server saw, with the pod token each
// carried.
type calls struct {
	mu     sync.Mutex
	method []string
	token  []string
}

func (c *calls) interceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	c.mu.Lock()
	c.method = append(c.method, info.FullMethod)
	c.token = append(c.token, strings.Join(md.Get(provider.TokenMetadata), ","))
	c.mu.Unlock()
	return h(ctx, req)
}

func (c *calls) reset() {
	c.mu.Lock()
	c.method, c.token = nil, nil
	c.mu.Unlock()
}

func (c *calls) get() ([]string, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.method...), append([]string(nil), c.token...)
}

type env struct {
	secrets pb.SecretServiceClient
	params  pb.ParameterServiceClient
	keys    pb.KeyServiceClient
	driver  v1alpha1.CSIDriverProviderClient
	calls   *calls
	log     *bytes.Buffer
}

// start runs the API server and the provider on its socket, and returns
// the upstream client the driver uses.
func start(t *testing.T) *env {
	t.Helper()
	c := &calls{}
	endpoint := apitest.Start(t, grpc.ChainUnaryInterceptor(c.interceptor))
	api := apitest.Dial(t, endpoint)
	logs := &bytes.Buffer{}
	srv := provider.NewServer(pb.NewSecretServiceClient(api), "", "test", slog.New(slog.NewTextHandler(&syncWriter{w: logs}, nil)))
	dir, err := os.MkdirTemp("", "stwprov")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	lis, err := provider.Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("unix://"+provider.SocketPath(dir), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("localhost"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &env{secrets: pb.NewSecretServiceClient(api), params: pb.NewParameterServiceClient(api), keys: pb.NewKeyServiceClient(api),
		driver: v1alpha1.NewCSIDriverProviderClient(conn), calls: c, log: logs}
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

const podToken = "eyJhbGciOiJSUzI1NiJ9.pod-token-for-tests.sig"

// mountRequest is what the driver sends for a pod with these objects.
func mountRequest(t *testing.T, objects string, current []*v1alpha1.ObjectVersion) *v1alpha1.MountRequest {
	t.Helper()
	tokens, _ := json.Marshal(map[string]any{"stowage": map[string]string{"token": podToken, "expirationTimestamp": "2030-01-01T00:00:00Z"},
		"other": map[string]string{"token": "not-ours"}})
	attrib, _ := json.Marshal(map[string]string{
		"objects":                                  objects,
		"csi.storage.k8s.io/pod.name":              "web-0",
		"csi.storage.k8s.io/pod.namespace":         "shop",
		"csi.storage.k8s.io/serviceAccount.name":   "web",
		"csi.storage.k8s.io/serviceAccount.tokens": string(tokens),
		"secretProviderClass":                      "shop-secrets",
		"region":                                   "us-east-1",
	})
	return &v1alpha1.MountRequest{Attributes: string(attrib), Secrets: "{}", TargetPath: t.TempDir(), Permission: "420",
		CurrentObjectVersion: current}
}

func files(resp *v1alpha1.MountResponse) map[string]*v1alpha1.File {
	m := map[string]*v1alpha1.File{}
	for _, f := range resp.Files {
		m[f.Path] = f
	}
	return m
}

func versions(resp *v1alpha1.MountResponse) map[string]string {
	m := map[string]string{}
	for _, v := range resp.ObjectVersion {
		m[v.Id] = v.Version
	}
	return m
}

func TestMount_ThreeObjectsJMESPathSSMOptional_OneRoundTrip_TokenCarried(t *testing.T) {
	e := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := `{"username":"admin","password":"p@ssw0rd"}`
	dbRef, err := e.secrets.CreateSecret(ctx, &pb.CreateSecretRequest{Name: "prod/db", SecretString: &db})
	if err != nil {
		t.Fatal(err)
	}
	apiKey, tls := "k-123", "-----BEGIN CERTIFICATE-----"
	keyRef, err := e.secrets.CreateSecret(ctx, &pb.CreateSecretRequest{Name: "app/api-key", SecretString: &apiKey})
	if err != nil {
		t.Fatal(err)
	}
	tlsRef, err := e.secrets.CreateSecret(ctx, &pb.CreateSecretRequest{Name: "tls", SecretBinary: []byte(tls)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.params.PutParameter(ctx, &pb.PutParameterRequest{Name: "/app/db/password", Type: "SecureString", Value: "ssm-s3cret"}); err != nil {
		t.Fatal(err)
	}
	objects := `
- objectName: ` + dbRef.Arn + `
  objectAlias: db.json
  filePermission: "0600"
  jmesPath:
    - path: username
      objectAlias: db-user
    - path: password
      objectAlias: db-pass
      filePermission: "0400"
- objectName: app/api-key
  objectType: secretsmanager
- objectName: tls
  objectType: secretsmanager
  objectVersionLabel: AWSCURRENT
- objectName: /app/db/password
  objectType: ssmparameter
  objectAlias: ssm-pass
- objectName: not/there
  objectType: secretsmanager
  optional: true
`
	e.calls.reset()
	resp, err := e.driver.Mount(ctx, mountRequest(t, objects, nil))
	if err != nil {
		t.Fatal(err)
	}
	methods, tokens := e.calls.get()
	if len(methods) != 1 || methods[0] != "/stowage.v1.SecretService/BatchGetValues" {
		t.Fatalf("API calls of one mount: %v, want one BatchGetValues", methods)
	}
	if tokens[0] != podToken {
		t.Fatalf("the API call carried pod token %q, want the pod's token for audience stowage", tokens[0])
	}
	want := map[string]struct {
		content string
		mode    int32
	}{
		"db.json":     {db, 0o600},
		"db-user":     {"admin", 0o600},
		"db-pass":     {"p@ssw0rd", 0o400},
		"app_api-key": {apiKey, 0o644},
		"tls":         {tls, 0o644},
		"ssm-pass":    {"ssm-s3cret", 0o644},
	}
	got := files(resp)
	if len(got) != len(want) {
		t.Errorf("files %v, want %d files", keys(got), len(want))
	}
	for p, w := range want {
		f := got[p]
		if f == nil {
			t.Errorf("no file %s", p)
			continue
		}
		if string(f.Contents) != w.content || f.Mode != w.mode {
			t.Errorf("file %s: mode %o, %d bytes; want mode %o and the value", p, f.Mode, len(f.Contents), w.mode)
		}
	}
	vers := versions(resp)
	for id, v := range map[string]string{"db.json": dbRef.VersionId, "db-user": dbRef.VersionId, "db-pass": dbRef.VersionId,
		"app_api-key": keyRef.VersionId, "tls": tlsRef.VersionId, "ssm-pass": "1"} {
		if vers[id] != v {
			t.Errorf("object version %s = %q, want %q", id, vers[id], v)
		}
	}
	if _, ok := vers["not_there"]; ok {
		t.Error("the missing optional object has an object version")
	}
	logs := e.log.String()
	if strings.Contains(logs, podToken) || strings.Contains(logs, "p@ssw0rd") || strings.Contains(logs, "ssm-s3cret") {
		t.Fatalf("the provider logged the token or a value:\n%s", logs)
	}
	if !strings.Contains(logs, "not/there") {
		t.Errorf("the skipped optional object is not in the log:\n%s", logs)
	}

	// The driver's rotation poll with the versions it has: nothing
	// changed, so only versions come back (no files: the driver leaves the
	// mounted ones), and the server decrypts nothing — it works with the
	// KMS keys disabled.
	for _, k := range []string{"alias/stowage/secretsmanager", "alias/stowage/ssm"} {
		if _, err := e.keys.DisableKey(ctx, &pb.KeyRequest{KeyId: k}); err != nil {
			t.Fatal(err)
		}
	}
	e.calls.reset()
	again, err := e.driver.Mount(ctx, mountRequest(t, objects, resp.ObjectVersion))
	if err != nil {
		t.Fatalf("version-unchanged poll: %v", err)
	}
	if len(again.Files) != 0 || len(again.ObjectVersion) != len(resp.ObjectVersion) {
		t.Fatalf("version-unchanged poll: %d files, %d versions; want none and %d", len(again.Files), len(again.ObjectVersion), len(resp.ObjectVersion))
	}
	if methods, _ := e.calls.get(); len(methods) != 1 {
		t.Fatalf("version-unchanged poll made API calls %v, want one", methods)
	}
	// Without versions, the disabled key stops the mount, naming the
	// secret and the key.
	_, err = e.driver.Mount(ctx, mountRequest(t, objects, nil))
	if err == nil || !strings.Contains(err.Error(), "disabled") || !strings.Contains(err.Error(), "KMS key") {
		t.Fatalf("mount with a disabled key: %v, want an error naming the key and its state", err)
	}
	for _, k := range []string{"alias/stowage/secretsmanager", "alias/stowage/ssm"} {
		if _, err := e.keys.EnableKey(ctx, &pb.KeyRequest{KeyId: k}); err != nil {
			t.Fatal(err)
		}
	}

	// A new version of one object: the poll returns every file again, with
	// the new value and version.
	newKey := "k-456"
	put, err := e.secrets.PutSecretValue(ctx, &pb.PutSecretValueRequest{SecretId: "app/api-key", SecretString: &newKey})
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := e.driver.Mount(ctx, mountRequest(t, objects, resp.ObjectVersion))
	if err != nil {
		t.Fatal(err)
	}
	if f := files(rotated)["app_api-key"]; f == nil || string(f.Contents) != newKey || len(rotated.Files) != len(want) {
		t.Fatalf("after put-value: %d files, app_api-key %v; want all files and the new value", len(rotated.Files), f)
	}
	if v := versions(rotated)["app_api-key"]; v != put.VersionId {
		t.Fatalf("after put-value: version %q, want %q", v, put.VersionId)
	}
}

func keys(m map[string]*v1alpha1.File) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestMount_MissingObject_FailsNamingIt(t *testing.T) {
	e := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v := "x"
	if _, err := e.secrets.CreateSecret(ctx, &pb.CreateSecretRequest{Name: "here", SecretString: &v}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ objects, want string }{
		{"- objectName: here\n  objectType: secretsmanager\n- objectName: prod/nope\n  objectType: secretsmanager\n", "secret prod/nope"},
		{"- objectName: /app/nope\n  objectType: ssmparameter\n", "parameter /app/nope"},
		{"- objectName: here\n  objectType: secretsmanager\n  objectVersionLabel: STAGING\n", "STAGING"},
		{"- objectName: here\n  objectType: secretsmanager\n  jmesPath:\n    - path: a\n      objectAlias: a\n", "Invalid JSON used with jmesPath in secret: here."},
		{"- objectName: here\n", "Must use objectType when a full ARN is not specified: here"},
	} {
		_, err := e.driver.Mount(ctx, mountRequest(t, tc.objects, nil))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("objects %q: %v, want an error with %q", tc.objects, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), podToken) {
			t.Errorf("the error holds the pod token: %v", err)
		}
	}
	if _, err := e.driver.Mount(ctx, mountRequest(t, "- objectName: prod/nope\n  objectType: secretsmanager\n", nil)); err == nil ||
		!strings.Contains(err.Error(), "shop/web-0") || !strings.Contains(err.Error(), "service account web") {
		t.Errorf("a failed mount does not name the pod and its service account: %v", err)
	}
}

func TestMount_AllOptionalMissing_SucceedsEmpty(t *testing.T) {
	e := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := e.driver.Mount(ctx, mountRequest(t, "- objectName: a\n  objectType: secretsmanager\n  optional: true\n", nil))
	if err != nil {
		t.Fatal(err)
	}
	// The driver fails a mount without object versions.
	if len(resp.Files) != 0 || len(resp.ObjectVersion) != 1 {
		t.Fatalf("got %d files and versions %v; want none and one placeholder", len(resp.Files), resp.ObjectVersion)
	}
}

func TestMount_TokenForOtherAudienceOnly_Refused(t *testing.T) {
	e := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tokens := `{"sts.amazonaws.com":{"token":"aws-token"}}`
	attrib, _ := json.Marshal(map[string]string{"objects": "- objectName: a\n  objectType: secretsmanager\n",
		"csi.storage.k8s.io/serviceAccount.tokens": tokens})
	_, err := e.driver.Mount(ctx, &v1alpha1.MountRequest{Attributes: string(attrib), Permission: "420", TargetPath: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), `audience "stowage"`) || strings.Contains(err.Error(), "aws-token") {
		t.Fatalf("mount without a token for our audience: %v, want a message about tokenRequests without the token", err)
	}
	v, err := e.driver.Version(ctx, &v1alpha1.VersionRequest{Version: "v1alpha1"})
	if err != nil || v.RuntimeName != "stowage" || v.Version != "v1alpha1" {
		t.Fatalf("version: %+v, %v", v, err)
	}
}

// The v1.6 driver's rotation republish sends no current versions. The
// provider remembers what it wrote to each target path, so while those
// files are there a poll is a version check (nothing decrypted: it works
// with the key disabled, and returns no files, which the driver takes as
// "leave them"); a missing file, or other objects, fetch everything again.
func TestMount_RepublishWithoutVersions_VersionCheckWhileFilesAreThere(t *testing.T) {
	e := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v := "v-1"
	if _, err := e.secrets.CreateSecret(ctx, &pb.CreateSecretRequest{Name: "app/token", SecretString: &v}); err != nil {
		t.Fatal(err)
	}
	objects := "- objectName: app/token\n  objectType: secretsmanager\n"
	req := mountRequest(t, objects, nil)
	write := func(resp *v1alpha1.MountResponse) {
		for _, f := range resp.Files {
			if err := os.WriteFile(filepath.Join(req.TargetPath, f.Path), f.Contents, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	first, err := e.driver.Mount(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Files) != 1 {
		t.Fatalf("first mount: %d files, want 1", len(first.Files))
	}
	write(first)

	if _, err := e.keys.DisableKey(ctx, &pb.KeyRequest{KeyId: "alias/stowage/secretsmanager"}); err != nil {
		t.Fatal(err)
	}
	again, err := e.driver.Mount(ctx, req)
	if err != nil {
		t.Fatalf("republish with the files in place: %v (want a version check, which needs no key)", err)
	}
	if len(again.Files) != 0 || versions(again)["app_token"] != versions(first)["app_token"] {
		t.Fatalf("republish with the files in place: %d files, versions %v; want none and %v", len(again.Files), versions(again), versions(first))
	}
	// Other objects at the same path are not the same mount.
	if _, err := e.driver.Mount(ctx, &v1alpha1.MountRequest{Attributes: mountRequest(t, objects+"  objectAlias: other\n", nil).Attributes,
		TargetPath: req.TargetPath, Permission: req.Permission, Secrets: req.Secrets}); err == nil {
		t.Fatal("a mount of other objects at the same path was answered from memory; want a fetch (which fails: the key is disabled)")
	}
	if _, err := e.keys.EnableKey(ctx, &pb.KeyRequest{KeyId: "alias/stowage/secretsmanager"}); err != nil {
		t.Fatal(err)
	}
	// A new value is found by the version check and returned whole.
	v2 := "v-2"
	if _, err := e.secrets.PutSecretValue(ctx, &pb.PutSecretValueRequest{SecretId: "app/token", SecretString: &v2}); err != nil {
		t.Fatal(err)
	}
	rotated, err := e.driver.Mount(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if f := files(rotated)["app_token"]; f == nil || string(f.Contents) != v2 {
		t.Fatalf("after put-value: files %v, want app_token = v-2", keys(files(rotated)))
	}
	write(rotated)
	// A target path whose files are gone (a new tmpfs) gets them again.
	os.Remove(filepath.Join(req.TargetPath, "app_token"))
	refetch, err := e.driver.Mount(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if f := files(refetch)["app_token"]; f == nil || string(f.Contents) != v2 {
		t.Fatalf("with the file gone: files %v, want app_token again", keys(files(refetch)))
	}
}
