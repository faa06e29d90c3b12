package cli

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

func newKeyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "key", Aliases: []string{"keys"}, Short: "Manage KMS keys: encrypt volumes, secrets and parameters, and your own data"}
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
	change := func(use, short string, call func(context.Context, *client, string) (*pb.Key, error)) *cobra.Command {
		return &cobra.Command{
			Use: use + " KEY_ID|alias/NAME", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
					k, err := call(ctx, c, args[0])
					if err != nil {
						return err
					}
					return printKeys(p, k)
				})
			},
		}
	}
	enable := change("enable", "Let a disabled key encrypt and decrypt again", func(ctx context.Context, c *client, id string) (*pb.Key, error) {
		return c.keys.EnableKey(ctx, &pb.KeyRequest{KeyId: id})
	})
	disable := change("disable", "Stop a key from encrypting and decrypting (what it protects cannot be read)", func(ctx context.Context, c *client, id string) (*pb.Key, error) {
		return c.keys.DisableKey(ctx, &pb.KeyRequest{KeyId: id})
	})
	var pendingDays int32
	schedule := change("schedule-deletion", "Delete a key after a pending window (7–30 days)", func(ctx context.Context, c *client, id string) (*pb.Key, error) {
		return c.keys.ScheduleKeyDeletion(ctx, &pb.ScheduleKeyDeletionRequest{KeyId: id, PendingWindowInDays: pendingDays})
	})
	schedule.Flags().Int32Var(&pendingDays, "pending-window-days", 30, "days until the key is deleted for good (7–30)")
	cancelDel := change("cancel-deletion", "Keep a key that is pending deletion (it stays disabled)", func(ctx context.Context, c *client, id string) (*pb.Key, error) {
		return c.keys.CancelKeyDeletion(ctx, &pb.KeyRequest{KeyId: id})
	})
	rotate := change("rotate", "Give a key a new version that encrypts from now on; old versions still decrypt", func(ctx context.Context, c *client, id string) (*pb.Key, error) {
		return c.keys.RotateKey(ctx, &pb.KeyRequest{KeyId: id})
	})
	cmd.AddCommand(create, describe, list, enable, disable, schedule, cancelDel, rotate,
		newKeyAliasCmd(g), newKeyEncryptCmd(g), newKeyDecryptCmd(g), newKeyGenerateDataKeyCmd(g))
	return cmd
}

func newKeyAliasCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "alias", Short: "Create or delete key aliases (alias/<name>)"}
	create := &cobra.Command{
		Use: "create alias/NAME KEY_ID|alias/OTHER", Short: "Point a new alias at a key", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				k, err := c.keys.CreateAlias(ctx, &pb.CreateAliasRequest{AliasName: args[0], TargetKeyId: args[1]})
				if err != nil {
					return err
				}
				return printKeys(p, k)
			})
		},
	}
	del := &cobra.Command{
		Use: "delete alias/NAME", Short: "Remove an alias (the key stays)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				if _, err := c.keys.DeleteAlias(ctx, &pb.DeleteAliasRequest{AliasName: args[0]}); err != nil {
					return err
				}
				fmt.Fprintln(p.out, "deleted", args[0])
				return nil
			})
		},
	}
	cmd.AddCommand(create, del)
	return cmd
}

// readInput returns the literal value, or the bytes of file ("-" is stdin).
// removedValueFlag keeps a flag that used to take a secret value in the
// argument list, hidden, so that using it says what replaced it instead
// of "unknown flag". Its value is never shown.
func removedValueFlag(cmd *cobra.Command, v *string, name, instead string) {
	cmd.Flags().StringVar(v, name, "", "removed: use "+instead)
	_ = cmd.Flags().MarkHidden(name)
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations["removed-flag:"+name] = instead
}

// refuseRemoved fails when a removed value flag was given.
func refuseRemoved(cmd *cobra.Command) error {
	for k, instead := range cmd.Annotations {
		name, ok := strings.CutPrefix(k, "removed-flag:")
		if ok && cmd.Flags().Changed(name) {
			return usageErrorf("--%s is gone: a value in the argument list can be read by every user of this machine (ps, /proc); use %s", name, instead)
		}
	}
	return nil
}

func readInput(cmd *cobra.Command, literal, file, what string) ([]byte, error) {
	switch {
	case literal != "" && file != "":
		return nil, usageErrorf("give the %s either literally or as a file, not both", what)
	case file == "-":
		return io.ReadAll(cmd.InOrStdin())
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", what, err)
		}
		return b, nil
	}
	return []byte(literal), nil
}

func newKeyEncryptCmd(g *globals) *cobra.Command {
	var plaintext, file string
	var encCtx []string
	cmd := &cobra.Command{
		Use: "encrypt KEY_ID|alias/NAME", Short: "Encrypt up to 4096 bytes; prints the ciphertext in base64", Args: cobra.ExactArgs(1),
		Example: `  stowage key encrypt alias/app --plaintext-file token.txt --context app=billing > token.enc`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := refuseRemoved(cmd); err != nil {
				return err
			}
			if file == "" {
				return usageErrorf("give the data with --plaintext-file FILE, or --plaintext-file - for stdin (data never goes in the argument list)")
			}
			data, err := readInput(cmd, "", file, "plaintext")
			if err != nil {
				return err
			}
			ec, err := parseKV(encCtx, "context")
			if err != nil {
				return err
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				resp, err := c.keys.Encrypt(ctx, &pb.EncryptRequest{KeyId: args[0], Plaintext: data, EncryptionContext: ec})
				if err != nil {
					return err
				}
				if done, err := p.structured(resp); done {
					return err
				}
				_, err = fmt.Fprintln(p.out, base64.StdEncoding.EncodeToString(resp.CiphertextBlob))
				return err
			})
		},
	}
	removedValueFlag(cmd, &plaintext, "plaintext", "--plaintext-file FILE (or - for stdin)")
	cmd.Flags().StringVar(&file, "plaintext-file", "", "file with the data; - for stdin")
	cmd.Flags().StringArrayVar(&encCtx, "context", nil, "encryption context key=value (repeatable); decrypt needs the same")
	return cmd
}

func newKeyDecryptCmd(g *globals) *cobra.Command {
	var blob, file string
	var encCtx []string
	cmd := &cobra.Command{
		Use: "decrypt", Short: "Decrypt a ciphertext (base64) made by encrypt or generate-data-key; prints the plaintext", Args: cobra.NoArgs,
		Example: `  stowage key decrypt --ciphertext-file token.enc --context app=billing`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b64, err := readInput(cmd, blob, file, "ciphertext")
			if err != nil {
				return err
			}
			ct, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b64)))
			if err != nil {
				return usageErrorf("the ciphertext is not base64: %v", err)
			}
			ec, err := parseKV(encCtx, "context")
			if err != nil {
				return err
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				resp, err := c.keys.Decrypt(ctx, &pb.DecryptRequest{CiphertextBlob: ct, EncryptionContext: ec})
				if err != nil {
					return err
				}
				if done, err := p.structured(resp); done {
					return err
				}
				_, err = p.out.Write(resp.Plaintext)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&blob, "ciphertext-blob", "", "the ciphertext in base64")
	cmd.Flags().StringVar(&file, "ciphertext-file", "", "file with the ciphertext in base64; - for stdin")
	cmd.Flags().StringArrayVar(&encCtx, "context", nil, "encryption context key=value (repeatable), as given to encrypt")
	return cmd
}

func newKeyGenerateDataKeyCmd(g *globals) *cobra.Command {
	var n int32
	var encCtx []string
	cmd := &cobra.Command{
		Use: "generate-data-key KEY_ID|alias/NAME", Short: "Make a random data key: prints it in the clear and wrapped by the key (base64)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ec, err := parseKV(encCtx, "context")
			if err != nil {
				return err
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				resp, err := c.keys.GenerateDataKey(ctx, &pb.GenerateDataKeyRequest{KeyId: args[0], NumberOfBytes: n, EncryptionContext: ec})
				if err != nil {
					return err
				}
				if done, err := p.structured(resp); done {
					return err
				}
				return p.table([]string{"KEY", "VERSION", "PLAINTEXT", "CIPHERTEXT"}, [][]string{{resp.KeyId, strconv.Itoa(int(resp.KeyVersion)),
					base64.StdEncoding.EncodeToString(resp.Plaintext), base64.StdEncoding.EncodeToString(resp.CiphertextBlob)}})
			})
		},
	}
	cmd.Flags().Int32Var(&n, "bytes", 32, "size of the data key (16–64)")
	cmd.Flags().StringArrayVar(&encCtx, "context", nil, "encryption context key=value (repeatable)")
	return cmd
}

// parseKV reads key=value flags; an empty value is allowed.
func parseKV(kvs []string, what string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usageErrorf("%s %q: write it as key=value", what, kv)
		}
		m[k] = v
	}
	return m, nil
}

func printKeys(p printer, ks ...*pb.Key) error {
	if len(ks) == 1 {
		if done, err := p.structured(ks[0]); done {
			return err
		}
	}
	rows := make([][]string, 0, len(ks))
	for _, k := range ks {
		state := k.State
		if k.DeletionTime != nil {
			state += " (deleted " + k.DeletionTime.AsTime().Format("2006-01-02") + ")"
		}
		rows = append(rows, []string{k.Id, orDash(strings.Join(k.Aliases, ",")), state, strconv.Itoa(int(k.CurrentVersion)),
			k.CreateTime.AsTime().Format("2006-01-02T15:04:05Z"), orDash(k.Description)})
	}
	return p.table([]string{"ID", "ALIASES", "STATE", "VERSION", "CREATED", "DESCRIPTION"}, rows)
}
