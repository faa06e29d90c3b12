// Package keylock serialises operations on one object id (a volume, a
// snapshot name) while letting operations on different ids run in parallel.
package keylock

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrBusy means another operation held the key for longer than the wait.
var ErrBusy = errors.New("another operation on this object is in progress")

// Set is a set of named locks. The zero value is not usable; use New.
type Set struct {
	wait time.Duration
	mu   sync.Mutex
	keys map[string]chan struct{}
}

// New returns a Set whose Lock waits at most wait for a busy key before
// giving up with ErrBusy (CSI callers then retry on codes.Aborted). With
// wait <= 0, Lock waits until the key is free or its context ends.
func New(wait time.Duration) *Set {
	return &Set{wait: wait, keys: map[string]chan struct{}{}}
}

// Lock acquires all keys (in the given order; callers pass keys in a fixed
// order to avoid deadlock) and returns the function that releases them.
func (s *Set) Lock(ctx context.Context, keys ...string) (func(), error) {
	var held []string
	release := func() {
		for i := len(held) - 1; i >= 0; i-- {
			s.unlock(held[i])
		}
	}
	var timeout <-chan time.Time
	if s.wait > 0 {
		timer := time.NewTimer(s.wait)
		defer timer.Stop()
		timeout = timer.C
	}
	for _, k := range keys {
		if err := s.lock(ctx, timeout, k); err != nil {
			release()
			return nil, err
		}
		held = append(held, k)
	}
	return release, nil
}

func (s *Set) lock(ctx context.Context, timeout <-chan time.Time, key string) error {
	for {
		s.mu.Lock()
		ch, busy := s.keys[key]
		if !busy {
			s.keys[key] = make(chan struct{})
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timeout:
			return ErrBusy
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *Set) unlock(key string) {
	s.mu.Lock()
	ch := s.keys[key]
	delete(s.keys, key)
	s.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}
