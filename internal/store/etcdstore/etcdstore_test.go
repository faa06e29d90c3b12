package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"testing"

	"github.com/stowage-io/stowage/internal/store"
	"github.com/stowage-io/stowage/internal/store/storetest"
	"github.com/stowage-io/stowage/internal/testutil/etcdtest"
)

func open(t *testing.T, endpoint, prefix string) *Store {
	t.Helper()
	s, err := Open(t.Context(), Config{Endpoints: []string{endpoint}, Prefix: prefix})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestEtcdStore_Conformance(t *testing.T) {
	e := etcdtest.Start(t)
	storetest.Run(t, func(t *testing.T, dir string) store.Store {
		// The suite's directory is this store's namespace in the one etcd.
		return open(t, e.Endpoint, "/storetest"+dir)
	})
}

func TestOpen_NoEtcdThere_ErrorNamesEndpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	_, err := Open(ctx, Config{Endpoints: []string{"127.0.0.1:1"}})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("Open of a closed port = %v, want an error naming it", err)
	}
}

func TestPut_ValueBeyondLimit_ClearError(t *testing.T) {
	e := etcdtest.Start(t)
	s := open(t, e.Endpoint, "/limits")
	defer s.Close()
	for _, tc := range []struct {
		name string
		fn   func(store.Tx) error
	}{
		{"one value", func(tx store.Tx) error { return tx.Put("b", "k", make([]byte, DefaultMaxValueBytes+1)) }},
		{"two values together", func(tx store.Tx) error {
			return errors.Join(tx.Put("b", "k1", make([]byte, DefaultMaxValueBytes)), tx.Put("b", "k2", make([]byte, DefaultMaxValueBytes)))
		}},
		{"too many keys", func(tx store.Tx) error {
			for i := range DefaultMaxTxnOps {
				if err := tx.Put("b", fmt.Sprint(i), nil); err != nil {
					return err
				}
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Update(t.Context(), tc.fn)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Update = %v, want ErrTooLarge", err)
			}
			t.Logf("error: %v", err)
		})
	}
	// At the limit it fits.
	if err := s.Update(t.Context(), func(tx store.Tx) error { return tx.Put("b", "k", make([]byte, DefaultMaxValueBytes)) }); err != nil {
		t.Fatalf("Update of a value of %d bytes: %v", DefaultMaxValueBytes, err)
	}
}

func TestUpdate_DeadlineDuringFn_Honoured(t *testing.T) {
	e := etcdtest.Start(t)
	s := open(t, e.Endpoint, "/deadline")
	defer s.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	err := s.Update(ctx, func(tx store.Tx) error {
		<-ctx.Done()
		_, err := tx.Get("b", "k")
		return err
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Update = %v, want DeadlineExceeded", err)
	}
}

// elect opens a store on prefix and makes it campaign with value.
func elect(t *testing.T, endpoint, prefix, value string, ttl time.Duration) (*Store, *Election) {
	t.Helper()
	s := open(t, endpoint, prefix)
	t.Cleanup(func() { s.Close() })
	el, err := s.NewElection(ttl, value)
	if err != nil {
		t.Fatal(err)
	}
	return s, el
}

func TestElection_StandbyRefusedLeaderWrites(t *testing.T) {
	e := etcdtest.Start(t)
	a, ea := elect(t, e.Endpoint, "/elect", "a:1", time.Second)
	b, eb := elect(t, e.Endpoint, "/elect", "b:1", time.Second)
	if err := ea.Campaign(t.Context()); err != nil {
		t.Fatal(err)
	}
	putKey := func(s *Store, v string) error {
		return s.Update(t.Context(), func(tx store.Tx) error { return tx.Put("volumes", "vol-1", []byte(v)) })
	}
	if err := putKey(a, "from a"); err != nil {
		t.Fatalf("leader's Update: %v", err)
	}
	if err := putKey(b, "from b"); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("standby's Update = %v, want ErrNotLeader", err)
	}
	if got, err := eb.Leader(t.Context()); err != nil || got != "a:1" {
		t.Fatalf("Leader seen by the standby = %q, %v; want a:1", got, err)
	}
	if !ea.IsLeader() || eb.IsLeader() {
		t.Fatalf("IsLeader: a %v, b %v; want true, false", ea.IsLeader(), eb.IsLeader())
	}

	// The leader resigns: the standby wins at once.
	if err := ea.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := eb.Campaign(ctx); err != nil {
		t.Fatalf("standby's Campaign after the leader resigned: %v", err)
	}
	if err := putKey(b, "from b"); err != nil {
		t.Fatalf("new leader's Update: %v", err)
	}
	if err := putKey(a, "from a again"); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("resigned leader's Update = %v, want ErrNotLeader", err)
	}
	got := getVol1(t, b)
	if string(got) != "from b" {
		t.Fatalf("vol-1 = %q, want the new leader's write", got)
	}
}

// TestElection_DeposedLeaderUnaware_WriteRefused: a leader that was paused
// past its lease still believes it leads; its write must not land.
func TestElection_DeposedLeaderUnaware_WriteRefused(t *testing.T) {
	e := etcdtest.Start(t)
	a, ea := elect(t, e.Endpoint, "/deposed", "a:1", time.Second)
	b, eb := elect(t, e.Endpoint, "/deposed", "b:1", time.Second)
	if err := ea.Campaign(t.Context()); err != nil {
		t.Fatal(err)
	}
	// What a pause does, as etcd sees it: the lease ends. Revoked through
	// b's client so that a's process learns nothing directly; the store's
	// guard is left as a had it.
	lead := a.leader.Load()
	if _, err := b.Client().Revoke(t.Context(), ea.session.Lease()); err != nil {
		t.Fatal(err)
	}
	if err := eb.Campaign(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := b.Update(t.Context(), func(tx store.Tx) error { return tx.Put("volumes", "vol-1", []byte("from b")) }); err != nil {
		t.Fatalf("new leader's Update: %v", err)
	}
	a.leader.Store(lead) // as if a's keepalive had not yet failed
	err := a.Update(t.Context(), func(tx store.Tx) error {
		// A blind write: no read of vol-1 to conflict on; only the guard stops it.
		return tx.Put("volumes", "vol-1", []byte("from a"))
	})
	if !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("deposed leader's Update = %v, want ErrNotLeader", err)
	}
	got := getVol1(t, b)
	if string(got) != "from b" {
		t.Fatalf("vol-1 = %q after the deposed leader's write, want %q", got, "from b")
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{"etcd://127.0.0.1:2379", []string{"127.0.0.1:2379"}, false},
		{"etcd://a:1,b:2, c:3", []string{"a:1", "b:2", "c:3"}, false},
		{"etcd://", nil, true},
		{"http://a:1", nil, true},
		{"etcd://a:1/path", nil, true},
	} {
		got, err := ParseURL(tc.in)
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("ParseURL(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func getVol1(t *testing.T, s *Store) []byte {
	t.Helper()
	var got []byte
	if err := s.View(t.Context(), func(tx store.Tx) error {
		var err error
		got, err = tx.Get("volumes", "vol-1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return got
}
