package main

import (
	"fmt"
	"sort"

	"github.com/stowage-io/stowage/bench/benchkit"
)

// The report, progress lines, machine table and cleanups are benchkit's.
type (
	report    = benchkit.Report
	undoStack = benchkit.UndoStack
	undo      = benchkit.Undo
)

var (
	progress = benchkit.Progress
	loadAvg  = benchkit.LoadAvg
	ratio    = benchkit.Ratio
)

func machine() [][]string {
	return benchkit.Machine(
		[]string{"nfs-ganesha", ganeshaVersion()},
		[]string{"libnfs-utils", benchkit.Out("dpkg-query", "-W", "-f", "${Version}", "libnfs-utils")})
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
