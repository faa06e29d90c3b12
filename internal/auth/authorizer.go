package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/stowage-io/stowage/internal/store"
)

// PodTokenMetadata is the gRPC metadata key the secrets provider forwards
// a pod's service-account token in (provider.TokenMetadata).
const PodTokenMetadata = "stowage-pod-token"

// howToAuthenticate ends every Unauthenticated message.
const howToAuthenticate = "send a Stowage API token as gRPC metadata `authorization: Bearer <token>` " +
	"(stowage --token-file FILE; `stowage token create --principal P` makes one), or call over the server's unix socket as root"

// Authorizer identifies callers and decides what they may do.
type Authorizer struct {
	Records Records
	// Verifier checks Kubernetes service-account tokens; nil refuses them.
	Verifier Verifier
	Log      *slog.Logger
}

// New returns an Authorizer over the metadata store.
func New(st store.Store, v Verifier, log *slog.Logger) *Authorizer {
	if log == nil {
		log = slog.Default()
	}
	return &Authorizer{Records: Records{Store: st}, Verifier: v, Log: log}
}

// Identify proves who is calling: a bearer token (a Stowage token, or a
// service-account token when a Verifier is set), else root's peer
// credentials on the unix socket. The error is Unauthenticated and never
// contains the token.
func (a *Authorizer) Identify(ctx context.Context) (Principal, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if vals := md.Get("authorization"); len(vals) > 0 {
		scheme, token, ok := strings.Cut(vals[0], " ")
		token = strings.TrimSpace(token)
		if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
			return Principal{}, status.Error(codes.Unauthenticated, "the authorization metadata is not `Bearer <token>`; "+howToAuthenticate)
		}
		return a.identifyToken(ctx, token)
	}
	if p, ok := peer.FromContext(ctx); ok {
		if pc, ok := p.AuthInfo.(PeerCredInfo); ok && pc.UID == 0 {
			return Principal{Kind: Admin, Name: AdminName}, nil
		}
	}
	return Principal{}, status.Error(codes.Unauthenticated, "no credentials: "+howToAuthenticate)
}

func (a *Authorizer) identifyToken(ctx context.Context, token string) (Principal, error) {
	if strings.HasPrefix(token, TokenPrefix) {
		rec, err := a.Records.LookupToken(ctx, token)
		if errors.Is(err, ErrNotFound) {
			return Principal{}, status.Error(codes.Unauthenticated, "the Stowage API token is not valid (revoked, or never issued by this server); "+howToAuthenticate)
		}
		if err != nil {
			return Principal{}, status.Errorf(codes.Unavailable, "look up the token: %v", err)
		}
		p, err := ParsePrincipal(rec.Principal)
		if err != nil {
			return Principal{}, status.Errorf(codes.Internal, "token %s: %v", rec.ID, err)
		}
		return p, nil
	}
	return a.VerifyServiceAccount(ctx, token)
}

// VerifyServiceAccount proves a Kubernetes service-account token.
func (a *Authorizer) VerifyServiceAccount(ctx context.Context, token string) (Principal, error) {
	if a.Verifier == nil {
		return Principal{}, status.Error(codes.Unauthenticated, "the token is not a Stowage API token (stw_…) and this server verifies no Kubernetes service-account tokens (stowage server --kube-apiserver); "+howToAuthenticate)
	}
	ns, name, err := a.Verifier.Verify(ctx, token)
	if err != nil {
		// err comes from our verifier, which never includes the token.
		return Principal{}, status.Errorf(codes.Unauthenticated, "the service-account token is not valid: %v", err)
	}
	return ServiceAccountPrincipal(ns, name), nil
}

// Decide evaluates the principal's built-in and attached policies.
func (a *Authorizer) Decide(ctx context.Context, p Principal, action string, resources ...string) (Decision, error) {
	ps, err := a.PoliciesOf(ctx, p)
	if err != nil {
		return DefaultDeny, err
	}
	return ps.Decide(action, resources...), nil
}

// Policies are the documents that decide for one principal, read once
// for many decisions (the objects of one batch).
type Policies struct {
	a    *Authorizer
	p    Principal
	docs []Document
}

// PoliciesOf reads p's built-in and attached policies.
func (a *Authorizer) PoliciesOf(ctx context.Context, p Principal) (*Policies, error) {
	ps := &Policies{a: a, p: p}
	if p.Kind == Admin {
		return ps, nil
	}
	if d, ok := BuiltinPolicy(p); ok {
		ps.docs = append(ps.docs, d)
	}
	attached, err := a.Records.AttachedDocuments(ctx, p.Name)
	if err != nil {
		return nil, err
	}
	ps.docs = append(ps.docs, attached...)
	return ps, nil
}

// Decide evaluates action on resources.
func (ps *Policies) Decide(action string, resources ...string) Decision {
	if ps.p.Kind == Admin {
		return Allowed
	}
	return Evaluate(ps.docs, action, resources...)
}

// Authorize returns nil when p may do action on the object named by
// resources, else PermissionDenied naming principal, action and resource.
func (a *Authorizer) Authorize(ctx context.Context, p Principal, action string, resources ...string) error {
	ps, err := a.PoliciesOf(ctx, p)
	if err != nil {
		return status.Errorf(codes.Unavailable, "read the policies of %s: %v", p, err)
	}
	return ps.Authorize(action, resources...)
}

// Authorize is Authorizer.Authorize with the policies already read.
func (ps *Policies) Authorize(action string, resources ...string) error {
	d := ps.Decide(action, resources...)
	if d == Allowed {
		return nil
	}
	why := "no policy allows it"
	if d == ExplicitDeny {
		why = "a policy denies it"
	}
	ps.a.Log.Info("call denied", "principal", ps.p.Name, "action", action, "resource", resources[0])
	return status.Errorf(codes.PermissionDenied, "%s may not %s on %s: %s", ps.p, action, strings.Join(resources, " / "), why)
}

// UnaryInterceptor identifies and authorises every unary call, and puts
// the principal into the handler's context.
func (a *Authorizer) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := a.check(ctx, info.FullMethod, req)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor does the same for streams (the API has none today;
// a stream is authorised on its method with resource *).
func (a *Authorizer) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.check(ss.Context(), info.FullMethod, nil)
		if err != nil {
			return err
		}
		return handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
	}
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

func (a *Authorizer) check(ctx context.Context, method string, req any) (context.Context, error) {
	p, err := a.Identify(ctx)
	if err != nil {
		return ctx, err
	}
	rule, ok := Methods[method]
	if ok && rule.AnyCaller {
		return NewContext(ctx, p), nil
	}
	if !ok {
		// Fail closed: a method nobody mapped is for the admin only.
		rule = Rule{Action: "unmapped:" + method, Resources: all}
	}
	resources := rule.Resources(req)
	if rule.Each {
		for _, r := range resources {
			if err := a.Authorize(ctx, p, rule.Action, r); err != nil {
				return ctx, err
			}
		}
	} else if err := a.Authorize(ctx, p, rule.Action, resources...); err != nil {
		return ctx, err
	}
	return NewContext(ctx, p), nil
}

func decode(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode auth record: %w", err)
	}
	return nil
}

// ServerOptions are the gRPC server options that put the Authorizer in
// front of every call: peer credentials on unix sockets and the
// interceptors. Put them before other interceptors.
func (a *Authorizer) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.Creds(PeerCredentials()),
		grpc.ChainUnaryInterceptor(a.UnaryInterceptor()), grpc.ChainStreamInterceptor(a.StreamInterceptor())}
}
