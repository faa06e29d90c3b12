package main

import "github.com/stowage-io/stowage/bench/benchkit"

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
type samples = benchkit.Samples
