// Package store is the server's metadata store: a small transactional key-value
// interface over named buckets that every piece of server state (volumes,
// snapshots, attachments, file systems, keys, secrets) is kept in.
//
// The interface is narrow on purpose so that one conformance suite
// (package storetest) can prove each backend — bbolt on a single server, etcd
// when clustered — gives callers the same guarantees: serializable, atomic
// read-write transactions and ordered prefix scans.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// ErrNotFound is returned (wrapped) by Tx.Get when the key or its bucket does
// not exist; test for it with errors.Is.
var ErrNotFound = errors.New("not found")

// ErrNotLeader is returned (wrapped) by Update of a backend shared by several
// servers when this server does not lead them (any more): its write did not
// land, and the leader is the one to ask.
var ErrNotLeader = errors.New("this server is not the leader")

// ErrStopScan is returned by a Scan callback to end the scan early without
// that being an error: Scan then returns nil.
var ErrStopScan = errors.New("stop scan")

// Store runs transactions. It is safe for concurrent use.
//
// ctx is checked before a transaction starts (and again once a read-write
// transaction holds the write lock): a cancelled ctx returns ctx.Err() without
// calling fn. A transaction that has started runs to completion.
type Store interface {
	// View runs fn in a read-only transaction that sees one consistent
	// snapshot.
	View(ctx context.Context, fn func(Tx) error) error
	// Update runs fn in a read-write transaction. Transactions are
	// serializable. If fn returns an error nothing it wrote is kept and that
	// error is returned unchanged, so errors.Is works on it; otherwise all its
	// writes are committed durably before Update returns. A backend may
	// commit concurrent Updates together and run fn again when another
	// function of its group fails, so fn acts only through its Tx (and
	// resets anything else it sets at its start).
	Update(ctx context.Context, fn func(Tx) error) error
	Close() error
}

// Tx is valid only inside the function it was passed to.
type Tx interface {
	// Get returns a copy of the value, or an error wrapping ErrNotFound that
	// names the bucket and key.
	Get(bucket, key string) ([]byte, error)
	// Put stores a copy of value, creating the bucket if needed. It fails in
	// a View transaction.
	Put(bucket, key string, value []byte) error
	// Delete removes key; a missing key or bucket is not an error.
	Delete(bucket, key string) error
	// Scan calls fn for each key in bucket that has the prefix, in ascending
	// byte order, starting strictly after `after` ("" starts from the first),
	// so that a caller can page by passing the last key it saw. A missing
	// bucket means no calls. value is a copy. fn may Put or Delete the key it
	// was given. If fn returns ErrStopScan, Scan stops and returns nil; any
	// other error stops the scan and is returned unchanged.
	Scan(bucket, prefix, after string, fn func(key string, value []byte) error) error
}

// GetJSON reads bucket/key and decodes it into v. A missing key returns an
// error wrapping ErrNotFound.
func GetJSON(tx Tx, bucket, key string, v any) error {
	b, err := tx.Get(bucket, key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s/%s: %w", bucket, key, err)
	}
	return nil
}

// PutJSON encodes v as JSON and stores it at bucket/key.
func PutJSON(tx Tx, bucket, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s/%s: %w", bucket, key, err)
	}
	return tx.Put(bucket, key, b)
}
