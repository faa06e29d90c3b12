// Package etcdstore is the store.Store backend on etcd v3, for servers that
// share their metadata (several `stowage server` processes with one leader,
// see election.go).
//
// Keys are laid out as <prefix>/<bucket>/<key>. A read-write transaction is
// optimistic: its reads see one etcd revision, its writes are buffered, and
// it commits in one etcd Txn that compares the mod revision of every key it
// read (and of the bucket marker <prefix>/<bucket> for every bucket it
// scanned, which every write to the bucket changes) with what it saw. When
// another writer got there first the Txn fails and fn runs again on the new
// revision, so Updates are serializable.
package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/stowage-io/stowage/internal/store"
)

// Limits of etcd's defaults that bound one Update. etcd refuses a request
// larger than --max-request-bytes (default 1.5 MiB) and a Txn with more than
// --max-txn-ops (default 128) compares or operations; Config can raise them
// to match an etcd started with larger values.
const (
	DefaultMaxRequestBytes = 1572864
	DefaultMaxTxnOps       = 128
	// DefaultMaxValueBytes is the largest value Put accepts: what is left of
	// a default request for one value with its key and the Txn's compares.
	DefaultMaxValueBytes = 1 << 20
)

// ErrTooLarge is returned (wrapped) by Put and Update when a value or a
// transaction is beyond what etcd accepts.
var ErrTooLarge = errors.New("beyond etcd's request limits")

// DefaultPrefix is where the server's keys live unless --store-prefix says
// otherwise.
const DefaultPrefix = "/stowage"

// Config says how to reach etcd.
type Config struct {
	// Endpoints are host:port (or http(s)://host:port) of etcd members.
	Endpoints []string
	// Prefix is prepended to every key (default DefaultPrefix), so several
	// Stowage installations can share one etcd.
	Prefix string
	// CAFile, CertFile, KeyFile: TLS to etcd (all empty: plain TCP).
	CAFile, CertFile, KeyFile string
	// RequestTimeout bounds each call to etcd when the caller's context has
	// no earlier deadline (default 10 s).
	RequestTimeout time.Duration
	// MaxRequestBytes, MaxTxnOps, MaxValueBytes: see the Default constants.
	MaxRequestBytes, MaxTxnOps, MaxValueBytes int
}

// Store is a store.Store on etcd.
type Store struct {
	cli    *clientv3.Client
	prefix string
	cfg    Config
	// guarded is set once an Election exists: from then on an Update
	// commits only while leader holds this server's election key.
	guarded atomic.Bool
	leader  atomic.Pointer[leaderKey]
}

// leaderKey is this server's key in the election and the revision it was
// created at; a Txn comparing its create revision fails once the lease
// behind it is gone, even if this process has not noticed yet.
type leaderKey struct {
	key string
	rev int64
}

// ParseURL reads the value of --store etcd://host:port[,host:port...].
func ParseURL(s string) ([]string, error) {
	rest, ok := strings.CutPrefix(s, "etcd://")
	if !ok {
		return nil, fmt.Errorf("store %q: want etcd://host:port[,host:port...]", s)
	}
	var eps []string
	for ep := range strings.SplitSeq(rest, ",") {
		ep = strings.TrimSpace(ep)
		if ep == "" {
			continue
		}
		if strings.Contains(ep, "/") {
			return nil, fmt.Errorf("store %q: endpoint %q is not host:port", s, ep)
		}
		eps = append(eps, ep)
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("store %q: no etcd endpoint (want etcd://host:port[,host:port...])", s)
	}
	return eps, nil
}

// Open connects to etcd and checks that it answers.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdstore: no etcd endpoint")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	cfg.Prefix = strings.TrimRight(cfg.Prefix, "/")
	if cfg.Prefix == "" || !strings.HasPrefix(cfg.Prefix, "/") {
		return nil, fmt.Errorf("etcdstore: prefix %q must start with / and name something", cfg.Prefix)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if cfg.MaxTxnOps <= 0 {
		cfg.MaxTxnOps = DefaultMaxTxnOps
	}
	if cfg.MaxValueBytes <= 0 {
		cfg.MaxValueBytes = min(DefaultMaxValueBytes, cfg.MaxRequestBytes)
	}
	var tlsCfg *tls.Config
	if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		if (cfg.CertFile == "") != (cfg.KeyFile == "") {
			return nil, errors.New("etcdstore: give both --etcd-cert-file and --etcd-key-file, or neither")
		}
		info := transport.TLSInfo{TrustedCAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile}
		var err error
		if tlsCfg, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("etcdstore: TLS to etcd: %w", err)
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         tlsCfg,
		DialTimeout: 5 * time.Second,
		// The client's own zap logger is noisy at info; errors reach the
		// caller as errors.
		Logger:             zap.NewNop(),
		MaxCallSendMsgSize: cfg.MaxRequestBytes + 64<<10,
	})
	if err != nil {
		return nil, fmt.Errorf("etcdstore: connect to etcd at %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	s := &Store{cli: cli, prefix: cfg.Prefix, cfg: cfg}
	cctx, cancel := s.callContext(ctx)
	defer cancel()
	if _, err := cli.Get(cctx, s.prefix+"/", clientv3.WithCountOnly(), clientv3.WithPrefix()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcdstore: etcd at %s does not answer: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return s, nil
}

// Client is the etcd client, for the election.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Close closes the connection to etcd.
func (s *Store) Close() error { return s.cli.Close() }

func (s *Store) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.RequestTimeout)
}

func (s *Store) bucketPrefix(bucket string) string { return s.prefix + "/" + bucket + "/" }

// marker is the key every Update writing to bucket puts, so that a Scan of
// the bucket conflicts with any write to it. It sorts outside the bucket's
// range: bucket names have no "/".
func (s *Store) marker(bucket string) string { return s.prefix + "/" + bucket }

func checkBucket(bucket string) error {
	if bucket == "" || strings.Contains(bucket, "/") || strings.HasPrefix(bucket, "_") {
		return fmt.Errorf("etcdstore: bucket name %q must be non-empty, without / and not start with _", bucket)
	}
	return nil
}

// View runs fn on one etcd revision: the one of its first read.
func (s *Store) View(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return fn(&tx{s: s, ctx: ctx, readOnly: true})
}

// Update runs fn and commits its writes in one Txn, running fn again when a
// key it read was changed by someone else meanwhile.
func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	backoff := time.Millisecond
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		lead := s.leader.Load()
		if s.guarded.Load() && lead == nil {
			return fmt.Errorf("etcdstore: write refused: %w", store.ErrNotLeader)
		}
		t := &tx{s: s, ctx: ctx, reads: map[string]int64{}, writes: map[string]*write{}, scanned: map[string]bool{}}
		if err := fn(t); err != nil {
			return err
		}
		ok, err := t.commit(lead)
		if err != nil || ok {
			return err
		}
		// Jitter keeps retrying writers of one hot key from colliding in
		// lock step.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff/2 + rand.N(backoff)):
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// write is a buffered Put (value) or Delete (deleted).
type write struct {
	bucket  string
	value   []byte
	deleted bool
}

type tx struct {
	s        *Store
	ctx      context.Context
	readOnly bool
	// rev is the revision every read sees; 0 until the first read.
	rev int64
	// reads: full key -> mod revision seen (0: missing).
	reads map[string]int64
	// scanned: buckets scanned; their markers' mod revisions are in reads.
	scanned map[string]bool
	writes  map[string]*write
}

func (t *tx) get(key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if t.rev != 0 {
		opts = append(opts, clientv3.WithRev(t.rev))
	}
	ctx, cancel := t.s.callContext(t.ctx)
	defer cancel()
	resp, err := t.s.cli.Get(ctx, key, opts...)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: read %s: %w", key, err)
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	return resp, nil
}

func (t *tx) Get(bucket, key string) ([]byte, error) {
	if err := checkBucket(bucket); err != nil {
		return nil, err
	}
	full := t.s.bucketPrefix(bucket) + key
	if w, ok := t.writes[full]; ok {
		if w.deleted {
			return nil, fmt.Errorf("%s/%s: %w", bucket, key, store.ErrNotFound)
		}
		return slices.Clone(w.value), nil
	}
	resp, err := t.get(full)
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		t.read(full, 0)
		return nil, fmt.Errorf("%s/%s: %w", bucket, key, store.ErrNotFound)
	}
	t.read(full, resp.Kvs[0].ModRevision)
	return resp.Kvs[0].Value, nil
}

func (t *tx) read(full string, modRev int64) {
	if t.reads == nil {
		return
	}
	if _, seen := t.reads[full]; !seen {
		t.reads[full] = modRev
	}
}

func (t *tx) Put(bucket, key string, value []byte) error {
	if err := checkBucket(bucket); err != nil {
		return err
	}
	if t.readOnly {
		return fmt.Errorf("etcdstore: put %s/%s in a read-only transaction", bucket, key)
	}
	if len(value) > t.s.cfg.MaxValueBytes {
		return fmt.Errorf("put %s/%s: value of %d bytes, at most %d are allowed: %w", bucket, key, len(value), t.s.cfg.MaxValueBytes, ErrTooLarge)
	}
	t.writes[t.s.bucketPrefix(bucket)+key] = &write{bucket: bucket, value: slices.Clone(value)}
	return nil
}

func (t *tx) Delete(bucket, key string) error {
	if err := checkBucket(bucket); err != nil {
		return err
	}
	if t.readOnly {
		return fmt.Errorf("etcdstore: delete %s/%s in a read-only transaction", bucket, key)
	}
	t.writes[t.s.bucketPrefix(bucket)+key] = &write{bucket: bucket, deleted: true}
	return nil
}

// scanPage is how many keys one range read fetches.
const scanPage = 256

func (t *tx) Scan(bucket, prefix, after string, fn func(key string, value []byte) error) error {
	if err := checkBucket(bucket); err != nil {
		return err
	}
	bp := t.s.bucketPrefix(bucket)
	start := bp + prefix
	if after != "" && after >= prefix {
		start = bp + after + "\x00"
	}
	end := clientv3.GetPrefixRangeEnd(bp + prefix)
	if t.reads != nil && !t.scanned[bucket] {
		// Read first so that the marker and the keys share a revision.
		resp, err := t.get(t.s.marker(bucket))
		if err != nil {
			return err
		}
		var mr int64
		if len(resp.Kvs) > 0 {
			mr = resp.Kvs[0].ModRevision
		}
		t.read(t.s.marker(bucket), mr)
		t.scanned[bucket] = true
	}
	// This transaction's own writes in the range, merged in key order.
	var pending []string
	for k, w := range t.writes {
		if w.bucket == bucket && k >= start && k < end {
			pending = append(pending, k)
		}
	}
	slices.Sort(pending)
	emit := func(full string, value []byte) error {
		err := fn(strings.TrimPrefix(full, bp), value)
		if errors.Is(err, store.ErrStopScan) {
			return errStop
		}
		return err
	}
	// flush emits the pending writes that sort before limit (all if "").
	flush := func(limit string) error {
		for len(pending) > 0 && (limit == "" || pending[0] < limit) {
			k := pending[0]
			pending = pending[1:]
			if w := t.writes[k]; w != nil && !w.deleted {
				if err := emit(k, slices.Clone(w.value)); err != nil {
					return err
				}
			}
		}
		return nil
	}
	err := func() error {
		for cursor := start; cursor < end; {
			resp, err := t.get(cursor, clientv3.WithRange(end), clientv3.WithLimit(scanPage))
			if err != nil {
				return err
			}
			for _, kv := range resp.Kvs {
				k := string(kv.Key)
				if err := flush(k); err != nil {
					return err
				}
				if len(pending) > 0 && pending[0] == k {
					pending = pending[1:]
					if w := t.writes[k]; w != nil && !w.deleted {
						if err := emit(k, slices.Clone(w.value)); err != nil {
							return err
						}
					}
					continue
				}
				if err := emit(k, kv.Value); err != nil {
					return err
				}
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			cursor = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		return flush("")
	}()
	if errors.Is(err, errStop) {
		return nil
	}
	return err
}

// errStop carries the callback's ErrStopScan out of the page loop without
// being mistaken for an ErrStopScan of a nested Scan.
var errStop = errors.New("etcdstore: stop scan")

// commit writes the buffered writes if nothing read has changed. ok=false
// means a conflict: run fn again.
func (t *tx) commit(lead *leaderKey) (ok bool, err error) {
	if len(t.writes) == 0 {
		return true, nil
	}
	var cmps []clientv3.Cmp
	for k, mr := range t.reads {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", mr))
	}
	var ops []clientv3.Op
	size := 0
	touched := map[string]bool{}
	for k, w := range t.writes {
		touched[w.bucket] = true
		size += len(k) + len(w.value)
		if w.deleted {
			ops = append(ops, clientv3.OpDelete(k))
		} else {
			ops = append(ops, clientv3.OpPut(k, string(w.value)))
		}
	}
	for b := range touched {
		ops = append(ops, clientv3.OpPut(t.s.marker(b), ""))
	}
	var orElse []clientv3.Op
	if lead != nil {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(lead.key), "=", lead.rev))
		orElse = append(orElse, clientv3.OpGet(lead.key))
	}
	for _, c := range cmps {
		size += len(c.Key) + 16
	}
	if len(ops) > t.s.cfg.MaxTxnOps || len(cmps) > t.s.cfg.MaxTxnOps {
		return false, fmt.Errorf("transaction reads %d keys and writes %d, etcd allows at most %d of either in one transaction (--max-txn-ops): %w",
			len(cmps), len(ops), t.s.cfg.MaxTxnOps, ErrTooLarge)
	}
	if size > t.s.cfg.MaxRequestBytes {
		return false, fmt.Errorf("transaction of about %d bytes, etcd accepts at most %d in one request (--max-request-bytes): %w",
			size, t.s.cfg.MaxRequestBytes, ErrTooLarge)
	}
	ctx, cancel := t.s.callContext(t.ctx)
	defer cancel()
	resp, err := t.s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(orElse...).Commit()
	if err != nil {
		return false, fmt.Errorf("etcdstore: commit: %w", err)
	}
	if resp.Succeeded {
		return true, nil
	}
	if lead != nil {
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 || kvs[0].CreateRevision != lead.rev {
			// Deposed: the lease behind the election key expired (this
			// process was paused or cut off) and someone else may lead.
			t.s.leader.CompareAndSwap(lead, nil)
			return false, fmt.Errorf("etcdstore: write refused, this server lost its leadership: %w", store.ErrNotLeader)
		}
	}
	return false, nil
}
