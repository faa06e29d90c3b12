package nfs4

import (
	"context"
	"sync"
)

// slotTable is a session's fore-channel slots. A slot carries one request
// at a time; its sequence id goes up by one for every new request, and a
// request retried on the same slot with the same sequence id is a replay
// that the server answers from its reply cache (exactly-once semantics).
type slotTable struct {
	mu      sync.Mutex
	seq     []uint32 // next sequence id to send per slot
	retired []bool   // slot state is unknown: never used again in this session
	free    []uint32
	wake    chan struct{} // closed and replaced whenever a slot is freed
	nlive   int
}

type slot struct {
	id  uint32
	seq uint32
}

func newSlotTable(n int) *slotTable {
	t := &slotTable{seq: make([]uint32, n), retired: make([]bool, n), wake: make(chan struct{}), nlive: n}
	for i := n - 1; i >= 0; i-- {
		t.seq[i] = 1
		t.free = append(t.free, uint32(i))
	}
	return t
}

// acquire waits for a free slot. It fails with errNoSlots when every slot
// was retired.
func (t *slotTable) acquire(ctx context.Context) (slot, error) {
	for {
		t.mu.Lock()
		if n := len(t.free); n > 0 {
			id := t.free[n-1]
			t.free = t.free[:n-1]
			s := slot{id: id, seq: t.seq[id]}
			t.mu.Unlock()
			return s, nil
		}
		if t.nlive == 0 {
			t.mu.Unlock()
			return slot{}, errNoSlots
		}
		w := t.wake
		t.mu.Unlock()
		select {
		case <-ctx.Done():
			return slot{}, ctx.Err()
		case <-w:
		}
	}
}

// release frees a slot; advance says the server processed the request
// (SEQUENCE succeeded), so the next request on it uses the next id.
func (t *slotTable) release(s slot, advance bool) {
	t.mu.Lock()
	if advance {
		t.seq[s.id] = s.seq + 1
	}
	t.free = append(t.free, s.id)
	close(t.wake)
	t.wake = make(chan struct{})
	t.mu.Unlock()
}

// retire drops a slot whose server-side sequence id is unknown.
func (t *slotTable) retire(s slot) {
	t.mu.Lock()
	if !t.retired[s.id] {
		t.retired[s.id] = true
		t.nlive--
	}
	close(t.wake)
	t.wake = make(chan struct{})
	t.mu.Unlock()
}

// highest is the highest slot id in use by the table.
func (t *slotTable) highest() uint32 { return uint32(len(t.seq) - 1) }
