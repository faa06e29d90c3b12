package cli

import (
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/kmsplugin"
)

func newKMSPluginCmd() *cobra.Command {
	var listen, api, key string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "kms-plugin",
		Short: "Run kube-apiserver's KMS v2 plugin, backed by a Stowage KMS key",
		Long: `Serves the KMS v2 API (k8s.io/kms apis/v2) on a unix socket for kube-apiserver's
--encryption-provider-config (a kms provider with apiVersion v2 and this endpoint).
Status reports the key's current version as the key id, so a
` + "`stowage key rotate`" + ` makes new Secrets use the new version; every older version
still decrypts. A disabled key makes Status unhealthy and Encrypt fail.`,
		Example: `  stowage kms-plugin --listen unix:///var/run/stowage/kms.sock --api unix:///run/stowage/api.sock --key alias/stowage/kubernetes`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if key == "" {
				return usageErrorf("--key is required: the KMS key (id, alias/… or ARN) that wraps the apiserver's data keys")
			}
			conn, err := dial(api)
			if err != nil {
				return err
			}
			defer conn.Close()
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			plugin := kmsplugin.New(pb.NewKeyServiceClient(conn), key, log)
			return kmsplugin.Serve(ctx, listen, timeout, plugin, func() {
				log.Info("kms-plugin serving", "listen", listen, "key", key, "api", api)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "unix:///var/run/stowage/kms.sock", "the socket kube-apiserver dials: unix:///path (or unix:///@name)")
	f.StringVar(&api, "api", DefaultEndpoint, "Stowage API address")
	f.StringVar(&key, "key", "", "the KMS key: a key id, alias/<name> or an ARN (required)")
	f.DurationVar(&timeout, "timeout", 3*time.Second, "gRPC connection timeout of the plugin's server")
	return cmd
}
