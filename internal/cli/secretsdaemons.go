package cli

import (
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/csi"
	"github.com/stowage-io/stowage/internal/kmsplugin"
	"github.com/stowage-io/stowage/internal/provider"
)

func newKMSPluginCmd() *cobra.Command {
	var listen, api, key, tokenFile string
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
			conn, err := dial(api, tokenFile)
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
	f.StringVar(&api, "api", DefaultEndpoint, apiUsage)
	f.StringVar(&key, "key", "", "the KMS key: a key id, alias/<name> or an ARN (required)")
	f.DurationVar(&timeout, "timeout", 3*time.Second, "gRPC connection timeout of the plugin's server")
	f.StringVar(&tokenFile, "token-file", "", tokenFileUsage(auth.KMSPlugin))
	return cmd
}

func newSecretsProviderCmd() *cobra.Command {
	var dir, api, audience, tokenFile, healthAddr string
	cmd := &cobra.Command{
		Use:   "secrets-provider",
		Short: "Run the Secrets Store CSI provider (provider name " + provider.Name + ")",
		Long: `Serves the Secrets Store CSI driver's provider API (provider/v1alpha1) on
<providers dir>/` + provider.Name + `.sock. A SecretProviderClass with provider: ` + provider.Name + ` takes the
AWS provider's objects (objectName, objectType, objectAlias, objectVersion,
objectVersionLabel, filePermission, jmesPath, pathTranslation) and optional: true.
All objects of a mount are fetched from the Stowage API in one call. The pod's
service-account token for --audience (the CSIDriver's tokenRequests) goes to the
API with every fetch; it is never logged.`,
		Example: `  stowage secrets-provider --providers-dir /var/run/secrets-store-csi-providers --api unix:///run/stowage/api.sock`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := dialLarge(api, tokenFile)
			if err != nil {
				return err
			}
			defer conn.Close()
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			if err := serveReadiness(ctx, conn, api, healthAddr); err != nil {
				return err
			}
			lis, err := provider.Listen(dir)
			if err != nil {
				return err
			}
			g := grpc.NewServer()
			provider.NewServer(pb.NewSecretServiceClient(conn), audience, csi.Version, log).Register(g)
			go func() { <-ctx.Done(); g.GracefulStop() }()
			log.Info("secrets-provider serving", "socket", provider.SocketPath(dir), "api", api, "audience", audience)
			return g.Serve(lis)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "providers-dir", "/var/run/secrets-store-csi-providers", "the driver's --provider-volume")
	f.StringVar(&api, "api", DefaultEndpoint, apiUsage)
	f.StringVar(&tokenFile, "token-file", "", tokenFileUsage(auth.SecretsProvider))
	f.StringVar(&healthAddr, "health-address", "", healthAddressUsage)
	f.StringVar(&audience, "audience", provider.DefaultAudience, "audience of the pod's service-account token (list it in the CSIDriver's tokenRequests)")
	return cmd
}

// dialLarge is dial with room for a mount's values (up to 100 objects of
// 64 KiB) in one reply.
func dialLarge(endpoint, tokenFile string) (*grpc.ClientConn, error) {
	return dial(endpoint, tokenFile, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(provider.MaxReply)))
}

// tokenFileUsage is the --token-file help of a component.
func tokenFileUsage(principal string) string {
	return "file holding this component's Stowage API token (principal " + principal + "; mode 0600; 'stowage token create --principal " + principal + " --out-file F' makes one). Default none: root over the API's unix socket is the administrator"
}
