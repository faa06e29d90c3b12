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
	undo      = benchkit.Undo
)

var (
	progress = benchkit.Progress
	loadAvg  = benchkit.LoadAvg
	ratio    = benchkit.Ratio
)

func machine() [][]string { return benchkit.Machine([]string{"fio", benchkit.Out("fio", "--version")}) }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }
