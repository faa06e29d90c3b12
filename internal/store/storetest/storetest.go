// Package storetest is the conformance suite for store.Store backends: every
// backend's tests call Run, so callers can rely on the same behaviour whether
// the server keeps its metadata in bbolt or etcd.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/stowage-io/stowage/internal/store"
)

// OpenFunc returns a store whose data lives in dir. The suite passes a fresh
// directory per subtest and, to check durability, opens the same dir again
// after closing the first store: the second store must see the first one's
// committed data. A backend without local files (etcd) can use dir as its
// key namespace. The suite closes every store it opens; open must fail the
// test itself (t.Fatal) if it cannot open.
type OpenFunc func(t *testing.T, dir string) store.Store

// Run runs the conformance subtests against the backend that open creates.
func Run(t *testing.T, open OpenFunc) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open OpenFunc)
	}{
		{"GetMissing_NotFound", testGetMissing},
		{"PutThenGet_ReturnsValue", testPutGet},
		{"PutExistingKey_Overwrites", testOverwrite},
		{"Delete_MissingIsNoErrorAndExistingIsGone", testDelete},
		{"UpdateFnError_NothingWrittenAndErrorPassedThrough", testUpdateRollback},
		{"PutInView_Fails", testPutInView},
		{"Scan_AscendingPrefixAfter", testScan},
		{"Scan_PageThroughWithAfter_VisitsEachKeyOnce", testScanPaging},
		{"ScanCallbackError_StopsAndPassesThrough", testScanError},
		{"ScanDeletingVisitedKey_VisitsEveryKey", testScanDelete},
		{"ReturnedAndStoredValues_AreCopies", testCopies},
		{"ConcurrentUpdates_Serializable", testConcurrentUpdates},
		{"ConcurrentUpdatesSomeFailing_FailedWritesGoneOthersKept", testConcurrentFailures},
		{"CloseAndReopen_DataSurvives", testReopen},
		{"CancelledContext_FnNotRun", testCancelled},
		{"JSONHelpers_RoundTrip", testJSON},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

func openFresh(t *testing.T, open OpenFunc) store.Store {
	t.Helper()
	s := open(t, t.TempDir())
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func put(t *testing.T, s store.Store, bucket string, kv ...string) {
	t.Helper()
	err := s.Update(t.Context(), func(tx store.Tx) error {
		for i := 0; i+1 < len(kv); i += 2 {
			if err := tx.Put(bucket, kv[i], []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
}

// get returns the value, or ok=false if Get reported ErrNotFound.
func get(t *testing.T, s store.Store, bucket, key string) (value string, ok bool) {
	t.Helper()
	err := s.View(t.Context(), func(tx store.Tx) error {
		b, err := tx.Get(bucket, key)
		value = string(b)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return "", false
	}
	if err != nil {
		t.Fatalf("Get %s/%s: %v", bucket, key, err)
	}
	return value, true
}

func wantValue(t *testing.T, s store.Store, bucket, key, want string) {
	t.Helper()
	got, ok := get(t, s, bucket, key)
	if !ok {
		t.Fatalf("Get %s/%s: not found, want %q", bucket, key, want)
	}
	if got != want {
		t.Fatalf("Get %s/%s = %q, want %q", bucket, key, got, want)
	}
}

func wantMissing(t *testing.T, s store.Store, bucket, key string) {
	t.Helper()
	if got, ok := get(t, s, bucket, key); ok {
		t.Fatalf("Get %s/%s = %q, want not found", bucket, key, got)
	}
}

func scanKeys(t *testing.T, s store.Store, bucket, prefix, after string) []string {
	t.Helper()
	var keys []string
	err := s.View(t.Context(), func(tx store.Tx) error {
		return tx.Scan(bucket, prefix, after, func(k string, _ []byte) error {
			keys = append(keys, k)
			return nil
		})
	})
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	return keys
}

func testGetMissing(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	put(t, s, "volumes", "vol-1", "x")
	for _, tc := range []struct{ name, bucket, key string }{
		{"missing bucket", "snapshots", "snap-1"},
		{"missing key", "volumes", "vol-2"},
		{"key only a prefix of an existing key", "volumes", "vol-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.View(t.Context(), func(tx store.Tx) error {
				_, err := tx.Get(tc.bucket, tc.key)
				return err
			})
			if !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("Get = %v, want ErrNotFound", err)
			}
		})
	}
}

func testPutGet(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	for _, tc := range []struct{ name, key, value string }{
		{"plain", "vol-1", `{"size":10}`},
		{"empty value is not missing", "vol-empty", ""},
		{"binary", "vol-bin", "\x00\xff\x00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Update(t.Context(), func(tx store.Tx) error {
				if err := tx.Put("volumes", tc.key, []byte(tc.value)); err != nil {
					return err
				}
				got, err := tx.Get("volumes", tc.key)
				if err != nil {
					return fmt.Errorf("Get in the writing tx: %w", err)
				}
				if string(got) != tc.value {
					return fmt.Errorf("Get in the writing tx = %q, want %q", got, tc.value)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			wantValue(t, s, "volumes", tc.key, tc.value)
		})
	}
}

func testOverwrite(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	put(t, s, "volumes", "vol-1", "a long first value")
	put(t, s, "volumes", "vol-1", "b")
	wantValue(t, s, "volumes", "vol-1", "b")
}

func testDelete(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	put(t, s, "volumes", "vol-1", "x", "vol-2", "y")
	err := s.Update(t.Context(), func(tx store.Tx) error {
		return errors.Join(
			tx.Delete("no-such-bucket", "vol-1"),
			tx.Delete("volumes", "no-such-key"),
			tx.Delete("volumes", "vol-1"),
		)
	})
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantMissing(t, s, "volumes", "vol-1")
	wantValue(t, s, "volumes", "vol-2", "y")
}

func testUpdateRollback(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	put(t, s, "volumes", "kept", "before", "deleted", "before")
	errFn := errors.New("quota exceeded")
	err := s.Update(t.Context(), func(tx store.Tx) error {
		if err := tx.Put("volumes", "kept", []byte("after")); err != nil {
			return err
		}
		if err := tx.Put("volumes", "new", []byte("after")); err != nil {
			return err
		}
		if err := tx.Put("new-bucket", "k", []byte("after")); err != nil {
			return err
		}
		if err := tx.Delete("volumes", "deleted"); err != nil {
			return err
		}
		return fmt.Errorf("create vol-9: %w", errFn)
	})
	if !errors.Is(err, errFn) {
		t.Fatalf("Update = %v, want the error fn returned", err)
	}
	wantValue(t, s, "volumes", "kept", "before")
	wantValue(t, s, "volumes", "deleted", "before")
	wantMissing(t, s, "volumes", "new")
	wantMissing(t, s, "new-bucket", "k")
}

func testPutInView(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	put(t, s, "volumes", "vol-1", "x")
	for _, tc := range []struct{ name, bucket string }{
		{"existing bucket", "volumes"},
		{"new bucket", "snapshots"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var putErr error
			err := s.View(t.Context(), func(tx store.Tx) error {
				putErr = tx.Put(tc.bucket, "vol-2", []byte("y"))
				return nil
			})
			if err != nil {
				t.Fatalf("View: %v", err)
			}
			if putErr == nil {
				t.Fatal("Put in a View tx succeeded, want an error")
			}
			wantMissing(t, s, tc.bucket, "vol-2")
		})
	}
}

func testScan(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	// Written out of order so the backend, not the writer, orders them.
	put(t, s, "objs", "b/2", "", "a/2", "", "b/10", "", "ab", "", "a/1", "", "c", "", "a/", "")
	for _, tc := range []struct {
		name, bucket, prefix, after string
		want                        []string
	}{
		{"all keys in byte order", "objs", "", "", []string{"a/", "a/1", "a/2", "ab", "b/10", "b/2", "c"}},
		{"prefix", "objs", "a/", "", []string{"a/", "a/1", "a/2"}},
		{"prefix matching nothing", "objs", "d", "", nil},
		{"after an existing key", "objs", "", "a/2", []string{"ab", "b/10", "b/2", "c"}},
		{"after a key that does not exist", "objs", "", "b/1", []string{"b/10", "b/2", "c"}},
		{"after sorts before the prefix", "objs", "b/", "a", []string{"b/10", "b/2"}},
		{"after inside the prefix", "objs", "a/", "a/1", []string{"a/2"}},
		{"after past the prefix", "objs", "a/", "b", nil},
		{"after the last key", "objs", "", "c", nil},
		{"missing bucket", "nothing-here", "", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := scanKeys(t, s, tc.bucket, tc.prefix, tc.after)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Scan(%q, %q, %q) = %q, want %q", tc.bucket, tc.prefix, tc.after, got, tc.want)
			}
		})
	}
}

func testScanPaging(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	var kv, want []string
	for i := range 25 {
		k := fmt.Sprintf("vol-%03d", i)
		kv = append(kv, k, k+"-value")
		want = append(want, k)
	}
	put(t, s, "volumes", kv...)
	put(t, s, "other", "vol-999", "")

	const pageSize = 10
	var got []string
	var pages []int
	after := ""
	for {
		var page []string
		err := s.View(t.Context(), func(tx store.Tx) error {
			return tx.Scan("volumes", "vol-", after, func(k string, v []byte) error {
				if string(v) != k+"-value" {
					return fmt.Errorf("value of %s = %q", k, v)
				}
				page = append(page, k)
				if len(page) == pageSize {
					return store.ErrStopScan
				}
				return nil
			})
		})
		if err != nil {
			t.Fatalf("Scan after %q = %v, want nil (ErrStopScan is not an error)", after, err)
		}
		if len(page) == 0 {
			break
		}
		pages = append(pages, len(page))
		got = append(got, page...)
		after = page[len(page)-1]
	}
	if !slices.Equal(pages, []int{10, 10, 5}) {
		t.Errorf("page sizes = %v, want [10 10 5]", pages)
	}
	if !slices.Equal(got, want) {
		t.Errorf("keys over all pages = %q, want %q", got, want)
	}
}

func testScanError(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	put(t, s, "volumes", "vol-1", "", "vol-2", "", "vol-3", "")
	errFn := errors.New("decode failed")
	var visited []string
	err := s.View(t.Context(), func(tx store.Tx) error {
		return tx.Scan("volumes", "", "", func(k string, _ []byte) error {
			visited = append(visited, k)
			if k == "vol-2" {
				return errFn
			}
			return nil
		})
	})
	if !errors.Is(err, errFn) {
		t.Fatalf("Scan = %v, want the callback's error", err)
	}
	if want := []string{"vol-1", "vol-2"}; !slices.Equal(visited, want) {
		t.Fatalf("visited %q, want %q", visited, want)
	}
}

func testScanDelete(t *testing.T, open OpenFunc) {
	var keys []string
	for i := range 100 {
		keys = append(keys, fmt.Sprintf("att-%03d", i))
	}
	putAll := func(tx store.Tx) error {
		for _, k := range keys {
			if err := tx.Put("attachments", k, []byte(k)); err != nil {
				return err
			}
		}
		return nil
	}
	for _, tc := range []struct {
		name   string
		sameTx bool // keys written in the scanning tx rather than committed before
	}{
		{"keys committed before", false},
		{"keys written in the same tx", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openFresh(t, open)
			if !tc.sameTx {
				if err := s.Update(t.Context(), putAll); err != nil {
					t.Fatalf("Update: %v", err)
				}
			}
			var visited []string
			err := s.Update(t.Context(), func(tx store.Tx) error {
				if tc.sameTx {
					if err := putAll(tx); err != nil {
						return err
					}
				}
				return tx.Scan("attachments", "", "", func(k string, v []byte) error {
					if string(v) != k {
						return fmt.Errorf("value of %s = %q", k, v)
					}
					visited = append(visited, k)
					return tx.Delete("attachments", k)
				})
			})
			if err != nil {
				t.Fatalf("Update: %v", err)
			}
			if !slices.Equal(visited, keys) {
				t.Fatalf("visited %q, want every key once: %q", visited, keys)
			}
			if left := scanKeys(t, s, "attachments", "", ""); len(left) != 0 {
				t.Fatalf("keys left after deleting all: %q", left)
			}
		})
	}
}

func testCopies(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	buf := []byte("original")
	err := s.Update(t.Context(), func(tx store.Tx) error {
		if err := tx.Put("volumes", "vol-1", buf); err != nil {
			return err
		}
		copy(buf, "CLOBBERED") // a caller reusing its buffer before commit
		return nil
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	wantValue(t, s, "volumes", "vol-1", "original")

	var fromGet, fromScan []byte
	err = s.View(t.Context(), func(tx store.Tx) error {
		var err error
		if fromGet, err = tx.Get("volumes", "vol-1"); err != nil {
			return err
		}
		copy(fromGet, "XXXX")
		return tx.Scan("volumes", "", "", func(_ string, v []byte) error {
			fromScan = v
			copy(v, "YYYY")
			return nil
		})
	})
	if err != nil {
		t.Fatalf("View: %v", err)
	}
	wantValue(t, s, "volumes", "vol-1", "original")
	// Values must stay readable after their transaction ended.
	if string(fromGet) != "XXXXinal" || string(fromScan) != "YYYYinal" {
		t.Fatalf("values kept after the tx = %q, %q; want %q, %q", fromGet, fromScan, "XXXXinal", "YYYYinal")
	}
}

func testConcurrentUpdates(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	const workers, perWorker = 8, 25
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range perWorker {
				err := s.Update(t.Context(), func(tx store.Tx) error {
					var n int
					if err := store.GetJSON(tx, "counters", "n", &n); err != nil && !errors.Is(err, store.ErrNotFound) {
						return err
					}
					return store.PutJSON(tx, "counters", "n", n+1)
				})
				if err != nil {
					t.Errorf("Update: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	wantValue(t, s, "counters", "n", fmt.Sprint(workers*perWorker))
}

// testConcurrentFailures: a backend that commits concurrent Updates
// together must still keep each one atomic on its own. Every third Update
// fails after writing; its key must not exist, its error must come back
// unchanged, and every other Update's key must be there after a reopen.
func testConcurrentFailures(t *testing.T, open OpenFunc) {
	dir := t.TempDir()
	s := open(t, dir)
	errRefused := errors.New("refused")
	const n = 60
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			key := fmt.Sprintf("vol-%02d", i)
			err := s.Update(t.Context(), func(tx store.Tx) error {
				if err := tx.Put("volumes", key, []byte(key)); err != nil {
					return err
				}
				if i%3 == 0 {
					return fmt.Errorf("volume %s: %w", key, errRefused)
				}
				return nil
			})
			if i%3 == 0 && !errors.Is(err, errRefused) {
				t.Errorf("failing Update of %s returned %v, want its own error", key, err)
			}
			if i%3 != 0 && err != nil {
				t.Errorf("Update of %s: %v", key, err)
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	again := open(t, dir)
	t.Cleanup(func() { again.Close() })
	for i := range n {
		key := fmt.Sprintf("vol-%02d", i)
		if i%3 == 0 {
			wantMissing(t, again, "volumes", key)
		} else {
			wantValue(t, again, "volumes", key, key)
		}
	}
}

func testReopen(t *testing.T, open OpenFunc) {
	dir := t.TempDir()
	first := open(t, dir)
	put(t, first, "volumes", "vol-1", "x", "vol-2", "y")
	err := first.Update(t.Context(), func(tx store.Tx) error { return tx.Delete("volumes", "vol-2") })
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	second := open(t, dir)
	t.Cleanup(func() { second.Close() })
	wantValue(t, second, "volumes", "vol-1", "x")
	wantMissing(t, second, "volumes", "vol-2")
}

func testCancelled(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, tc := range []struct {
		name string
		run  func(context.Context, func(store.Tx) error) error
	}{
		{"View", s.View},
		{"Update", s.Update},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran := false
			err := tc.run(ctx, func(store.Tx) error { ran = true; return nil })
			if !errors.Is(err, context.Canceled) {
				t.Errorf("%s with a cancelled ctx = %v, want context.Canceled", tc.name, err)
			}
			if ran {
				t.Errorf("%s ran fn with a cancelled ctx", tc.name)
			}
		})
	}
}

func testJSON(t *testing.T, open OpenFunc) {
	s := openFresh(t, open)
	type volume struct {
		ID      string `json:"id"`
		SizeGiB int64  `json:"sizeGiB"`
	}
	in := volume{ID: "vol-1", SizeGiB: 20}
	if err := s.Update(t.Context(), func(tx store.Tx) error { return store.PutJSON(tx, "volumes", in.ID, in) }); err != nil {
		t.Fatalf("PutJSON: %v", err)
	}
	var out volume
	if err := s.View(t.Context(), func(tx store.Tx) error { return store.GetJSON(tx, "volumes", in.ID, &out) }); err != nil {
		t.Fatalf("GetJSON: %v", err)
	}
	if out != in {
		t.Fatalf("GetJSON = %+v, want %+v", out, in)
	}
	err := s.View(t.Context(), func(tx store.Tx) error { return store.GetJSON(tx, "volumes", "vol-2", &out) })
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetJSON of a missing key = %v, want ErrNotFound", err)
	}
}
