package cli

import (
	"context"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/stowage-io/stowage/internal/nfsmount"
)

func newNFSMountCmd() *cobra.Command {
	var o nfsmount.Options
	var logFile string
	cmd := &cobra.Command{
		Use:   "nfs-mount",
		Short: "Mount an access point's NFS export with the user-space NFSv4.1 client (FUSE); runs in the foreground",
		Long: `Mounts an NFSv4.1 export (an access point, /fsap-…) at --target through FUSE,
for nodes without a kernel NFS client. Prints "mounted <target>" when the
mount serves, then serves until SIGTERM or SIGINT (unmounts, lazily if busy,
and exits 0) or until the file system is unmounted by someone else (exits 0).
Requests are retried until they succeed (hard mount), across reconnects and
server restarts.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if o.Server == "" || o.Export == "" || o.Target == "" {
				return usageErrorf("--server, --export and --target are required")
			}
			var w io.Writer = c.ErrOrStderr()
			if logFile != "" {
				f, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			o.Logger = slog.New(slog.NewTextHandler(w, nil))
			ctx, cancel := signalContext(context.Background())
			defer cancel()
			return nfsmount.Run(ctx, o, c.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Server, "server", "", "NFS server, host:port")
	f.StringVar(&o.Export, "export", "", "NFSv4 export path, e.g. /fsap-0123456789abcdef0")
	f.StringVar(&o.Subdir, "subdir", "", "directory below the export to mount")
	f.StringVar(&o.Target, "target", "", "directory to mount on")
	f.BoolVar(&o.ReadOnly, "read-only", false, "mount read-only (writes fail with EROFS)")
	f.BoolVar(&o.CommitOnClose, "commit-on-close", false, "make written data durable (NFS COMMIT) at every close, like the kernel NFS client; default: at fsync only")
	f.StringVar(&o.ClientID, "client-id", "", "NFSv4 client owner string, unique per mount (default: host name and target)")
	f.StringVar(&logFile, "log-file", "", "append logs to this file instead of stderr")
	return cmd
}
