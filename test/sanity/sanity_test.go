// Package sanity runs the upstream CSI conformance tests (csi-sanity) against
// the real block driver, the real Stowage server, real loop devices and real
// mounts.
package sanity

import (
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/stowage-io/stowage/internal/testutil/stack"
)

func TestCSISanity(t *testing.T) {
	runSanity(t, stack.Start(t, stack.Options{}))
}

// TestCSISanity_OverTheNetwork runs the same suite with the pool on a
// storage host of its own: every volume the node stages is exported over
// NBD and attached with `stowage nbd-attach` (FUSE and a loop device).
func TestCSISanity_OverTheNetwork(t *testing.T) {
	helper := stack.BuildStowage(t)
	runSanity(t, stack.Start(t, stack.Options{StorageNode: "storage-1", MountHelper: helper}))
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
