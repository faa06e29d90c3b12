// Package faults lets tests crash a Stowage process at a named point in the
// middle of an operation, to prove that a restart plus a retry leaves nothing
// orphaned. It is inert unless STOWAGE_CRASH_AT is set.
package faults

import (
	"log/slog"
	"os"
	"syscall"
)

// EnvVar names the point at which the process kills itself with SIGKILL.
const EnvVar = "STOWAGE_CRASH_AT"

// Point kills the process (SIGKILL: no deferred cleanup runs, as in a real
// crash) when STOWAGE_CRASH_AT equals name.
func Point(name string) {
	if v := os.Getenv(EnvVar); v != "" && v == name {
		slog.Warn("crashing on purpose", "point", name)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}
