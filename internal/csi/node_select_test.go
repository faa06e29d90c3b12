package csi

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/stowage-io/stowage/internal/attach"
)

// The node plugin's network attacher is the one attach.Select chose for
// the node (the kernel's NBD client where it has one), in the state
// directories the sweeps of `stowage down` and the test stack look at.
func TestNewNodeService_NetworkAttacher_IsWhatSelectChose(t *testing.T) {
	for _, tc := range []struct {
		name  string
		probe func() error
		want  attach.Network
	}{
		{"kernel has NBD", func() error { return nil }, attach.KernelNBD{StateDir: "STATE/kernel-nbd"}},
		{"no NBD module", func() error { return errors.New("no /dev/nbd0: the nbd kernel module is not loaded") },
			attach.FUSELoop{Command: []string{"/opt/stowage", "nbd-attach"}, StateDir: "STATE/network"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := NodeConfig{NodeID: "node-a", StateDir: dir, NBDAttach: []string{"/opt/stowage", "nbd-attach"}}
			var chosen attach.Selection
			n, err := newHostNodeService(cfg, nil, nil, func(stateDir string, cmd []string) attach.Selection {
				chosen = attach.SelectWith(stateDir, cmd, tc.probe)
				return chosen
			})
			if err != nil {
				t.Fatal(err)
			}
			switch got := n.network.(type) {
			case attach.KernelNBD:
				want, ok := tc.want.(attach.KernelNBD)
				if !ok || got.StateDir != filepath.Join(dir, "kernel-nbd") {
					t.Fatalf("network attacher %+v, want %+v", got, want)
				}
			case attach.FUSELoop:
				want, ok := tc.want.(attach.FUSELoop)
				if !ok || got.StateDir != attach.FUSELoopDir(dir) || got.StateDir != filepath.Join(dir, "network") || got.Command[0] != want.Command[0] {
					t.Fatalf("network attacher %+v, want %+v", got, want)
				}
			default:
				t.Fatalf("network attacher %T", got)
			}
			if chosen.Name == "" || chosen.Reason == "" {
				t.Errorf("selection %+v says nothing", chosen)
			}
		})
	}
}

// What Select returns is what stages a network attachment.
func TestNodeStageVolume_NetworkAttachment_UsesTheSelectedAttacher(t *testing.T) {
	f := networkFixture(t)
	picked := &fakeNetwork{devices: map[string]string{}}
	n, err := newHostNodeService(f.n.cfg, f.vols, nil, func(string, []string) attach.Selection {
		return attach.Selection{Attacher: picked, Name: "fake", Reason: "test"}
	})
	if err != nil {
		t.Fatal(err)
	}
	n.loops, n.mounts, n.limits = f.loops, f.mounts, f.lim
	if _, err := n.NodeStageVolume(context.Background(), f.stageReq(fsCap("xfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER))); err != nil {
		t.Fatal(err)
	}
	if picked.devices["vol-1.g3.node-a"] == "" || len(f.network.devices) != 0 {
		t.Fatalf("selected attacher has %v, the fixture's %v: want the selected one to attach", picked.devices, f.network.devices)
	}
}
