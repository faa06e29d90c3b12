package boltstore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stowage-io/stowage/internal/store"
	"github.com/stowage-io/stowage/internal/store/storetest"
)

func TestBoltStore_Conformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, dir string) store.Store {
		s, err := Open(filepath.Join(dir, "meta.db"))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

func TestOpen_FileLockedByAnotherServer_InUseError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	first, err := Open(path)
	if err != nil {
		t.Fatalf("first Open: %v", err)
	}
	defer first.Close()

	// A short timeout keeps the test fast; the lock conflict is the same.
	second, err := open(path, 100*time.Millisecond)
	if err == nil {
		second.Close()
		t.Fatal("second Open of a locked file succeeded")
	}
	for _, want := range []string{path, "in use by another stowage server", "--data-dir"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestOpen_MissingParentDirs_CreatedPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "meta", "meta.db")
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	for _, tc := range []struct {
		path string
		want os.FileMode
	}{
		{filepath.Dir(path), 0o700},
		{path, 0o600},
	} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got&^tc.want != 0 {
			t.Errorf("%s mode = %v, want at most %v", tc.path, got, tc.want)
		}
	}
}

// TestUpdate_ConcurrentCallers_ShareCommits: every commit is an fsync, so
// Updates that arrive while one is being synced go into the next commit
// together instead of each waiting for its own.
func TestUpdate_ConcurrentCallers_ShareCommits(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const callers, each = 16, 20
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for i := range each {
				key := filepath.Join("k", string(rune('a'+c)), string(rune('a'+i)))
				if err := s.Update(context.Background(), func(tx store.Tx) error { return tx.Put("b", key, []byte("v")) }); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := s.commits.Load(); got >= callers*each/2 {
		t.Errorf("%d Updates from %d callers took %d commits; want them grouped into fewer than half as many", callers*each, callers, got)
	}
	n := 0
	if err := s.View(context.Background(), func(tx store.Tx) error {
		return tx.Scan("b", "", "", func(string, []byte) error { n++; return nil })
	}); err != nil {
		t.Fatal(err)
	}
	if n != callers*each {
		t.Errorf("%d keys stored, want %d", n, callers*each)
	}
}
