package keylock

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestLock_SameKeyWhileHeld_Busy(t *testing.T) {
	s := New(50 * time.Millisecond)
	unlock, err := s.Lock(context.Background(), "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := s.Lock(context.Background(), "vol-1"); !errors.Is(err, ErrBusy) {
		t.Fatalf("second Lock = %v, want ErrBusy", err)
	}
}

func TestLock_DifferentKeys_Parallel(t *testing.T) {
	s := New(50 * time.Millisecond)
	u1, err := s.Lock(context.Background(), "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	defer u1()
	u2, err := s.Lock(context.Background(), "vol-2")
	if err != nil {
		t.Fatalf("Lock of another key = %v, want nil", err)
	}
	u2()
}

func TestLock_ReleasedWithinWait_Acquired(t *testing.T) {
	s := New(2 * time.Second)
	u1, _ := s.Lock(context.Background(), "k")
	go func() { time.Sleep(20 * time.Millisecond); u1() }()
	u2, err := s.Lock(context.Background(), "k")
	if err != nil {
		t.Fatalf("Lock after release = %v", err)
	}
	u2()
}

func TestLock_ManyGoroutines_MutualExclusion(t *testing.T) {
	s := New(10 * time.Second)
	var wg sync.WaitGroup
	inside, max := 0, 0
	var mu sync.Mutex
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := s.Lock(context.Background(), "a", "b")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			inside++
			if inside > max {
				max = inside
			}
			mu.Unlock()
			time.Sleep(time.Millisecond)
			mu.Lock()
			inside--
			mu.Unlock()
			u()
		}()
	}
	wg.Wait()
	if max != 1 {
		t.Fatalf("%d holders at once, want 1", max)
	}
}

func TestLock_NoWaitLimit_CanceledWaiterGivesUpAndKeyStaysUsable(t *testing.T) {
	s := New(0)
	unlock, err := s.Lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Lock(ctx, "a"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock of a held key with a canceled context = %v, want context.Canceled", err)
	}
	unlock()
	unlock2, err := s.Lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
	if len(s.keys) != 0 {
		t.Fatalf("set keeps %d keys after all unlocks", len(s.keys))
	}
}
