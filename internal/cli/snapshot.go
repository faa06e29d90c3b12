package cli

import (
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/block"
)

func newSnapshotCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Aliases: []string{"snapshots", "snap"}, Short: "Create and manage volume snapshots"}
	cmd.AddCommand(snapshotCreateCmd(g), snapshotDescribeCmd(g), snapshotListCmd(g), snapshotDeleteCmd(g))
	return cmd
}

func printSnapshots(p printer, ss ...*pb.Snapshot) error {
	if len(ss) == 1 {
		if done, err := p.structured(ss[0]); done {
			return err
		}
	} else if done, err := p.structured(&pb.ListSnapshotsResponse{Snapshots: ss}); done {
		return err
	}
	rows := make([][]string, 0, len(ss))
	for _, s := range ss {
		rows = append(rows, []string{s.Id, orDash(s.Name), s.VolumeId, s.State.Word(), strconv.FormatInt(s.SizeGib, 10), s.Zone,
			s.CreateTime.AsTime().Format("2006-01-02T15:04:05Z"), formatTags(s.Tags)})
	}
	return p.table([]string{"ID", "NAME", "VOLUME", "STATE", "SIZE(GiB)", "ZONE", "CREATED", "TAGS"}, rows)
}

func snapshotCreateCmd(g *globals) *cobra.Command {
	var req pb.CreateSnapshotRequest
	var tags []string
	cmd := &cobra.Command{
		Use: "create VOLUME_ID", Short: "Snapshot a volume, attached or not (idempotent by --name)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			req.Tags, req.VolumeId = t, args[0]
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				s, err := c.snapshots.CreateSnapshot(ctx, &req)
				if err != nil {
					return err
				}
				return printSnapshots(p, s)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "idempotency name")
	f.StringVar(&req.Description, "description", "", "free text")
	f.StringArrayVar(&tags, "tag", nil, "tag key=value (repeatable)")
	return cmd
}

func snapshotDescribeCmd(g *globals) *cobra.Command {
	return describeCmd(g, "describe SNAPSHOT_ID...", "Show snapshots", func(ctx context.Context, c *client, id string) (*pb.Snapshot, error) {
		return c.snapshots.DescribeSnapshot(ctx, &pb.DescribeSnapshotRequest{SnapshotId: id})
	}, printSnapshots)
}

func snapshotListCmd(g *globals) *cobra.Command {
	var req pb.ListSnapshotsRequest
	cmd := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List snapshots (all pages)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				var all []*pb.Snapshot
				for {
					resp, err := c.snapshots.ListSnapshots(ctx, &req)
					if err != nil {
						return err
					}
					all = append(all, resp.Snapshots...)
					if resp.NextPageToken == "" {
						break
					}
					req.PageToken = resp.NextPageToken
				}
				if done, err := p.structured(&pb.ListSnapshotsResponse{Snapshots: all}); done {
					return err
				}
				return printSnapshots(p, all...)
			})
		},
	}
	cmd.Flags().StringVar(&req.VolumeId, "volume", "", "only snapshots of this volume")
	return cmd
}

func snapshotDeleteCmd(g *globals) *cobra.Command {
	return deleteCmd(g, "delete SNAPSHOT_ID...", "Delete snapshots (a missing snapshot is not an error)", func(ctx context.Context, c *client, id string) (bool, error) {
		resp, err := c.snapshots.DeleteSnapshot(ctx, &pb.DeleteSnapshotRequest{SnapshotId: id})
		return resp.GetDeleted(), err
	})
}

func newPoolCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Aliases: []string{"pools"}, Short: "Show storage pools"}
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List pools with capacity and clone mode", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				resp, err := c.pools.ListPools(ctx, &pb.ListPoolsRequest{})
				if err != nil {
					return err
				}
				if done, err := p.structured(resp); done {
					return err
				}
				var rows [][]string
				for _, pl := range resp.Pools {
					rows = append(rows, []string{pl.Name, pl.Zone, pl.Node, pl.CloneMode, block.FormatBytes(pl.TotalBytes), block.FormatBytes(pl.FreeBytes),
						block.FormatBytes(pl.ProvisionedBytes), fmt.Sprint(pl.VolumeCount), fmt.Sprint(pl.SnapshotCount)})
				}
				return p.table([]string{"NAME", "ZONE", "NODE", "CLONE-MODE", "SIZE", "FREE", "PROVISIONED", "VOLUMES", "SNAPSHOTS"}, rows)
			})
		},
	}
	deregister := &cobra.Command{
		Use:   "deregister POOL",
		Short: "Forget a storage host's registered pool (refused while volumes or snapshots are in it; stop its agent first, or it registers again)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				resp, err := c.pools.DeregisterStorageHost(ctx, &pb.DeregisterStorageHostRequest{Pool: args[0]})
				if err != nil {
					return err
				}
				if done, err := p.structured(resp); done {
					return err
				}
				if resp.Deregistered {
					fmt.Fprintf(p.out, "deregistered the storage host of pool %s (agent API at %s)\n", args[0], resp.Address)
				} else {
					fmt.Fprintf(p.out, "no storage host registered pool %s; nothing to do\n", args[0])
				}
				return nil
			})
		},
	}
	cmd.AddCommand(list, deregister)
	return cmd
}

func newNodeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Aliases: []string{"nodes"}, Short: "Show nodes known to the server; stop and start nodes of the local cluster"}
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List registered nodes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				resp, err := c.nodes.ListNodes(ctx, &pb.ListNodesRequest{})
				if err != nil {
					return err
				}
				if done, err := p.structured(resp); done {
					return err
				}
				var rows [][]string
				for _, n := range resp.Nodes {
					rows = append(rows, []string{n.Id, n.Zone, fmt.Sprint(n.AttachedVolumes), fmt.Sprint(n.MaxVolumes)})
				}
				return p.table([]string{"NODE", "ZONE", "ATTACHED", "MAX"}, rows)
			})
		},
	}
	cmd.AddCommand(list, newNodeStopCmd(), newNodeStartCmd())
	return cmd
}
