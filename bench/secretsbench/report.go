package main

import (
	"fmt"
	"time"

	"github.com/stowage-io/stowage/bench/benchkit"
)

// The report, progress lines, machine table and cleanups are benchkit's.
type (
	report    = benchkit.Report
	undoStack = benchkit.UndoStack
	samples   = benchkit.Samples
)

var (
	progress = benchkit.Progress
	ratio    = benchkit.Ratio
)

// ms is a duration in milliseconds with three decimals (local reads take
// microseconds).
func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d.Nanoseconds())/1e6) }

func p50(ds []time.Duration) time.Duration { return benchkit.Quantile(ds, 0.5) }
func p99(ds []time.Duration) time.Duration { return benchkit.Quantile(ds, 0.99) }

// rate is operations per second with thousands separators.
func rate(v float64) string {
	n := int64(v + 0.5)
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
