// Package libnfs runs libnfs's command-line tools (nfs-cp, nfs-cat, …:
// an NFS client independent of Stowage's) in tests.
package libnfs

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Run runs tool until it succeeds (an export appears a moment after the
// reload that adds it) and returns its output, or fails the test after
// 15 s with the last error.
func Run(t testing.TB, tool string, args ...string) string {
	t.Helper()
	var out []byte
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err = exec.CommandContext(ctx, tool, args...).CombinedOutput()
		cancel()
		if err == nil {
			return string(out)
		}
	}
	t.Fatalf("%s %s: %v: %s", tool, strings.Join(args, " "), err, out)
	return ""
}
