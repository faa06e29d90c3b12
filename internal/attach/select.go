package attach

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
)

// Network is what a node plugin needs of the attacher of its network
// targets: attach and detach, find a live attachment's device again (after
// a restart) and make it take a grown export's size.
type Network interface {
	Attacher
	// Device returns the device of a live attachment.
	Device(t Target) (device string, found bool)
	// Refresh makes a live attachment's device take its export's size now
	// (the volume grew on its storage host) and returns it.
	Refresh(ctx context.Context, t Target) (int64, error)
}

// Selection is the attacher a node uses for network targets and why.
type Selection struct {
	Attacher Network
	Name     string // "kernel-nbd" or "fuse-loop"
	Reason   string // for the logs
}

// FUSELoopDir and KernelNBDDir are where the attachers of a node plugin
// whose state directory is nodeStateDir keep their attachments: siblings,
// so that neither takes the other's directories for attachments.
// FUSELoopDir is network/, as it was before the kernel attacher existed
// (a node plugin upgraded with live attachments finds them there).
func FUSELoopDir(nodeStateDir string) string  { return filepath.Join(nodeStateDir, "network") }
func KernelNBDDir(nodeStateDir string) string { return filepath.Join(nodeStateDir, "kernel-nbd") }

// Select picks the network attacher for a node plugin whose state
// directory is nodeStateDir: KernelNBD when the kernel has an NBD client
// (/dev/nbd0 exists and the "nbd" generic netlink family resolves), else
// FUSELoop, which starts fuseCommand (empty: this executable's
// nbd-attach) per attachment.
func Select(nodeStateDir string, fuseCommand []string) Selection {
	return SelectWith(nodeStateDir, fuseCommand, nbdAvailable)
}

// SelectWith is Select with the kernel probe given (nil: usable, else why
// not), for tests of the callers.
func SelectWith(nodeStateDir string, fuseCommand []string, kernelNBD func() error) Selection {
	err := kernelNBD()
	if err == nil {
		return Selection{
			Attacher: KernelNBD{StateDir: KernelNBDDir(nodeStateDir)},
			Name:     "kernel-nbd",
			Reason:   "/dev/nbd0 exists and the nbd netlink family resolves",
		}
	}
	return Selection{
		Attacher: FUSELoop{Command: fuseCommand, StateDir: FUSELoopDir(nodeStateDir)},
		Name:     "fuse-loop",
		Reason:   fmt.Sprintf("kernel NBD not usable: %v", err),
	}
}

// DetachAllNetwork detaches every network attachment a node plugin with
// state directory nodeStateDir left, by either attacher (what `stowage
// down` and the test stack sweep), and reports how many were live.
func DetachAllNetwork(ctx context.Context, nodeStateDir string) (int, error) {
	nf, errF := FUSELoop{StateDir: FUSELoopDir(nodeStateDir)}.DetachAll(ctx)
	nk, errK := KernelNBD{StateDir: KernelNBDDir(nodeStateDir)}.DetachAll(ctx)
	return nf + nk, errors.Join(errF, errK)
}
