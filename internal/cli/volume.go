package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

func newVolumeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "volume", Aliases: []string{"volumes", "vol"}, Short: "Create and manage block volumes"}
	cmd.AddCommand(volumeCreateCmd(g), volumeDescribeCmd(g), volumeListCmd(g), volumeDeleteCmd(g),
		volumeAttachCmd(g), volumeDetachCmd(g), volumeResizeCmd(g), volumeModifyCmd(g))
	return cmd
}

func volumeCreateCmd(g *globals) *cobra.Command {
	var req pb.CreateVolumeRequest
	var tags []string
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a volume (idempotent by --name)",
		Example: `  stowage volume create --size 10 --type gp3 --zone zone-a --name my-data
  stowage volume create --size 100 --type io2 --iops 20000
  stowage volume create --snapshot snap-0123456789abcdef0 --size 10`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			req.Tags = t
			if req.SizeGib == 0 && req.SnapshotId == "" && req.SourceVolumeId == "" {
				return usageErrorf("--size (GiB) is required")
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				if req.SizeGib == 0 {
					if err := fillSourceSize(ctx, c, &req); err != nil {
						return err
					}
				}
				v, err := c.volumes.CreateVolume(ctx, &req)
				if err != nil {
					return err
				}
				return printVolumes(p, v)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "idempotency name (client token): creating twice with the same name returns the same volume")
	f.Int64Var(&req.SizeGib, "size", 0, "size in GiB")
	f.StringVar(&req.Type, "type", "gp3", "volume type: gp2, gp3, io1, io2, st1, sc1, standard")
	f.Int64Var(&req.Iops, "iops", 0, "provisioned IOPS (gp3, io1, io2)")
	f.Int64Var(&req.IopsPerGb, "iops-per-gb", 0, "IOPS per GiB (io1, io2), exclusive with --iops")
	f.BoolVar(&req.AllowAutoIopsPerGbIncrease, "allow-auto-iops-per-gb-increase", false, "raise IOPS to the type minimum when --iops-per-gb gives too few")
	f.Int64Var(&req.ThroughputMibps, "throughput", 0, "throughput in MiB/s (gp3)")
	f.StringVar(&req.Zone, "zone", "", "zone to place the volume in (default: any)")
	f.StringVar(&req.Node, "node", "", "node whose pool should hold the volume (default: any in the zone)")
	f.StringArrayVar(&tags, "tag", nil, "tag key=value (repeatable)")
	f.StringVar(&req.SnapshotId, "snapshot", "", "restore from this snapshot")
	f.StringVar(&req.SourceVolumeId, "source-volume", "", "clone this volume")
	f.BoolVar(&req.Encrypted, "encrypted", false, "encrypt at rest with a data key wrapped by the KMS key (default key unless --kms-key-id)")
	f.StringVar(&req.KmsKeyId, "kms-key-id", "", "KMS key id or alias/<name> for an encrypted volume")
	return cmd
}

// fillSourceSize makes a restore or clone default to the source's size.
func fillSourceSize(ctx context.Context, c *client, req *pb.CreateVolumeRequest) error {
	if req.SnapshotId != "" {
		sn, err := c.snapshots.DescribeSnapshot(ctx, &pb.DescribeSnapshotRequest{SnapshotId: req.SnapshotId})
		if err != nil {
			return err
		}
		req.SizeGib = sn.SizeGib
		return nil
	}
	v, err := c.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: req.SourceVolumeId})
	if err != nil {
		return err
	}
	req.SizeGib = v.SizeGib
	return nil
}

func printVolumes(p printer, vs ...*pb.Volume) error {
	if len(vs) == 1 {
		if done, err := p.structured(vs[0]); done {
			return err
		}
	} else if done, err := p.structured(&pb.ListVolumesResponse{Volumes: vs}); done {
		return err
	}
	rows := make([][]string, 0, len(vs))
	for _, v := range vs {
		var nodes []string
		for _, a := range v.Attachments {
			nodes = append(nodes, a.NodeId)
		}
		rows = append(rows, []string{v.Id, orDash(v.Name), v.State.Word(), v.Type, strconv.FormatInt(v.SizeGib, 10),
			strconv.FormatInt(v.Iops, 10), strconv.FormatInt(v.ThroughputMibps, 10), v.Zone, v.Node,
			orDash(strings.Join(nodes, ",")), formatTags(v.Tags)})
	}
	return p.table([]string{"ID", "NAME", "STATE", "TYPE", "SIZE(GiB)", "IOPS", "MiB/s", "ZONE", "NODE", "ATTACHED-TO", "TAGS"}, rows)
}

func volumeDescribeCmd(g *globals) *cobra.Command {
	return describeCmd(g, "describe VOLUME_ID...", "Show volumes", func(ctx context.Context, c *client, id string) (*pb.Volume, error) {
		return c.volumes.DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: id})
	}, printVolumes)
}

func volumeListCmd(g *globals) *cobra.Command {
	var req pb.ListVolumesRequest
	var tags []string
	var state string
	cmd := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List volumes (all pages)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			req.Tags = t
			if req.State, err = pb.ParseVolumeState(state); err != nil {
				return usageErrorf("--state: %v", err)
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				var all []*pb.Volume
				for {
					resp, err := c.volumes.ListVolumes(ctx, &req)
					if err != nil {
						return err
					}
					all = append(all, resp.Volumes...)
					if resp.NextPageToken == "" {
						break
					}
					req.PageToken = resp.NextPageToken
				}
				if done, err := p.structured(&pb.ListVolumesResponse{Volumes: all}); done {
					return err
				}
				return printVolumes(p, all...)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Zone, "zone", "", "only volumes in this zone")
	f.StringVar(&state, "state", "", "only volumes in this state (creating, available, in-use, deleting, error)")
	f.StringVar(&req.Node, "node", "", "only volumes attached to this node")
	f.StringArrayVar(&tags, "tag", nil, "only volumes with this tag key=value (repeatable; key= matches any value)")
	return cmd
}

func volumeDeleteCmd(g *globals) *cobra.Command {
	return deleteCmd(g, "delete VOLUME_ID...", "Delete volumes (a missing volume is not an error)", func(ctx context.Context, c *client, id string) (bool, error) {
		resp, err := c.volumes.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: id})
		return resp.GetDeleted(), err
	})
}

func volumeAttachCmd(g *globals) *cobra.Command {
	var node string
	var readOnly bool
	cmd := &cobra.Command{
		Use: "attach VOLUME_ID --node NODE", Short: "Attach a volume to a node", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if node == "" {
				return usageErrorf("--node is required")
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				a, err := c.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: args[0], NodeId: node, ReadOnly: readOnly})
				if err != nil {
					return err
				}
				if done, err := p.structured(a); done {
					return err
				}
				target := a.LocalTarget
				if a.ExportName != "" {
					target = a.ExportName + " at " + a.ExportAddress
				}
				return p.table([]string{"VOLUME", "NODE", "STATE", "TARGET"}, [][]string{{a.VolumeId, a.NodeId, a.State.Word(), target}})
			})
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "node to attach to")
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "attach read-only")
	return cmd
}

func volumeDetachCmd(g *globals) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use: "detach VOLUME_ID --node NODE", Short: "Detach a volume from a node", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if node == "" {
				return usageErrorf("--node is required")
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				resp, err := c.volumes.DetachVolume(ctx, &pb.DetachVolumeRequest{VolumeId: args[0], NodeId: node})
				if err != nil {
					return err
				}
				if resp.Detached {
					fmt.Fprintf(p.out, "detached %s from %s\n", args[0], node)
				} else {
					fmt.Fprintf(p.out, "%s was not attached to %s\n", args[0], node)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "node to detach from")
	return cmd
}

func volumeResizeCmd(g *globals) *cobra.Command {
	var size int64
	cmd := &cobra.Command{
		Use: "resize VOLUME_ID --size GiB", Short: "Grow a volume (online)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if size <= 0 {
				return usageErrorf("--size (GiB) is required")
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				v, err := c.volumes.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeId: args[0], SizeGib: size})
				if err != nil {
					return err
				}
				return printVolumes(p, v)
			})
		},
	}
	cmd.Flags().Int64Var(&size, "size", 0, "new size in GiB")
	return cmd
}

func volumeModifyCmd(g *globals) *cobra.Command {
	var req pb.ModifyVolumeRequest
	var tags []string
	cmd := &cobra.Command{
		Use: "modify VOLUME_ID", Short: "Change type, IOPS or throughput of a live volume", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			req.AddTags, req.VolumeId = t, args[0]
			if req.Type == "" && req.Iops == 0 && req.ThroughputMibps == 0 && len(t) == 0 {
				return usageErrorf("nothing to change: give --type, --iops, --throughput or --tag")
			}
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				v, err := c.volumes.ModifyVolume(ctx, &req)
				if err != nil {
					return err
				}
				return printVolumes(p, v)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Type, "type", "", "new volume type")
	f.Int64Var(&req.Iops, "iops", 0, "new provisioned IOPS")
	f.Int64Var(&req.ThroughputMibps, "throughput", 0, "new throughput in MiB/s")
	f.StringArrayVar(&tags, "tag", nil, "add or change tag key=value (repeatable)")
	return cmd
}
