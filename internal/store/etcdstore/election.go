package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// DefaultLeaseTTL is the lease of a server's election key: a leader that
// dies (or stops renewing) is replaced that long after, at the latest.
const DefaultLeaseTTL = 5 * time.Second

// ErrNoLeader is returned by Election.Leader while nobody leads.
var ErrNoLeader = errors.New("no Stowage server leads yet")

// Election is this server's candidacy among the servers sharing one
// prefix. Once an Election exists every Update of the store is guarded:
// it commits only in an etcd Txn that also checks this server's election
// key still exists at the revision it won with, so a deposed leader (paused,
// partitioned, its lease expired) cannot write even before it notices.
type Election struct {
	s       *Store
	session *concurrency.Session
	e       *concurrency.Election
	value   string
	leading atomic.Bool
}

// NewElection makes a lease of ttl (0: DefaultLeaseTTL) kept alive in the
// background, and from now on refuses this store's Updates until Campaign
// wins. value is what other servers tell clients about the leader: its
// advertised API address.
func (s *Store) NewElection(ttl time.Duration, value string) (*Election, error) {
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	secs := int((ttl + time.Second - 1) / time.Second)
	s.guarded.Store(true)
	session, err := concurrency.NewSession(s.cli, concurrency.WithTTL(secs))
	if err != nil {
		return nil, fmt.Errorf("etcdstore: election lease: %w", err)
	}
	return &Election{s: s, session: session, e: concurrency.NewElection(session, s.prefix+"/_leader"), value: value}, nil
}

// Campaign blocks until this server leads (or ctx ends, or the lease is
// lost); then the store's Updates commit under its leadership.
func (e *Election) Campaign(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-e.session.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := e.e.Campaign(ctx, e.value); err != nil {
		select {
		case <-e.session.Done():
			return errors.New("etcdstore: election lease expired before this server could lead")
		default:
		}
		return fmt.Errorf("etcdstore: campaign: %w", err)
	}
	e.s.leader.Store(&leaderKey{key: e.e.Key(), rev: e.e.Rev()})
	e.leading.Store(true)
	go func() {
		// The lease is gone: stop committing at once rather than at the
		// next failed Txn.
		<-e.session.Done()
		e.leading.Store(false)
		e.s.leader.Store(nil)
	}()
	return nil
}

// IsLeader says whether this server has won and not lost its lease since.
func (e *Election) IsLeader() bool { return e.leading.Load() && e.s.leader.Load() != nil }

// Leader returns the value (advertised address) of the current leader.
func (e *Election) Leader(ctx context.Context) (string, error) {
	ctx, cancel := e.s.callContext(ctx)
	defer cancel()
	resp, err := e.e.Leader(ctx)
	if errors.Is(err, concurrency.ErrElectionNoLeader) {
		return "", ErrNoLeader
	}
	if err != nil {
		return "", fmt.Errorf("etcdstore: who leads: %w", err)
	}
	return string(resp.Kvs[0].Value), nil
}

// Lost is closed when the lease ends: this server no longer leads, if it
// did, and cannot win again with this Election.
func (e *Election) Lost() <-chan struct{} { return e.session.Done() }

// Resign gives leadership up (a standby takes over at once rather than
// after the lease's TTL) and ends the lease.
func (e *Election) Resign(ctx context.Context) error {
	e.leading.Store(false)
	e.s.leader.Store(nil)
	ctx, cancel := e.s.callContext(ctx)
	defer cancel()
	var err error
	if e.e.Key() != "" {
		err = e.e.Resign(ctx)
	}
	return errors.Join(err, e.session.Close())
}

// Value is what this server campaigns with: its advertised address.
func (e *Election) Value() string { return e.value }
