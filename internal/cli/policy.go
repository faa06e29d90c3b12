package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/auth"
)

func newPolicyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Aliases: []string{"policies"}, Short: "Manage who may call the Stowage API: IAM-shaped policies attached to principals"}
	var name, docFile string
	create := &cobra.Command{
		Use: "create", Short: "Create a policy from a JSON document", Args: cobra.NoArgs,
		Example: `  stowage policy create --name shop-db --document-file shop-db.json
  echo '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:GetSecretValue","Resource":"db-*"}]}' |
    stowage policy create --name shop-db --document-file -`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" || docFile == "" {
				return usageErrorf("--name and --document-file (a file, or - for stdin) are required")
			}
			doc, err := readInput(cmd, "", docFile, "policy document")
			if err != nil {
				return err
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				pol, err := c.policies.CreatePolicy(ctx, &pb.CreatePolicyRequest{Name: name, Document: string(doc)})
				if err != nil {
					return err
				}
				return printPolicies(p, pol)
			})
		},
	}
	create.Flags().StringVar(&name, "name", "", "policy name (required)")
	create.Flags().StringVar(&docFile, "document-file", "", "the JSON policy document: a file, or - for stdin (required)")
	get := &cobra.Command{
		Use: "get NAME", Short: "Show a policy and its document", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				pol, err := c.policies.GetPolicy(ctx, &pb.GetPolicyRequest{Name: args[0]})
				if err != nil {
					return err
				}
				if done, err := p.structured(pol); done {
					return err
				}
				if err := printPolicies(p, pol); err != nil {
					return err
				}
				_, err = fmt.Fprintln(p.out, pol.Document)
				return err
			})
		},
	}
	var listPrincipal string
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List policies", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				resp, err := c.policies.ListPolicies(ctx, &pb.ListPoliciesRequest{Principal: listPrincipal})
				if err != nil {
					return err
				}
				if done, err := p.structured(resp); done {
					return err
				}
				return printPolicies(p, resp.Policies...)
			})
		},
	}
	list.Flags().StringVar(&listPrincipal, "principal", "", "only the policies attached to this principal")
	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a policy attached to no one", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				if _, err := c.policies.DeletePolicy(ctx, &pb.DeletePolicyRequest{Name: args[0]}); err != nil {
					return err
				}
				_, err := fmt.Fprintf(p.out, "policy %s deleted\n", args[0])
				return err
			})
		},
	}
	attachment := func(use, short string, call func(context.Context, *client, string, string) (*pb.Policy, error)) *cobra.Command {
		var principal string
		c := &cobra.Command{
			Use: use + " NAME --principal P", Short: short, Args: cobra.ExactArgs(1),
			Example: "  stowage policy " + use + " shop-db --principal system:serviceaccount:shop:web",
			RunE: func(cmd *cobra.Command, args []string) error {
				if principal == "" {
					return usageErrorf("--principal is required (stowage:<component>, system:serviceaccount:<ns>:<name>, or a user name)")
				}
				return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
					pol, err := call(ctx, c, args[0], principal)
					if err != nil {
						return err
					}
					return printPolicies(p, pol)
				})
			},
		}
		c.Flags().StringVar(&principal, "principal", "", "the principal (required)")
		return c
	}
	attach := attachment("attach", "Attach a policy to a principal", func(ctx context.Context, c *client, n, pr string) (*pb.Policy, error) {
		return c.policies.AttachPolicy(ctx, &pb.AttachPolicyRequest{Name: n, Principal: pr})
	})
	detach := attachment("detach", "Detach a policy from a principal", func(ctx context.Context, c *client, n, pr string) (*pb.Policy, error) {
		return c.policies.DetachPolicy(ctx, &pb.DetachPolicyRequest{Name: n, Principal: pr})
	})
	cmd.AddCommand(create, get, list, del, attach, detach)
	return cmd
}

func printPolicies(p printer, pols ...*pb.Policy) error {
	if len(pols) == 1 {
		if done, err := p.structured(pols[0]); done {
			return err
		}
	}
	rows := make([][]string, 0, len(pols))
	for _, pol := range pols {
		principals := "-"
		if len(pol.Principals) > 0 {
			principals = strings.Join(pol.Principals, ",")
		}
		rows = append(rows, []string{pol.Name, principals, pol.CreateTime.AsTime().Format("2006-01-02 15:04:05")})
	}
	return p.table([]string{"NAME", "PRINCIPALS", "CREATED"}, rows)
}

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Aliases: []string{"tokens"}, Short: "Manage Stowage API tokens (stored by the server only as hashes)"}
	var principal, description, outFile string
	create := &cobra.Command{
		Use: "create --principal P", Short: "Issue a token; it is shown once (stdout, or a 0600 file with --out-file)", Args: cobra.NoArgs,
		Example: `  stowage token create --principal stowage:csi-controller --out-file /var/lib/stowage/tokens/csi-controller
  stowage token create --principal stowage:admin > admin.token && chmod 600 admin.token`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if principal == "" {
				return usageErrorf("--principal is required (stowage:admin, stowage:<component>, system:serviceaccount:<ns>:<name>, or a user name)")
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				resp, err := c.policies.CreateToken(ctx, &pb.CreateTokenRequest{Principal: principal, Description: description})
				if err != nil {
					return err
				}
				if outFile == "" {
					_, err := fmt.Fprintln(p.out, resp.Secret)
					return err
				}
				if err := auth.WriteTokenFile(outFile, resp.Secret); err != nil {
					return err
				}
				_, err = fmt.Fprintf(cmd.ErrOrStderr(), "token %s for %s written to %s\n", resp.Token.Id, resp.Token.Principal, outFile)
				return err
			})
		},
	}
	create.Flags().StringVar(&principal, "principal", "", "whom the token proves (required)")
	create.Flags().StringVar(&description, "description", "", "free text")
	create.Flags().StringVar(&outFile, "out-file", "", "write the token to this file (mode 0600) instead of stdout")
	var secretName, secretNamespace string
	var secretNodes, secretHosts []string
	secret := &cobra.Command{
		Use:   "secret --nodes N1,N2,...",
		Short: "Issue the chart's component tokens and print them as a Kubernetes Secret (for kubectl apply -f -)",
		Long: `Issues one token for each component the Helm chart runs (stowage:csi-controller,
stowage:csi-file, stowage:secrets-provider, and stowage:csi-node:<node> for each node of
--nodes) and prints a Secret with keys csi-controller, csi-file, secrets-provider and
csi-node-<node>, and with --storage-hosts storage-host-<node> for each storage host (principal
stowage:storage-host:pool-<node>: the pool the chart's agent on that node registers): the
chart's server.tokensSecret. The tokens are printed once, nowhere else;
pipe them to kubectl. A node that joins later: run it again with that node alone and
merge the key (kubectl patch), or issue its token with 'token create'. With --ca-file (or
STOWAGE_CA_FILE: the server serves TLS) the Secret holds that CA as ca.crt too, which the
chart's components trust with apiTLS.enabled.`,
		Example: `  stowage token secret --nodes node-a,node-b | kubectl apply -f -`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(secretNodes) == 0 {
				return usageErrorf("--nodes is required: the names of the nodes the node plugin runs on (kubectl get nodes)")
			}
			keys := [][2]string{{"csi-controller", auth.CSIController}, {"csi-file", auth.CSIFile}, {"secrets-provider", auth.SecretsProvider}}
			for _, n := range secretNodes {
				if n == "" || strings.ContainsAny(n, " /") {
					return usageErrorf("--nodes: %q is not a node name", n)
				}
				keys = append(keys, [2]string{"csi-node-" + n, auth.CSINodePrefix + n})
			}
			for _, n := range secretHosts {
				if n == "" || strings.ContainsAny(n, " /") {
					return usageErrorf("--storage-hosts: %q is not a node name", n)
				}
				keys = append(keys, [2]string{"storage-host-" + n, auth.StorageHostPrefix + "pool-" + n})
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				data := map[string]string{}
				for _, k := range keys {
					resp, err := c.policies.CreateToken(ctx, &pb.CreateTokenRequest{Principal: k[1], Description: "Helm chart, Secret " + secretNamespace + "/" + secretName})
					if err != nil {
						return fmt.Errorf("token for %s: %w", k[1], err)
					}
					data[k[0]] = resp.Secret
				}
				// The CA this command trusted the server with: the one the
				// chart's components need (apiTLS.enabled).
				if ca := caFileInUse(); ca != "" {
					pem, err := os.ReadFile(ca)
					if err != nil {
						return fmt.Errorf("--ca-file: %w", err)
					}
					data["ca.crt"] = string(pem)
				}
				doc := map[string]any{"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
					"metadata": map[string]any{"name": secretName, "namespace": secretNamespace}, "stringData": data}
				b, err := json.MarshalIndent(doc, "", "  ")
				if err != nil {
					return err
				}
				if _, err := fmt.Fprintln(p.out, string(b)); err != nil {
					return err
				}
				_, err = fmt.Fprintf(cmd.ErrOrStderr(), "%d tokens issued for Secret %s/%s\n", len(keys), secretNamespace, secretName)
				return err
			})
		},
	}
	secret.Flags().StringSliceVar(&secretNodes, "nodes", nil, "the nodes the node plugin runs on (required)")
	secret.Flags().StringSliceVar(&secretHosts, "storage-hosts", nil, "the nodes the chart's agents run on (agents.nodeSelector): each registers its pool pool-<node>")
	secret.Flags().StringVar(&secretName, "name", "stowage-tokens", "the Secret's name (the chart's server.tokensSecret)")
	secret.Flags().StringVar(&secretNamespace, "namespace", "stowage", "the Secret's namespace (the release's)")
	var listPrincipal string
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List tokens (ids and principals; never the tokens)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				resp, err := c.policies.ListTokens(ctx, &pb.ListTokensRequest{Principal: listPrincipal})
				if err != nil {
					return err
				}
				if done, err := p.structured(resp); done {
					return err
				}
				rows := make([][]string, 0, len(resp.Tokens))
				for _, t := range resp.Tokens {
					d := t.Description
					if d == "" {
						d = "-"
					}
					rows = append(rows, []string{t.Id, t.Principal, t.CreateTime.AsTime().Format("2006-01-02 15:04:05"), d})
				}
				return p.table([]string{"ID", "PRINCIPAL", "CREATED", "DESCRIPTION"}, rows)
			})
		},
	}
	list.Flags().StringVar(&listPrincipal, "principal", "", "only this principal's tokens")
	revoke := &cobra.Command{
		Use: "revoke ID", Short: "Revoke a token: calls with it fail from now on", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				if _, err := c.policies.RevokeToken(ctx, &pb.RevokeTokenRequest{Id: args[0]}); err != nil {
					return err
				}
				_, err := fmt.Fprintf(p.out, "token %s revoked\n", args[0])
				return err
			})
		},
	}
	var clusterTokenFile, agentOut string
	agentTok := &cobra.Command{
		Use:   "agent POOL --agent-token-file F",
		Short: "Print the agent token of the storage host of POOL, derived from the servers' agent token (for stowage server --agent-token-per-host); calls no server",
		Long: `The servers started with --agent-token-per-host present each storage host a
token of its own, derived from their --agent-token-file for the host's pool;
the host's stowage agent --token-file must hold it. It opens that host's agent
API only: a storage host holds no token that opens another's.`,
		Example: `  stowage token agent pool-b --agent-token-file /etc/stowage/agent.token --out-file /srv/storage-b/agent.token`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if clusterTokenFile == "" {
				return usageErrorf("--agent-token-file is required: the servers' --agent-token-file")
			}
			token, err := auth.ReadTokenFile(clusterTokenFile)
			if err != nil {
				return err
			}
			derived := auth.StorageHostAgentToken(token, args[0])
			if agentOut == "" {
				_, err := fmt.Fprintln(cmd.OutOrStdout(), derived)
				return err
			}
			if err := auth.WriteTokenFile(agentOut, derived); err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.ErrOrStderr(), "agent token of the storage host of %s written to %s\n", args[0], agentOut)
			return err
		},
	}
	agentTok.Flags().StringVar(&clusterTokenFile, "agent-token-file", "", "the servers' --agent-token-file (required)")
	agentTok.Flags().StringVar(&agentOut, "out-file", "", "write the token to this file (mode 0600) instead of stdout")
	cmd.AddCommand(create, secret, list, revoke, agentTok)
	return cmd
}
