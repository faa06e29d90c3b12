package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

func newParamCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "param", Aliases: []string{"params", "parameter"}, Short: "Manage parameters (the Parameter Store model)"}
	var preq pb.PutParameterRequest
	var valueFile string
	put := &cobra.Command{
		Use: "put NAME", Short: "Store a parameter, or a new version of it with --overwrite", Args: cobra.ExactArgs(1),
		Example: `  printf postgres://db:5432/app | stowage param put /app/db/url --value-file -
  stowage param put /app/db/password --type SecureString --value-file pw.txt`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := refuseRemoved(cmd); err != nil {
				return err
			}
			if valueFile == "" {
				return usageErrorf("give the value with --value-file FILE, or --value-file - for stdin (values never go in the argument list)")
			}
			v, err := readInput(cmd, "", valueFile, "value")
			if err != nil {
				return err
			}
			preq.Name, preq.Value = args[0], strings.TrimSuffix(string(v), "\n")
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				r, err := c.params.PutParameter(ctx, &preq)
				if err != nil {
					return err
				}
				if done, err := p.structured(r); done {
					return err
				}
				_, err = fmt.Fprintf(p.out, "%s version %d\n", args[0], r.Version)
				return err
			})
		},
	}
	removedValueFlag(put, &preq.Value, "value", "--value-file FILE (or - for stdin)")
	put.Flags().StringVar(&valueFile, "value-file", "", "file with the value (one trailing newline dropped); - for stdin")
	put.Flags().StringVar(&preq.Type, "type", "", "String, StringList or SecureString (default String, or the parameter's type)")
	put.Flags().StringVar(&preq.Description, "description", "", "free text")
	put.Flags().StringVar(&preq.KeyId, "key-id", "", "KMS key of a SecureString (default alias/stowage/ssm)")
	put.Flags().BoolVar(&preq.Overwrite, "overwrite", false, "add a version to an existing parameter")

	var decrypt bool
	get := &cobra.Command{
		Use: "get NAME[:VERSION|:LABEL]", Short: "Print a parameter's value", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				r, err := c.params.GetParameter(ctx, &pb.GetParameterRequest{Name: args[0], WithDecryption: decrypt})
				if err != nil {
					return err
				}
				if done, err := p.structured(r); done {
					return err
				}
				if r.Type == "SecureString" && !decrypt {
					return usageErrorf("%s is a SecureString: add --with-decryption to print it", r.Name)
				}
				_, err = fmt.Fprintln(p.out, r.Value)
				return err
			})
		},
	}
	get.Flags().BoolVar(&decrypt, "with-decryption", false, "decrypt a SecureString")

	var recursive, pathDecrypt bool
	byPath := &cobra.Command{
		Use: "get-by-path PATH", Short: "List the parameters under a path (its direct children, or all with --recursive)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				r, err := c.params.GetParametersByPath(ctx, &pb.GetParametersByPathRequest{Path: args[0], Recursive: recursive, WithDecryption: pathDecrypt})
				if err != nil {
					return err
				}
				if done, err := p.structured(r); done {
					return err
				}
				return printParams(p, true, r.Parameters...)
			})
		},
	}
	byPath.Flags().BoolVar(&recursive, "recursive", false, "every level below the path")
	byPath.Flags().BoolVar(&pathDecrypt, "with-decryption", false, "show SecureString values")

	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a parameter and all its versions", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				r, err := c.params.DeleteParameter(ctx, &pb.DeleteParameterRequest{Name: args[0]})
				if err != nil {
					return err
				}
				if done, err := p.structured(r); done {
					return err
				}
				if !r.Existed {
					_, err = fmt.Fprintf(p.out, "parameter %s did not exist\n", args[0])
					return err
				}
				_, err = fmt.Fprintln(p.out, "deleted", args[0])
				return err
			})
		},
	}

	var version int64
	label := &cobra.Command{
		Use: "label NAME LABEL...", Short: "Attach labels to a version (the latest unless --version), moving them from others", Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				r, err := c.params.LabelParameterVersion(ctx, &pb.LabelParameterVersionRequest{Name: args[0], ParameterVersion: version, Labels: args[1:]})
				if err != nil {
					return err
				}
				if done, err := p.structured(r); done {
					return err
				}
				fmt.Fprintf(p.out, "%s version %d labelled\n", args[0], r.ParameterVersion)
				if len(r.InvalidLabels) > 0 {
					return usageErrorf("labels not attached (letters, digits, _.-; not starting with a digit, aws or ssm): %s", strings.Join(r.InvalidLabels, ", "))
				}
				return nil
			})
		},
	}
	label.Flags().Int64Var(&version, "version", 0, "the version to label (default the latest)")

	var histDecrypt bool
	history := &cobra.Command{
		Use: "history NAME", Short: "List every version of a parameter", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				r, err := c.params.GetParameterHistory(ctx, &pb.GetParameterHistoryRequest{Name: args[0], WithDecryption: histDecrypt})
				if err != nil {
					return err
				}
				if done, err := p.structured(r); done {
					return err
				}
				return printParams(p, false, r.Parameters...)
			})
		},
	}
	history.Flags().BoolVar(&histDecrypt, "with-decryption", false, "show SecureString values")

	cmd.AddCommand(put, get, byPath, del, label, history)
	return cmd
}

func printParams(p printer, withName bool, ps ...*pb.Parameter) error {
	rows := make([][]string, 0, len(ps))
	for _, x := range ps {
		v := x.Value
		if x.Type == "SecureString" && v == "" {
			v = "(encrypted)"
		}
		row := []string{strconv.FormatInt(x.Version, 10), x.Type, orDash(strings.Join(x.Labels, ",")), v}
		if withName {
			row = append([]string{x.Name}, row...)
		}
		rows = append(rows, row)
	}
	h := []string{"VERSION", "TYPE", "LABELS", "VALUE"}
	if withName {
		h = append([]string{"NAME"}, h...)
	}
	return p.table(h, rows)
}
