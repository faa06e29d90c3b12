package cli

import (
	"context"
	"strings"

	"github.com/spf13/cobra"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

func newKeyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "key", Aliases: []string{"keys"}, Short: "Manage KMS keys that encrypt volumes"}
	var req pb.CreateKeyRequest
	create := &cobra.Command{
		Use: "create", Short: "Create a KMS key", Args: cobra.NoArgs,
		Example: `  stowage key create --alias alias/app-data --description "keys of the app's volumes"`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				k, err := c.keys.CreateKey(ctx, &req)
				if err != nil {
					return err
				}
				return printKeys(p, k)
			})
		},
	}
	create.Flags().StringVar(&req.Description, "description", "", "free text")
	create.Flags().StringArrayVar(&req.Aliases, "alias", nil, "alias/<name> (repeatable)")
	describe := &cobra.Command{
		Use: "describe KEY_ID|alias/NAME", Short: "Show a key", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				k, err := c.keys.DescribeKey(ctx, &pb.DescribeKeyRequest{KeyId: args[0]})
				if err != nil {
					return err
				}
				return printKeys(p, k)
			})
		},
	}
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List keys", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				resp, err := c.keys.ListKeys(ctx, &pb.ListKeysRequest{})
				if err != nil {
					return err
				}
				if done, err := p.structured(resp); done {
					return err
				}
				return printKeys(p, resp.Keys...)
			})
		},
	}
	cmd.AddCommand(create, describe, list)
	return cmd
}

func printKeys(p printer, ks ...*pb.Key) error {
	if len(ks) == 1 {
		if done, err := p.structured(ks[0]); done {
			return err
		}
	}
	rows := make([][]string, 0, len(ks))
	for _, k := range ks {
		rows = append(rows, []string{k.Id, orDash(strings.Join(k.Aliases, ",")), k.State, k.CreateTime.AsTime().Format("2006-01-02T15:04:05Z"), orDash(k.Description)})
	}
	return p.table([]string{"ID", "ALIASES", "STATE", "CREATED", "DESCRIPTION"}, rows)
}
