// Package sanity runs the upstream CSI conformance tests (csi-sanity) against
// the real block driver, the real Stowage server, real loop devices and real
// mounts.
package sanity

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/stowage-io/stowage/internal/testutil/stack"
)

func TestCSISanity(t *testing.T) {
	inOwnProcess(t, func() { runSanity(t, stack.Start(t, stack.Options{})) })
}

// TestCSISanity_OverTheNetwork runs the same suite with the pool on a
// storage host of its own: every volume the node stages is exported over
// NBD and attached with `stowage nbd-attach` (FUSE and a loop device).
func TestCSISanity_OverTheNetwork(t *testing.T) {
	inOwnProcess(t, func() {
		helper := stack.BuildStowage(t)
		runSanity(t, stack.Start(t, stack.Options{StorageNode: "storage-1", MountHelper: helper}))
	})
}

// inOwnProcess runs a test's suite in this test binary started again for
// that test alone: Ginkgo runs one suite per process, and a second
// sanity.Test in the same one fails ("Rerunning Suite").
func inOwnProcess(t *testing.T, suite func()) {
	const env = "STOWAGE_SANITY_SUITE"
	if os.Getenv(env) == t.Name() {
		suite()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env+"="+t.Name())
	cmd.Stdout, cmd.Stderr = t.Output(), t.Output()
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v", t.Name(), err)
	}
}

func runSanity(t *testing.T, s *stack.Stack) {
	cfg := sanity.NewTestConfig()
	cfg.Address = s.CSIEndpoint
	cfg.TargetPath = filepath.Join(s.Dir, "target")
	cfg.StagingPath = filepath.Join(s.Dir, "staging")
	cfg.TestVolumeSize = 1 << 30
	cfg.TestVolumeExpandSize = 2 << 30
	cfg.IdempotentCount = 2
	cfg.TestNodeVolumeAttachLimit = true
	cfg.TestVolumeParameters = map[string]string{"type": "gp3"}
	cfg.TestVolumeMutableParameters = map[string]string{"throughput": "200"}
	cfg.CheckPath = stack.CheckPath
	sanity.Test(t, cfg)
}
