// Package fuseuring sets the fuse module's enable_uring for a test: FUSE
// over io_uring is offered to FUSE servers only while it is Y.
package fuseuring

import (
	"os"
	"strings"
	"testing"
)

// Param is the module parameter.
const Param = "/sys/module/fuse/parameters/enable_uring"

// Set sets enable_uring for the rest of the test and puts the old value
// back after it. It skips the test where the kernel has no such parameter
// (older than 6.14, or built without FUSE_IO_URING) or it cannot be set.
func Set(t testing.TB, on bool) {
	t.Helper()
	old, err := os.ReadFile(Param)
	if err != nil {
		t.Skipf("this kernel has no FUSE over io_uring (%v)", err)
	}
	v := "N"
	if on {
		v = "Y"
	}
	if err := os.WriteFile(Param, []byte(v), 0); err != nil {
		t.Skipf("cannot set %s: %v", Param, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(Param, []byte(strings.TrimSpace(string(old))), 0); err != nil {
			t.Errorf("put %s back: %v", Param, err)
		}
	})
}
