package server

import (
	"context"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"google.golang.org/grpc/metadata"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/auth"
)

// MaxBatchRefs is the most refs one BatchGetValues takes.
const MaxBatchRefs = 100

const (
	refSecret    = "secretsmanager"
	refParameter = "ssmparameter"
)

// resolved is one ref after its version was found, before its value is
// read.
type resolved struct {
	out *pb.BatchValue
	// open reads the value; nil when the ref failed.
	open func(ctx context.Context) ([]byte, error)
}

func (s *Server) BatchGetValues(ctx context.Context, req *pb.BatchGetValuesRequest) (*pb.BatchGetValuesResponse, error) {
	if err := s.requireSecrets(); err != nil {
		return nil, err
	}
	if len(req.Refs) > MaxBatchRefs {
		return nil, status.Errorf(codes.InvalidArgument, "%d refs in one batch; at most %d", len(req.Refs), MaxBatchRefs)
	}
	subject, err := s.batchSubject(ctx)
	if err != nil {
		return nil, err
	}
	var policies *auth.Policies
	if subject != nil {
		// One read of the subject's policies decides every object.
		if policies, err = s.auth.PoliciesOf(ctx, *subject); err != nil {
			return nil, status.Errorf(codes.Unavailable, "read the policies of %s: %v", *subject, err)
		}
	}
	items := make([]resolved, len(req.Refs))
	allKnown := req.OnlyIfChanged && len(req.Refs) > 0
	for i, ref := range req.Refs {
		items[i] = s.resolveRef(ctx, ref)
		if policies != nil {
			items[i] = authorizeRef(policies, ref, items[i])
		}
		switch it := items[i]; {
		case it.open != nil && ref.KnownVersion != "" && ref.KnownVersion == it.out.Version:
			// The caller has this version.
		case it.open == nil && ref.KnownVersion == "" && codes.Code(it.out.ErrorCode) == codes.NotFound:
			// Missing before (an optional object) and still missing.
		default:
			allKnown = false
		}
	}
	resp := &pb.BatchGetValuesResponse{Unchanged: allKnown}
	for _, it := range items {
		if !allKnown && it.open != nil {
			v, err := it.open(ctx)
			if err != nil {
				st := status.Convert(err)
				it.out.ErrorCode, it.out.ErrorMessage = int32(st.Code()), st.Message()
			} else {
				it.out.Value = v
			}
		}
		resp.Values = append(resp.Values, it.out)
	}
	return resp, nil
}

// batchSubject is whom a batch's objects are authorised for: the pod
// whose service-account token the secrets provider forwards, or the
// caller itself; nil when nothing is checked (the administrator, or a
// server without an Authorizer).
func (s *Server) batchSubject(ctx context.Context) (*auth.Principal, error) {
	if s.auth == nil {
		return nil, nil
	}
	p, ok := auth.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no proven caller")
	}
	if p.Name == auth.SecretsProvider {
		md, _ := metadata.FromIncomingContext(ctx)
		tokens := md.Get(auth.PodTokenMetadata)
		if len(tokens) == 0 || tokens[0] == "" {
			return nil, status.Errorf(codes.PermissionDenied, "%s reads secrets only on behalf of a pod: the call carries no pod service-account token (metadata %s; list audience %s in the CSIDriver's tokenRequests)", p, auth.PodTokenMetadata, auth.DefaultAudience)
		}
		pod, err := s.auth.VerifyServiceAccount(ctx, tokens[0])
		if err != nil {
			return nil, err
		}
		p = pod
	}
	if p.Kind == auth.Admin {
		return nil, nil
	}
	return &p, nil
}

// authorizeRef fails a ref the subject may not read. An object that does
// not exist is PermissionDenied too when its name is not allowed, so that
// a pod cannot learn which secrets exist.
func authorizeRef(policies *auth.Policies, ref *pb.ValueRef, it resolved) resolved {
	action := "secretsmanager:GetSecretValue"
	if ref.Type == refParameter {
		action = "ssm:GetParameter"
	}
	names := []string{ref.Id}
	if it.open != nil {
		names = append(names, it.out.Name, it.out.Arn)
	}
	if err := policies.Authorize(action, names...); err != nil {
		return failed(&pb.BatchValue{}, err)
	}
	return it
}

func failed(out *pb.BatchValue, err error) resolved {
	st := status.Convert(err)
	out.ErrorCode, out.ErrorMessage = int32(st.Code()), st.Message()
	return resolved{out: out}
}

// resolveRef finds the version a ref selects, reading metadata only.
func (s *Server) resolveRef(ctx context.Context, ref *pb.ValueRef) resolved {
	out := &pb.BatchValue{}
	switch ref.Type {
	case refSecret:
		sec, v, err := s.secrets.ResolveVersion(ctx, ref.Id, ref.Version, ref.Label)
		if err != nil {
			return failed(out, secretError(err, ref.Id))
		}
		out.Version, out.Arn, out.Name = v.ID, sec.ARN, sec.Name
		return resolved{out: out, open: func(ctx context.Context) ([]byte, error) {
			val, err := s.secrets.OpenVersion(ctx, sec, v)
			if err != nil {
				return nil, secretError(err, ref.Id)
			}
			if val.String != nil {
				return []byte(*val.String), nil
			}
			return val.Binary, nil
		}}
	case refParameter:
		if s.params == nil {
			return failed(out, s.requireParams())
		}
		name := ref.Id
		if ref.Version != "" && ref.Label != "" {
			return failed(out, status.Errorf(codes.InvalidArgument, "parameter %s: a version and a label both given", ref.Id))
		}
		if ref.Version != "" {
			if _, err := strconv.ParseInt(ref.Version, 10, 64); err != nil {
				return failed(out, status.Errorf(codes.InvalidArgument, "parameter %s: version %q is not a number", ref.Id, ref.Version))
			}
			name += ":" + ref.Version
		} else if ref.Label != "" {
			name += ":" + ref.Label
		}
		r, err := s.params.GetVersion(ctx, name)
		if err != nil {
			return failed(out, paramError(err, ref.Id))
		}
		out.Version, out.Arn, out.Name = strconv.FormatInt(r.Number, 10), r.ARN, r.Name
		return resolved{out: out, open: func(ctx context.Context) ([]byte, error) {
			full, err := s.params.Get(ctx, name, true)
			if err != nil {
				return nil, paramError(err, ref.Id)
			}
			if full.Number != r.Number {
				// A put between the version check and the read: report
				// the version read.
				out.Version = strconv.FormatInt(full.Number, 10)
			}
			return []byte(full.Value), nil
		}}
	}
	return failed(out, status.Errorf(codes.InvalidArgument, "object %s: type %q is not secretsmanager or ssmparameter", ref.Id, ref.Type))
}
