package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/params"
)

func paramError(err error, name string) error {
	switch {
	case errors.Is(err, params.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, params.ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, params.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, params.ErrVersionLimit), errors.Is(err, kms.ErrDisabled):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, kms.ErrNotFound), errors.Is(err, kms.ErrInvalid):
		return kmsError(err, "of parameter "+name)
	}
	return internal(err, "parameter %s", name)
}

func (s *Server) requireParams() error {
	if s.params == nil {
		return status.Error(codes.FailedPrecondition, "this server runs without a KMS, so it keeps no parameters")
	}
	return nil
}

func paramProto(r *params.Result) *pb.Parameter {
	return &pb.Parameter{Name: r.Name, Type: r.Type, Value: r.Value, Version: r.Number, Labels: r.Labels,
		LastModifiedTime: timestamppb.New(r.Modified), Arn: r.ARN, Selector: r.Selector, Description: r.Description, KeyId: r.KeyID}
}

func (s *Server) PutParameter(ctx context.Context, req *pb.PutParameterRequest) (*pb.PutParameterResponse, error) {
	if err := s.requireParams(); err != nil {
		return nil, err
	}
	v, err := s.params.Put(ctx, params.PutInput{Name: req.Name, Value: req.Value, Type: req.Type, Description: req.Description, KeyID: req.KeyId, Overwrite: req.Overwrite})
	if err != nil {
		return nil, paramError(err, req.Name)
	}
	s.log.Info("parameter put", "parameter", req.Name, "version", v)
	return &pb.PutParameterResponse{Version: v}, nil
}

func (s *Server) GetParameter(ctx context.Context, req *pb.GetParameterRequest) (*pb.Parameter, error) {
	if err := s.requireParams(); err != nil {
		return nil, err
	}
	r, err := s.params.Get(ctx, req.Name, req.WithDecryption)
	if err != nil {
		return nil, paramError(err, req.Name)
	}
	return paramProto(r), nil
}

func (s *Server) GetParameters(ctx context.Context, req *pb.GetParametersRequest) (*pb.GetParametersResponse, error) {
	if err := s.requireParams(); err != nil {
		return nil, err
	}
	resp := &pb.GetParametersResponse{}
	for _, n := range req.Names {
		r, err := s.params.Get(ctx, n, req.WithDecryption)
		if errors.Is(err, params.ErrNotFound) || errors.Is(err, params.ErrInvalid) {
			resp.InvalidParameters = append(resp.InvalidParameters, n)
			continue
		}
		if err != nil {
			return nil, paramError(err, n)
		}
		resp.Parameters = append(resp.Parameters, paramProto(r))
	}
	return resp, nil
}

func (s *Server) GetParametersByPath(ctx context.Context, req *pb.GetParametersByPathRequest) (*pb.GetParametersByPathResponse, error) {
	if err := s.requireParams(); err != nil {
		return nil, err
	}
	rs, err := s.params.GetByPath(ctx, req.Path, req.Recursive, req.WithDecryption)
	if err != nil {
		return nil, paramError(err, req.Path)
	}
	resp := &pb.GetParametersByPathResponse{}
	for _, r := range rs {
		resp.Parameters = append(resp.Parameters, paramProto(r))
	}
	return resp, nil
}

func (s *Server) DeleteParameter(ctx context.Context, req *pb.DeleteParameterRequest) (*pb.DeleteParameterResponse, error) {
	if err := s.requireParams(); err != nil {
		return nil, err
	}
	existed, err := s.params.Delete(ctx, req.Name)
	if err != nil {
		return nil, paramError(err, req.Name)
	}
	if existed {
		s.log.Info("parameter deleted", "parameter", req.Name)
	}
	return &pb.DeleteParameterResponse{Existed: existed}, nil
}

func (s *Server) LabelParameterVersion(ctx context.Context, req *pb.LabelParameterVersionRequest) (*pb.LabelParameterVersionResponse, error) {
	if err := s.requireParams(); err != nil {
		return nil, err
	}
	v, invalid, err := s.params.Label(ctx, req.Name, req.ParameterVersion, req.Labels)
	if err != nil {
		return nil, paramError(err, req.Name)
	}
	return &pb.LabelParameterVersionResponse{ParameterVersion: v, InvalidLabels: invalid}, nil
}

func (s *Server) GetParameterHistory(ctx context.Context, req *pb.GetParameterHistoryRequest) (*pb.GetParameterHistoryResponse, error) {
	if err := s.requireParams(); err != nil {
		return nil, err
	}
	rs, err := s.params.History(ctx, req.Name, req.WithDecryption)
	if err != nil {
		return nil, paramError(err, req.Name)
	}
	resp := &pb.GetParameterHistoryResponse{}
	for _, r := range rs {
		resp.Parameters = append(resp.Parameters, paramProto(r))
	}
	return resp, nil
}
