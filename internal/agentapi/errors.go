package agentapi

import (
	"context"
	"errors"
	"os"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/blockexport"
)

// sentinel is one backend error and the code it crosses the wire as.
type sentinel struct {
	err  error
	code codes.Code
}

// poolErrors are the pool's sentinels, in the order they are tested.
var poolErrors = []sentinel{
	{agent.ErrNotFound, codes.NotFound},
	{agent.ErrExists, codes.AlreadyExists},
	{agent.ErrInvalid, codes.InvalidArgument},
	{agent.ErrNoSpace, codes.ResourceExhausted},
}

// exportErrors are the exporter's; a missing image is the pool's
// ErrNotFound (the exporter reports the file system's ENOENT).
var exportErrors = []sentinel{
	{blockexport.ErrStaleGeneration, codes.FailedPrecondition},
	{blockexport.ErrExists, codes.AlreadyExists},
	{blockexport.ErrInvalid, codes.InvalidArgument},
	{agent.ErrNotFound, codes.NotFound},
}

// toStatus is the agent side: err becomes the code of the first sentinel
// it is, with its message; anything else is INTERNAL.
func toStatus(err error, table []sentinel) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	if errors.Is(err, os.ErrNotExist) {
		return status.Error(codes.NotFound, err.Error())
	}
	for _, s := range table {
		if errors.Is(err, s.err) {
			return status.Error(s.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}

// remoteError is an agent's error on the server side: the agent's message,
// and the sentinel its code stands for, so errors.Is keeps working.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// fromStatus is the client side: the code of err becomes the sentinel of
// table with that code, wrapped with the agent's message and where it came
// from; other codes (UNAVAILABLE, INTERNAL, ...) stay gRPC errors.
func (c *Client) fromStatus(err error, table []sentinel) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, s := range table {
		if st.Code() == s.code {
			return &remoteError{msg: "agent " + c.name + ": " + st.Message(), sentinel: s.err}
		}
	}
	return status.Errorf(st.Code(), "agent %s at %s: %s", c.name, c.address, st.Message())
}
