// Package cli is the `stowage` command line: the client commands that call
// the Stowage API, and the commands that start the server and the drivers.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// DefaultEndpoint is where `stowage server` listens and clients connect
// unless told otherwise.
const DefaultEndpoint = "127.0.0.1:7420"

// Exit codes, so that scripts can tell failures apart.
const (
	ExitOK           = 0
	ExitError        = 1
	ExitUsage        = 2
	ExitNotFound     = 3
	ExitConflict     = 4
	ExitUnavailable  = 5
	ExitInvalidInput = 6
)

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// globals are the flags every client command shares.
type globals struct {
	endpoint string
	output   string
	timeout  time.Duration
	out      io.Writer
}

// NewRoot builds the whole command tree.
func NewRoot(out, errOut io.Writer) *cobra.Command {
	g := &globals{out: out}
	root := &cobra.Command{
		Use:           "stowage",
		Short:         "Stowage: EBS- and EFS-style storage for any Kubernetes cluster, with no cloud account",
		SilenceUsage:  true,
		SilenceErrors: true,
		Long: `Stowage is the "cloud" behind its CSI drivers: block volumes with EBS volume
types, snapshots and clones, served from storage pools on your own machines.

Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 conflict (already exists,
in use, busy), 5 server unreachable, 6 invalid value.`,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	endpoint := os.Getenv("STOWAGE_ENDPOINT")
	if endpoint == "" {
		endpoint = DefaultEndpoint
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.endpoint, "endpoint", endpoint, "Stowage API address: host:port or unix:///path (env STOWAGE_ENDPOINT)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	pf.DurationVar(&g.timeout, "timeout", 60*time.Second, "how long to wait for the server")
	root.AddCommand(
		newVolumeCmd(g), newSnapshotCmd(g), newPoolCmd(g), newNodeCmd(g), newKeyCmd(g), newSecretCmd(g), newParamCmd(g),
		newServerCmd(), newCSICmd(), newVersionCmd(),
		newUpCmd(), newDownCmd(), newStatusCmd(), newPauseCmd(),
	)
	markUsageErrors(root)
	return root
}

// markUsageErrors makes every mistake in the command line itself exit with
// ExitUsage: a bad flag value, a wrong number of arguments, an unknown
// subcommand of a command group (cobra would print help and exit 0).
func markUsageErrors(c *cobra.Command) {
	c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err.Error()} })
	if args := c.Args; args != nil {
		c.Args = func(cmd *cobra.Command, a []string) error {
			if err := args(cmd, a); err != nil {
				return usageError{err.Error()}
			}
			return nil
		}
	}
	if !c.Runnable() && c.HasParent() && c.HasSubCommands() {
		c.RunE = func(cmd *cobra.Command, a []string) error {
			if len(a) > 0 {
				return usageErrorf("unknown command %q for %q", a[0], cmd.CommandPath())
			}
			return cmd.Help()
		}
	}
	for _, sub := range c.Commands() {
		markUsageErrors(sub)
	}
}

// Execute runs the CLI and returns the process exit code.
func Execute(args []string, out, errOut io.Writer) int {
	root := NewRoot(out, errOut)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	fmt.Fprintln(errOut, "error:", errorMessage(err))
	return exitCode(err)
}

func errorMessage(err error) string {
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		if st.Code() == codes.Unavailable {
			return "the Stowage server is not reachable (is `stowage server` running? check --endpoint): " + st.Message()
		}
		return st.Message()
	}
	return err.Error()
}

func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") || strings.Contains(err.Error(), "flag") && strings.Contains(err.Error(), "unknown") {
		return ExitUsage
	}
	switch status.Code(err) {
	case codes.NotFound:
		return ExitNotFound
	case codes.AlreadyExists, codes.FailedPrecondition, codes.Aborted:
		return ExitConflict
	case codes.Unavailable, codes.DeadlineExceeded:
		return ExitUnavailable
	case codes.InvalidArgument, codes.OutOfRange:
		return ExitInvalidInput
	}
	return ExitError
}

// dial connects to the Stowage API.
func dial(endpoint string) (*grpc.ClientConn, error) {
	target := endpoint
	if strings.HasPrefix(endpoint, "tcp://") {
		target = strings.TrimPrefix(endpoint, "tcp://")
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to the Stowage API at %s: %w", endpoint, err)
	}
	return conn, nil
}

// client is an open connection with one client per service.
type client struct {
	conn      *grpc.ClientConn
	volumes   pb.VolumeServiceClient
	snapshots pb.SnapshotServiceClient
	pools     pb.PoolServiceClient
	nodes     pb.NodeServiceClient
	keys      pb.KeyServiceClient
	secrets   pb.SecretServiceClient
	params    pb.ParameterServiceClient
}

func newClient(endpoint string) (*client, error) {
	conn, err := dial(endpoint)
	if err != nil {
		return nil, err
	}
	return &client{conn: conn, volumes: pb.NewVolumeServiceClient(conn), snapshots: pb.NewSnapshotServiceClient(conn),
		pools: pb.NewPoolServiceClient(conn), nodes: pb.NewNodeServiceClient(conn), keys: pb.NewKeyServiceClient(conn),
		secrets: pb.NewSecretServiceClient(conn), params: pb.NewParameterServiceClient(conn)}, nil
}

// run opens a client, applies the timeout and calls fn.
func (g *globals) run(cmd *cobra.Command, fn func(ctx context.Context, c *client, p printer) error) error {
	p := printer{format: g.output, out: g.out}
	if err := p.validate(); err != nil {
		return err
	}
	c, err := newClient(g.endpoint)
	if err != nil {
		return err
	}
	defer c.conn.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
	defer cancel()
	return fn(ctx, c, p)
}

func parseTags(kvs []string) (map[string]string, error) {
	tags := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usageErrorf("tag %q: write it as key=value", kv)
		}
		tags[k] = v
	}
	return tags, nil
}
