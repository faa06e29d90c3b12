package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

const chunk = 1 << 20

// seqWrite writes size bytes in 1 MiB writes and fsyncs; the rate includes
// the fsync.
func seqWrite(ctx context.Context, path string, size int64) (float64, error) {
	buf := make([]byte, chunk)
	for i := range buf {
		buf[i] = byte(i*7 + i>>11) // not zeros, not trivially compressible runs
	}
	start := time.Now()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	for n := int64(0); n < size; n += chunk {
		if ctx.Err() != nil {
			f.Close()
			return 0, ctx.Err()
		}
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return float64(size) / 1e6 / time.Since(start).Seconds(), nil
}

// seqRead drops the caches and reads path with 1 MiB reads.
func seqRead(ctx context.Context, path string, size int64) (float64, error) {
	if err := dropCaches(); err != nil {
		return 0, err
	}
	start := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := copyCounting(ctx, f)
	if err != nil {
		return 0, err
	}
	if n != size {
		return 0, fmt.Errorf("read %d bytes of %s, want %d", n, path, size)
	}
	return float64(n) / 1e6 / time.Since(start).Seconds(), nil
}

func copyCounting(ctx context.Context, r io.Reader) (int64, error) {
	buf := make([]byte, chunk)
	var n int64
	for {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		k, err := r.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func benchSeq(ctx context.Context, e *env, rep *report, cfg config) error {
	rep.Heading("Sequential 1 MiB write and read")
	w, r := map[string]samples{}, map[string]samples{}
	var loads []string
	for round := range cfg.rounds {
		for _, t := range swapped(e.targets(), round) {
			p := filepath.Join(t.dir, "seq")
			progress("sequential: round %d/%d, %s: write %d MiB + fsync", round+1, cfg.rounds, t.name, cfg.seqBytes>>20)
			if err := e.settle(); err != nil {
				return err
			}
			ws, err := seqWrite(ctx, p, cfg.seqBytes)
			if err != nil {
				return fmt.Errorf("%s: write: %w", t.name, err)
			}
			rs, err := seqRead(ctx, p, cfg.seqBytes)
			if err != nil {
				return fmt.Errorf("%s: read: %w", t.name, err)
			}
			progress("  write %.0f MB/s, read (cold) %.0f MB/s", ws, rs)
			w[t.name], r[t.name] = append(w[t.name], ws), append(r[t.name], rs)
			if err := os.Remove(p); err != nil {
				return err
			}
		}
		loads = append(loads, loadAvg())
	}
	rep.Para("One file of %d MiB: written with 1 MiB write(2)s, then fsync (included in the time); then `sync; echo 3 > /proc/sys/vm/drop_caches` "+
		"(this host's page cache: the client's and ganesha's) and read back with 1 MiB read(2)s. MB/s (10⁶ bytes/s); median of %d rounds (min–max). "+
		"Load average after each round: %s.", cfg.seqBytes>>20, cfg.rounds, joinLoads(loads))
	var rows [][]string
	for _, x := range []struct {
		name string
		s    map[string]samples
	}{{"write + fsync", w}, {"read, cold", r}} {
		l, f := x.s["local"], x.s["FUSE client"]
		rows = append(rows, []string{x.name, l.Cell("%.0f"), f.Cell("%.0f"), ratio(f.Median(), l.Median()),
			"≥ 0.5× local: " + yesNo(f.Median() >= 0.5*l.Median())})
	}
	rep.Table([]string{"MB/s", "local", "FUSE client", "ratio", "goal"}, rows)
	return nil
}
