package cli

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// valueFlags read a secret value from a file or stdin, never from the
// argument list (which every user of the machine can read in ps).
type valueFlags struct {
	str, file, binFile string
}

func (v *valueFlags) add(cmd *cobra.Command) {
	removedValueFlag(cmd, &v.str, "secret-string", "--secret-string-file FILE (or - for stdin)")
	cmd.Flags().StringVar(&v.file, "secret-string-file", "", "file with the string value; - for stdin")
	cmd.Flags().StringVar(&v.binFile, "secret-binary-file", "", "file with a binary value; - for stdin")
}

func (v *valueFlags) read(cmd *cobra.Command) (*string, []byte, error) {
	n := 0
	if err := refuseRemoved(cmd); err != nil {
		return nil, nil, err
	}
	for _, f := range []string{"secret-string-file", "secret-binary-file"} {
		if cmd.Flags().Changed(f) {
			n++
		}
	}
	if n > 1 {
		return nil, nil, usageErrorf("give one of --secret-string-file, --secret-binary-file")
	}
	switch {
	case cmd.Flags().Changed("secret-binary-file"):
		b, err := readInput(cmd, "", v.binFile, "secret value")
		return nil, b, err
	case cmd.Flags().Changed("secret-string-file"):
		b, err := readInput(cmd, "", v.file, "secret value")
		s := string(b)
		return &s, nil, err
	}
	return nil, nil, nil
}

func newSecretCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "secret", Aliases: []string{"secrets"}, Short: "Manage secrets (the Secrets Manager model)"}
	var creq pb.CreateSecretRequest
	var cval valueFlags
	var ctags []string
	create := &cobra.Command{
		Use: "create NAME", Short: "Create a secret, with a first value if given", Args: cobra.ExactArgs(1),
		Example: `  printf '{"username":"admin","password":"p@ssw0rd"}' | stowage secret create prod/db --secret-string-file -`,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, b, err := cval.read(cmd)
			if err != nil {
				return err
			}
			tags, err := parseTags(ctags)
			if err != nil {
				return err
			}
			creq.Name, creq.SecretString, creq.SecretBinary, creq.Tags = args[0], s, b, tags
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				r, err := c.secrets.CreateSecret(ctx, &creq)
				if err != nil {
					return err
				}
				return printVersionRef(p, r)
			})
		},
	}
	create.Flags().StringVar(&creq.Description, "description", "", "free text")
	create.Flags().StringVar(&creq.KmsKeyId, "kms-key-id", "", "KMS key that encrypts the values (default alias/stowage/secretsmanager)")
	create.Flags().StringVar(&creq.ClientRequestToken, "client-request-token", "", "id of the first version (32–64 characters); makes a retried create idempotent")
	create.Flags().StringArrayVar(&ctags, "tag", nil, "key=value (repeatable)")
	cval.add(create)

	var preq pb.PutSecretValueRequest
	var pval valueFlags
	put := &cobra.Command{
		Use: "put-value SECRET", Short: "Add a version (AWSCURRENT unless --stage is given)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, b, err := pval.read(cmd)
			if err != nil {
				return err
			}
			if s == nil && b == nil {
				return usageErrorf("give the value with --secret-string-file, --secret-binary-file or --secret-string")
			}
			preq.SecretId, preq.SecretString, preq.SecretBinary = args[0], s, b
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				r, err := c.secrets.PutSecretValue(ctx, &preq)
				if err != nil {
					return err
				}
				return printVersionRef(p, r)
			})
		},
	}
	put.Flags().StringVar(&preq.ClientRequestToken, "client-request-token", "", "id of the new version (32–64 characters)")
	put.Flags().StringArrayVar(&preq.VersionStages, "stage", nil, "staging label of the new version (repeatable; default AWSCURRENT)")
	pval.add(put)

	var greq pb.GetSecretValueRequest
	get := &cobra.Command{
		Use: "get-value SECRET", Short: "Print a version's value (AWSCURRENT by default)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			greq.SecretId = args[0]
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				v, err := c.secrets.GetSecretValue(ctx, &greq)
				if err != nil {
					return err
				}
				if done, err := p.structured(v); done {
					return err
				}
				if v.SecretString != nil {
					_, err = fmt.Fprintln(p.out, *v.SecretString)
				} else {
					_, err = p.out.Write(v.SecretBinary)
				}
				return err
			})
		},
	}
	get.Flags().StringVar(&greq.VersionId, "version-id", "", "a version id")
	get.Flags().StringVar(&greq.VersionStage, "version-stage", "", "a staging label (default AWSCURRENT)")

	describe := &cobra.Command{
		Use: "describe SECRET", Short: "Show a secret's metadata and versions", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				s, err := c.secrets.DescribeSecret(ctx, &pb.DescribeSecretRequest{SecretId: args[0]})
				if err != nil {
					return err
				}
				return printSecret(p, s)
			})
		},
	}
	var lreq pb.ListSecretsRequest
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List secrets", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				resp, err := c.secrets.ListSecrets(ctx, &lreq)
				if err != nil {
					return err
				}
				if done, err := p.structured(resp); done {
					return err
				}
				return printSecrets(p, resp.Secrets...)
			})
		},
	}
	list.Flags().BoolVar(&lreq.IncludePlannedDeletion, "include-planned-deletion", false, "also list secrets scheduled for deletion")
	list.Flags().StringVar(&lreq.NamePrefix, "prefix", "", "only names that start with this")

	var dreq pb.DeleteSecretRequest
	del := &cobra.Command{
		Use: "delete SECRET", Short: "Schedule a secret for deletion (recovery window 7–30 days)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dreq.SecretId = args[0]
			if !cmd.Flags().Changed("recovery-window-days") {
				dreq.RecoveryWindowInDays = 0
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				r, err := c.secrets.DeleteSecret(ctx, &dreq)
				if err != nil {
					return err
				}
				if done, err := p.structured(r); done {
					return err
				}
				switch {
				case !r.Existed:
					_, err = fmt.Fprintf(p.out, "secret %s did not exist\n", args[0])
				case dreq.ForceDeleteWithoutRecovery:
					_, err = fmt.Fprintf(p.out, "deleted %s\n", r.Arn)
				default:
					_, err = fmt.Fprintf(p.out, "%s will be deleted on %s (restore it with `stowage secret restore %s`)\n",
						r.Arn, r.DeletionTime.AsTime().Format("2006-01-02T15:04:05Z"), r.Name)
				}
				return err
			})
		},
	}
	del.Flags().Int32Var(&dreq.RecoveryWindowInDays, "recovery-window-days", 30, "days during which restore brings it back (7–30)")
	del.Flags().BoolVar(&dreq.ForceDeleteWithoutRecovery, "force-delete-without-recovery", false, "delete now, for good")

	restore := &cobra.Command{
		Use: "restore SECRET", Short: "Cancel a secret's scheduled deletion", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				s, err := c.secrets.RestoreSecret(ctx, &pb.RestoreSecretRequest{SecretId: args[0]})
				if err != nil {
					return err
				}
				return printSecret(p, s)
			})
		},
	}

	var gen pb.PasswordGenerator
	var rreq pb.RotateSecretRequest
	var webhook string
	var webhookTimeout time.Duration
	var noRotateNow bool
	rotate := &cobra.Command{
		Use:   "rotate SECRET",
		Short: "Make a new AWSCURRENT version now (random password or webhook), and optionally rotate on a schedule",
		Long: `Make a new version and promote it to AWSCURRENT: written as AWSPENDING first, then
AWSCURRENT moves to it, so that the old or the new version is current at any moment.

The new value comes from the built-in generator (a random password in a key of the
JSON object value, or the whole value), or from --webhook: the server POSTs
{"secretArn","name","versionId","currentVersionId"} to the URL and takes the value
from a 2xx reply {"secretString": "..."} or {"secretBinary": "<base64>"}. The
settings are saved: a later rotate without them, and every scheduled rotation, use
them again. Generator flags drop a saved webhook.

--schedule 'rate(N days)' (or hours, minutes; 1 minute to 1000 days) makes the
server rotate the secret every interval; describe shows the next and last
rotation and the last failure. A failed scheduled rotation is retried after 10s,
doubling up to 1h. cancel-rotation turns the schedule off.`,
		Example: `  stowage secret rotate prod/db --json-key password --password-length 24
  stowage secret rotate prod/db --schedule 'rate(30 days)'
  stowage secret rotate prod/db --webhook https://rotator.internal/rotate --schedule 'rate(1 day)' --no-rotate-immediately`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &pb.RotateSecretRequest{SecretId: args[0], ClientRequestToken: rreq.ClientRequestToken, Schedule: rreq.Schedule}
			genFlags := cmd.Flags().Changed("json-key") || cmd.Flags().Changed("whole-value") || cmd.Flags().Changed("password-length") || cmd.Flags().Changed("exclude-punctuation")
			if genFlags {
				req.Generator = &gen
			}
			if cmd.Flags().Changed("webhook-timeout") && webhook == "" {
				return usageErrorf("--webhook-timeout needs --webhook")
			}
			if webhook != "" {
				if genFlags {
					return usageErrorf("give generator flags or --webhook, not both")
				}
				if webhookTimeout%time.Second != 0 {
					return usageErrorf("--webhook-timeout %s: give whole seconds", webhookTimeout)
				}
				req.Webhook = &pb.RotationWebhook{Url: webhook, TimeoutSeconds: int32(webhookTimeout / time.Second)}
			}
			if noRotateNow {
				f := false
				req.RotateImmediately = &f
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				r, err := c.secrets.RotateSecret(ctx, req)
				if err != nil {
					return err
				}
				return printVersionRef(p, r)
			})
		},
	}
	rotate.Flags().StringVar(&gen.JsonKey, "json-key", "", `key of the JSON object value that gets the password (default "password", or the last rotation's)`)
	rotate.Flags().BoolVar(&gen.WholeValue, "whole-value", false, "the password is the whole value")
	rotate.Flags().Int32Var(&gen.PasswordLength, "password-length", 0, "password length (default 32)")
	rotate.Flags().BoolVar(&gen.ExcludePunctuation, "exclude-punctuation", false, "letters and digits only")
	rotate.Flags().StringVar(&webhook, "webhook", "", "rotate with this http:// or https:// URL instead of the generator (saved for the next rotations)")
	rotate.Flags().DurationVar(&webhookTimeout, "webhook-timeout", 30*time.Second, "how long to wait for the webhook's reply (1s–15m, whole seconds)")
	rotate.Flags().StringVar(&rreq.Schedule, "schedule", "", "rotate on a schedule: 'rate(N days)', 'rate(N hours)' or 'rate(N minutes)'")
	rotate.Flags().BoolVar(&noRotateNow, "no-rotate-immediately", false, "with --schedule (or a saved one): save the settings without rotating now; the first rotation is one interval away")
	rotate.Flags().StringVar(&rreq.ClientRequestToken, "client-request-token", "", "id of the new version (32–64 characters); also what the webhook gets as versionId")

	cancelRotation := &cobra.Command{
		Use: "cancel-rotation SECRET", Short: "Turn scheduled rotation off (the generator or webhook settings are kept for rotate)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				s, err := c.secrets.CancelRotateSecret(ctx, &pb.CancelRotateSecretRequest{SecretId: args[0]})
				if err != nil {
					return err
				}
				return printSecret(p, s)
			})
		},
	}

	var ureq pb.UpdateSecretVersionStageRequest
	stage := &cobra.Command{
		Use: "update-version-stage SECRET STAGE", Short: "Move a staging label between versions", Args: cobra.ExactArgs(2),
		Example: `  stowage secret update-version-stage prod/db AWSCURRENT --move-to-version-id OLD --remove-from-version-id NEW   # roll back`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ureq.SecretId, ureq.VersionStage = args[0], args[1]
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				s, err := c.secrets.UpdateSecretVersionStage(ctx, &ureq)
				if err != nil {
					return err
				}
				return printSecret(p, s)
			})
		},
	}
	stage.Flags().StringVar(&ureq.MoveToVersionId, "move-to-version-id", "", "version that gets the label")
	stage.Flags().StringVar(&ureq.RemoveFromVersionId, "remove-from-version-id", "", "version that has the label now")

	var addTags, removeTags []string
	tag := &cobra.Command{
		Use: "tag SECRET", Short: "Add, change or remove tags", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tags, err := parseTags(addTags)
			if err != nil {
				return err
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				s, err := c.secrets.TagSecret(ctx, &pb.TagSecretRequest{SecretId: args[0], Tags: tags, RemoveTagKeys: removeTags})
				if err != nil {
					return err
				}
				return printSecret(p, s)
			})
		},
	}
	tag.Flags().StringArrayVar(&addTags, "tag", nil, "key=value to add or change (repeatable)")
	tag.Flags().StringArrayVar(&removeTags, "remove", nil, "tag key to remove (repeatable)")

	cmd.AddCommand(create, put, get, describe, list, del, restore, rotate, cancelRotation, stage, tag)
	return cmd
}

func printVersionRef(p printer, r *pb.SecretVersionRef) error {
	if done, err := p.structured(r); done {
		return err
	}
	return p.table([]string{"ARN", "VERSION", "STAGES"}, [][]string{{r.Arn, orDash(r.VersionId), orDash(strings.Join(r.Stages, ","))}})
}

func printSecret(p printer, s *pb.Secret) error {
	if done, err := p.structured(s); done {
		return err
	}
	if err := printSecrets(p, s); err != nil {
		return err
	}
	fmt.Fprintln(p.out)
	if err := printRotation(p, s); err != nil {
		return err
	}
	fmt.Fprintln(p.out)
	rows := [][]string{}
	for _, v := range s.Versions {
		st := append([]string(nil), v.Stages...)
		sort.Strings(st)
		rows = append(rows, []string{v.VersionId, strings.Join(st, ","), v.CreateTime.AsTime().Format("2006-01-02T15:04:05Z")})
	}
	return p.table([]string{"VERSION", "STAGES", "CREATED"}, rows)
}

func printSecrets(p printer, ss ...*pb.Secret) error {
	rows := make([][]string, 0, len(ss))
	for _, s := range ss {
		state := "-"
		if s.DeletionTime != nil {
			state = "deleted on " + s.DeletionTime.AsTime().Format("2006-01-02")
		}
		rows = append(rows, []string{s.Name, s.Arn, s.KmsKeyId, state, formatTags(s.Tags)})
	}
	return p.table([]string{"NAME", "ARN", "KMS-KEY", "DELETION", "TAGS"}, rows)
}

// printRotation shows the rotation fields by their DescribeSecret names.
func printRotation(p printer, s *pb.Secret) error {
	ts := func(t interface{ AsTime() time.Time }, set bool) string {
		if !set {
			return "-"
		}
		return t.AsTime().UTC().Format("2006-01-02T15:04:05Z")
	}
	rotatedBy := "generator"
	if w := s.RotationWebhook; w != nil {
		rotatedBy = fmt.Sprintf("webhook %s (timeout %ds)", w.Url, w.TimeoutSeconds)
	}
	rows := [][]string{
		{"RotationEnabled", fmt.Sprint(s.RotationEnabled)},
		{"RotationRules", orDash(s.RotationSchedule)},
		{"RotatedBy", rotatedBy},
		{"NextRotationDate", ts(s.NextRotationTime, s.NextRotationTime != nil)},
		{"LastRotatedDate", ts(s.LastRotatedTime, s.LastRotatedTime != nil)},
	}
	if s.LastRotationError != "" {
		rows = append(rows, []string{"LastRotationError", s.LastRotationError},
			[]string{"LastRotationErrorDate", ts(s.LastRotationErrorTime, s.LastRotationErrorTime != nil)})
	}
	return p.table([]string{"ROTATION", "VALUE"}, rows)
}
