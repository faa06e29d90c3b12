package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/fscrypt"
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
	_, wrapped, keyID, err := s.kms.GenerateDataKey(ctx, req.KmsKeyId, fscrypt.KeySize, nil)
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
		return status.Errorf(codes.InvalidArgument, "kmsKeyId %s does not exist (see `stowage key list`)", ref)
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
	if req.VolumeId == "" || req.NodeId == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and node id are required")
	}
	v, err := s.getVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	if !v.Encrypted {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not encrypted", v.ID)
	}
	if _, ok := v.attachment(req.NodeId); !ok {
		return nil, status.Errorf(codes.PermissionDenied, "volume %s is not attached to node %s, so that node may not have its key", v.ID, req.NodeId)
	}
	if s.kms == nil {
		return nil, status.Error(codes.FailedPrecondition, "this server runs without a KMS")
	}
	key, keyID, err := s.kms.Decrypt(ctx, v.DataKey, nil)
	if err != nil {
		return nil, kmsError(err, v.KMSKeyID)
	}
	s.log.Info("volume data key released", "volume", v.ID, "node", req.NodeId, "kmsKey", keyID)
	return &pb.VolumeDataKey{VolumeId: v.ID, Key: key, KmsKeyId: keyID}, nil
}

func (s *Server) requireKMS() error {
	if s.kms == nil {
		return status.Error(codes.FailedPrecondition, "this server runs without a KMS")
	}
	return nil
}

func keyProto(k *kms.Key) *pb.Key {
	return &pb.Key{Id: k.ID, Aliases: k.Aliases, Description: k.Description, State: k.State, CreateTime: timestamppb.New(k.Created)}
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
