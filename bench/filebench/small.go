package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// target is a directory the workloads run in: the local baseline or the
// access point through a client.
// backing is where the target's files are on the storage host ("" for
// the local directory).
type target struct{ name, dir, backing string }

func (e *env) targets() []target {
	return []target{{"local", e.local, ""}, {"FUSE client", e.mount, e.export}}
}

// swapped is the round's order of the targets: alternating, so neither
// always runs on a warmer (or busier) machine.
func swapped(ts []target, round int) []target {
	if round%2 == 0 {
		return ts
	}
	out := append([]target(nil), ts...)
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

var smallData = []byte("small file\n") // 11 bytes

// smallResult is one run's rates in operations per second.
type smallResult struct {
	create, stat, remove float64
	// spurious counts unlink(2)s through the client that returned ENOENT
	// for a file that the stat phase had just found (each file is removed
	// by one unlink only). If the file is still in the export's directory,
	// an unlink 1.1 s later removes it; if it is gone, the unlink did
	// remove it and answered wrongly.
	spurious int64
	// wrongExist counts O_EXCL creates through the client that answered
	// EEXIST for a new name (the file was then opened and written).
	wrongExist int64
}

// smallRun has each of clients goroutines create n files in its own
// directory (open O_CREAT|O_EXCL, write 11 bytes, close), then stat each,
// then remove each; each phase starts when every client has finished the
// previous one, and its rate is all clients' operations over its wall time.
// Between phases the file system is written back and 1.5 s pass, so the
// FUSE client's 1 s attribute and entry caches have expired: every stat
// through it asks the server.
func (e *env) smallRun(ctx context.Context, base, backing string, round, clients, n int) (smallResult, error) {
	// A fresh name each round: see the note on reused names in benchSmall.
	root := filepath.Join(base, fmt.Sprintf("small-r%d-%d", round, clients))
	if err := os.Mkdir(root, 0o755); err != nil {
		return smallResult{}, err
	}
	defer os.RemoveAll(root)
	dirs := make([]string, clients)
	for i := range dirs {
		dirs[i] = filepath.Join(root, fmt.Sprintf("c%d", i))
		if err := os.Mkdir(dirs[i], 0o755); err != nil {
			return smallResult{}, err
		}
	}
	phase := func(op func(path string) error) (float64, error) {
		if err := e.settle(); err != nil {
			return 0, err
		}
		time.Sleep(1500 * time.Millisecond)
		errs := make([]error, clients)
		var wg sync.WaitGroup
		start := time.Now()
		for c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range n {
					if i%100 == 0 && ctx.Err() != nil {
						errs[c] = ctx.Err()
						return
					}
					if err := op(filepath.Join(dirs[c], fmt.Sprintf("f%05d", i))); err != nil {
						errs[c] = err
						return
					}
				}
			}()
		}
		wg.Wait()
		el := time.Since(start)
		for _, err := range errs {
			if err != nil {
				return 0, err
			}
		}
		return float64(clients*n) / el.Seconds(), nil
	}
	var r smallResult
	var err error
	var wrongExist atomic.Int64
	if r.create, err = phase(func(p string) error {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if errors.Is(err, fs.ErrExist) && backing != "" {
			// No one else creates this name: the client answered EEXIST
			// for a file it made itself. Count it and open what is there.
			wrongExist.Add(1)
			f, err = os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0o644)
		}
		if err != nil {
			return err
		}
		if _, err := f.Write(smallData); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}); err != nil {
		return r, fmt.Errorf("create: %w", err)
	}
	if r.stat, err = phase(func(p string) error {
		fi, err := os.Lstat(p)
		if err == nil && fi.Size() != int64(len(smallData)) {
			err = fmt.Errorf("%s: size %d, want %d", p, fi.Size(), len(smallData))
		}
		return err
	}); err != nil {
		return r, fmt.Errorf("stat: %w", err)
	}
	var spurious atomic.Int64
	if r.remove, err = phase(func(p string) error {
		err := os.Remove(p)
		if errors.Is(err, fs.ErrNotExist) && backing != "" {
			// Is it there at the server (in the export's directory)?
			rel, _ := filepath.Rel(base, p)
			spurious.Add(1)
			if _, serr := os.Lstat(filepath.Join(backing, rel)); serr == nil {
				time.Sleep(1100 * time.Millisecond) // past the client's 1 s caches
				err = os.Remove(p)
			} else {
				err = nil // gone at the server: removed, with the wrong answer
			}
		}
		return err
	}); err != nil {
		return r, fmt.Errorf("remove: %w", err)
	}
	r.spurious = spurious.Load()
	r.wrongExist = wrongExist.Load()
	return r, nil
}

func benchSmall(ctx context.Context, e *env, rep *report, cfg config) error {
	rep.Heading("Small files: create, stat, remove")
	res := map[string]map[int]*[3]samples{} // target → clients → create, stat, remove
	for _, t := range e.targets() {
		res[t.name] = map[int]*[3]samples{}
		for _, c := range cfg.clients {
			res[t.name][c] = &[3]samples{}
		}
	}
	loads := []string{}
	spurious, wrongExist := map[string]int64{}, map[string]int64{}
	for r := range cfg.rounds {
		for _, c := range cfg.clients {
			for _, t := range swapped(e.targets(), r) {
				progress("small files: round %d/%d, %s, %d client(s) × %d files", r+1, cfg.rounds, t.name, c, cfg.files)
				x, err := e.smallRun(ctx, t.dir, t.backing, r, c, cfg.files)
				if err != nil {
					return fmt.Errorf("%s, %d clients: %w", t.name, c, err)
				}
				progress("  create %.0f/s, stat %.0f/s, remove %.0f/s", x.create, x.stat, x.remove)
				if x.wrongExist > 0 {
					progress("  %d O_EXCL creates through the mount returned EEXIST for a new name (see the report)", x.wrongExist)
					wrongExist[t.name] += x.wrongExist
				}
				if x.spurious > 0 {
					progress("  %d unlink(2)s through the mount returned ENOENT for a file that existed (see the report)", x.spurious)
					spurious[t.name] += x.spurious
				}
				s := res[t.name][c]
				s[0], s[1], s[2] = append(s[0], x.create), append(s[1], x.stat), append(s[2], x.remove)
			}
		}
		loads = append(loads, loadAvg())
	}
	rep.Para("%d files of 11 bytes per client, each client a goroutine in its own directory: open(O_CREAT|O_EXCL) + write + close, "+
		"then lstat each, then unlink each; the file system is written back (syncfs) and 1.5 s pass before each phase "+
		"(the FUSE client caches attributes and entries for 1 s, so its stats go to the server). "+
		"Operations per second over each phase's wall time; median of %d rounds (min–max). Load average after each round: %s.",
		cfg.files, cfg.rounds, joinLoads(loads))
	var rows [][]string
	phases := []string{"create", "stat", "remove"}
	for _, c := range cfg.clients {
		for p, name := range phases {
			l, f := res["local"][c][p], res["FUSE client"][c][p]
			goal := "—"
			if p == 0 {
				met := f.Median() >= 0.3*l.Median() && f.Median() > 1410
				goal = fmt.Sprintf("≥ 0.3× local and > 1,410/s: %s", yesNo(met))
			}
			rows = append(rows, []string{fmt.Sprintf("%s, %d client(s)", name, c), l.Cell("%.0f"), f.Cell("%.0f"), ratio(f.Median(), l.Median()), goal})
		}
	}
	rep.Table([]string{"ops/s", "local", "FUSE client", "ratio", "goal"}, rows)
	for _, t := range e.targets() {
		if n := wrongExist[t.name]; n > 0 {
			rep.Para("**%s: %d open(O_CREAT|O_EXCL) call(s) returned EEXIST for a name that did not exist before** (each client "+
				"creates its own names once). The file was there afterwards; it was opened without O_EXCL and written, and counted as a create. "+
				"Over %d rounds with %s clients.", t.name, n, cfg.rounds, fmt.Sprint(cfg.clients))
		}
		if n := spurious[t.name]; n > 0 {
			rep.Para("**%s: %d unlink(2) call(s) returned ENOENT** for a file the stat phase had just found and no one else removed. "+
				"Each was checked in the export's directory on the storage host: if the file was still there it was unlinked again through "+
				"the mount 1.1 s later (the wait is in the remove rate); if it was gone, the unlink had removed it and answered wrongly. "+
				"Over %d rounds with %s clients.", t.name, n, cfg.rounds, fmt.Sprint(cfg.clients))
		}
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "**met**"
	}
	return "**not met**"
}

func joinLoads(l []string) string {
	out := ""
	for i, s := range l {
		if i > 0 {
			out += "; "
		}
		out += s
	}
	return out
}
