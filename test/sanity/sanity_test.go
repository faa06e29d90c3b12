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
	s := stack.Start(t, stack.Options{})
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
