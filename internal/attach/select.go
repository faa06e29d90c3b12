package attach

import (
	"fmt"
	"path/filepath"
)

// Selection is the attacher a node uses for network targets and why.
type Selection struct {
	Attacher Attacher
	Name     string // "kernel-nbd" or "fuse-loop"
	Reason   string // for the logs
}

// Select picks the network attacher for this node: KernelNBD when the
// kernel has an NBD client (/dev/nbd0 exists and the "nbd" generic
// netlink family resolves), else FUSELoop. Each keeps its state in its
// own directory under stateDir.
func Select(stateDir string) Selection { return selectWith(stateDir, nbdAvailable) }

func selectWith(stateDir string, kernelNBD func() error) Selection {
	err := kernelNBD()
	if err == nil {
		return Selection{
			Attacher: KernelNBD{StateDir: filepath.Join(stateDir, "kernel-nbd")},
			Name:     "kernel-nbd",
			Reason:   "/dev/nbd0 exists and the nbd netlink family resolves",
		}
	}
	return Selection{
		Attacher: FUSELoop{StateDir: filepath.Join(stateDir, "fuse-loop")},
		Name:     "fuse-loop",
		Reason:   fmt.Sprintf("kernel NBD not usable: %v", err),
	}
}
