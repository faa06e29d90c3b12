// Package faults lets tests crash a Stowage process at a named point in the
// middle of an operation, to prove that a restart plus a retry leaves nothing
// orphaned. It is inert unless STOWAGE_CRASH_AT is set.
package faults

import (
	"log/slog"
	"os"
	"syscall"
)

// Points are the crash points the server has, in the order an operation
// reaches them; the crash tests cover every one.
var Points = []string{
	"create-volume:image-created", "create-volume:recorded",
	"restore-volume:image-created", "restore-volume:recorded",
	"clone-volume:image-created", "clone-volume:recorded",
	"resize-volume:image-grown",
	"delete-volume:forgotten",
	"create-snapshot:recorded", "create-snapshot:image-created",
	"delete-snapshot:marked",
	"create-fs:recorded", "create-fs:tree-created",
	"delete-fs:marked",
	"create-ap:recorded", "create-ap:root-made", "create-ap:exported",
	"delete-ap:marked",
	// Secret rotation (internal/secrets): AWSPENDING written, AWSCURRENT moved.
	"rotate-secret:pending-written", "rotate-secret:current-moved",
}

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
