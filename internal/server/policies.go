package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/auth"
)

// The PolicyService: policies and tokens, kept by internal/auth.

func (s *Server) requireAuth() (auth.Records, error) {
	if s.auth == nil {
		return auth.Records{}, status.Error(codes.FailedPrecondition, "this server runs without authentication, so it keeps no policies or tokens")
	}
	return s.auth.Records, nil
}

func authError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, auth.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, auth.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, auth.ErrInUse):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	// Validation errors from internal/auth name the field, not a secret.
	return status.Error(codes.InvalidArgument, err.Error())
}

func policyProto(r auth.PolicyRecord) *pb.Policy {
	return &pb.Policy{Name: r.Name, Document: r.Document, Principals: r.Principals, CreateTime: timestamppb.New(r.Created)}
}

func tokenProto(r auth.TokenRecord) *pb.Token {
	return &pb.Token{Id: r.ID, Principal: r.Principal, Description: r.Description, CreateTime: timestamppb.New(r.Created)}
}

// CreatePolicy stores a policy document.
func (s *Server) CreatePolicy(ctx context.Context, req *pb.CreatePolicyRequest) (*pb.Policy, error) {
	recs, err := s.requireAuth()
	if err != nil {
		return nil, err
	}
	r, err := recs.CreatePolicy(ctx, req.Name, req.Document)
	if err != nil {
		return nil, authError(err)
	}
	s.log.Info("policy created", "policy", r.Name)
	return policyProto(r), nil
}

// GetPolicy returns a policy.
func (s *Server) GetPolicy(ctx context.Context, req *pb.GetPolicyRequest) (*pb.Policy, error) {
	recs, err := s.requireAuth()
	if err != nil {
		return nil, err
	}
	r, err := recs.GetPolicy(ctx, req.Name)
	if err != nil {
		return nil, authError(err)
	}
	return policyProto(r), nil
}

// ListPolicies lists policies.
func (s *Server) ListPolicies(ctx context.Context, req *pb.ListPoliciesRequest) (*pb.ListPoliciesResponse, error) {
	recs, err := s.requireAuth()
	if err != nil {
		return nil, err
	}
	rs, err := recs.ListPolicies(ctx, req.Principal)
	if err != nil {
		return nil, authError(err)
	}
	out := &pb.ListPoliciesResponse{}
	for _, r := range rs {
		out.Policies = append(out.Policies, policyProto(r))
	}
	return out, nil
}

// DeletePolicy deletes a policy attached to no one.
func (s *Server) DeletePolicy(ctx context.Context, req *pb.DeletePolicyRequest) (*pb.DeletePolicyResponse, error) {
	recs, err := s.requireAuth()
	if err != nil {
		return nil, err
	}
	if err := recs.DeletePolicy(ctx, req.Name); err != nil {
		return nil, authError(err)
	}
	s.log.Info("policy deleted", "policy", req.Name)
	return &pb.DeletePolicyResponse{}, nil
}

// AttachPolicy attaches a policy to a principal.
func (s *Server) AttachPolicy(ctx context.Context, req *pb.AttachPolicyRequest) (*pb.Policy, error) {
	recs, err := s.requireAuth()
	if err != nil {
		return nil, err
	}
	r, err := recs.AttachPolicy(ctx, req.Name, req.Principal)
	if err != nil {
		return nil, authError(err)
	}
	s.log.Info("policy attached", "policy", r.Name, "principal", req.Principal)
	return policyProto(r), nil
}

// DetachPolicy detaches a policy from a principal.
func (s *Server) DetachPolicy(ctx context.Context, req *pb.DetachPolicyRequest) (*pb.Policy, error) {
	recs, err := s.requireAuth()
	if err != nil {
		return nil, err
	}
	r, err := recs.DetachPolicy(ctx, req.Name, req.Principal)
	if err != nil {
		return nil, authError(err)
	}
	s.log.Info("policy detached", "policy", r.Name, "principal", req.Principal)
	return policyProto(r), nil
}

// CreateToken issues a token; the reply is the only place it appears.
func (s *Server) CreateToken(ctx context.Context, req *pb.CreateTokenRequest) (*pb.CreateTokenResponse, error) {
	recs, err := s.requireAuth()
	if err != nil {
		return nil, err
	}
	secret, r, err := recs.CreateToken(ctx, req.Principal, req.Description)
	if err != nil {
		return nil, authError(err)
	}
	s.log.Info("token created", "token", r.ID, "principal", r.Principal)
	return &pb.CreateTokenResponse{Token: tokenProto(r), Secret: secret}, nil
}

// ListTokens lists tokens (ids and principals, never the tokens).
func (s *Server) ListTokens(ctx context.Context, req *pb.ListTokensRequest) (*pb.ListTokensResponse, error) {
	recs, err := s.requireAuth()
	if err != nil {
		return nil, err
	}
	rs, err := recs.ListTokens(ctx, req.Principal)
	if err != nil {
		return nil, authError(err)
	}
	out := &pb.ListTokensResponse{}
	for _, r := range rs {
		out.Tokens = append(out.Tokens, tokenProto(r))
	}
	return out, nil
}

// RevokeToken deletes a token: calls with it fail from then on.
func (s *Server) RevokeToken(ctx context.Context, req *pb.RevokeTokenRequest) (*pb.RevokeTokenResponse, error) {
	recs, err := s.requireAuth()
	if err != nil {
		return nil, err
	}
	if err := recs.RevokeToken(ctx, req.Id); err != nil {
		return nil, authError(err)
	}
	s.log.Info("token revoked", "token", req.Id)
	return &pb.RevokeTokenResponse{}, nil
}
