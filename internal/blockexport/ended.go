package blockexport

// maxEnded is how many ended attachments an exporter remembers. Attachment
// ids are never reused; an ended one is remembered so that its node is
// refused for good (not told to wait for the export) and the server cannot
// declare it again. Past this many the oldest are forgotten: a node that
// comes back with one of those is told the export is unknown and waits
// until its node plugin detaches it, which is safe, as nothing is exported
// under that id any more.
const maxEnded = 16384

// ended remembers the attachments that were fenced or detached, oldest
// forgotten first.
type ended struct {
	by    map[string]endReason
	order []string // insertion order; a ring once full
	next  int
	limit int
}

type endReason struct {
	fencedBy uint64 // the generation that fenced it; 0: detached
}

func newEnded(limit int) *ended { return &ended{by: map[string]endReason{}, limit: limit} }

func (m *ended) get(id string) (endReason, bool) {
	r, ok := m.by[id]
	return r, ok
}

// add records id's end; a fence is not overwritten by a later detach.
func (m *ended) add(id string, r endReason) {
	if old, ok := m.by[id]; ok {
		if old.fencedBy == 0 {
			m.by[id] = r
		}
		return
	}
	if len(m.order) < m.limit {
		m.order = append(m.order, id)
	} else {
		delete(m.by, m.order[m.next])
		m.order[m.next] = id
		m.next = (m.next + 1) % m.limit
	}
	m.by[id] = r
}

func (m *ended) len() int { return len(m.by) }
