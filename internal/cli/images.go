package cli

import (
	"fmt"
	"os"
	"sort"

	"github.com/spf13/cobra"

	"github.com/stowage-io/stowage/internal/cluster"
	"github.com/stowage-io/stowage/internal/csi"
)

func newImagesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "images", Short: "Build Stowage's container images on this machine (no registry, no Docker)"}
	var binDir, out, tag, socket, ctr string
	build := &cobra.Command{
		Use:   "build",
		Short: "Write the stowage and sidecar images as OCI archives, and import them into containerd",
		Long: `Builds, from this machine's files alone, one OCI image archive per image in --out:
  ` + cluster.ImageRepo + `/stowage:<tag>   this binary, the node's tools (` + fmt.Sprint(cluster.NodeTools) + `)
                                and a storage host's nfs-ganesha (with its VFS back end), with their libraries; /usr/share/stowage/packages.json pins each
                                file to its Debian package and version
  ` + cluster.ImageRepo + `/<sidecar>:<its version>   each upstream binary of --bin-dir
Every timestamp and owner is fixed: the same inputs give the same digests.
With --containerd-socket the images are imported into that containerd's k8s.io namespace.
To use them on another cluster, push them to your registry:
  ctr -n k8s.io images tag ` + cluster.ImageRepo + `/stowage:<tag> registry.example.com/stowage:<tag>
  ctr -n k8s.io images push registry.example.com/stowage:<tag>`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			imgs, err := cluster.RoleImages(self, binDir, tag)
			if err != nil {
				return err
			}
			written, err := cluster.WriteImages(out, imgs)
			if err != nil {
				return err
			}
			files := make([]string, 0, len(written))
			for f := range written {
				files = append(files, f)
			}
			sort.Strings(files)
			for _, f := range files {
				fmt.Fprintf(cmd.OutOrStdout(), "%s  %s\n", written[f], f)
			}
			if socket == "" {
				return nil
			}
			for _, img := range imgs {
				imported, err := cluster.ImportImage(cmd.Context(), ctr, socket, out, img)
				if err != nil {
					return err
				}
				state := "already there"
				if imported {
					state = "imported"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%-60s %s\n", img.Name, state)
			}
			return nil
		},
	}
	f := build.Flags()
	f.StringVar(&binDir, "bin-dir", "_output/bin", "where the upstream components were built (hack/build-components.sh)")
	f.StringVar(&out, "out", "_output/images", "directory for the OCI archives")
	f.StringVar(&tag, "tag", csi.Version, "tag of the stowage image")
	f.StringVar(&socket, "containerd-socket", "", "import the images into this containerd (its k8s.io namespace); empty: only write them")
	f.StringVar(&ctr, "ctr", "ctr", "the ctr binary")
	cmd.AddCommand(build)
	return cmd
}
