// Package boltstore is the single-server backend of store.Store: one bbolt
// file under the server's data directory.
package boltstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/stowage-io/stowage/internal/store"
)

// lockTimeout bounds how long Open waits for the file lock: long enough to
// ride out a previous server that is still shutting down, short enough that a
// second server started by mistake fails fast with a clear message.
const lockTimeout = 2 * time.Second

// Store is a store.Store backed by a bbolt file. bbolt's default fsync on
// every commit is kept: metadata that says where a volume's data lives must
// not be lost by a power cut after the API answered.
//
// Concurrent Updates share commits (group commit): while one commit is
// being synced, the Updates that arrive meanwhile queue up and the next
// commit carries all of them, each still durable before its Update returns.
// A lone Update commits at once, without waiting for company.
type Store struct {
	db *bolt.DB

	mu         sync.Mutex
	queue      []*update // waiting for the next commit
	committing bool      // a caller is leading commits
	commits    atomic.Int64
}

// update is one Update call waiting in the queue. out receives either its
// result or the order to lead the next commit.
type update struct {
	ctx context.Context
	fn  func(store.Tx) error
	out chan outcome
}

type outcome struct {
	err  error
	lead bool
}

var _ store.Store = (*Store)(nil)

// Open opens or creates the metadata file at path, creating its parent
// directories. Only one process can hold the file open.
func Open(path string) (*Store, error) {
	return open(path, lockTimeout)
}

func open(path string, timeout time.Duration) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create metadata directory: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("metadata file %s is in use by another stowage server (lock held): stop it or use another --data-dir", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open metadata file %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

func (s *Store) View(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(btx *bolt.Tx) error { return fn(tx{btx}) })
}

func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	u := &update{ctx: ctx, fn: fn, out: make(chan outcome, 1)}
	s.mu.Lock()
	s.queue = append(s.queue, u)
	lead := !s.committing
	s.committing = true
	s.mu.Unlock()
	if lead {
		s.lead()
	}
	for {
		o := <-u.out
		if !o.lead {
			return o.err
		}
		s.lead()
	}
}

// lead commits everything queued, then hands leadership to the first
// Update that queued meanwhile (so no caller waits on others' commits for
// longer than one), or ends the leading.
func (s *Store) lead() {
	s.mu.Lock()
	batch := s.queue
	s.queue = nil
	s.mu.Unlock()
	s.commit(batch)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) > 0 {
		s.queue[0].out <- outcome{lead: true}
		return
	}
	s.committing = false
}

// commit runs the batch's functions in one read-write transaction, in queue
// order, and tells each its result once the commit is synced. A function
// that fails is answered with its error alone and the others run again
// without it: its writes must not be kept.
func (s *Store) commit(batch []*update) {
	for len(batch) > 0 {
		failed := -1
		var failErr error
		err := s.db.Update(func(btx *bolt.Tx) error {
			for i, u := range batch {
				// Waiting in the queue can take a while under contention; a
				// caller that gave up meanwhile must not have its write applied.
				err := u.ctx.Err()
				if err == nil {
					err = u.fn(tx{btx})
				}
				if err != nil {
					failed, failErr = i, err
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			batch[failed].out <- outcome{err: failErr}
			batch = append(batch[:failed:failed], batch[failed+1:]...)
			continue
		}
		s.commits.Add(1)
		for _, u := range batch {
			u.out <- outcome{err: err}
		}
		return
	}
}

func (s *Store) Close() error { return s.db.Close() }

type tx struct{ btx *bolt.Tx }

func (t tx) Get(bucket, key string) ([]byte, error) {
	if b := t.btx.Bucket([]byte(bucket)); b != nil {
		// Seek rather than Get: Get cannot tell an empty value from a
		// missing key.
		k, v := b.Cursor().Seek([]byte(key))
		if k != nil && string(k) == key {
			return append([]byte{}, v...), nil
		}
	}
	return nil, fmt.Errorf("%s/%s: %w", bucket, key, store.ErrNotFound)
}

func (t tx) Put(bucket, key string, value []byte) error {
	b, err := t.btx.CreateBucketIfNotExists([]byte(bucket))
	if err != nil {
		return fmt.Errorf("put %s/%s: %w", bucket, key, err)
	}
	// bbolt keeps a reference to value until commit; copy so a caller
	// reusing its buffer cannot change what gets written.
	if err := b.Put([]byte(key), append([]byte{}, value...)); err != nil {
		return fmt.Errorf("put %s/%s: %w", bucket, key, err)
	}
	return nil
}

func (t tx) Delete(bucket, key string) error {
	b := t.btx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	if err := b.Delete([]byte(key)); err != nil {
		return fmt.Errorf("delete %s/%s: %w", bucket, key, err)
	}
	return nil
}

func (t tx) Scan(bucket, prefix, after string, fn func(key string, value []byte) error) error {
	b := t.btx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	c := b.Cursor()
	k, v := c.Seek([]byte(max(prefix, after)))
	if k != nil && string(k) == after {
		k, v = c.Next()
	}
	for k != nil && strings.HasPrefix(string(k), prefix) {
		key := string(k)
		err := fn(key, append([]byte{}, v...))
		if errors.Is(err, store.ErrStopScan) {
			return nil
		}
		if err != nil {
			return err
		}
		if !t.btx.Writable() {
			k, v = c.Next()
			continue
		}
		// fn may have changed the bucket, which invalidates a bbolt cursor:
		// find our place again by key.
		c = b.Cursor()
		if k, v = c.Seek([]byte(key)); k != nil && string(k) == key {
			k, v = c.Next()
		}
	}
	return nil
}
