package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stowage-io/stowage/internal/csi"
)

// newKubeletRegisterCmd registers another program's CSI driver with the
// kubelet: node-driver-registrar's job, for drivers (such as the Secrets
// Store CSI driver) that do not register themselves.
func newKubeletRegisterCmd() *cobra.Command {
	var driver, endpoint, dir string
	cmd := &cobra.Command{
		Use:   "kubelet-register",
		Short: "Register a CSI driver's socket with the kubelet (what node-driver-registrar does)",
		Long: `Serves <registration dir>/<driver>-reg.sock for the kubelet's plugin watcher,
which then talks to the driver at --csi-endpoint and lists it in the node's
CSINode. It runs until stopped; the socket is removed on exit so the kubelet
unregisters the driver. Stowage's own drivers register themselves
(--kubelet-registration-dir); this is for the Secrets Store CSI driver.`,
		Example: `  stowage kubelet-register --driver secrets-store.csi.k8s.io \
    --csi-endpoint unix:///var/lib/kubelet/plugins/csi-secrets-store/csi.sock \
    --kubelet-registration-dir /var/lib/kubelet/plugins_registry`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if driver == "" || endpoint == "" || dir == "" {
				return usageErrorf("--driver, --csi-endpoint and --kubelet-registration-dir are all required")
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			_, done, err := csi.ServeRegistrationFor(ctx, driver, dir, endpoint)
			if err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				<-done
				return nil
			case err := <-done:
				if err != nil {
					return fmt.Errorf("kubelet registration of %s: %w", driver, err)
				}
				return nil
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&driver, "driver", "", "the CSI driver's name, as in its CSIDriver object")
	f.StringVar(&endpoint, "csi-endpoint", "", "the driver's CSI socket, unix:///path, as the kubelet should dial it")
	f.StringVar(&dir, "kubelet-registration-dir", "", "the kubelet's plugins_registry directory")
	return cmd
}
