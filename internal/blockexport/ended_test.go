package blockexport

import (
	"fmt"
	"testing"
)

// The exporter's memory of ended attachments is bounded: past the limit
// the oldest go first, and a fence is not turned into a detach.
func TestEnded_BoundedOldestFirst_FenceKept(t *testing.T) {
	m := newEnded(3)
	m.add("a", endReason{fencedBy: 7})
	m.add("a", endReason{}) // detached after the fence: still fenced
	if r, ok := m.get("a"); !ok || r.fencedBy != 7 {
		t.Fatalf("a: %+v %v, want fenced by 7", r, ok)
	}
	m.add("b", endReason{})
	m.add("c", endReason{})
	for i := 0; i < 5; i++ {
		m.add(fmt.Sprint("d", i), endReason{fencedBy: uint64(10 + i)})
	}
	if m.len() != 3 {
		t.Fatalf("%d remembered, want the limit 3", m.len())
	}
	for _, id := range []string{"a", "b", "c", "d0", "d1"} {
		if _, ok := m.get(id); ok {
			t.Errorf("%s is still remembered; the oldest go first", id)
		}
	}
	for i, id := range []string{"d2", "d3", "d4"} {
		if r, ok := m.get(id); !ok || r.fencedBy != uint64(12+i) {
			t.Errorf("%s: %+v %v, want fenced by %d", id, r, ok, 12+i)
		}
	}
}
