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
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/cluster"
)

// DefaultEndpoint is where `stowage server` listens and clients connect
// unless told otherwise.
const DefaultEndpoint = "127.0.0.1:7420"

// DefaultLocalHandoff is the unix socket where `stowage server` hands the
// images of local attachments to the node plugin of its machine, and where
// `stowage csi node` asks, unless told otherwise.
const DefaultLocalHandoff = "/run/stowage/local-handoff.sock"

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
	// tokenFile holds the Stowage API token to send; "" sends none (the
	// administrator by peer credentials over the local unix socket).
	tokenFile string
	out       io.Writer
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
	pf := root.PersistentFlags()
	pf.StringVar(&g.endpoint, "endpoint", "", "Stowage API address: host:port or unix:///path, or several separated by commas (servers sharing an etcd store: calls go to the one that leads) (default: env STOWAGE_ENDPOINT, else the local cluster's socket if a cluster of stowage up runs, else "+DefaultEndpoint+")")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	pf.DurationVar(&g.timeout, "timeout", 60*time.Second, "how long to wait for the server")
	pf.StringVar(&apiCAFile, "ca-file", "", "PEM CA bundle that signs the Stowage API server's certificate (its --tls-cert-file): TCP endpoints are then dialled with TLS and the server's name or address checked (default: env STOWAGE_CA_FILE, else none: TCP in clear)")
	pf.StringVar(&g.tokenFile, "token-file", "", "file holding the Stowage API token to call with (mode 0600; default: env STOWAGE_TOKEN_FILE, else none: root over the server's unix socket is the administrator)")
	root.AddCommand(
		newVolumeCmd(g), newSnapshotCmd(g), newPoolCmd(g), newNodeCmd(g), newKeyCmd(g), newSecretCmd(g), newParamCmd(g),
		newFileSystemCmd(g), newAccessPointCmd(g), newPolicyCmd(g), newTokenCmd(g),
		newServerCmd(), newAgentCmd(), newCSICmd(), newKMSPluginCmd(), newSecretsProviderCmd(), newKubeletRegisterCmd(), newVersionCmd(), newNFSMountCmd(), newNBDAttachCmd(), newNodeRunnerCmd(),
		newUpCmd(), newDownCmd(), newStatusCmd(), newPauseCmd(), newImagesCmd(), newReadyzCmd(),
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
		if st.Code() == codes.Unavailable && !strings.HasPrefix(st.Message(), "the Stowage server is not reachable") {
			hint := "is `stowage server` running? check --endpoint"
			if h := tlsHint(st.Message()); h != "" {
				hint = h
			}
			return "the Stowage server is not reachable (" + hint + "): " + st.Message()
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
	fs        pb.FileSystemServiceClient
	aps       pb.AccessPointServiceClient
	policies  pb.PolicyServiceClient
}

func newClient(endpoint, tokenFile string) (*client, error) {
	conn, err := dial(endpoint, tokenFile)
	if err != nil {
		return nil, err
	}
	return &client{conn: conn, volumes: pb.NewVolumeServiceClient(conn), snapshots: pb.NewSnapshotServiceClient(conn),
		pools: pb.NewPoolServiceClient(conn), nodes: pb.NewNodeServiceClient(conn), keys: pb.NewKeyServiceClient(conn),
		secrets: pb.NewSecretServiceClient(conn), params: pb.NewParameterServiceClient(conn),
		fs: pb.NewFileSystemServiceClient(conn), aps: pb.NewAccessPointServiceClient(conn), policies: pb.NewPolicyServiceClient(conn)}, nil
}

// run opens a client, applies the timeout and calls fn.
func (g *globals) run(cmd *cobra.Command, fn func(ctx context.Context, c *client, p printer) error) error {
	p := printer{format: g.output, out: g.out}
	if err := p.validate(); err != nil {
		return err
	}
	ep := resolveEndpoint(g.endpoint, os.Getenv, fileExists)
	tokenFile := g.tokenFile
	if tokenFile == "" {
		tokenFile = os.Getenv("STOWAGE_TOKEN_FILE")
	}
	c, err := newClient(ep.endpoint, tokenFile)
	if err != nil {
		return err
	}
	defer c.conn.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
	defer cancel()
	err = fn(ctx, c, p)
	if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable {
		return status.Error(codes.Unavailable, ep.unreachable(st.Message()))
	}
	return err
}

// endpointChoice is the API address a client command uses and how it was
// found, so that a failure can say where it looked.
type endpointChoice struct {
	endpoint string
	source   string
	// passed are the places looked at before, that gave nothing.
	passed []string
}

// resolveEndpoint finds the Stowage API the way kubectl finds its cluster:
// the --endpoint flag, then STOWAGE_ENDPOINT, then the API socket of the
// local cluster `stowage up` runs (its data directory is STOWAGE_DATA_DIR
// or the default), then the address `stowage server` listens on by
// default.
func resolveEndpoint(flag string, getenv func(string) string, exists func(string) bool) endpointChoice {
	if flag != "" {
		return endpointChoice{endpoint: flag, source: "--endpoint"}
	}
	var passed []string
	if e := getenv("STOWAGE_ENDPOINT"); e != "" {
		return endpointChoice{endpoint: e, source: "STOWAGE_ENDPOINT"}
	}
	passed = append(passed, "STOWAGE_ENDPOINT is not set")
	dir, dirSource := getenv("STOWAGE_DATA_DIR"), "STOWAGE_DATA_DIR"
	if dir == "" {
		dir, dirSource = cluster.DefaultDataDir, "the default data directory"
	}
	sock := cluster.Layout(dir).StowageSocket()
	if exists(sock) {
		ep := "unix://" + sock
		// A multi-node cluster runs two servers, one leading.
		if sock2 := cluster.Layout(dir).StowageSocket2(); exists(sock2) {
			ep += ",unix://" + sock2
		}
		return endpointChoice{endpoint: ep, source: "the local cluster's API socket (" + dirSource + ")", passed: passed}
	}
	passed = append(passed, fmt.Sprintf("no local cluster's API socket at %s (%s)", sock, dirSource))
	return endpointChoice{endpoint: DefaultEndpoint, source: "the default address", passed: passed}
}

// tlsHint is what to fix when a connection failed the way a TLS mismatch
// does ("" when it did not): a certificate not trusted, or a client in
// clear whose connection the TLS server closed.
func tlsHint(detail string) string {
	switch {
	case strings.Contains(detail, "certificate") || strings.Contains(detail, "tls:"):
		return "its TLS certificate is not one that --ca-file (or STOWAGE_CA_FILE) trusts for this address"
	case caFileInUse() == "" && (strings.Contains(detail, "server preface") || strings.Contains(detail, "connection reset") || strings.Contains(detail, "EOF")):
		return "it closed the connection: if it serves TLS (--tls-cert-file), give the CA of its certificate with --ca-file (or STOWAGE_CA_FILE)"
	}
	return ""
}

func (e endpointChoice) unreachable(detail string) string {
	if h := tlsHint(detail); h != "" {
		return fmt.Sprintf("the Stowage server is not reachable at %s, from %s: %s: %s", e.endpoint, e.source, h, detail)
	}
	msg := fmt.Sprintf("the Stowage server is not reachable at %s, from %s", e.endpoint, e.source)
	if len(e.passed) > 0 {
		msg += "; looked first at: " + strings.Join(e.passed, "; ")
	}
	return msg + ". Start it (`stowage up` or `stowage server`), or name it with --endpoint or STOWAGE_ENDPOINT: " + detail
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
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

// deleteCmd is a `delete ID...` command: it deletes each object in turn
// with del, which says whether there was one, and stops at the first
// error. A missing object is not an error, so deleting twice is safe.
func deleteCmd(g *globals, use, short string, del func(ctx context.Context, c *client, id string) (bool, error)) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short, Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				for _, id := range args {
					deleted, err := del(ctx, c, id)
					if err != nil {
						return err
					}
					if deleted {
						fmt.Fprintf(p.out, "deleted %s\n", id)
					} else {
						fmt.Fprintf(p.out, "%s does not exist; nothing to delete\n", id)
					}
				}
				return nil
			})
		},
	}
}
