package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// nfsURL is a libnfs URL of path (relative to the export) as the access
// point's user.
func (e *env) nfsURL(path string) string {
	return fmt.Sprintf("nfs://127.0.0.1%s/%s?version=4&nfsport=%d&uid=%d&gid=%d", e.ex.Pseudo, path, e.port, apUID, apGID)
}

func runQuiet(ctx context.Context, name string, args ...string) error {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// perProcess runs clients parallel loops of n commands each (cmd(client, i)
// gives one), one process per file, and returns files per second.
func perProcess(ctx context.Context, clients, n int, cmd func(c, i int) []string) (float64, error) {
	errs := make([]error, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				a := cmd(c, i)
				if err := runQuiet(ctx, a[0], a[1:]...); err != nil {
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

// benchLibnfs measures what libnfs-utils 4.0's command-line tools can do
// against the access point: each call is a process with its own NFS
// session, so small-file figures are per process, compared with a local
// process per file (cp).
func benchLibnfs(ctx context.Context, e *env, rep *report, cfg config) error {
	rep.Heading("libnfs (libnfs-utils command-line tools)")
	work, err := os.MkdirTemp("", "stwfb-src")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	src := filepath.Join(work, "small")
	if err := os.WriteFile(src, smallData, 0o644); err != nil {
		return err
	}
	big := filepath.Join(work, "1mib")
	if err := os.WriteFile(big, make([]byte, chunk), 0o644); err != nil {
		return err
	}

	// Can nfs-cp write a 1 MiB file? (libnfs 4.0 over NFSv4 to ganesha
	// fails from 4 KiB on.)
	writeErr := runQuiet(ctx, "nfs-cp", big, e.nfsURL("libnfs-write-probe"))
	_ = os.Remove(filepath.Join(e.export, "libnfs-write-probe"))
	if writeErr != nil {
		progress("libnfs: nfs-cp of a 1 MiB file fails: %v", writeErr)
	}

	creates := map[string]map[int]samples{"local cp": {}, "nfs-cp": {}}
	lists := map[string]samples{}
	reads := map[string]samples{}
	var loads []string
	for round := range cfg.rounds {
		for _, c := range cfg.clients {
			for k, side := range []string{"local cp", "nfs-cp"} {
				if round%2 == 1 {
					side = []string{"nfs-cp", "local cp"}[k]
				}
				base := e.local
				if side == "nfs-cp" {
					base = e.export
				}
				root := fmt.Sprintf("libnfs-r%d-%d", round, c) // a directory per round: libnfs cannot remove
				for i := range c {
					d := filepath.Join(base, root, fmt.Sprintf("c%d", i))
					if err := os.MkdirAll(d, 0o755); err != nil {
						return err
					}
					if err := os.Chown(d, apUID, apGID); err != nil {
						return err
					}
				}
				if err := e.settle(); err != nil {
					return err
				}
				progress("libnfs: round %d/%d, %s, %d client(s) × %d files", round+1, cfg.rounds, side, c, cfg.libnfsFiles)
				rate, err := perProcess(ctx, c, cfg.libnfsFiles, func(ci, i int) []string {
					rel := fmt.Sprintf("%s/c%d/f%05d", root, ci, i)
					if side == "nfs-cp" {
						return []string{"nfs-cp", src, e.nfsURL(rel)}
					}
					return []string{"cp", src, filepath.Join(base, rel)}
				})
				if err != nil {
					return fmt.Errorf("%s, %d clients: %w", side, c, err)
				}
				progress("  creates %.0f/s", rate)
				creates[side][c] = append(creates[side][c], rate)

				// One listing of a directory of the files: READDIR with
				// attributes (nfs-ls prints mode, owner, size per entry).
				if c == 1 {
					rel := root + "/c0"
					t0 := time.Now()
					if side == "nfs-cp" {
						err = runQuiet(ctx, "nfs-ls", e.nfsURL(rel))
					} else {
						err = runQuiet(ctx, "ls", "-ln", filepath.Join(base, rel))
					}
					if err != nil {
						return err
					}
					lists[side] = append(lists[side], float64(cfg.libnfsFiles)/time.Since(t0).Seconds())
				}
				if err := os.RemoveAll(filepath.Join(base, root)); err != nil {
					return err
				}
			}
		}

		// Sequential read: one file written locally into the export, under
		// a new name each round (ganesha caches names: a file removed and
		// made again behind its back keeps the old handle, NFS4ERR_STALE).
		seqName := fmt.Sprintf("libnfs-seq-%d", round)
		p := filepath.Join(e.export, seqName)
		progress("libnfs: round %d/%d, sequential read of %d MiB (local read, nfs-cat)", round+1, cfg.rounds, cfg.seqBytes>>20)
		if _, err := seqWrite(ctx, p, cfg.seqBytes); err != nil {
			return err
		}
		for k, side := range []string{"local", "nfs-cat"} {
			if round%2 == 1 {
				side = []string{"nfs-cat", "local"}[k]
			}
			var rate float64
			if side == "local" {
				rate, err = seqRead(ctx, p, cfg.seqBytes)
			} else {
				rate, err = nfsCat(ctx, e.nfsURL(seqName), cfg.seqBytes)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", side, err)
			}
			progress("  %s read (cold) %.0f MB/s", side, rate)
			reads[side] = append(reads[side], rate)
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		loads = append(loads, loadAvg())
	}

	rep.Para("Each libnfs call is a process with its own NFSv4 session (EXCHANGE_ID, CREATE_SESSION, lookups from the root, then the operation), "+
		"so its small-file figures are **per process**; the baseline is likewise one local process per file (`cp` of an 11-byte file into the local "+
		"directory), so the ratio compares NFS session + file cost with process start-up. Creates: `nfs-cp <11-byte file> %s`, %d files per client, "+
		"clients as parallel loops. Listing: one `nfs-ls` of a directory of %d files (READDIR with attributes) vs `ls -ln`, entries/s. "+
		"Sequential read: `nfs-cat` of a %d MiB file written into the export, into a pipe read in 1 MiB chunks, caches dropped before, vs a "+
		"local 1 MiB read(2) loop of the same file. Median of %d rounds (min–max); load average after each round: %s.",
		"'nfs://127.0.0.1/fsap-…/…/fNNNNN?version=4&nfsport=PORT&uid=1000&gid=1000'", cfg.libnfsFiles, cfg.libnfsFiles, cfg.seqBytes>>20, cfg.rounds, joinLoads(loads))
	var rows [][]string
	for _, c := range cfg.clients {
		l, n := creates["local cp"][c], creates["nfs-cp"][c]
		rows = append(rows, []string{fmt.Sprintf("creates/s, %d client(s), one process per file", c), l.Cell("%.0f"), n.Cell("%.0f"), ratio(n.Median(), l.Median())})
	}
	rows = append(rows, []string{"directory listing, entries/s (one process)", lists["local cp"].Cell("%.0f"), lists["nfs-cp"].Cell("%.0f"), ratio(lists["nfs-cp"].Median(), lists["local cp"].Median())})
	rows = append(rows, []string{"1 MiB sequential read, cold, MB/s", reads["local"].Cell("%.0f"), reads["nfs-cat"].Cell("%.0f"), ratio(reads["nfs-cat"].Median(), reads["local"].Median())})
	rep.Table([]string{"", "local (process per call)", "libnfs", "ratio"}, rows)
	cant := "libnfs-utils 4.0 has no remove and no per-file stat command (only nfs-cp, nfs-cat, nfs-ls), so remove and stat rates are not measured through libnfs."
	if writeErr != nil {
		cant += fmt.Sprintf(" Sequential write is not measured: `nfs-cp` of a 1 MiB file to the export fails (%s).", oneLine(writeErr.Error()))
	} else {
		cant += " (`nfs-cp` of a 1 MiB file to the export succeeded in this run; the sequential write was still not timed.)"
	}
	rep.Para("%s", cant)
	return nil
}

// nfsCat drops the caches and reads url with nfs-cat into a pipe.
func nfsCat(ctx context.Context, url string, size int64) (float64, error) {
	if err := dropCaches(); err != nil {
		return 0, err
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, "nfs-cat", url)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	n, cerr := copyCounting(ctx, out)
	if err := cmd.Wait(); err != nil {
		return 0, fmt.Errorf("nfs-cat %s: %v: %s", url, err, strings.TrimSpace(stderr.String()))
	}
	if cerr != nil {
		return 0, cerr
	}
	if n != size {
		return 0, fmt.Errorf("nfs-cat %s: %d bytes, want %d", url, n, size)
	}
	return float64(n) / 1e6 / time.Since(start).Seconds(), nil
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
