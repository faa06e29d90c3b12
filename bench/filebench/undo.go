package main

import (
	"errors"
	"fmt"
)

// undoStack runs cleanups last-in first-out. Each runs at most once, so a
// benchmark can free a resource early (to keep the pool small) and the final
// run still covers whatever a failure left.
type undoStack struct{ items []*undo }

type undo struct {
	what string
	fn   func() error
	done bool
}

func (u *undoStack) push(what string, fn func() error) *undo {
	it := &undo{what: what, fn: fn}
	u.items = append(u.items, it)
	return it
}

// do runs one cleanup now (if it has not run).
func (it *undo) do() error {
	if it.done {
		return nil
	}
	it.done = true
	if err := it.fn(); err != nil {
		return fmt.Errorf("%s: %w", it.what, err)
	}
	return nil
}

// run runs every pending cleanup, newest first, and reports all failures.
func (u *undoStack) run() error {
	var errs []error
	for i := len(u.items) - 1; i >= 0; i-- {
		if err := u.items[i].do(); err != nil {
			progress("cleanup failed: %v", err)
			errs = append(errs, err)
		}
	}
	u.items = nil
	return errors.Join(errs...)
}
