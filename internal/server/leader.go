package server

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Leadership is what the API asks before each call when several servers
// share one store (etcd) and one of them leads.
type Leadership interface {
	// Serving says whether this server leads and has finished taking over
	// (reconcile done, loops started).
	Serving() bool
	// Leader is the advertised API address of the server that leads.
	Leader(ctx context.Context) (string, error)
}

// LeaderOnly returns the server options that make a server that does not
// serve (a standby, or a leader still taking over) answer every call with
// UNAVAILABLE naming the leader, so that clients given several endpoints
// move on to it. Put them first: a standby refuses before authentication,
// which would read the store for nothing.
func LeaderOnly(l Leadership) []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := notServing(ctx, l); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}), grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := notServing(ss.Context(), l); err != nil {
			return err
		}
		return handler(srv, ss)
	})}
}

func notServing(ctx context.Context, l Leadership) error {
	if l.Serving() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	addr, err := l.Leader(ctx)
	if err != nil || addr == "" {
		return status.Error(codes.Unavailable, "this Stowage server is a standby and no server leads yet (an election is under way); retry in a few seconds")
	}
	return status.Errorf(codes.Unavailable, "this Stowage server is a standby; the leader is at %s", addr)
}

// errNotLeaderMessage is what a call whose write was refused by the store's
// leadership guard answers.
const errNotLeaderMessage = "this Stowage server lost its leadership while serving the call, and nothing it was writing was kept; retry (clients given several endpoints move on to the new leader)"
