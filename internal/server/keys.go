package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/block"
	"github.com/stowage-io/stowage/internal/kms"
)

// volumeEncryption decides how a new volume is encrypted. A restore or a
// clone keeps its source's data key (the data is already encrypted with it),
// so it cannot drop encryption, add it, or change the key.
func (s *Server) volumeEncryption(ctx context.Context, req *pb.CreateVolumeRequest) (Encryption, error) {
	var src *Encryption
	switch {
	case req.SnapshotId != "":
		sn, err := s.getSnapshot(ctx, req.SnapshotId)
		if err != nil {
			return Encryption{}, err
		}
		src = &sn.Encryption
	case req.SourceVolumeId != "":
		v, err := s.getVolume(ctx, req.SourceVolumeId)
		if err != nil {
			return Encryption{}, err
		}
		src = &v.Encryption
	}
	wantEncrypted := req.Encrypted || req.KmsKeyId != ""
	if src != nil {
		if wantEncrypted && !src.Encrypted {
			return Encryption{}, status.Error(codes.InvalidArgument,
				"the source of this restore or clone is not encrypted, and Stowage cannot encrypt existing data in place: create an encrypted volume and copy the data")
		}
		if src.Encrypted && req.KmsKeyId != "" {
			k, err := s.kms.Resolve(ctx, req.KmsKeyId)
			if err != nil {
				return Encryption{}, kmsError(err, req.KmsKeyId)
			}
			if k.ID != src.KMSKeyID {
				return Encryption{}, status.Errorf(codes.InvalidArgument,
					"a restore or clone keeps its source's key %s; kmsKeyId %s names another key", src.KMSKeyID, req.KmsKeyId)
			}
		}
		return *src, nil
	}
	if !wantEncrypted {
		return Encryption{}, nil
	}
	_, wrapped, keyID, err := s.kms.GenerateDataKey(ctx, req.KmsKeyId, block.DataKeySize, nil)
	if err != nil {
		return Encryption{}, kmsError(err, req.KmsKeyId)
	}
	return Encryption{Encrypted: true, KMSKeyID: keyID, DataKey: wrapped}, nil
}

func kmsError(err error, ref string) error {
	if ref == "" {
		ref = kms.DefaultAlias
	}
	switch {
	case errors.Is(err, kms.ErrNotFound):
		return status.Errorf(codes.InvalidArgument, "KMS key %s does not exist (see `stowage key list`)", ref)
	case errors.Is(err, kms.ErrDisabled):
		// The message names the key and its state.
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, kms.ErrInvalid):
		return status.Errorf(codes.InvalidArgument, "KMS key %s: %v", ref, err)
	case errors.Is(err, kms.ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	}
	return internal(err, "KMS key %s", ref)
}

// GetVolumeDataKey unwraps an encrypted volume's data key for the node it
// is attached to, and for no one else.
func (s *Server) GetVolumeDataKey(ctx context.Context, req *pb.GetVolumeDataKeyRequest) (*pb.VolumeDataKey, error) {
	node, err := s.callerNode(ctx, req.NodeId, "kms:GetVolumeDataKey", "the data key of volume "+req.VolumeId)
	if err != nil {
		return nil, err
	}
	if req.VolumeId == "" || node == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and node id are required")
	}
	v, err := s.getVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	if !v.Encrypted {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not encrypted", v.ID)
	}
	if _, ok := v.attachment(node); !ok {
		return nil, status.Errorf(codes.PermissionDenied, "volume %s is not attached to node %s, so that node may not have its key", v.ID, node)
	}
	if s.kms == nil {
		return nil, status.Error(codes.FailedPrecondition, "this server runs without a KMS")
	}
	key, keyID, err := s.kms.Decrypt(ctx, v.DataKey, nil)
	if err != nil {
		return nil, kmsError(err, v.KMSKeyID)
	}
	s.log.Info("volume data key released", "volume", v.ID, "node", node, "kmsKey", keyID)
	return &pb.VolumeDataKey{VolumeId: v.ID, Key: key, KmsKeyId: keyID}, nil
}

// callerNode is the node something only a node may have (a data key, an
// attachment secret) is released to: the caller's own node for a node
// plugin (a request naming another node is refused), the request's node
// for the administrator, nobody else.
func (s *Server) callerNode(ctx context.Context, reqNode, action, what string) (string, error) {
	if s.auth == nil {
		return reqNode, nil
	}
	p, ok := auth.FromContext(ctx)
	switch {
	case !ok:
		return "", status.Error(codes.Unauthenticated, "no proven caller")
	case p.Node() != "":
		if reqNode != "" && reqNode != p.Node() {
			return "", status.Errorf(codes.PermissionDenied, "%s may not have %s for node %s: a node plugin gets it for its own node only", p, what, reqNode)
		}
		return p.Node(), nil
	case p.Kind == auth.Admin:
		return reqNode, nil
	}
	return "", status.Errorf(codes.PermissionDenied, "%s may not %s (%s): only a node plugin (%s<node>) or the administrator may", p, action, what, auth.CSINodePrefix)
}

func (s *Server) requireKMS() error {
	if s.kms == nil {
		return status.Error(codes.FailedPrecondition, "this server runs without a KMS")
	}
	return nil
}

func keyProto(k *kms.Key) *pb.Key {
	p := &pb.Key{Id: k.ID, Aliases: k.Aliases, Description: k.Description, State: k.State, CreateTime: timestamppb.New(k.Created),
		CurrentVersion: int32(k.CurrentVersion()), CurrentVersionCreateTime: timestamppb.New(k.Created)}
	if v := k.CurrentVersion(); v < len(k.VersionCreated) {
		p.CurrentVersionCreateTime = timestamppb.New(k.VersionCreated[v])
	}
	if !k.DeletionDate.IsZero() {
		p.DeletionTime = timestamppb.New(k.DeletionDate)
	}
	return p
}

func (s *Server) CreateKey(ctx context.Context, req *pb.CreateKeyRequest) (*pb.Key, error) {
	if err := s.requireKMS(); err != nil {
		return nil, err
	}
	k, err := s.kms.CreateKey(ctx, req.Description, req.Aliases...)
	if err != nil {
		return nil, kmsError(err, "")
	}
	s.log.Info("KMS key created", "key", k.ID, "aliases", k.Aliases)
	return keyProto(k), nil
}

func (s *Server) DescribeKey(ctx context.Context, req *pb.DescribeKeyRequest) (*pb.Key, error) {
	if err := s.requireKMS(); err != nil {
		return nil, err
	}
	if req.KeyId == "" {
		return nil, status.Error(codes.InvalidArgument, "key id is required")
	}
	k, err := s.kms.Resolve(ctx, req.KeyId)
	if errors.Is(err, kms.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "KMS key %s does not exist", req.KeyId)
	}
	if err != nil {
		return nil, kmsError(err, req.KeyId)
	}
	return keyProto(k), nil
}

func (s *Server) ListKeys(ctx context.Context, _ *pb.ListKeysRequest) (*pb.ListKeysResponse, error) {
	if err := s.requireKMS(); err != nil {
		return nil, err
	}
	keys, err := s.kms.ListKeys(ctx)
	if err != nil {
		return nil, internal(err, "list KMS keys")
	}
	resp := &pb.ListKeysResponse{}
	for i := range keys {
		resp.Keys = append(resp.Keys, keyProto(&keys[i]))
	}
	return resp, nil
}

// keyOpError maps a KMS error of a KeyService call, where the key named is
// the object of the call: a missing key is NOT_FOUND.
func keyOpError(err error, ref string) error {
	if errors.Is(err, kms.ErrNotFound) {
		return status.Errorf(codes.NotFound, "KMS key %s does not exist (see `stowage key list`)", ref)
	}
	return kmsError(err, ref)
}

// keyChange runs one state change of a key named in the request.
func (s *Server) keyChange(ctx context.Context, ref, what string, fn func(*kms.Service, context.Context, string) (*kms.Key, error)) (*pb.Key, error) {
	if err := s.requireKMS(); err != nil {
		return nil, err
	}
	if ref == "" {
		return nil, status.Error(codes.InvalidArgument, "key id is required")
	}
	k, err := fn(s.kms, ctx, ref)
	if err != nil {
		return nil, keyOpError(err, ref)
	}
	s.log.Info("KMS key "+what, "key", k.ID, "state", k.State, "version", k.CurrentVersion())
	return keyProto(k), nil
}

func (s *Server) EnableKey(ctx context.Context, req *pb.KeyRequest) (*pb.Key, error) {
	return s.keyChange(ctx, req.KeyId, "enabled", (*kms.Service).EnableKey)
}

func (s *Server) DisableKey(ctx context.Context, req *pb.KeyRequest) (*pb.Key, error) {
	return s.keyChange(ctx, req.KeyId, "disabled", (*kms.Service).DisableKey)
}

func (s *Server) ScheduleKeyDeletion(ctx context.Context, req *pb.ScheduleKeyDeletionRequest) (*pb.Key, error) {
	return s.keyChange(ctx, req.KeyId, "scheduled for deletion", func(k *kms.Service, ctx context.Context, ref string) (*kms.Key, error) {
		return k.ScheduleKeyDeletion(ctx, ref, int(req.PendingWindowInDays))
	})
}

func (s *Server) CancelKeyDeletion(ctx context.Context, req *pb.KeyRequest) (*pb.Key, error) {
	return s.keyChange(ctx, req.KeyId, "deletion cancelled", (*kms.Service).CancelKeyDeletion)
}

func (s *Server) RotateKey(ctx context.Context, req *pb.KeyRequest) (*pb.Key, error) {
	return s.keyChange(ctx, req.KeyId, "rotated", (*kms.Service).RotateKey)
}

func (s *Server) CreateAlias(ctx context.Context, req *pb.CreateAliasRequest) (*pb.Key, error) {
	return s.keyChange(ctx, req.TargetKeyId, "alias created", func(k *kms.Service, ctx context.Context, ref string) (*kms.Key, error) {
		return k.CreateAlias(ctx, req.AliasName, ref)
	})
}

func (s *Server) DeleteAlias(ctx context.Context, req *pb.DeleteAliasRequest) (*pb.DeleteAliasResponse, error) {
	if err := s.requireKMS(); err != nil {
		return nil, err
	}
	if err := s.kms.DeleteAlias(ctx, req.AliasName); err != nil {
		return nil, keyOpError(err, req.AliasName)
	}
	return &pb.DeleteAliasResponse{}, nil
}

func (s *Server) Encrypt(ctx context.Context, req *pb.EncryptRequest) (*pb.EncryptResponse, error) {
	if err := s.requireKMS(); err != nil {
		return nil, err
	}
	if req.KeyId == "" {
		return nil, status.Error(codes.InvalidArgument, "key id is required")
	}
	blob, keyID, err := s.kms.Encrypt(ctx, req.KeyId, req.Plaintext, req.EncryptionContext)
	if err != nil {
		return nil, keyOpError(err, req.KeyId)
	}
	_, version, _ := kms.BlobKey(blob)
	return &pb.EncryptResponse{CiphertextBlob: blob, KeyId: keyID, KeyVersion: int32(version)}, nil
}

func (s *Server) Decrypt(ctx context.Context, req *pb.DecryptRequest) (*pb.DecryptResponse, error) {
	if err := s.requireKMS(); err != nil {
		return nil, err
	}
	keyID, version, err := kms.BlobKey(req.CiphertextBlob)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "ciphertext: %v", err)
	}
	plain, _, err := s.kms.Decrypt(ctx, req.CiphertextBlob, req.EncryptionContext)
	if err != nil {
		return nil, keyOpError(err, keyID)
	}
	return &pb.DecryptResponse{Plaintext: plain, KeyId: keyID, KeyVersion: int32(version)}, nil
}

func (s *Server) GenerateDataKey(ctx context.Context, req *pb.GenerateDataKeyRequest) (*pb.GenerateDataKeyResponse, error) {
	if err := s.requireKMS(); err != nil {
		return nil, err
	}
	if req.KeyId == "" {
		return nil, status.Error(codes.InvalidArgument, "key id is required")
	}
	n := int(req.NumberOfBytes)
	if n == 0 {
		n = 32
	}
	plain, wrapped, keyID, err := s.kms.GenerateDataKey(ctx, req.KeyId, n, req.EncryptionContext)
	if err != nil {
		return nil, keyOpError(err, req.KeyId)
	}
	_, version, _ := kms.BlobKey(wrapped)
	return &pb.GenerateDataKeyResponse{Plaintext: plain, CiphertextBlob: wrapped, KeyId: keyID, KeyVersion: int32(version)}, nil
}
