package kmsplugin_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/kmsplugin"
	"github.com/stowage-io/stowage/internal/testutil/apitest"
)

// startPlugin runs the plugin for key on a unix socket in a temporary
// directory, against the Stowage API at endpoint, and returns a KMS v2
// client of it, as kube-apiserver has.
func startPlugin(t *testing.T, endpoint, key string) kmsapi.KeyManagementServiceClient {
	t.Helper()
	dir, err := os.MkdirTemp("", "stwkms")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "kms.sock")
	// A stale socket from an earlier run must not stop the plugin.
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	plugin := kmsplugin.New(pb.NewKeyServiceClient(apitest.Dial(t, endpoint)), key, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- kmsplugin.Serve(ctx, "unix://"+sock, 5*time.Second, plugin, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("plugin did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("plugin socket did not appear")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("plugin stopped with %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return kmsapi.NewKeyManagementServiceClient(conn)
}

func TestKMSPlugin_EncryptRotateStatusDecryptOld_DisabledKeyUnhealthy(t *testing.T) {
	endpoint := apitest.Start(t)
	keys := pb.NewKeyServiceClient(apitest.Dial(t, endpoint))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key, err := keys.CreateKey(ctx, &pb.CreateKeyRequest{Description: "kubernetes secrets", Aliases: []string{"alias/k8s"}})
	if err != nil {
		t.Fatal(err)
	}
	apiserver := startPlugin(t, endpoint, "alias/k8s")

	st, err := apiserver.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	v0 := key.Id + "/0"
	if st.Version != "v2" || st.Healthz != "ok" || st.KeyId != v0 {
		t.Fatalf("status = %+v, want version v2, healthz ok, key id %s", st, v0)
	}

	seed := bytes.Repeat([]byte{0x5a}, 32)
	enc, err := apiserver.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "uid-1"})
	if err != nil {
		t.Fatal(err)
	}
	if enc.KeyId != v0 || len(enc.Ciphertext) == 0 || len(enc.Ciphertext) >= 1024 || bytes.Contains(enc.Ciphertext, seed) {
		t.Fatalf("encrypt = key id %q, %d-byte ciphertext; want %s and 1..1023 bytes without the plaintext", enc.KeyId, len(enc.Ciphertext), v0)
	}

	if _, err := keys.RotateKey(ctx, &pb.KeyRequest{KeyId: "alias/k8s"}); err != nil {
		t.Fatal(err)
	}
	st, err = apiserver.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	v1 := key.Id + "/1"
	if st.Healthz != "ok" || st.KeyId != v1 {
		t.Fatalf("status after rotation = %+v, want healthz ok and key id %s", st, v1)
	}
	enc1, err := apiserver.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "uid-2"})
	if err != nil {
		t.Fatal(err)
	}
	if enc1.KeyId != v1 {
		t.Fatalf("encrypt after rotation: key id %q, want %s", enc1.KeyId, v1)
	}
	for _, e := range []*kmsapi.EncryptResponse{enc, enc1} {
		dec, err := apiserver.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId, Uid: "uid-3", Annotations: e.Annotations})
		if err != nil {
			t.Fatalf("decrypt of a ciphertext of %s: %v", e.KeyId, err)
		}
		if !bytes.Equal(dec.Plaintext, seed) {
			t.Fatalf("decrypt of a ciphertext of %s gave other bytes", e.KeyId)
		}
	}
	// A key id that does not match the ciphertext is refused.
	if _, err := apiserver.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: v1, Uid: "uid-4"}); err == nil || !strings.Contains(err.Error(), v0) {
		t.Fatalf("decrypt with the wrong key id: %v, want an error naming %s", err, v0)
	}
	// A ciphertext of the same key made for another purpose is refused.
	other, err := keys.Encrypt(ctx, &pb.EncryptRequest{KeyId: "alias/k8s", Plaintext: seed})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := apiserver.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: other.CiphertextBlob, KeyId: v1, Uid: "uid-5"}); err == nil {
		t.Fatal("decrypt of a ciphertext made without the plugin's encryption context succeeded")
	}

	if _, err := keys.DisableKey(ctx, &pb.KeyRequest{KeyId: key.Id}); err != nil {
		t.Fatal(err)
	}
	st, err = apiserver.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Healthz == "ok" || !strings.Contains(st.Healthz, key.Id) || !strings.Contains(st.Healthz, "disabled") {
		t.Fatalf("status of a disabled key: healthz %q, want a message naming %s and saying disabled", st.Healthz, key.Id)
	}
	_, err = apiserver.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "uid-6"})
	if err == nil || !strings.Contains(err.Error(), key.Id) || !strings.Contains(err.Error(), "alias/k8s") {
		t.Fatalf("encrypt with a disabled key: %v, want an error naming alias/k8s and %s", err, key.Id)
	}

	if _, err := keys.EnableKey(ctx, &pb.KeyRequest{KeyId: key.Id}); err != nil {
		t.Fatal(err)
	}
	if st, err := apiserver.Status(ctx, &kmsapi.StatusRequest{}); err != nil || st.Healthz != "ok" {
		t.Fatalf("status after enable: %+v, %v", st, err)
	}
}

func TestKMSPlugin_MissingKey_UnhealthyNamingIt(t *testing.T) {
	endpoint := apitest.Start(t)
	apiserver := startPlugin(t, endpoint, "alias/nope")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := apiserver.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Healthz == "ok" || !strings.Contains(st.Healthz, "alias/nope") {
		t.Fatalf("status of a missing key: %+v, want unhealthy naming alias/nope", st)
	}
}
