// Package kmsplugin is kube-apiserver's KMS v2 plugin backed by a Stowage
// KMS key: the apiserver hands it a data-encryption seed to wrap (once per
// apiserver start and per key id change, not once per Secret), and the
// plugin wraps it with the Stowage KMS Encrypt of that key.
//
// Contract (k8s.io/kms apis/v2):
//   - Status reports healthz "ok" and key id = the key's current version
//     (<key id>/<version>, kms.Key.VersionID). A rotation changes it, so the
//     apiserver makes a new seed and new writes use the new version.
//   - Encrypt returns the Stowage ciphertext (it names its key and version,
//     well under 1 kB for a 32-byte seed) and the key id of the version that
//     encrypted it. No annotations: everything Decrypt needs is in the
//     ciphertext.
//   - Decrypt gets the ciphertext and key id back, checks that they agree,
//     and calls the Stowage KMS Decrypt, which any version of the key can
//     do, so Secrets written before a rotation still read.
//
// The encryption context binds every ciphertext to this use; a ciphertext
// of `stowage key encrypt` cannot be passed off as a seed.
package kmsplugin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"
	"k8s.io/kms/pkg/service"
	"k8s.io/kms/pkg/util"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/kms"
)

// EncryptionContext is the context of every ciphertext the plugin makes.
var EncryptionContext = map[string]string{"stowage.io/purpose": "kubernetes-kms-v2"}

// Plugin implements k8s.io/kms/pkg/service.Service.
type Plugin struct {
	keys pb.KeyServiceClient
	// key is what --key named: a key id, an alias or an ARN.
	key string
	log *slog.Logger
}

var _ service.Service = (*Plugin)(nil)

// New returns the plugin for key (a key id, alias or ARN) of the KMS behind
// keys.
func New(keys pb.KeyServiceClient, key string, log *slog.Logger) *Plugin {
	if log == nil {
		log = slog.Default()
	}
	return &Plugin{keys: keys, key: key, log: log}
}

// versionID is the key id the plugin reports: <key id>/<version>, as
// kms.Key.VersionID.
func versionID(keyID string, version int32) string {
	k := kms.Key{ID: keyID, Material: make([][]byte, version+1)}
	return k.VersionID()
}

func parseVersionID(s string) (keyID string, version int32, err error) {
	i := strings.LastIndexByte(s, '/')
	if i <= 0 {
		return "", 0, fmt.Errorf("key id %q is not <key id>/<version>", s)
	}
	v, err := strconv.ParseInt(s[i+1:], 10, 32)
	if err != nil || v < 0 {
		return "", 0, fmt.Errorf("key id %q is not <key id>/<version>", s)
	}
	return s[:i], int32(v), nil
}

// message is the server's message of a gRPC error (it names the key and its
// state), or the error itself.
func message(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}

// Status is polled by the apiserver (every minute when healthy, every 10 s
// when not). It asks the server for the key's state and current version:
// one small metadata read, no crypto.
func (p *Plugin) Status(ctx context.Context) (*service.StatusResponse, error) {
	k, err := p.keys.DescribeKey(ctx, &pb.DescribeKeyRequest{KeyId: p.key})
	if err != nil {
		msg := fmt.Sprintf("KMS key %s: %s", p.key, message(err))
		p.log.Warn("kms-plugin status: unhealthy", "key", p.key, "error", msg)
		return &service.StatusResponse{Version: "v2", Healthz: msg, KeyID: p.key}, nil
	}
	id := versionID(k.Id, k.CurrentVersion)
	if k.State != kms.StateEnabled {
		msg := (&kms.StateError{KeyID: k.Id, State: k.State, DeletionDate: k.DeletionTime.AsTime(), Op: "encrypt or decrypt Kubernetes Secrets"}).Error()
		p.log.Warn("kms-plugin status: unhealthy", "key", p.key, "error", msg)
		return &service.StatusResponse{Version: "v2", Healthz: msg, KeyID: id}, nil
	}
	return &service.StatusResponse{Version: "v2", Healthz: "ok", KeyID: id}, nil
}

// Encrypt wraps data (the apiserver's seed) with the current version of the
// key.
func (p *Plugin) Encrypt(ctx context.Context, uid string, data []byte) (*service.EncryptResponse, error) {
	resp, err := p.keys.Encrypt(ctx, &pb.EncryptRequest{KeyId: p.key, Plaintext: data, EncryptionContext: EncryptionContext})
	if err != nil {
		p.log.Warn("kms-plugin encrypt failed", "key", p.key, "uid", uid, "error", message(err))
		return nil, fmt.Errorf("encrypt with KMS key %s: %s", p.key, message(err))
	}
	return &service.EncryptResponse{Ciphertext: resp.CiphertextBlob, KeyID: versionID(resp.KeyId, resp.KeyVersion)}, nil
}

// Decrypt unwraps a ciphertext made by Encrypt, with whichever version of
// the key made it.
func (p *Plugin) Decrypt(ctx context.Context, uid string, req *service.DecryptRequest) ([]byte, error) {
	wantKey, wantVersion, err := parseVersionID(req.KeyID)
	if err != nil {
		return nil, fmt.Errorf("decrypt: %w", err)
	}
	blobKey, blobVersion, err := kms.BlobKey(req.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("decrypt: the ciphertext is not a Stowage KMS ciphertext: %w", err)
	}
	if blobKey != wantKey || int32(blobVersion) != wantVersion {
		return nil, fmt.Errorf("decrypt: the ciphertext was made by %s, not by %s as its key id says", versionID(blobKey, int32(blobVersion)), req.KeyID)
	}
	resp, err := p.keys.Decrypt(ctx, &pb.DecryptRequest{CiphertextBlob: req.Ciphertext, EncryptionContext: EncryptionContext})
	if err != nil {
		p.log.Warn("kms-plugin decrypt failed", "key", req.KeyID, "uid", uid, "error", message(err))
		return nil, fmt.Errorf("decrypt with KMS key %s: %s", req.KeyID, message(err))
	}
	return resp.Plaintext, nil
}

// Serve serves plugin on listen (unix:///path, or unix:///@name for an
// abstract socket, as kube-apiserver's EncryptionConfiguration endpoint
// says) until ctx ends. A stale socket file from an earlier run is removed
// first. ready, if not nil, is called once the socket listens.
//
// The listener and the gRPC server are ours (k8s.io/kms's GRPCService is
// only the handler): its ListenAndServe sets its server in a goroutine
// that Shutdown may not see, which left a plugin running after its
// context ended. On ctx's end the server stops gracefully, and by force
// after shutdownGrace.
func Serve(ctx context.Context, listen string, timeout time.Duration, plugin *Plugin, ready func()) error {
	addr, err := util.ParseEndpoint(listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", listen, err)
	}
	if !strings.HasPrefix(addr, "@") {
		if err := os.MkdirAll(filepath.Dir(addr), 0o750); err != nil {
			return err
		}
		if err := os.Remove(addr); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove the stale socket %s: %w", addr, err)
		}
	}
	lis, err := net.Listen("unix", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	gs := grpc.NewServer(grpc.ConnectionTimeout(timeout))
	kmsapi.RegisterKeyManagementServiceServer(gs, service.NewGRPCService(addr, timeout, plugin))
	done := make(chan error, 1)
	go func() { done <- gs.Serve(lis) }()
	if ready != nil {
		ready()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(shutdownGrace):
			gs.Stop()
		}
		<-done
		return nil
	}
}

// shutdownGrace is how long Serve waits for calls in flight when it stops.
const shutdownGrace = 5 * time.Second
