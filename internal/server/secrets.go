package server

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/secrets"
)

// secretError maps the secrets model's errors; messages name the secret
// and never hold its value.
func secretError(err error, ref string) error {
	switch {
	case errors.Is(err, secrets.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, secrets.ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, secrets.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, secrets.ErrDeleted), errors.Is(err, kms.ErrDisabled), errors.Is(err, secrets.ErrRotation):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, kms.ErrNotFound), errors.Is(err, kms.ErrInvalid):
		return kmsError(err, "of secret "+ref)
	}
	return internal(err, "secret %s", ref)
}

func (s *Server) requireSecrets() error {
	if s.secrets == nil {
		return status.Error(codes.FailedPrecondition, "this server runs without a KMS, so it keeps no secrets")
	}
	return nil
}

func secretProto(sec *secrets.Secret) *pb.Secret {
	p := &pb.Secret{Arn: sec.ARN, Name: sec.Name, Description: sec.Description, KmsKeyId: sec.KMSKeyID, Tags: sec.Tags,
		CreateTime: timestamppb.New(sec.Created), LastChangedTime: timestamppb.New(sec.LastChanged)}
	if !sec.DeletionDate.IsZero() {
		p.DeletionTime = timestamppb.New(sec.DeletionDate)
	}
	if !sec.LastRotated.IsZero() {
		p.LastRotatedTime = timestamppb.New(sec.LastRotated)
	}
	if g := sec.Rotation; g != nil && sec.Webhook == nil {
		p.Rotation = &pb.PasswordGenerator{JsonKey: g.JSONKey, WholeValue: g.WholeValue, PasswordLength: int32(g.Length), ExcludePunctuation: g.ExcludePunctuation}
	}
	if w := sec.Webhook; w != nil {
		p.RotationWebhook = &pb.RotationWebhook{Url: w.URL, TimeoutSeconds: int32(w.Timeout / time.Second)}
	}
	p.RotationEnabled, p.RotationSchedule, p.LastRotationError = sec.RotationEnabled, sec.RotationSchedule, sec.LastRotationError
	if !sec.NextRotation.IsZero() {
		p.NextRotationTime = timestamppb.New(sec.NextRotation)
	}
	if !sec.LastRotationErrorTime.IsZero() {
		p.LastRotationErrorTime = timestamppb.New(sec.LastRotationErrorTime)
	}
	for _, v := range sec.StagesByVersion() {
		p.Versions = append(p.Versions, &pb.SecretVersion{VersionId: v.ID, Stages: v.Stages, CreateTime: timestamppb.New(v.Created)})
	}
	return p
}

func versionRef(sec *secrets.Secret, versionID string) *pb.SecretVersionRef {
	r := &pb.SecretVersionRef{Arn: sec.ARN, Name: sec.Name, VersionId: versionID}
	for _, v := range sec.Versions {
		if v.ID == versionID {
			r.Stages = v.Stages
		}
	}
	return r
}

func protoValue(str *string, bin []byte) secrets.Value {
	if str != nil {
		return secrets.Value{String: str}
	}
	if bin != nil {
		return secrets.Value{Binary: bin}
	}
	return secrets.Value{}
}

func (s *Server) CreateSecret(ctx context.Context, req *pb.CreateSecretRequest) (*pb.SecretVersionRef, error) {
	if err := s.requireSecrets(); err != nil {
		return nil, err
	}
	if req.SecretString != nil && req.SecretBinary != nil {
		return nil, status.Errorf(codes.InvalidArgument, "secret %s: give secret_string or secret_binary, not both", req.Name)
	}
	sec, vid, err := s.secrets.Create(ctx, secrets.CreateInput{Name: req.Name, Description: req.Description, KMSKeyID: req.KmsKeyId,
		Value: protoValue(req.SecretString, req.SecretBinary), Tags: req.Tags, ClientRequestToken: req.ClientRequestToken})
	if err != nil {
		return nil, secretError(err, req.Name)
	}
	s.log.Info("secret created", "secret", sec.ARN, "version", vid)
	return versionRef(sec, vid), nil
}

func (s *Server) PutSecretValue(ctx context.Context, req *pb.PutSecretValueRequest) (*pb.SecretVersionRef, error) {
	if err := s.requireSecrets(); err != nil {
		return nil, err
	}
	if req.SecretString != nil && req.SecretBinary != nil {
		return nil, status.Errorf(codes.InvalidArgument, "secret %s: give secret_string or secret_binary, not both", req.SecretId)
	}
	sec, vid, err := s.secrets.PutValue(ctx, req.SecretId, protoValue(req.SecretString, req.SecretBinary), req.ClientRequestToken, req.VersionStages)
	if err != nil {
		return nil, secretError(err, req.SecretId)
	}
	s.log.Info("secret value put", "secret", sec.ARN, "version", vid)
	return versionRef(sec, vid), nil
}

func (s *Server) GetSecretValue(ctx context.Context, req *pb.GetSecretValueRequest) (*pb.SecretValue, error) {
	if err := s.requireSecrets(); err != nil {
		return nil, err
	}
	sec, v, val, err := s.secrets.GetValue(ctx, req.SecretId, req.VersionId, req.VersionStage)
	if err != nil {
		return nil, secretError(err, req.SecretId)
	}
	return &pb.SecretValue{Arn: sec.ARN, Name: sec.Name, VersionId: v.ID, Stages: v.Stages, SecretString: val.String,
		SecretBinary: val.Binary, CreateTime: timestamppb.New(v.Created)}, nil
}

func (s *Server) DescribeSecret(ctx context.Context, req *pb.DescribeSecretRequest) (*pb.Secret, error) {
	if err := s.requireSecrets(); err != nil {
		return nil, err
	}
	sec, err := s.secrets.Describe(ctx, req.SecretId)
	if err != nil {
		return nil, secretError(err, req.SecretId)
	}
	return secretProto(sec), nil
}

func (s *Server) ListSecrets(ctx context.Context, req *pb.ListSecretsRequest) (*pb.ListSecretsResponse, error) {
	if err := s.requireSecrets(); err != nil {
		return nil, err
	}
	list, err := s.secrets.List(ctx, req.NamePrefix, req.IncludePlannedDeletion)
	if err != nil {
		return nil, internal(err, "list secrets")
	}
	resp := &pb.ListSecretsResponse{}
	for i := range list {
		resp.Secrets = append(resp.Secrets, secretProto(&list[i]))
	}
	return resp, nil
}

func (s *Server) DeleteSecret(ctx context.Context, req *pb.DeleteSecretRequest) (*pb.DeleteSecretResponse, error) {
	if err := s.requireSecrets(); err != nil {
		return nil, err
	}
	sec, err := s.secrets.Delete(ctx, req.SecretId, int(req.RecoveryWindowInDays), req.ForceDeleteWithoutRecovery)
	if err != nil {
		return nil, secretError(err, req.SecretId)
	}
	if sec == nil {
		return &pb.DeleteSecretResponse{Name: req.SecretId}, nil
	}
	s.log.Info("secret deleted", "secret", sec.ARN, "deletionDate", sec.DeletionDate, "force", req.ForceDeleteWithoutRecovery)
	return &pb.DeleteSecretResponse{Arn: sec.ARN, Name: sec.Name, DeletionTime: timestamppb.New(sec.DeletionDate), Existed: true}, nil
}

func (s *Server) RestoreSecret(ctx context.Context, req *pb.RestoreSecretRequest) (*pb.Secret, error) {
	if err := s.requireSecrets(); err != nil {
		return nil, err
	}
	sec, err := s.secrets.Restore(ctx, req.SecretId)
	if err != nil {
		return nil, secretError(err, req.SecretId)
	}
	s.log.Info("secret restored", "secret", sec.ARN)
	return secretProto(sec), nil
}

func (s *Server) RotateSecret(ctx context.Context, req *pb.RotateSecretRequest) (*pb.SecretVersionRef, error) {
	if err := s.requireSecrets(); err != nil {
		return nil, err
	}
	in := secrets.RotateInput{Schedule: req.Schedule, NoRotateImmediately: req.RotateImmediately != nil && !*req.RotateImmediately,
		Token: req.ClientRequestToken}
	if p := req.Generator; p != nil {
		in.Generator = &secrets.Generator{JSONKey: p.JsonKey, WholeValue: p.WholeValue, Length: int(p.PasswordLength), ExcludePunctuation: p.ExcludePunctuation}
	}
	if w := req.Webhook; w != nil {
		in.Webhook = &secrets.Webhook{URL: w.Url, Timeout: time.Duration(w.TimeoutSeconds) * time.Second}
	}
	sec, err := s.secrets.Describe(ctx, req.SecretId)
	if err != nil {
		return nil, secretError(err, req.SecretId)
	}
	// By name, whatever the request calls it: the scheduled rotation takes
	// the same lock.
	unlock, err := s.lock(ctx, "secret "+sec.Name, "secret/"+sec.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	sec, vid, err := s.secrets.Rotate(ctx, sec.ARN, in)
	if err != nil {
		return nil, secretError(err, req.SecretId)
	}
	if vid == "" {
		s.log.Info("secret rotation scheduled", "secret", sec.ARN, "schedule", sec.RotationSchedule, "next", sec.NextRotation)
	} else {
		s.log.Info("secret rotated", "secret", sec.ARN, "version", vid, "schedule", sec.RotationSchedule)
	}
	return versionRef(sec, vid), nil
}

func (s *Server) CancelRotateSecret(ctx context.Context, req *pb.CancelRotateSecretRequest) (*pb.Secret, error) {
	if err := s.requireSecrets(); err != nil {
		return nil, err
	}
	sec, err := s.secrets.CancelRotation(ctx, req.SecretId)
	if err != nil {
		return nil, secretError(err, req.SecretId)
	}
	s.log.Info("secret rotation cancelled", "secret", sec.ARN)
	return secretProto(sec), nil
}

func (s *Server) UpdateSecretVersionStage(ctx context.Context, req *pb.UpdateSecretVersionStageRequest) (*pb.Secret, error) {
	if err := s.requireSecrets(); err != nil {
		return nil, err
	}
	sec, err := s.secrets.UpdateStage(ctx, req.SecretId, req.VersionStage, req.MoveToVersionId, req.RemoveFromVersionId)
	if err != nil {
		return nil, secretError(err, req.SecretId)
	}
	s.log.Info("secret stage moved", "secret", sec.ARN, "stage", req.VersionStage, "to", req.MoveToVersionId, "from", req.RemoveFromVersionId)
	return secretProto(sec), nil
}

func (s *Server) TagSecret(ctx context.Context, req *pb.TagSecretRequest) (*pb.Secret, error) {
	if err := s.requireSecrets(); err != nil {
		return nil, err
	}
	sec, err := s.secrets.Tag(ctx, req.SecretId, req.Tags, req.RemoveTagKeys)
	if err != nil {
		return nil, secretError(err, req.SecretId)
	}
	return secretProto(sec), nil
}
