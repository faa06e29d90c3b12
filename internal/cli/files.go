package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/block"
)

func newFileSystemCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "fs", Aliases: []string{"filesystem", "file-system"}, Short: "Create and manage shared file systems (EFS-style)"}
	cmd.AddCommand(fsCreateCmd(g), fsDescribeCmd(g), fsListCmd(g), fsDeleteCmd(g))
	return cmd
}

func fsCreateCmd(g *globals) *cobra.Command {
	var req pb.CreateFileSystemRequest
	var tags []string
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a file system (idempotent by --name)",
		Example: `  stowage fs create --name shared
  stowage fs create --name team-a --zone zone-a --throughput-mode elastic`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			req.Tags = t
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				f, err := c.fs.CreateFileSystem(ctx, &req)
				if err != nil {
					return err
				}
				return printFileSystems(p, f)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "idempotency name (client token): creating twice with the same name returns the same file system")
	f.StringVar(&req.AvailabilityZone, "zone", "", "One Zone: keep the file system in this zone (default: Standard, reachable from every zone)")
	f.StringVar(&req.PerformanceMode, "performance-mode", "generalPurpose", "generalPurpose or maxIO")
	f.StringVar(&req.ThroughputMode, "throughput-mode", "bursting", "bursting, elastic or provisioned")
	f.Int64Var(&req.ProvisionedThroughputMibps, "provisioned-throughput", 0, "MiB/s, with --throughput-mode provisioned")
	f.BoolVar(&req.Encrypted, "encrypted", false, "encrypt at rest (not implemented for file systems yet: refused)")
	f.StringVar(&req.KmsKeyId, "kms-key-id", "", "KMS key for --encrypted")
	f.StringArrayVar(&tags, "tag", nil, "tag key=value (repeatable)")
	return cmd
}

func printFileSystems(p printer, fss ...*pb.FileSystem) error {
	if len(fss) == 1 {
		if done, err := p.structured(fss[0]); done {
			return err
		}
	} else if done, err := p.structured(&pb.ListFileSystemsResponse{FileSystems: fss}); done {
		return err
	}
	rows := make([][]string, 0, len(fss))
	for _, f := range fss {
		tput := f.ThroughputMode
		if f.ProvisionedThroughputMibps > 0 {
			tput += fmt.Sprintf(" (%d MiB/s)", f.ProvisionedThroughputMibps)
		}
		rows = append(rows, []string{f.Id, orDash(f.Name), f.State.Word(), f.StorageClass, orDash(f.AvailabilityZone),
			f.PerformanceMode, tput, block.FormatBytes(f.SizeUsedBytes),
			fmt.Sprintf("%d/%d", f.AccessPointCount, f.AccessPointLimit), f.Node, formatTags(f.Tags)})
	}
	return p.table([]string{"ID", "NAME", "STATE", "CLASS", "ZONE", "PERFORMANCE", "THROUGHPUT", "USED", "ACCESS-POINTS", "NODE", "TAGS"}, rows)
}

func fsDescribeCmd(g *globals) *cobra.Command {
	return describeCmd(g, "describe FILE_SYSTEM_ID...", "Show file systems", func(ctx context.Context, c *client, id string) (*pb.FileSystem, error) {
		return c.fs.DescribeFileSystem(ctx, &pb.DescribeFileSystemRequest{FileSystemId: id})
	}, printFileSystems)
}

func fsListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List file systems (all pages)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				var req pb.ListFileSystemsRequest
				var all []*pb.FileSystem
				for {
					resp, err := c.fs.ListFileSystems(ctx, &req)
					if err != nil {
						return err
					}
					all = append(all, resp.FileSystems...)
					if resp.NextPageToken == "" {
						break
					}
					req.PageToken = resp.NextPageToken
				}
				if done, err := p.structured(&pb.ListFileSystemsResponse{FileSystems: all}); done {
					return err
				}
				return printFileSystems(p, all...)
			})
		},
	}
}

func fsDeleteCmd(g *globals) *cobra.Command {
	return deleteCmd(g, "delete FILE_SYSTEM_ID...", "Delete file systems and all their files (refused while access points exist)", func(ctx context.Context, c *client, id string) (bool, error) {
		resp, err := c.fs.DeleteFileSystem(ctx, &pb.DeleteFileSystemRequest{FileSystemId: id})
		return resp.GetDeleted(), err
	})
}

func newAccessPointCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "ap", Aliases: []string{"access-point", "accesspoint"}, Short: "Create and manage access points of file systems"}
	cmd.AddCommand(apCreateCmd(g), apDescribeCmd(g), apListCmd(g), apDeleteCmd(g))
	return cmd
}

func apCreateCmd(g *globals) *cobra.Command {
	var req pb.CreateAccessPointRequest
	var tags, secondary []string
	var uid, gid, ownerUID, ownerGID int64
	var path, perms string
	cmd := &cobra.Command{
		Use:   "create --fs FILE_SYSTEM_ID",
		Short: "Create an access point (idempotent by --name)",
		Example: `  stowage ap create --fs fs-0123456789abcdef0 --path /data --uid 1000 --gid 1000 \
      --owner-uid 1000 --owner-gid 1000 --permissions 0750
  stowage ap create --fs fs-0123456789abcdef0 --path /pvc-1 --uid 1000 --gid 1000 --permissions 700 --quota 5G`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.FileSystemId == "" {
				return usageErrorf("--fs (file system id) is required")
			}
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			req.Tags = t
			f := cmd.Flags()
			if f.Changed("uid") || f.Changed("gid") || len(secondary) > 0 {
				if !f.Changed("uid") || !f.Changed("gid") {
					return usageErrorf("give both --uid and --gid for the access point's POSIX user")
				}
				u, err := ids32("--uid", uid)
				if err != nil {
					return err
				}
				gg, err := ids32("--gid", gid)
				if err != nil {
					return err
				}
				req.PosixUser = &pb.PosixUser{Uid: u, Gid: gg}
				for _, s := range secondary {
					for _, part := range strings.Split(s, ",") {
						n, err := strconv.ParseUint(strings.TrimSpace(part), 10, 32)
						if err != nil {
							return usageErrorf("--secondary-gids %q: %q is not a group id", s, part)
						}
						req.PosixUser.SecondaryGids = append(req.PosixUser.SecondaryGids, uint32(n))
					}
				}
			}
			req.RootDirectory = &pb.RootDirectory{Path: path}
			if perms != "" {
				// The owner defaults to the POSIX user, as the EFS CSI driver does.
				ci := &pb.CreationInfo{Permissions: perms}
				if req.PosixUser != nil {
					ci.OwnerUid, ci.OwnerGid = req.PosixUser.Uid, req.PosixUser.Gid
				}
				if f.Changed("owner-uid") {
					if ci.OwnerUid, err = ids32("--owner-uid", ownerUID); err != nil {
						return err
					}
				}
				if f.Changed("owner-gid") {
					if ci.OwnerGid, err = ids32("--owner-gid", ownerGID); err != nil {
						return err
					}
				}
				req.RootDirectory.CreationInfo = ci
			} else if f.Changed("owner-uid") || f.Changed("owner-gid") {
				return usageErrorf("--owner-uid/--owner-gid need --permissions (the creation info of the root directory)")
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				a, err := c.aps.CreateAccessPoint(ctx, &req)
				if err != nil {
					return err
				}
				return printAccessPoints(p, a)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "idempotency name (client token)")
	f.StringVar(&req.FileSystemId, "fs", "", "file system id (fs-…)")
	f.StringVar(&path, "path", "/", "root directory inside the file system")
	f.Int64Var(&uid, "uid", 0, "POSIX user id every operation through the access point is performed as")
	f.Int64Var(&gid, "gid", 0, "POSIX group id of that user")
	f.StringArrayVar(&secondary, "secondary-gids", nil, "secondary group ids, comma-separated (repeatable)")
	f.StringVar(&perms, "permissions", "", "octal mode (000–777) to make a missing root directory with; without it the directory must exist")
	f.Int64Var(&ownerUID, "owner-uid", 0, "owner of a root directory this access point makes (default: --uid)")
	f.Int64Var(&ownerGID, "owner-gid", 0, "group of a root directory this access point makes (default: --gid)")
	f.Var(sizeFlag{&req.QuotaBytes}, "quota", "hard quota on the root directory's tree, like 5G (only for a directory this access point makes)")
	f.StringArrayVar(&tags, "tag", nil, "tag key=value (repeatable)")
	return cmd
}

// sizeFlag reads a byte size like 5G into an int64.
type sizeFlag struct{ v *int64 }

func (s sizeFlag) String() string {
	if s.v == nil || *s.v == 0 {
		return ""
	}
	return strconv.FormatInt(*s.v, 10)
}

func (s sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s.v = n
	return nil
}

func (sizeFlag) Type() string { return "size" }

func ids32(flag string, v int64) (uint32, error) {
	if v < 0 || v >= 1<<32-1 {
		return 0, usageErrorf("%s %d is not a POSIX id (0–4294967294)", flag, v)
	}
	return uint32(v), nil
}

func printAccessPoints(p printer, aps ...*pb.AccessPoint) error {
	if len(aps) == 1 {
		if done, err := p.structured(aps[0]); done {
			return err
		}
	} else if done, err := p.structured(&pb.ListAccessPointsResponse{AccessPoints: aps}); done {
		return err
	}
	rows := make([][]string, 0, len(aps))
	for _, a := range aps {
		user := "-"
		if u := a.PosixUser; u != nil {
			user = fmt.Sprintf("%d:%d", u.Uid, u.Gid)
			if len(u.SecondaryGids) > 0 {
				var gs []string
				for _, g := range u.SecondaryGids {
					gs = append(gs, strconv.FormatUint(uint64(g), 10))
				}
				user += " +" + strings.Join(gs, ",")
			}
		}
		creation := "-"
		if ci := a.GetRootDirectory().GetCreationInfo(); ci != nil {
			creation = fmt.Sprintf("%d:%d %s", ci.OwnerUid, ci.OwnerGid, ci.Permissions)
		}
		quota := "-"
		if a.QuotaBytes > 0 {
			quota = block.FormatBytes(a.QuotaBytes)
		}
		rows = append(rows, []string{a.Id, orDash(a.Name), a.FileSystemId, a.State.Word(), a.GetRootDirectory().GetPath(),
			user, creation, quota, formatTags(a.Tags)})
	}
	return p.table([]string{"ID", "NAME", "FILE-SYSTEM", "STATE", "PATH", "POSIX-USER", "CREATION", "QUOTA", "TAGS"}, rows)
}

func apDescribeCmd(g *globals) *cobra.Command {
	return describeCmd(g, "describe ACCESS_POINT_ID...", "Show access points", func(ctx context.Context, c *client, id string) (*pb.AccessPoint, error) {
		return c.aps.DescribeAccessPoint(ctx, &pb.DescribeAccessPointRequest{AccessPointId: id})
	}, printAccessPoints)
}

func apListCmd(g *globals) *cobra.Command {
	var fsID string
	cmd := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List access points (all pages)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				req := pb.ListAccessPointsRequest{FileSystemId: fsID}
				var all []*pb.AccessPoint
				for {
					resp, err := c.aps.ListAccessPoints(ctx, &req)
					if err != nil {
						return err
					}
					all = append(all, resp.AccessPoints...)
					if resp.NextPageToken == "" {
						break
					}
					req.PageToken = resp.NextPageToken
				}
				if done, err := p.structured(&pb.ListAccessPointsResponse{AccessPoints: all}); done {
					return err
				}
				return printAccessPoints(p, all...)
			})
		},
	}
	cmd.Flags().StringVar(&fsID, "fs", "", "only this file system's access points")
	return cmd
}

func apDeleteCmd(g *globals) *cobra.Command {
	return deleteCmd(g, "delete ACCESS_POINT_ID...", "Delete access points (their directories and files stay)", func(ctx context.Context, c *client, id string) (bool, error) {
		resp, err := c.aps.DeleteAccessPoint(ctx, &pb.DeleteAccessPointRequest{AccessPointId: id})
		return resp.GetDeleted(), err
	})
}
