package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

type datapathConfig struct {
	runtime time.Duration
	size    string // fio --size
	io2GiB  int64
	rounds  int
	outDir  string
}

// gp3Default is the limit a gp3 volume gets without iops/throughput
// parameters; the benchmark checks the node enforces it.
const (
	gp3DefaultIOPS = 3000
	gp3DefaultMiBs = 125
)

// benchDatapath compares fio on a file in a published volume with fio on a
// file in the pool's own file system, and checks a gp3 volume is held to its
// limits. The baseline is the pool file system because that is what a
// volume's image lives on: the ratio is exactly the cost of the volume's
// layers (loop device with direct I/O, blkio throttling, ext4 on top).
func benchDatapath(ctx context.Context, s *stack, u *undoStack, rep *report, c datapathConfig) error {
	rep.Heading("1. fio through the CSI driver vs the pool file system")
	rep.Para("Load average before: %s.", loadAvg())

	// io2 with 1000 IOPS/GiB so that its limit sits far above what the
	// machine can do; the data path, not the throttle, is measured.
	io2IOPS := min(256000, 1000*c.io2GiB)
	io2, err := s.createVolume(ctx, u, "bench-io2", c.io2GiB, map[string]string{"type": "io2", "iops": strconv.FormatInt(io2IOPS, 10)})
	if err != nil {
		return err
	}
	gp3, err := s.createVolume(ctx, u, "bench-gp3", 8, map[string]string{"type": "gp3"})
	if err != nil {
		return err
	}
	for _, v := range []*volume{io2, gp3} {
		progress("fio: publishing %s (ControllerPublish, NodeStage ext4, NodePublish)", v.id)
		if err := s.publish(ctx, u, v, false); err != nil {
			return err
		}
		waited, err := waitIdle(ctx, v.device, 2*time.Second, 2*time.Minute)
		if err != nil {
			return err
		}
		progress("fio: %s is %s, idle after %s", v.id, v.device, waited.Round(time.Millisecond))
	}

	baseDir := filepath.Join(s.poolDir, "bench-baseline")
	if err := os.MkdirAll(baseDir, 0o755); err != nil {
		return err
	}
	u.Push("remove baseline file", func() error { return os.RemoveAll(baseDir) })
	targets := []struct{ tag, file string }{
		{"baseline", filepath.Join(baseDir, "fio.data")},
		{"io2", filepath.Join(io2.target, "fio.data")},
		{"gp3", filepath.Join(gp3.target, "fio.data")},
	}
	for _, t := range targets {
		progress("fio: prefill %s (%s, untimed)", t.file, c.size)
		if err := prefill(ctx, t.file, c.size); err != nil {
			return err
		}
	}

	// Baseline and volume alternate job by job (and swap order each round)
	// so a change in machine load hits both sides, not one.
	results := map[string]map[string][]fioResult{"baseline": {}, "io2": {}, "gp3": {}}
	for round := range c.rounds {
		for _, j := range fioJobs {
			order := targets[:2]
			if round%2 == 1 {
				order = []struct{ tag, file string }{targets[1], targets[0]}
			}
			// The gp3 limits are checked once: a throttle is not noisy.
			if round == 0 {
				order = append(slices.Clone(order), targets[2])
			}
			for _, t := range order {
				progress("fio: round %d/%d %s on %s (%s)", round+1, c.rounds, j.label(), t.tag, c.runtime)
				r, err := runFio(ctx, c.outDir, fmt.Sprintf("%s-r%d", t.tag, round+1), j, t.file, c.size, c.runtime)
				if err != nil {
					return err
				}
				progress("fio:   %.0f %s (p99 %.0f µs, CPU %.0f%% busy, blkio cgroup %s)", r.value, j.unit, r.p99us, 100*r.cpuBusy, r.cgroup)
				results[t.tag][j.name] = append(results[t.tag][j.name], r)
			}
		}
	}

	var rows [][]string
	cgroups := map[string]bool{}
	for _, j := range fioJobs {
		b, v := median(results["baseline"][j.name]), median(results["io2"][j.name])
		for _, t := range targets {
			for _, r := range results[t.tag][j.name] {
				cgroups[r.cgroup] = true
			}
		}
		// The headline ratio pairs each volume run with the baseline run
		// next to it in time, which cancels load drift between rounds.
		var paired []float64
		for i, br := range results["baseline"][j.name] {
			paired = append(paired, results["io2"][j.name][i].value/br.value)
		}
		var pairedText []string
		for _, p := range paired {
			pairedText = append(pairedText, fmt.Sprintf("%.2f", p))
		}
		slices.Sort(paired)
		rows = append(rows, []string{j.label(), fmt.Sprintf("%.0f %s", b.value, j.unit), fmt.Sprintf("%.0f %s", v.value, j.unit),
			fmt.Sprintf("**%.2f**", paired[(len(paired)-1)/2]), strings.Join(pairedText, ", "), "≥ 0.95",
			fmt.Sprintf("%.0f / %.0f", b.p99us, v.p99us), fmt.Sprintf("%.0f / %.0f", 100*b.cpuBusy, 100*v.cpuBusy),
			roundValues(results["baseline"][j.name]) + " / " + roundValues(results["io2"][j.name])})
	}
	rep.Para("Baseline: a file on the pool's xfs. Volume: a file on the ext4 of an io2 volume of %d GiB with %d IOPS "+
		"(limit far above the machine), created with CSI CreateVolume and published with ControllerPublish, NodeStage and NodePublish. "+
		"fio --size=%s, %s per job, %d round(s); in each round baseline and volume run back to back, in swapped order every other round, "+
		"and the ratio is taken per round, then the median. Latency and CPU columns are from the median run.", c.io2GiB, io2IOPS, c.size, c.runtime, c.rounds)
	rep.Table([]string{"pattern", "pool file system (baseline), median", "io2 volume via CSI, median", "volume / baseline (median of rounds)",
		"each round", "target", "p99 latency µs (baseline / volume)", "machine CPU busy % (baseline / volume)", "every run (baseline / volume)"}, rows)

	rows = nil
	for _, j := range fioJobs {
		limit, unit := float64(gp3DefaultIOPS), "IOPS"
		if j.unit == "MiB/s" {
			limit, unit = gp3DefaultMiBs, "MiB/s"
		}
		m := median(results["gp3"][j.name])
		rows = append(rows, []string{j.label(), fmt.Sprintf("%.0f %s", limit, unit), fmt.Sprintf("%.0f %s", m.value, unit), "**" + ratio(m.value, limit) + "**"})
	}
	rep.Para("A gp3 volume with the default 3,000 IOPS and 125 MiB/s (8 GiB, no iops/throughput parameters), same jobs; " +
		"the measured/limit ratio shows the limit is enforced (≤ 1.00) and reachable (close to 1.00).")
	rep.Table([]string{"pattern", "gp3 limit", "measured", "measured / limit"}, rows)

	var notes []string
	for _, v := range []struct {
		name string
		vol  *volume
	}{{"io2", io2}, {"gp3", gp3}} {
		dio, l, err := loopInfo(v.vol.device)
		if err != nil {
			return err
		}
		notes = append(notes, fmt.Sprintf("%s volume %s on %s: loop direct I/O = %s; root blkio rules: read %d IOPS, write %d IOPS, read %d MiB/s, write %d MiB/s",
			v.name, v.vol.id, v.vol.device, dio, l.ReadIOPS, l.WriteIOPS, l.ReadBPS>>20, l.WriteBPS>>20))
	}
	var cgs []string
	for cg := range cgroups {
		cgs = append(cgs, "`"+cg+"`")
	}
	slices.Sort(cgs)
	notes = append(notes, "fio ran in blkio cgroup "+strings.Join(cgs, ", ")+" (read from /proc/<fio pid>/cgroup while it ran); "+
		"the node writes its throttle rules into the root blkio cgroup `/`, so they applied to fio.")
	rep.List(notes...)
	rep.Para("Reproduce one figure by hand (file = `<pool>/bench-baseline/fio.data` or `<published target>/fio.data`):")
	var cmds []string
	for _, j := range fioJobs {
		cmds = append(cmds, "fio "+strings.Join(fioArgs(j, "<file>", c.size, c.runtime), " "))
	}
	rep.Code(cmds...)
	rep.Para("Load average after: %s.", loadAvg())

	// Free the pool for the next benchmark.
	for _, v := range []*volume{io2, gp3} {
		if err := v.unpublish.Do(); err != nil {
			return err
		}
		if err := v.del.Do(); err != nil {
			return err
		}
	}
	return os.RemoveAll(baseDir)
}

// median of the rounds by value (the lower middle for an even count).
func median(rs []fioResult) fioResult {
	if len(rs) == 0 {
		return fioResult{}
	}
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b fioResult) int {
		switch {
		case a.value < b.value:
			return -1
		case a.value > b.value:
			return 1
		}
		return 0
	})
	return s[(len(s)-1)/2]
}

// roundValues lists every round's figure, so the spread behind a median is
// visible.
func roundValues(rs []fioResult) string {
	var vs []string
	for _, r := range rs {
		vs = append(vs, fmt.Sprintf("%.0f", r.value))
	}
	return strings.Join(vs, ", ")
}
