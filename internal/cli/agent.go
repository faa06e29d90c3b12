package cli

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	stowagepb "github.com/stowage-io/stowage/api/stowage/v1"

	"github.com/stowage-io/stowage/internal/agentapi"
	"github.com/stowage-io/stowage/internal/apitls"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/blockexport"
	"github.com/stowage-io/stowage/internal/files"
	"github.com/stowage-io/stowage/internal/kubeapi"
	"github.com/stowage-io/stowage/internal/server"
)

type agentOptions struct {
	listen, nbdListen, nbdAdvertise, pool, tokenFile, dataDir, zone, node string
	// zoneLabel, kubeDir: the pool's zone from its node's label.
	zoneLabel, kubeDir string
	// tlsCertFile, tlsKeyFile: the agent API over TLS.
	tlsCertFile, tlsKeyFile string
	// filePool, nfsListen, nfsAdvertise: the file-tree pool and its NFS.
	filePool, nfsListen, nfsAdvertise string
	// nfsGraceless skips NFSv4's grace period after ganesha starts (no
	// flag: for tests, which cannot wait the 90 s clients get to reclaim).
	nfsGraceless bool
	// server, serverTokenFile, advertise: registration with the servers.
	server, serverTokenFile, advertise string
	// tokenFromServer: the agent API's token is the one the servers give
	// (GetStorageHostAgentToken), not --token-file.
	tokenFromServer  bool
	registerInterval time.Duration
}

func newAgentCmd() *cobra.Command {
	var o agentOptions
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a storage host apart from the server: one pool of volume images behind the agent API, exported over NBD",
		Long: `stowage agent serves one pool of volume images to Stowage servers over the
agent API (gRPC, every call authenticated with the token of --token-file) and
exports the volumes of attachments over NBD.

With --server the agent registers its pool with the Stowage servers there
(again every --register-interval, so a server that lost its records or a
new leader learns it); the servers connect back to --advertise with the
token of their --agent-token-file, which must be the token of --token-file.
Without --server a server names it instead: --agent name=N,address=<--listen>,token-file=F.`,
		Example: `  stowage agent --listen 10.0.0.5:7100 --nbd-listen 10.0.0.5:10809 --token-file /etc/stowage/agent.token \
    --pool name=pool-b,dir=/srv/pool-b,zone=zone-b,size=500G \
    --server 10.0.0.2:7000 --server-token-file /etc/stowage/storage-host.token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			return runAgent(ctx, o, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "", "agent API address host:port (required)")
	f.StringVar(&o.nbdListen, "nbd-listen", "", "serve the exports over NBD at host:port (empty: this agent exports nothing)")
	f.StringVar(&o.nbdAdvertise, "nbd-advertise", "", "the host:port nodes reach the NBD exports at (default: --nbd-listen)")
	f.StringVar(&o.pool, "pool", "", "the storage pool name=N,dir=D,zone=Z,node=H[,size=100G] (size makes dir an xfs-with-reflink image)")
	f.StringVar(&o.tokenFile, "token-file", "", "file (mode 0600) holding the token every caller of the agent API must present (or --token-from-server)")
	f.StringVar(&o.dataDir, "data-dir", "/var/lib/stowage", "where the pool lives when --pool names no dir")
	f.StringVar(&o.zone, "zone", "zone-a", "zone of the pool when --pool names none")
	f.StringVar(&o.zoneLabel, "zone-label", "", "in a pod: the pool's zone is its node's label of this key (topology.kubernetes.io/zone), read through the Kubernetes API with the pod's service account (get on nodes); --pool then names no zone")
	f.StringVar(&o.kubeDir, "kube-token-dir", kubeapi.ServiceAccountDir, "with --zone-label: the directory of the pod's service-account token and ca.crt (mode 0400; a projected volume)")
	f.StringVar(&o.tlsCertFile, "tls-cert-file", "", "serve the agent API with TLS with this PEM certificate (read again when renewed); the servers then need its CA (--agent-ca-file, or ca-file= of --agent)")
	f.StringVar(&o.tlsKeyFile, "tls-key-file", "", "the PEM key of --tls-cert-file")
	f.StringVar(&o.filePool, "file-pool", "", "also serve a file-tree pool for file systems, under the pool's name, in its zone: dir=D[,size=100G] (size makes dir a btrfs image, whose quota groups give access points quotas; default dir <data-dir>/files/<pool>)")
	f.StringVar(&o.nfsListen, "nfs-listen", "", "with --file-pool: serve its access points over NFSv4 with nfs-ganesha at host:port")
	f.StringVar(&o.nfsAdvertise, "nfs-advertise", "", "the host:port NFS clients reach --nfs-listen at (default: --nfs-listen)")
	f.StringVar(&o.node, "node", "", "node of the pool when --pool names none (default: hostname)")
	f.StringVar(&o.server, "server", "", "register the pool with the Stowage servers at this endpoint (host:port, several separated by commas)")
	f.BoolVar(&o.tokenFromServer, "token-from-server", false, "instead of --token-file: the agent API's token is the one the --server servers derive for this pool (they run with --agent-token-per-host), asked with --server-token-file and kept in <data-dir>/agent-tokens/<pool>; this host then holds no token that opens another host's agent API")
	f.StringVar(&o.serverTokenFile, "server-token-file", "", "token of this storage host's principal stowage:storage-host:<pool> for --server")
	f.StringVar(&o.advertise, "advertise", "", "the agent API's host:port the servers connect to (default: --listen)")
	f.DurationVar(&o.registerInterval, "register-interval", 30*time.Second, "how often the agent registers again with --server")
	return cmd
}

// runAgent serves until ctx ends, then stops the API, ends the exports and
// unmounts what it mounted. ready, when set, gets the API and NBD
// addresses once both listen.
func runAgent(ctx context.Context, o agentOptions, ready func(api, nbd string)) error {
	if o.listen == "" {
		return usageErrorf("--listen host:port is required: where servers reach the agent API")
	}
	switch {
	case o.tokenFile != "" && o.tokenFromServer:
		return usageErrorf("give --token-file or --token-from-server, not both")
	case o.tokenFromServer && o.server == "":
		return usageErrorf("--token-from-server needs --server (and --server-token-file): the servers give the token")
	case o.tokenFile == "" && !o.tokenFromServer:
		return usageErrorf("--token-file (or --token-from-server) is required: the agent API is always authenticated")
	}
	if o.node == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("no --node given and the hostname is unknown: %w", err)
		}
		o.node = h
	}
	if o.pool == "" {
		o.pool = "name=default"
	}
	if o.server != "" && o.serverTokenFile == "" {
		return usageErrorf("--server needs --server-token-file: the token of this storage host's principal stowage:storage-host:<pool>")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	spec, err := parsePoolSpec(o.pool, o.zone, o.node, o.dataDir)
	if err != nil {
		return err
	}
	var token string
	if o.tokenFromServer {
		token, err = agentTokenFromServer(ctx, o, spec.name, log)
	} else {
		token, err = auth.ReadTokenFile(o.tokenFile)
	}
	if err != nil {
		return err
	}
	if o.zoneLabel != "" {
		if slices.ContainsFunc(strings.Split(o.pool, ","), func(kv string) bool { return strings.HasPrefix(kv, "zone=") }) {
			return usageErrorf("--zone-label %s and a zone in --pool %q: give one of them", o.zoneLabel, o.pool)
		}
		if spec.zone, err = nodeZone(ctx, spec.node, o.zoneLabel, o.kubeDir); err != nil {
			return err
		}
	}
	if o.nfsListen != "" && o.filePool == "" {
		return usageErrorf("--nfs-listen serves the access points of a file-tree pool: give --file-pool too")
	}
	pool, mounted, err := openBlockPool(ctx, spec, false, log)
	if mounted {
		defer unmountPools(log, []poolSpec{spec})
	}
	if err != nil {
		return err
	}
	var fileTree *agentapi.FileTreeServer
	if o.filePool != "" {
		ft, stop, err := openAgentFileTree(ctx, o, spec, log)
		// stop unmounts the tree's file system (after ganesha stopped);
		// deferred here, it runs after the API and the exports are done.
		defer stop()
		if err != nil {
			return err
		}
		fileTree = ft
	}
	var exporter *blockexport.Exporter
	advertise := ""
	if o.nbdListen != "" {
		l, err := net.Listen("tcp", o.nbdListen)
		if err != nil {
			return fmt.Errorf("--nbd-listen %s: %w", o.nbdListen, err)
		}
		exporter = blockexport.New(log)
		// Close ends every NBD connection and closes the images, before
		// the pool's file system is unmounted.
		defer exporter.Close()
		go exporter.Serve(l)
		advertise = o.nbdAdvertise
		if advertise == "" {
			advertise = l.Addr().String()
		}
	}
	tlsConfig, err := serverTLS(o.tlsCertFile, o.tlsKeyFile)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", o.listen, err)
	}
	if tlsConfig != nil {
		l = tls.NewListener(l, tlsConfig)
	}
	log.Info("agent serving", "listen", l.Addr().String(), "tls", tlsConfig != nil, "nbd", advertise, "pool", spec.name)
	if ready != nil {
		ready(l.Addr().String(), advertise)
	}
	if o.server != "" {
		api := o.advertise
		if api == "" {
			api = l.Addr().String()
		}
		stopped := make(chan struct{})
		rctx, stop := context.WithCancel(ctx)
		go func() {
			defer close(stopped)
			registerLoop(rctx, o, spec.name, api, log)
		}()
		defer func() { stop(); <-stopped }()
	}
	err = agentapi.Serve(ctx, l, agentapi.NewServer(spec.name, pool, exporter, advertise).WithFileTree(fileTree), token, log)
	log.Info("agent stopped")
	return err
}

// openAgentFileTree opens the agent's file-tree pool (--file-pool), in the
// block pool's zone and node and under its name, and with --nfs-listen
// starts nfs-ganesha with the exports the agent kept from its last run.
// stop stops ganesha and unmounts what was mounted; it is never nil.
func openAgentFileTree(ctx context.Context, o agentOptions, block poolSpec, log *slog.Logger) (ft *agentapi.FileTreeServer, stop func(), err error) {
	var cleanups []func()
	stop = func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	kv, err := keyValues("--file-pool", o.filePool, "dir", "size")
	if err != nil {
		return nil, stop, err
	}
	spec := poolSpec{name: block.name, zone: block.zone, node: block.node, dir: kv["dir"]}
	if spec.dir == "" {
		spec.dir = filepath.Join(o.dataDir, "files", spec.name)
	}
	if v, ok := kv["size"]; ok {
		if spec.size, err = parseSize(v); err != nil {
			return nil, stop, usageErrorf("--file-pool %q: size: %v", o.filePool, err)
		}
	}
	tree, mounted, err := openFilePool(ctx, spec, log)
	if mounted {
		cleanups = append(cleanups, func() { unmountPools(log, []poolSpec{spec}) })
	}
	if err != nil {
		return nil, stop, err
	}
	if o.nfsListen == "" {
		return agentapi.NewFileTreeServer(tree, nil, "", ""), stop, nil
	}
	host, port, err := net.SplitHostPort(o.nfsListen)
	if err != nil {
		return nil, stop, usageErrorf("--nfs-listen %q: %v", o.nfsListen, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, stop, usageErrorf("--nfs-listen %q: port %q is not a number", o.nfsListen, port)
	}
	stateDir := filepath.Join(o.dataDir, "ganesha", spec.name)
	g, err := files.NewGanesha(files.GaneshaConfig{StateDir: stateDir, Address: host, Port: p, Graceless: o.nfsGraceless, Logger: log})
	if err != nil {
		return nil, stop, err
	}
	cleanups = append(cleanups, g.Stop)
	advertise := o.nfsAdvertise
	if advertise == "" {
		advertise = o.nfsListen
	}
	ft = agentapi.NewFileTreeServer(tree, g, advertise, stateDir)
	// The kept exports first, so a client that held a handle before the
	// agent restarted finds its export from ganesha's first request on.
	n, err := ft.Restore(ctx)
	if err != nil {
		return nil, stop, err
	}
	if err := g.Start(ctx); err != nil {
		return nil, stop, err
	}
	log.Info("NFS serving the file-tree pool's access points", "pool", spec.name, "listen", g.Address(), "advertise", advertise, "exports", n)
	return ft, stop, nil
}

// registerLoop registers the pool with the servers until ctx ends: at
// once, again every interval, and every few seconds while they refuse or
// cannot be reached.
// The token file is read when the first registration is tried, so that it
// may be provisioned after the agent starts.
func registerLoop(ctx context.Context, o agentOptions, pool, api string, log *slog.Logger) {
	server, interval := o.server, o.registerInterval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	var conn *grpc.ClientConn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	registered := false
	for {
		var err error
		if conn == nil {
			conn, err = dial(server, o.serverTokenFile)
		}
		if err == nil {
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			_, err = stowagepb.NewPoolServiceClient(conn).RegisterStorageHost(rctx, &stowagepb.RegisterStorageHostRequest{Pool: pool, Address: api})
			cancel()
		}
		wait := interval
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			log.Warn("could not register the pool with the Stowage server; retrying", "pool", pool, "server", server, "advertise", api, "err", status.Convert(err).Message())
			registered, wait = false, min(interval, 5*time.Second)
		case !registered:
			log.Info("pool registered with the Stowage server", "pool", pool, "server", server, "advertise", api)
			registered = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// agentDialer connects a server to the storage hosts that register, with
// the one agent token every storage host of the cluster accepts or, with
// perHost, the token derived from it for the host's pool
// (auth.StorageHostAgentToken), over TLS when tls is set (--agent-ca-file).
type agentDialer struct {
	token   string
	perHost bool
	tls     *tls.Config
}

// AgentToken is the token derived for pool's agent (server.AgentTokenIssuer).
func (d agentDialer) AgentToken(pool string) (string, bool) {
	if !d.perHost {
		return "", false
	}
	return auth.StorageHostAgentToken(d.token, pool), true
}

func (d agentDialer) DialStorageHost(ctx context.Context, pool, address string) (server.StorageHostConn, error) {
	token := d.token
	if d.perHost {
		token = auth.StorageHostAgentToken(d.token, pool)
	}
	c, err := agentapi.Dial(ctx, agentapi.ClientConfig{Name: pool, Address: address, Token: token, TLS: d.tls})
	if err != nil {
		return server.StorageHostConn{}, err
	}
	if c.PoolName() != pool {
		c.Close()
		return server.StorageHostConn{}, fmt.Errorf("the agent at %s serves pool %s, not %s", address, c.PoolName(), pool)
	}
	out := server.StorageHostConn{Pool: c, Close: c.Close}
	if c.Address() != "" {
		out.Exporter = c
	}
	if ft := c.FileTree(); ft != nil {
		out.Files = ft
		if ft.NFSAddress() != "" {
			out.FileExporter, out.NFSAddress = ft, ft.NFSAddress()
		}
	}
	return out, nil
}

// agentSpec is one --agent flag of the server.
type agentSpec struct{ name, address, tokenFile, caFile string }

func parseAgentSpec(s string) (agentSpec, error) {
	kv, err := keyValues("--agent", s, "name", "address", "token-file", "ca-file")
	if err != nil {
		return agentSpec{}, err
	}
	a := agentSpec{name: kv["name"], address: kv["address"], tokenFile: kv["token-file"], caFile: kv["ca-file"]}
	if a.name == "" || a.address == "" || a.tokenFile == "" {
		return a, usageErrorf("--agent %q: name, address and token-file are all required", s)
	}
	return a, nil
}

// agentDialTimeout is how long the server waits at start for each agent.
var agentDialTimeout = 15 * time.Second

// addAgentPools connects to the --agent storage hosts and adds each as a
// pool and, when it exports over NBD, as the BlockExporter of that pool. closeAll closes the
// connections.
func addAgentPools(ctx context.Context, specs []string, pools map[string]server.Pool,
	exporters map[string]server.BlockExporter, log *slog.Logger) (closeAll func(), err error) {
	var clients []*agentapi.Client
	closeAll = func() {
		for _, c := range clients {
			c.Close()
		}
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	for _, s := range specs {
		a, err := parseAgentSpec(s)
		if err != nil {
			return closeAll, err
		}
		if _, dup := pools[a.name]; dup {
			return closeAll, usageErrorf("pool %q is given twice (--pool or --agent)", a.name)
		}
		token, err := auth.ReadTokenFile(a.tokenFile)
		if err != nil {
			return closeAll, fmt.Errorf("--agent %s: %w", a.name, err)
		}
		cc := agentapi.ClientConfig{Name: a.name, Address: a.address, Token: token}
		if a.caFile != "" {
			if cc.TLS, err = apitls.ClientConfig(a.caFile); err != nil {
				return closeAll, fmt.Errorf("--agent %s: %w", a.name, err)
			}
		}
		dctx, cancel := context.WithTimeout(ctx, agentDialTimeout)
		c, err := agentapi.Dial(dctx, cc)
		cancel()
		if err != nil {
			return closeAll, fmt.Errorf("%w (is stowage agent running there, with the token of %s?)", err, a.tokenFile)
		}
		clients = append(clients, c)
		pools[a.name] = c
		// An agent without --nbd-listen exports nothing: its volumes attach
		// only on its own node, as a local pool's without --nbd-listen.
		if c.Address() != "" {
			exporters[a.name] = c
		}
		log.Info("remote storage pool ready", "pool", a.name, "agent", a.address, "zone", c.Zone(), "node", c.Node(),
			"cloneMode", c.CloneMode(), "nbd", c.Address())
	}
	return closeAll, nil
}
