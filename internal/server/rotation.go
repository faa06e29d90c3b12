package server

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stowage-io/stowage/internal/secrets"
)

// DefaultRotationCheck is how often the server looks for secrets whose
// scheduled rotation is due.
const DefaultRotationCheck = 5 * time.Second

// StartRotations runs the scheduled rotations: every interval (0:
// DefaultRotationCheck), and once at the start, each secret whose next
// rotation time has come is rotated with its saved generator or webhook,
// by the same two transactions as RotateSecret. A failure is recorded on
// the secret, logged by name and retried with backoff. stop ends the loop
// and waits for a rotation under way to finish.
func (s *Server) StartRotations(ctx context.Context, interval time.Duration) (stop func()) {
	if s.secrets == nil {
		return func() {}
	}
	if interval <= 0 {
		interval = DefaultRotationCheck
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			s.rotateDue(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}

// rotateDue rotates every secret that is due now.
func (s *Server) rotateDue(ctx context.Context) {
	due, err := s.secrets.DueRotations(ctx, s.now())
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("scheduled rotation: listing secrets failed", "error", err)
		}
		return
	}
	for _, name := range due {
		if ctx.Err() != nil {
			return
		}
		s.rotateScheduled(ctx, name)
	}
}

func (s *Server) rotateScheduled(ctx context.Context, name string) {
	unlock, err := s.lock(ctx, "secret "+name, "secret/"+name)
	if status.Code(err) == codes.Aborted {
		// An on-demand rotation (or another change) holds it: next tick.
		return
	}
	if err != nil {
		return
	}
	defer unlock()
	// Due still? The holder of the lock may have rotated it.
	sec, err := s.secrets.Describe(ctx, name)
	if err != nil || !sec.RotationEnabled || sec.NextRotation.After(s.now()) || !sec.DeletionDate.IsZero() {
		return
	}
	sec, vid, err := s.secrets.Rotate(ctx, sec.ARN, secrets.RotateInput{})
	if err == nil {
		s.log.Info("secret rotated on schedule", "secret", name, "version", vid, "next", sec.NextRotation)
		return
	}
	if ctx.Err() != nil {
		return // shutting down: the next start retries it
	}
	rec, rerr := s.secrets.RecordRotationFailure(ctx, name, err)
	if rerr != nil {
		s.log.Error("scheduled rotation failed, and recording the failure failed", "secret", name, "error", err, "recordError", rerr)
		return
	}
	s.log.Warn("scheduled rotation failed", "secret", name, "error", err, "failures", rec.RotationFailures, "retryAt", rec.NextRotation)
}
