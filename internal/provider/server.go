package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

const (
	// Name is the provider name a SecretProviderClass gives
	// (spec.provider); the socket is <providers dir>/<Name>.sock.
	Name = "stowage"
	// DefaultAudience is the audience of the service-account token the
	// CSIDriver's tokenRequests must list for Stowage.
	DefaultAudience = "stowage"
	// TokenMetadata is the gRPC metadata key that carries the pod's
	// service-account token to the Stowage API on every fetch of a mount.
	TokenMetadata = "stowage-pod-token"
	// Attribute keys the driver and the kubelet set.
	attrTokens    = "csi.storage.k8s.io/serviceAccount.tokens"
	attrNamespace = "csi.storage.k8s.io/pod.namespace"
	attrPod       = "csi.storage.k8s.io/pod.name"
	attrSA        = "csi.storage.k8s.io/serviceAccount.name"
	// noObjectsID is the one object version of a mount whose every object
	// is optional and missing: the driver fails a mount with none.
	noObjectsID = "stowage-no-objects"
	// MaxReply is the largest BatchGetValues reply a client should accept:
	// 100 objects of 64 KiB and their framing.
	MaxReply = 16 << 20
)

// Server is the Secrets Store CSI provider (provider/v1alpha1
// CSIDriverProvider): it parses a mount's objects, fetches them all from
// the Stowage API in one BatchGetValues, and returns the files for the
// driver to write.
type Server struct {
	v1alpha1.UnimplementedCSIDriverProviderServer
	secrets  pb.SecretServiceClient
	audience string
	version  string
	log      *slog.Logger
	// mounted remembers, per target path, the object versions last
	// written there: the v1.6 driver's rotation republish sends no
	// current versions, and with these a poll is still a version check.
	mu      sync.Mutex
	mounted map[string]mountedFiles
}

// mountedFiles is what a Mount returned for a target path: the versions of
// its files, for a mount of these objects (spec: objects, pathTranslation
// and permission).
type mountedFiles struct {
	spec     string
	versions map[string]string
}

// NewServer returns the provider. audience is the token audience it passes
// on ("" is DefaultAudience); version is reported by Version.
func NewServer(secrets pb.SecretServiceClient, audience, version string, log *slog.Logger) *Server {
	if audience == "" {
		audience = DefaultAudience
	}
	if log == nil {
		log = slog.Default()
	}
	return &Server{secrets: secrets, audience: audience, version: version, log: log, mounted: map[string]mountedFiles{}}
}

// Register adds the provider service to g.
func (s *Server) Register(g *grpc.Server) { v1alpha1.RegisterCSIDriverProviderServer(g, s) }

func (s *Server) Version(context.Context, *v1alpha1.VersionRequest) (*v1alpha1.VersionResponse, error) {
	return &v1alpha1.VersionResponse{Version: "v1alpha1", RuntimeName: Name, RuntimeVersion: s.version}, nil
}

// podToken returns the pod's service-account token for our audience from
// the tokens the driver passes (in the attributes, or in the secrets with
// serviceAccountTokenInSecrets), "" when the driver passes none. It never
// logs or returns the token in an error.
func (s *Server) podToken(attrib map[string]string, secrets string) (string, error) {
	raw := attrib[attrTokens]
	if raw == "" && secrets != "" {
		var sec map[string]string
		if json.Unmarshal([]byte(secrets), &sec) == nil {
			raw = sec[attrTokens]
		}
	}
	if raw == "" {
		return "", nil
	}
	var tokens map[string]struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(raw), &tokens); err != nil {
		return "", status.Errorf(codes.InvalidArgument, "the service-account tokens the driver passed are not JSON of {audience: {token, expirationTimestamp}}")
	}
	t, ok := tokens[s.audience]
	if !ok || t.Token == "" {
		return "", status.Errorf(codes.InvalidArgument, "no service-account token for audience %q: add {audience: %s} to the tokenRequests of the CSIDriver secrets-store.csi.k8s.io", s.audience, s.audience)
	}
	return t.Token, nil
}

func (s *Server) Mount(ctx context.Context, req *v1alpha1.MountRequest) (*v1alpha1.MountResponse, error) {
	// The attributes hold the pod's token: never log them.
	var attrib map[string]string
	if err := json.Unmarshal([]byte(req.GetAttributes()), &attrib); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "the mount's attributes are not a JSON object of strings: %v", err)
	}
	var perm os.FileMode
	if err := json.Unmarshal([]byte(req.GetPermission()), &perm); err != nil || perm > 0o777 {
		return nil, status.Errorf(codes.InvalidArgument, "the mount's permission %q is not a file mode", req.GetPermission())
	}
	pod := attrib[attrNamespace] + "/" + attrib[attrPod]
	objs, err := ParseObjects(attrib["objects"], attrib["pathTranslation"])
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	for _, n := range objs.Notes {
		s.log.Info("secrets-provider: "+n, "pod", pod)
	}
	if attrib["region"] != "" || attrib["failoverRegion"] != "" {
		s.log.Info("secrets-provider: region and failoverRegion are accepted and not used: a Stowage server is one region", "pod", pod)
	}
	token, err := s.podToken(attrib, req.GetSecrets())
	if err != nil {
		return nil, err
	}

	current := map[string]string{}
	for _, ov := range req.GetCurrentObjectVersion() {
		current[ov.GetId()] = ov.GetVersion()
	}
	spec := attrib["objects"] + "\x00" + attrib["pathTranslation"] + "\x00" + req.GetPermission()
	if len(current) == 0 {
		current = s.onDisk(req.GetTargetPath(), spec)
	}
	breq := &pb.BatchGetValuesRequest{OnlyIfChanged: len(current) > 0}
	for _, o := range objs.Objects {
		breq.Refs = append(breq.Refs, &pb.ValueRef{Type: o.Type, Id: o.Name, Version: o.Version, Label: o.VersionLabel,
			KnownVersion: current[o.FileName]})
	}
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, TokenMetadata, token)
	}
	bresp, err := s.secrets.BatchGetValues(ctx, breq)
	if err != nil {
		st := status.Convert(err)
		return nil, status.Errorf(st.Code(), "fetch the objects of the mount from the Stowage API: %s", st.Message())
	}
	if len(bresp.Values) != len(objs.Objects) {
		return nil, status.Errorf(codes.Internal, "the Stowage API returned %d values for %d objects", len(bresp.Values), len(objs.Objects))
	}

	resp := &v1alpha1.MountResponse{}
	addVersion := func(id, v string) {
		resp.ObjectVersion = append(resp.ObjectVersion, &v1alpha1.ObjectVersion{Id: id, Version: v})
	}
	modeOf := func(m os.FileMode) int32 {
		if m == 0 {
			m = perm
		}
		return int32(m)
	}
	for i, o := range objs.Objects {
		v := bresp.Values[i]
		if v.ErrorCode != 0 {
			code := codes.Code(v.ErrorCode)
			if code == codes.NotFound && o.Optional {
				s.log.Info("secrets-provider: optional object not found, left out of the mount", "object", o.Name, "pod", pod)
				continue
			}
			return nil, status.Errorf(code, "%s %s (for pod %s, service account %s): %s", kindOf(o.Type), o.Name, pod, attrib[attrSA], v.ErrorMessage)
		}
		addVersion(o.FileName, v.Version)
		for _, j := range o.JMESPath {
			addVersion(j.FileName, v.Version)
		}
		if bresp.Unchanged {
			continue
		}
		resp.Files = append(resp.Files, &v1alpha1.File{Path: o.FileName, Mode: modeOf(o.Mode), Contents: v.Value})
		for _, j := range o.JMESPath {
			out, err := Extract(o.Name, v.Value, j.Path, j.Alias)
			if err != nil {
				return nil, status.Error(codes.InvalidArgument, err.Error())
			}
			m := j.Mode
			if m == 0 {
				m = o.Mode
			}
			resp.Files = append(resp.Files, &v1alpha1.File{Path: j.FileName, Mode: modeOf(m), Contents: []byte(out)})
		}
	}
	if len(resp.ObjectVersion) == 0 {
		addVersion(noObjectsID, "0")
	}
	s.remember(req.GetTargetPath(), spec, resp.ObjectVersion)
	s.log.Info("secrets-provider: mount", "pod", pod, "objects", len(objs.Objects), "files", len(resp.Files), "unchanged", bresp.Unchanged)
	return resp, nil
}

// onDisk returns the versions last written to targetPath for a mount of
// spec, if every one of those files is still there (a new tmpfs after a
// driver restart is empty, and then everything is fetched again); nil
// otherwise. Target paths that are gone are forgotten.
func (s *Server) onDisk(targetPath, spec string) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.mounted {
		if _, err := os.Stat(p); err != nil {
			delete(s.mounted, p)
		}
	}
	m, ok := s.mounted[targetPath]
	if !ok || m.spec != spec || targetPath == "" {
		return nil
	}
	for f := range m.versions {
		if f == noObjectsID {
			continue
		}
		if _, err := os.Lstat(filepath.Join(targetPath, f)); err != nil {
			return nil
		}
	}
	return maps.Clone(m.versions)
}

func (s *Server) remember(targetPath, spec string, vs []*v1alpha1.ObjectVersion) {
	if targetPath == "" {
		return
	}
	m := mountedFiles{spec: spec, versions: map[string]string{}}
	for _, v := range vs {
		if v.GetId() != noObjectsID {
			m.versions[v.GetId()] = v.GetVersion()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mounted[targetPath] = m
}

func kindOf(t string) string {
	if t == TypeSSMParameter {
		return "parameter"
	}
	return "secret"
}

// SocketPath is where the driver looks for the provider in dir.
func SocketPath(dir string) string { return filepath.Join(dir, Name+".sock") }

// Listen makes dir and listens on SocketPath(dir), replacing a stale socket
// of an earlier run. The socket is mode 0660: the interface is secured only
// by filesystem permissions, as the driver's contract says.
func Listen(dir string) (net.Listener, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("providers dir %s: %w", dir, err)
	}
	sock := SocketPath(dir)
	if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove the stale socket %s: %w", sock, err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(sock, 0o660); err != nil {
		lis.Close()
		return nil, err
	}
	return lis, nil
}
