package cli

import (
	"bufio"
	"context"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stowage-io/stowage/internal/attach"
)

func newNBDAttachCmd() *cobra.Command {
	var o attach.NBDFileOptions
	var secretStdin, kernel bool
	var stateDir string
	cmd := &cobra.Command{
		Use:   "nbd-attach",
		Short: "Attach a block volume's NBD export as a loop device over a FUSE file; runs in the foreground",
		Long: `Connects to an attachment's NBD export (presenting its secret and
generation), exposes it as <mountpoint>/disk through FUSE with direct I/O and
puts a loop device with direct I/O on it. Prints "attached <device>" when the
device serves, then serves until SIGTERM or SIGINT (detaches the loop device,
unmounts, exits 0). SIGHUP makes it take the export's size now (after the
volume grew): the FUSE file's and then the loop device's; with --state-dir it
reads the request's token from <state-dir>/refresh first and answers
"<token> <bytes>" in <state-dir>/size. While the storage host is unreachable I/O waits and is
sent again on reconnect; once the attachment is fenced, I/O fails with EIO.
Where the kernel offers FUSE over io_uring (Linux 6.14 and later, with the fuse
module parameter enable_uring=Y) the FUSE file's requests come over io_uring;
the log says which transport serves.
The secret is read from stdin (--secret-stdin), never from the arguments.

With --kernel it uses the kernel's NBD client instead (/dev/nbdN; needs the
nbd module): it hands the authenticated sockets to the kernel, records the
device under --state-dir, prints "attached <device>", replaces dead
connections until SIGTERM or SIGINT and then disconnects the device.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			switch {
			case o.Address == "" || o.AttachmentID == "" || !secretStdin:
				return usageErrorf("--server, --export and --secret-stdin are required")
			case kernel && (stateDir == "" || o.Mountpoint != ""):
				return usageErrorf("--kernel takes --state-dir, not --mountpoint")
			case !kernel && o.Mountpoint == "":
				return usageErrorf("--mountpoint is required")
			}
			line, err := bufio.NewReader(os.Stdin).ReadString('\n')
			if err != nil && line == "" {
				return usageErrorf("no secret on stdin")
			}
			o.Secret = strings.TrimSpace(line)
			o.Logger = slog.New(slog.NewTextHandler(c.ErrOrStderr(), nil))
			ctx, cancel := signalContext(context.Background())
			defer cancel()
			if kernel {
				k := attach.KernelNBD{StateDir: stateDir, Connections: o.Connections, Logger: o.Logger}
				return attach.RunKernelNBDAttach(ctx, k, o.Target, c.OutOrStdout())
			}
			o.StateDir = stateDir
			return attach.RunNBDAttach(ctx, o, c.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Address, "server", "", "storage host's NBD address, host:port")
	f.StringVar(&o.AttachmentID, "export", "", "attachment id (the NBD export name)")
	f.Uint64Var(&o.Generation, "generation", 0, "the attachment's generation")
	f.StringVar(&o.Mountpoint, "mountpoint", "", "empty directory for the FUSE file")
	f.IntVar(&o.Connections, "connections", 4, "NBD connections")
	f.BoolVar(&o.NoURing, "no-fuse-uring", false, "serve the FUSE file over /dev/fuse even where the kernel offers FUSE over io_uring (fuse module parameter enable_uring=Y)")
	f.BoolVar(&kernel, "kernel", false, "use the kernel's NBD client (/dev/nbdN) instead of FUSE and a loop device")
	f.StringVar(&stateDir, "state-dir", "", "the attachment's state directory: its device record with --kernel; the size file and refresh requests (SIGHUP) without")
	f.BoolVar(&secretStdin, "secret-stdin", false, "read the attachment secret from the first line of stdin")
	return cmd
}
