package cli

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/stowage-io/stowage/internal/runner"
)

// DefaultNodeRunner is where the node runner listens unless told.
const DefaultNodeRunner = "/var/lib/stowage/node-runner/runner.sock"

func newNodeRunnerCmd() *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "node-runner",
		Short: "Run the node's data-path clients for the node plugins, so that they outlive the plugins' pods",
		Long: `Serves the node plugins (--node-runner) on a unix socket only root may use,
and runs for them the clients of the node's data path as its children: the
FUSE NFS client of each file volume mount (stowage nfs-mount) and the FUSE
block device of each network attachment (stowage nbd-attach). Nothing else
is run. A node plugin whose pod is deleted or upgraded leaves these clients,
and the mounts they serve, to the runner: deploy the runner apart from the
plugins (the chart's node-runner DaemonSet, updated only on delete). When the
runner stops, its clients stop with its container, and their mounts fail
(ENOTCONN) until their pods are restarted: drain a node before deleting its
runner's pod.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find this binary: %w", err)
			}
			l, err := runner.Listen(socket)
			if err != nil {
				return err
			}
			s := &runner.Server{Binary: self, Allowed: []string{"nfs-mount", "nbd-attach"}, PeerUID: 0, Logger: slog.Default()}
			ctx, cancel := signalContext(c.Context())
			defer cancel()
			go func() { <-ctx.Done(); l.Close() }()
			slog.Info("node runner: serving", "socket", socket, "commands", s.Allowed)
			err = s.Serve(l)
			slog.Info("node runner: stopping; the clients it started stop with its container", "socket", socket)
			return err
		},
	}
	cmd.Flags().StringVar(&socket, "socket", DefaultNodeRunner, "the unix socket the node plugins ask on (their --node-runner)")
	return cmd
}
