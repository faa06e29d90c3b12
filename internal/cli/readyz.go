package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stowage-io/stowage/internal/readiness"
)

// newReadyzCmd is a kubelet exec probe of a component's --health-address:
// unlike an HTTP probe, its output (the reason, naming the endpoint that
// failed) goes into the pod's Unhealthy event.
func newReadyzCmd() *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:     "readyz",
		Short:   "Exit 0 when the component serving --address is ready; else print why (a kubelet exec probe)",
		Example: `  stowage readyz --address 127.0.0.1:9812`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := readiness.Probe(cmd.Context(), addr); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "ok")
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "address", "127.0.0.1:9810", "the component's --health-address (host:port)")
	return cmd
}
