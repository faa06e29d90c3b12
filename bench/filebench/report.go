package main

import (
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"
)

var started = time.Now()

// progress tells the person running the benchmark what is happening; the
// results go to the report, not here.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
}

// report accumulates the Markdown results of a run.
type report struct{ b strings.Builder }

func (r *report) para(format string, args ...any) {
	fmt.Fprintf(&r.b, format+"\n\n", args...)
}

func (r *report) heading(s string) { r.para("### %s", s) }

func (r *report) code(lines ...string) {
	r.b.WriteString("```\n")
	for _, l := range lines {
		r.b.WriteString(l + "\n")
	}
	r.b.WriteString("```\n\n")
}

// table writes a Markdown table; every row must have len(header) cells.
func (r *report) table(header []string, rows [][]string) {
	r.b.WriteString("| " + strings.Join(header, " | ") + " |\n|")
	for range header {
		r.b.WriteString(" --- |")
	}
	r.b.WriteString("\n")
	for _, row := range rows {
		r.b.WriteString("| " + strings.Join(row, " | ") + " |\n")
	}
	r.b.WriteString("\n")
}

func (r *report) String() string { return r.b.String() }

// loadAvg is the 1/5/15-minute load average, noted next to each benchmark
// because another build may share the machine.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// machine describes the host for the report header.
func machine() [][]string {
	out := func(name string, args ...string) string {
		b, err := exec.Command(name, args...).Output()
		if err != nil {
			return "unknown"
		}
		return strings.TrimSpace(string(b))
	}
	mem := "unknown"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				var kb int64
				fmt.Sscan(f[1], &kb)
				mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return [][]string{
		{"date", time.Now().UTC().Format("2006-01-02 15:04 UTC")},
		{"CPUs (nproc)", out("nproc") + " × " + cpu},
		{"memory", mem},
		{"kernel", out("uname", "-r")},
		{"host file system", out("findmnt", "-no", "FSTYPE,SOURCE", "-T", os.TempDir())},
		{"nfs-ganesha", ganeshaVersion()},
		{"libnfs-utils", out("dpkg-query", "-W", "-f", "${Version}", "libnfs-utils")},
		{"stowage built from", buildState(out)},
		{"load average at start", loadAvg()},
	}
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// samples are one figure's values over the rounds.
type samples []float64

func (s samples) median() float64 {
	if len(s) == 0 {
		return 0
	}
	c := append([]float64(nil), s...)
	sort.Float64s(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// cell is "median (min–max)".
func (s samples) cell(format string) string {
	if len(s) == 0 {
		return "—"
	}
	c := append([]float64(nil), s...)
	sort.Float64s(c)
	return fmt.Sprintf(format+" ("+format+"–"+format+")", s.median(), c[0], c[len(c)-1])
}

// buildState names the commit the benchmarked binary was built from and
// whether the working tree differed from it in code that goes into it.
func buildState(out func(string, ...string) string) string {
	head := out("git", "rev-parse", "--short", "HEAD")
	dirty := out("git", "status", "--porcelain", "--", "cmd", "internal", "api", "go.mod", "go.sum")
	if dirty == "" {
		return "commit " + head + ", clean"
	}
	return fmt.Sprintf("commit %s + %d uncommitted change(s) in cmd/ internal/ api/ (others are working in the tree)", head, len(strings.Split(dirty, "\n")))
}
