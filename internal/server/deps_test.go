package server

import (
	"os/exec"
	"strings"
	"testing"
)

// TestServer_DoesNotImportNodeCode: the control plane runs apart from the
// nodes, so it must not link their data-path code (a node package change
// would otherwise rebuild and risk the server).
func TestServer_DoesNotImportNodeCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list is not available here: %v", err)
	}
	node := []string{
		"github.com/stowage-io/stowage/internal/fscrypt",
		"github.com/stowage-io/stowage/internal/csi",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, n := range node {
			if dep == n {
				t.Errorf("internal/server depends on node package %s", dep)
			}
		}
	}
}
