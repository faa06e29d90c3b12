// Package benchkit is what the benchmark programs under bench/ share: progress
// lines, the Markdown report, the machine table and a stack of cleanups.
package benchkit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

var started = time.Now()

// Progress tells the person running the benchmark what is happening; the
// results go to the report, not here.
func Progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
}

// Report accumulates the Markdown results of a run.
type Report struct{ b strings.Builder }

func (r *Report) Para(format string, args ...any) {
	fmt.Fprintf(&r.b, format+"\n\n", args...)
}

func (r *Report) Heading(s string) { r.Para("### %s", s) }

func (r *Report) Code(lines ...string) {
	r.b.WriteString("```\n")
	for _, l := range lines {
		r.b.WriteString(l + "\n")
	}
	r.b.WriteString("```\n\n")
}

// table writes a Markdown table; every row must have len(header) cells.
func (r *Report) Table(header []string, rows [][]string) {
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

// List writes a Markdown bullet list.
func (r *Report) List(items ...string) {
	for _, it := range items {
		r.b.WriteString("- " + it + "\n")
	}
	r.b.WriteString("\n")
}

func (r *Report) String() string { return r.b.String() }

// LoadAvg is the 1/5/15-minute load average, noted next to each benchmark
// because another build may share the machine.
func LoadAvg() string {
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

// Machine describes the host for the report header; tools are rows of the
// versions of what the benchmark runs (fio, nfs-ganesha, …).
func Machine(tools ...[]string) [][]string {
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
	rows := [][]string{
		{"date", time.Now().UTC().Format("2006-01-02 15:04 UTC")},
		{"CPUs (nproc)", out("nproc") + " × " + cpu},
		{"memory", mem},
		{"kernel", out("uname", "-r")},
		{"host file system", out("findmnt", "-no", "FSTYPE,SOURCE", "-T", os.TempDir())},
	}
	rows = append(rows, tools...)
	return append(rows, []string{"stowage built from", buildState(out)}, []string{"load average at start", LoadAvg()})
}

// Ratio is a/b with two decimals, n/a when b is 0.
func Ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", a/b)
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

// Out is a command's trimmed output, "unknown" when it fails.
func Out(name string, args ...string) string {
	b, err := exec.Command(name, args...).Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// UndoStack runs cleanups last-in first-out. Each runs at most once, so a
// benchmark can free a resource early (to keep the pool small) and the final
// run still covers whatever a failure left.
type UndoStack struct{ items []*Undo }

// Undo is one cleanup.
type Undo struct {
	what string
	fn   func() error
	done bool
}

// Push adds a cleanup.
func (u *UndoStack) Push(what string, fn func() error) *Undo {
	it := &Undo{what: what, fn: fn}
	u.items = append(u.items, it)
	return it
}

// Do runs one cleanup now (if it has not run).
func (it *Undo) Do() error {
	if it.done {
		return nil
	}
	it.done = true
	if err := it.fn(); err != nil {
		return fmt.Errorf("%s: %w", it.what, err)
	}
	return nil
}

// Run runs every pending cleanup, newest first, and reports all failures.
func (u *UndoStack) Run() error {
	var errs []error
	for i := len(u.items) - 1; i >= 0; i-- {
		if err := u.items[i].Do(); err != nil {
			Progress("cleanup failed: %v", err)
			errs = append(errs, err)
		}
	}
	u.items = nil
	return errors.Join(errs...)
}

// Quantile is the nearest-rank q-quantile of ds (0.5 is the lower median,
// 0.99 the p99); 0 for no samples.
func Quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Samples are one figure's values over the rounds of a run.
type Samples []float64

// Median is the middle value (the mean of the two middle ones for an even
// count); 0 for none.
func (s Samples) Median() float64 {
	if len(s) == 0 {
		return 0
	}
	c := slices.Clone(s)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// Cell is "median (min–max)" in format, "—" for none.
func (s Samples) Cell(format string) string {
	if len(s) == 0 {
		return "—"
	}
	return fmt.Sprintf(format+" ("+format+"–"+format+")", s.Median(), slices.Min(s), slices.Max(s))
}

// Sum is the total of the values.
func (s Samples) Sum() float64 {
	t := 0.0
	for _, v := range s {
		t += v
	}
	return t
}

// Session is how every benchmark program runs: ctx is cancelled by Ctrl-C
// and SIGTERM; u collects the cleanups; end, deferred with the program's
// error, runs them whatever happened (on their own contexts, so an
// interrupt still tears down) and joins their failures to the error. clean
// says what a complete teardown leaves behind (nothing, in words).
func Session() (ctx context.Context, u *UndoStack, end func(err *error, clean string)) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	u = &UndoStack{}
	return ctx, u, func(err *error, clean string) {
		defer stop()
		Progress("tearing down")
		if uerr := u.Run(); uerr != nil {
			*err = errors.Join(*err, fmt.Errorf("teardown: %w", uerr))
		} else {
			Progress("teardown complete: %s", clean)
		}
	}
}

// Publish keeps the report as <dir>/<prefix>-<UTC time>.md and prints it on
// stdout.
func Publish(rep *Report, dir, prefix string) error {
	path := filepath.Join(dir, prefix+"-"+time.Now().UTC().Format("20060102-150405")+".md")
	if err := os.WriteFile(path, []byte(rep.String()), 0o644); err != nil {
		return err
	}
	fmt.Print(rep.String())
	Progress("report written to %s", path)
	return nil
}

// OutDir makes the directory the report and logs go to and returns its
// absolute path (the daemons run elsewhere).
func OutDir(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return filepath.Abs(dir)
}
