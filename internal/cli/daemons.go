package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/apitls"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/blockexport"
	"github.com/stowage-io/stowage/internal/csi"
	"github.com/stowage-io/stowage/internal/csi/filecsi"
	"github.com/stowage-io/stowage/internal/files"
	"github.com/stowage-io/stowage/internal/handoff"
	"github.com/stowage-io/stowage/internal/httpapi"
	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/kubeapi"
	"github.com/stowage-io/stowage/internal/metrics"
	"github.com/stowage-io/stowage/internal/readiness"
	"github.com/stowage-io/stowage/internal/runner"
	"github.com/stowage-io/stowage/internal/server"
	"github.com/stowage-io/stowage/internal/store"
	"github.com/stowage-io/stowage/internal/store/boltstore"
	"github.com/stowage-io/stowage/internal/store/etcdstore"
)

// poolSpec is one --pool flag: name=N,dir=D,zone=Z,node=H[,size=S].
type poolSpec struct {
	name, dir, zone, node string
	// size, when set, makes dir an xfs file system with reflinks on a
	// loop-mounted image file of that size (created once, reused after).
	size int64
}

func parsePoolSpec(s, defaultZone, defaultNode, dataDir string) (poolSpec, error) {
	p := poolSpec{zone: defaultZone, node: defaultNode}
	kv, err := keyValues("--pool", s, "name", "dir", "zone", "node", "size")
	if err != nil {
		return p, err
	}
	p.name, p.dir = kv["name"], kv["dir"]
	if v, ok := kv["zone"]; ok {
		p.zone = v
	}
	if v, ok := kv["node"]; ok {
		p.node = v
	}
	if v, ok := kv["size"]; ok {
		if p.size, err = parseSize(v); err != nil {
			return p, usageErrorf("--pool %q: size: %v", s, err)
		}
	}
	if p.name == "" {
		p.name = p.zone + "-" + p.node
	}
	if p.dir == "" {
		p.dir = filepath.Join(dataDir, "pools", p.name)
	}
	return p, nil
}

// parseSize reads 100G, 512M, 1T or plain bytes.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	num := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(s), "B"), "I")
	switch {
	case strings.HasSuffix(num, "K"):
		mult, num = 1<<10, strings.TrimSuffix(num, "K")
	case strings.HasSuffix(num, "M"):
		mult, num = 1<<20, strings.TrimSuffix(num, "M")
	case strings.HasSuffix(num, "G"):
		mult, num = 1<<30, strings.TrimSuffix(num, "G")
	case strings.HasSuffix(num, "T"):
		mult, num = 1<<40, strings.TrimSuffix(num, "T")
	}
	var n int64
	if _, err := fmt.Sscan(num, &n); err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size like 100G", s)
	}
	return n * mult, nil
}

func signalContext(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}

func newServerCmd() *cobra.Command {
	var dataDir, zone, node, metricsAddr string
	var listens []string
	var pools, filePools, agents []string
	var apLimit int
	var nfsListen, nbdListen, httpListen, localHandoff, agentTokenFile, agentCAFile, tlsCert, tlsKey string
	var agentTokenPerHost bool
	var rotationCheck time.Duration
	var a authOptions
	var so storeOptions
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the Stowage API server with its storage pools (agent in-process)",
		Example: `  stowage server --data-dir /var/lib/stowage --pool name=pool-a,zone=zone-a,size=100G
  stowage server --listen unix:///run/stowage/api.sock --pool dir=/srv/pool,zone=zone-a`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if node == "" {
				h, err := os.Hostname()
				if err != nil {
					return fmt.Errorf("no --node given and the hostname is unknown: %w", err)
				}
				node = h
			}
			if len(pools) == 0 && len(agents) == 0 && agentTokenFile == "" {
				pools = []string{"name=default"}
			}
			if len(filePools) == 0 && agentTokenFile == "" {
				// A server that takes registrations gets its file trees
				// from the storage hosts (stowage agent --file-pool).
				filePools = []string{"name=files"}
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			if len(listens) == 0 {
				return errors.New("--listen: give at least one API address")
			}
			return runServer(ctx, serverOptions{dataDir: dataDir, listen: listens[0], alsoListen: listens[1:], zone: zone, node: node, metricsAddr: metricsAddr,
				pools: pools, agents: agents, filePools: filePools, accessPointLimit: apLimit, nfsListen: nfsListen, nbdListen: nbdListen, httpListen: httpListen, localHandoff: localHandoff, auth: a,
				rotationCheck: rotationCheck, store: so, agentTokenFile: agentTokenFile, agentTokenPerHost: agentTokenPerHost, agentCAFile: agentCAFile, tlsCertFile: tlsCert, tlsKeyFile: tlsKey})
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&a.bootstrapStorageHosts, "bootstrap-storage-host-tokens", nil, "pools whose storage host (stowage agent --server) gets a token file in --bootstrap-tokens-dir: storage-host@<pool>, principal stowage:storage-host:<pool> (comma-separated)")
	f.StringSliceVar(&a.bootstrapNodes, "bootstrap-node-tokens", nil, "more nodes whose block node plugin gets a token file in --bootstrap-tokens-dir: csi-node@<node>, principal stowage:csi-node:<node> (comma-separated)")
	f.StringVar(&a.bootstrapTokensDir, "bootstrap-tokens-dir", "", "at start, make sure this directory (mode 0700) holds a valid token file (mode 0600) for admin, csi-controller, csi-node (of --node), csi-file, secrets-provider and kms-plugin (default <data-dir>/tokens; none: make none)")
	f.StringVar(&a.review.APIServer, "kube-apiserver", "", "verify Kubernetes service-account tokens with this apiserver's TokenReview API (https://host:port); empty: service-account tokens are refused")
	f.StringVar(&a.review.CAFile, "kube-ca-file", "", "CA certificate of --kube-apiserver")
	f.StringVar(&a.review.CertFile, "kube-client-cert-file", "", "client certificate the server authenticates to --kube-apiserver with (needs create on tokenreviews)")
	f.StringVar(&a.review.KeyFile, "kube-client-key-file", "", "key of --kube-client-cert-file")
	f.StringVar(&a.review.TokenFile, "kube-token-file", "", "bearer token file for --kube-apiserver, instead of a client certificate")
	f.StringVar(&a.review.Audience, "token-audience", auth.DefaultAudience, "audience service-account tokens must be issued for")
	f.DurationVar(&a.reviewCacheTTL, "token-review-cache-ttl", auth.DefaultReviewCacheTTL, "how long a service-account token the apiserver proved is believed without asking again (never past the token's expiry; refusals are not cached; 0: ask every time)")
	f.StringVar(&dataDir, "data-dir", "/var/lib/stowage", "where the metadata file and default pools live")
	f.StringArrayVar(&listens, "listen", []string{DefaultEndpoint}, "API address: host:port or unix:///path (repeatable: the server answers on each; the first is the one it advertises)")
	f.StringVar(&zone, "zone", "zone-a", "zone of pools that do not name one")
	f.StringVar(&node, "node", "", "node of pools that do not name one (default: hostname)")
	f.StringVar(&metricsAddr, "metrics-address", "", metricsAddressUsage)
	f.StringArrayVar(&pools, "pool", nil, "storage pool name=N,dir=D,zone=Z,node=H[,size=100G] (repeatable; size makes dir an xfs-with-reflink image)")
	f.StringArrayVar(&agents, "agent", nil, "storage pool on a storage host of its own (stowage agent): name=N,address=host:port,token-file=F, F holding the agent's token (repeatable)")
	f.StringVar(&agentCAFile, "agent-ca-file", "", "the registering storage hosts serve the agent API with TLS (stowage agent --tls-cert-file): trust the certificates this PEM CA signs, for the addresses they register (empty: in clear)")
	f.BoolVar(&agentTokenPerHost, "agent-token-per-host", false, "present each registering storage host the token derived from --agent-token-file for its pool (`stowage token agent POOL` prints it; its agent's --token-file holds it), so that no storage host holds a token that opens another's agent API")
	f.StringVar(&agentTokenFile, "agent-token-file", "", "take registrations of storage hosts (stowage agent --server): connect to each with the token in this file (mode 0600), which every registering agent's --token-file holds (empty: registrations are refused)")
	f.StringArrayVar(&filePools, "file-pool", nil, "file-tree pool for file systems name=N,dir=D,zone=Z,node=H[,size=100G] (repeatable; size makes dir a btrfs image, whose quota groups give access points quotas; default name=files unless --agent-token-file is given, when the storage hosts' file trees serve)")
	f.IntVar(&apLimit, "access-point-limit", server.DefaultAccessPointLimit, "most access points a new file system may have")
	f.StringVar(&localHandoff, "local-handoff", DefaultLocalHandoff, "unix socket where the node plugin of this machine gets the images of the volumes attached to it locally (its pools' node), as open descriptors; none: serve none")
	f.StringVar(&nbdListen, "nbd-listen", "", "export the block pools' volumes over NBD at host:port to the other nodes of their zones (empty: a volume attaches only on its pool's node)")
	f.StringVar(&httpListen, "http-listen", "", "also serve the API as HTTP/JSON (the Connect protocol: POST /stowage.v1.VolumeService/ListVolumes with a JSON body; a bearer token is required) at host:port (docs/http-api.md; empty: gRPC only)")
	f.StringVar(&tlsCert, "tls-cert-file", "", "serve the API's TCP addresses (--listen host:port, --http-listen) with TLS, with this PEM certificate (chain), read again when the file changes; clients then need --ca-file (unix sockets stay in clear)")
	f.StringVar(&tlsKey, "tls-key-file", "", "the PEM key of --tls-cert-file (mode 0600)")
	f.StringVar(&nfsListen, "nfs-listen", "", "serve access points over NFSv4 with nfs-ganesha at host:port (empty: access points are not exported)")
	f.DurationVar(&rotationCheck, "rotation-check-interval", server.DefaultRotationCheck, "how often the server looks for secrets whose scheduled rotation is due")
	f.StringVar(&so.url, "store", "", "metadata store: empty for the bbolt file <data-dir>/metadata.db (one server), or etcd://host:port[,host:port...] to share it with other servers, one of which leads (docs/metadata.md)")
	f.StringVar(&so.prefix, "store-prefix", etcdstore.DefaultPrefix, "with --store etcd://: the key prefix of this installation's metadata")
	f.StringVar(&so.caFile, "etcd-ca-file", "", "with --store etcd://: CA certificate to verify etcd's serving certificate (TLS)")
	f.StringVar(&so.certFile, "etcd-cert-file", "", "with --store etcd://: client certificate for etcd (TLS)")
	f.StringVar(&so.keyFile, "etcd-key-file", "", "with --store etcd://: key of --etcd-cert-file")
	f.StringVar(&so.advertise, "advertise-address", "", "with --store etcd://: the API address clients reach this server at, which standbys name when they refuse a call (default: --listen)")
	f.DurationVar(&so.leaseTTL, "leader-lease", etcdstore.DefaultLeaseTTL, "with --store etcd://: lease of the leadership; a dead leader is replaced this long after at most")
	return cmd
}

type serverOptions struct {
	dataDir, listen, zone, node, metricsAddr string
	alsoListen                               []string // more API addresses, served like listen
	pools, filePools                         []string
	agents                                   []string // --agent name=N,address=A,token-file=F
	agentTokenFile                           string   // registrations of storage hosts
	agentTokenPerHost                        bool     // derive each host's token from it
	agentCAFile                              string   // their agent API's TLS CA
	accessPointLimit                         int
	nfsListen                                string
	nbdListen                                string
	httpListen                               string
	tlsCertFile, tlsKeyFile                  string // TLS on the TCP listeners
	localHandoff                             string
	auth                                     authOptions
	rotationCheck                            time.Duration
	store                                    storeOptions
}

type authOptions struct {
	bootstrapTokensDir string
	bootstrapNodes     []string
	// bootstrapStorageHosts are pools whose storage host gets a token.
	bootstrapStorageHosts []string
	review                auth.TokenReviewConfig
	reviewCacheTTL        time.Duration
}

func runServer(ctx context.Context, o serverOptions) error {
	dataDir, listen, zone, node, metricsAddr, specs := o.dataDir, o.listen, o.zone, o.node, o.metricsAddr, o.pools
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	slog.SetDefault(log)
	st, election, err := openStore(ctx, o.store, dataDir, listen)
	if err != nil {
		return err
	}
	defer st.Close()

	pools := map[string]server.Pool{}
	// A server that may stand by (on etcd) leaves the pools' temporary
	// files to the leader, and clears them when it leads.
	var local []*agent.Pool
	var mounted []poolSpec
	// Pools whose file system this server mounted are unmounted when it
	// stops, so that a stopped server leaves no mount behind.
	defer func() { unmountPools(log, mounted) }()
	for _, s := range specs {
		spec, err := parsePoolSpec(s, zone, node, dataDir)
		if err != nil {
			return err
		}
		if _, dup := pools[spec.name]; dup {
			return usageErrorf("pool %q is given twice", spec.name)
		}
		p, wasMounted, err := openBlockPool(ctx, spec, election != nil, log)
		if wasMounted {
			mounted = append(mounted, spec)
		}
		if err != nil {
			return err
		}
		pools[spec.name] = p
		local = append(local, p)
	}
	keys, err := kms.Open(st, filepath.Join(dataDir, "kms", "master.key"))
	if err != nil {
		return err
	}
	filePools := map[string]server.FilePool{}
	for _, s := range o.filePools {
		spec, err := parsePoolSpec(s, zone, node, dataDir)
		if err != nil {
			return err
		}
		if _, dup := filePools[spec.name]; dup {
			return usageErrorf("file-tree pool %q is given twice", spec.name)
		}
		if spec.dir == filepath.Join(dataDir, "pools", spec.name) {
			spec.dir = filepath.Join(dataDir, "files", spec.name)
		}
		t, wasMounted, err := openFilePool(ctx, spec, log)
		if wasMounted {
			mounted = append(mounted, spec)
		}
		if err != nil {
			return err
		}
		filePools[spec.name] = t
	}
	exporters := map[string]server.Exporter{}
	var nfsAddress string
	var ganesha *files.Ganesha
	if o.nfsListen != "" {
		host, port, err := net.SplitHostPort(o.nfsListen)
		if err != nil {
			return usageErrorf("--nfs-listen %q: %v", o.nfsListen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return usageErrorf("--nfs-listen %q: port %q is not a number", o.nfsListen, port)
		}
		// Started after Reconcile has exported every available file system
		// and access point (with the export ids they had): a client that
		// comes back after a restart finds its export at once, not
		// NFS4ERR_STALE for a handle of an export not added yet.
		g, err := files.NewGanesha(files.GaneshaConfig{StateDir: filepath.Join(dataDir, "ganesha"), Address: host, Port: p, Logger: log})
		if err != nil {
			return err
		}
		ganesha = g
		defer g.Stop()
		for name, t := range filePools {
			exporters[name] = files.TreeExporter{Tree: t.(*files.Tree), NFS: g}
		}
		nfsAddress = g.Address()
	}
	blockExports := map[string]server.BlockExporter{}
	var nbdExporter *blockexport.Exporter
	if o.nbdListen != "" {
		if _, _, err := net.SplitHostPort(o.nbdListen); err != nil {
			return usageErrorf("--nbd-listen %q: %v", o.nbdListen, err)
		}
		nbdExporter = blockexport.New(log)
		defer nbdExporter.Close()
		for name, p := range pools {
			blockExports[name] = server.LocalBlockExporter{Exporter: nbdExporter, Pool: p.(server.LocalPool), Addr: o.nbdListen}
		}
	}
	// Pools on storage hosts of their own (stowage agent), after the local
	// pools' exporters: an agent exports its own pool's volumes.
	closeAgents, err := addAgentPools(ctx, o.agents, pools, blockExports, log)
	if err != nil {
		return err
	}
	defer closeAgents()
	var verifier auth.Verifier
	if o.auth.review.APIServer != "" {
		tr, err := auth.NewTokenReview(o.auth.review)
		if err != nil {
			return err
		}
		verifier = auth.NewCachingVerifier(tr, o.auth.reviewCacheTTL)
	}
	authz := auth.New(st, verifier, log)
	var hosts server.StorageHostDialer
	if o.agentTokenFile != "" {
		token, err := auth.ReadTokenFile(o.agentTokenFile)
		if err != nil {
			return fmt.Errorf("--agent-token-file: %w", err)
		}
		d := agentDialer{token: token, perHost: o.agentTokenPerHost}
		if o.agentCAFile != "" {
			if d.tls, err = apitls.ClientConfig(o.agentCAFile); err != nil {
				return fmt.Errorf("--agent-ca-file: %w", err)
			}
		}
		hosts = d
	}
	srv, err := server.New(server.Config{Store: st, Pools: pools, Logger: log, KMS: keys, StorageHosts: hosts,
		FilePools: filePools, Exporters: exporters, AccessPointLimit: o.accessPointLimit, NFSAddress: nfsAddress, Auth: authz,
		BlockExports: blockExports})
	if err != nil {
		return err
	}
	// lead is what only the server that leads does (the only one, on
	// bbolt): every write of its start, the NFS exports and the loops.
	// Its stop is called (and waited for) before the store closes.
	lead := func(ctx context.Context) (stop func(), err error) {
		dir := o.auth.bootstrapTokensDir
		if dir == "" {
			dir = filepath.Join(dataDir, "tokens")
		}
		if dir != "none" {
			components := auth.ComponentPrincipals(node)
			for _, n := range o.auth.bootstrapNodes {
				components["csi-node@"+n] = auth.CSINodePrefix + n
			}
			for _, p := range o.auth.bootstrapStorageHosts {
				components["storage-host@"+p] = auth.StorageHostPrefix + p
			}
			issued, err := authz.Records.BootstrapTokens(ctx, dir, components)
			if err != nil {
				return nil, err
			}
			if len(issued) > 0 {
				log.Info("component tokens issued", "dir", dir, "components", issued)
			}
		}
		// The NBD listener opens before Reconcile declares the exports: a
		// node that reconnects early is told to wait, not refused.
		if nbdExporter != nil {
			l, err := net.Listen("tcp", o.nbdListen)
			if err != nil {
				return nil, fmt.Errorf("--nbd-listen %s: %w", o.nbdListen, err)
			}
			go func() {
				if err := nbdExporter.Serve(l); err != nil {
					log.Error("NBD exporter stopped", "listen", o.nbdListen, "err", err)
				}
			}()
			log.Info("NBD serving the block pools' volumes to other nodes", "listen", o.nbdListen)
		}
		if election != nil {
			for _, p := range local {
				if err := p.ClearTmp(); err != nil {
					return nil, err
				}
			}
		}
		if err := srv.Reconcile(ctx); err != nil {
			return nil, err
		}
		if ganesha != nil {
			if err := ganesha.Start(ctx); err != nil {
				return nil, err
			}
			log.Info("NFS serving", "address", nfsAddress)
		}
		if err := srv.RegisterPoolNodes(ctx); err != nil {
			return nil, err
		}
		// The local handoff only where the records are written: a
		// standby's view of the attachments may be behind.
		stopHandoff := func() {}
		if o.localHandoff != "none" && o.localHandoff != "" && len(local) > 0 {
			if stopHandoff, err = handoff.Start(o.localHandoff, srv.OpenLocalImage, log); err != nil {
				return nil, fmt.Errorf("--local-handoff %s: %w", o.localHandoff, err)
			}
			log.Info("local handoff serving the images of local attachments to this machine's node plugin", "socket", o.localHandoff)
		}
		stopRotations := srv.StartRotations(ctx, o.rotationCheck)
		// The recorded storage hosts before the re-export loop: their
		// attachments are exported again once they are connected.
		stopHosts := srv.StartStorageHosts(ctx)
		stopReexports := srv.StartReexports(ctx, 0)
		return func() { stopReexports(); stopHosts(); stopRotations(); stopHandoff() }, nil
	}
	stopLoops := func() {}
	var gate *leaderGate
	var opts []grpc.ServerOption
	if election == nil {
		stop, err := lead(ctx)
		if err != nil {
			return err
		}
		stopLoops = stop
	} else {
		gate = &leaderGate{election: election}
		opts = server.LeaderOnly(gate)
		// On a clean stop the standby takes over at once, not after the
		// lease's TTL.
		defer func() {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := election.Resign(rctx); err != nil {
				log.Warn("could not resign the leadership; a standby takes over when the lease ends", "err", err)
			}
		}()
	}
	// Before the resignation above: a loop's last write still lands.
	defer func() { stopLoops() }()
	tlsConfig, err := serverTLS(o.tlsCertFile, o.tlsKeyFile)
	if err != nil {
		return err
	}
	var listeners []net.Listener
	for _, a := range append([]string{listen}, o.alsoListen...) {
		u := listenURL(a)
		lis, err := csi.Listen(u)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("listen on %s: %w", a, err)
		}
		if tlsConfig != nil && strings.HasPrefix(u, "tcp://") {
			lis = tls.NewListener(lis, tlsConfig)
		}
		listeners = append(listeners, lis)
	}
	// Authentication first: the metrics interceptor counts refused calls too.
	opts = append(opts, authz.ServerOptions()...)
	if metricsAddr != "" {
		m := metrics.New()
		m.WatchInventory(srv)
		if err := serveMetrics(ctx, m, metricsAddr); err != nil {
			return err
		}
		opts = append(opts, grpc.ChainUnaryInterceptor(m.APIInterceptor()))
	}
	g := grpc.NewServer(opts...)
	srv.Register(g)
	if o.httpListen != "" {
		h, err := httpapi.Handler(g)
		if err != nil {
			return err
		}
		addr, err := httpapi.Serve(ctx, o.httpListen, h, tlsConfig, log)
		if err != nil {
			return err
		}
		scheme := "http://"
		if tlsConfig != nil {
			scheme = "https://"
		}
		log.Info("HTTP/JSON API serving", "url", scheme+addr.String())
	}
	serveErr := make(chan error, len(listeners))
	for _, lis := range listeners {
		go func() { serveErr <- g.Serve(lis) }()
	}
	log.Info("Stowage API serving", "listen", append([]string{listen}, o.alsoListen...), "tls", tlsConfig != nil, "dataDir", dataDir, "pools", len(pools), "store", st.String())
	var won <-chan error
	var lost <-chan struct{}
	if election != nil {
		c := make(chan error, 1)
		go func() { c <- election.Campaign(ctx) }()
		won, lost = c, election.Lost()
		log.Info("standby: waiting to lead", "advertise", gate.election.Value())
	}
	for {
		select {
		case err := <-serveErr:
			if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return err
			}
			return nil
		case err := <-won:
			won = nil
			if err != nil {
				g.Stop()
				return err
			}
			start := time.Now()
			// Only a successful lead replaces stopLoops: the deferred call
			// would otherwise run a nil func and hide lead's error.
			stop, err := lead(ctx)
			if err != nil {
				g.Stop()
				return fmt.Errorf("take over the leadership: %w", err)
			}
			stopLoops = stop
			gate.serving.Store(true)
			log.Info("leading: serving the API", "advertise", gate.election.Value(), "takeover", time.Since(start).Round(time.Millisecond))
		case <-lost:
			g.Stop()
			return errors.New("the lease of this server's leadership in etcd ended (etcd unreachable, or this process was paused): stopping so that no write of a deposed leader lands; restart it to stand by again")
		case <-ctx.Done():
			g.GracefulStop()
			<-serveErr
			log.Info("Stowage API stopped")
			return nil
		}
	}
}

// listenURL makes --listen host:port a TCP address, as its help says;
// csi.Listen would take a bare host:port for a unix socket's file name.
func listenURL(listen string) string {
	if strings.Contains(listen, "://") {
		return listen
	}
	if _, port, err := net.SplitHostPort(listen); err == nil {
		if _, err := strconv.Atoi(port); err == nil {
			return "tcp://" + listen
		}
	}
	return listen
}

// storeOptions are the --store flags.
type storeOptions struct {
	url, prefix, caFile, certFile, keyFile, advertise string
	leaseTTL                                          time.Duration
}

// namedStore is a store that says what it is in the start-up log.
type namedStore interface {
	store.Store
	String() string
}

// openStore opens the bbolt file of dataDir, or etcd with an election
// (nil on bbolt) that this server campaigns in.
func openStore(ctx context.Context, o storeOptions, dataDir, listen string) (namedStore, *etcdstore.Election, error) {
	if o.url == "" {
		st, err := boltstore.Open(filepath.Join(dataDir, "metadata.db"))
		if err != nil {
			return nil, nil, err
		}
		return describedStore{st, "bbolt " + filepath.Join(dataDir, "metadata.db")}, nil, nil
	}
	eps, err := etcdstore.ParseURL(o.url)
	if err != nil {
		return nil, nil, usageErrorf("--store: %v", err)
	}
	advertise := o.advertise
	if advertise == "" {
		advertise = listen
	}
	st, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: eps, Prefix: o.prefix, CAFile: o.caFile, CertFile: o.certFile, KeyFile: o.keyFile})
	if err != nil {
		return nil, nil, err
	}
	el, err := st.NewElection(o.leaseTTL, advertise)
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	return describedStore{st, "etcd " + o.url + " prefix " + o.prefix}, el, nil
}

type describedStore struct {
	store.Store
	what string
}

func (d describedStore) String() string { return d.what }

// leaderGate is the server.Leadership of a server on etcd: it serves once
// it leads and has finished taking over.
type leaderGate struct {
	election *etcdstore.Election
	serving  atomic.Bool
}

func (l *leaderGate) Serving() bool { return l.serving.Load() && l.election.IsLeader() }

func (l *leaderGate) Leader(ctx context.Context) (string, error) { return l.election.Leader(ctx) }

func newCSICmd() *cobra.Command {
	var zoneLabel, kubeDir string
	var endpoint, api, nodeID, zone, stateDir, registrationDir, metricsAddr, cgroupRoot, driver, nfsClient, mountHelper, tokenFile, localHandoff, healthAddr, nodeRunner string
	var maxVolumes int64
	var limitsInterval time.Duration
	cmd := &cobra.Command{Use: "csi", Short: "Run a CSI driver: block (" + csi.DriverName + ") or file (" + filecsi.DriverName + ")"}
	pf := cmd.PersistentFlags()
	pf.StringVar(&driver, "driver", "block", "which driver: block ("+csi.DriverName+") or file ("+filecsi.DriverName+")")
	pf.StringVar(&nfsClient, "nfs-client", "auto", "file driver node: how access points are mounted: kernel (mount -t nfs4), fuse (Stowage's FUSE NFS client, 'stowage nfs-mount'), or auto (kernel when the node has an NFSv4 client, else fuse)")
	pf.StringVar(&mountHelper, "mount-helper", "", "file driver node: the stowage binary whose nfs-mount command the FUSE client is (default: this binary)")
	pf.StringVar(&nodeRunner, "node-runner", "", "node plugin: the socket of the node runner (stowage node-runner) that starts the FUSE NFS clients and FUSE block devices, so that they outlive this plugin's pod; the plugin must see the runner's processes (hostPID). Empty: the plugin starts them itself, each in a session of its own (enough for a host process)")
	pf.StringVar(&endpoint, "endpoint", "unix:///csi/csi.sock", "CSI socket: unix:///path or tcp://host:port")
	pf.StringVar(&api, "api", DefaultEndpoint, apiUsage)
	pf.StringVar(&tokenFile, "token-file", "", tokenFileUsage(auth.CSIController+", "+auth.CSINodePrefix+"<node> or "+auth.CSIFile))
	pf.StringVar(&nodeID, "node-id", "", "this node's id (node plugin; default: hostname)")
	pf.StringVar(&zone, "zone", "zone-a", "this node's zone (node plugin)")
	pf.StringVar(&zoneLabel, "zone-label", "", "node plugin in a pod: read this node's zone from its label of this key (topology.kubernetes.io/zone) through the Kubernetes API, with the pod's service account (get on nodes), instead of --zone")
	pf.StringVar(&kubeDir, "kube-token-dir", kubeapi.ServiceAccountDir, "with --zone-label: the directory of the pod's service-account token and ca.crt (mode 0400; a projected volume)")
	pf.StringVar(&localHandoff, "local-handoff", DefaultLocalHandoff, "block node plugin: the unix socket of this machine's local handoff (the Stowage server's --local-handoff), where volumes attached locally (this node holds their pool) get their images as open descriptors")
	pf.StringVar(&stateDir, "state-dir", "", "node plugin state, one file per staged volume or mount (default /var/lib/stowage/csi-node, and /var/lib/stowage/csi-file-node for the file driver)")
	pf.Int64Var(&maxVolumes, "max-volumes", 64, "most volumes attached to this node at once, reported to the scheduler")
	pf.StringVar(&registrationDir, "kubelet-registration-dir", "", "the kubelet's plugins_registry directory: when set, the node plugin registers itself with the kubelet there (no node-driver-registrar needed)")
	pf.StringVar(&metricsAddr, "metrics-address", "", metricsAddressUsage)
	pf.StringVar(&healthAddr, "health-address", "", healthAddressUsage)
	pf.DurationVar(&limitsInterval, "limits-interval", 2*time.Second, "how often the node re-applies IOPS/throughput limits of its volumes")
	pf.StringVar(&cgroupRoot, "cgroup-root", "", "where the node plugin writes I/O limits: a cgroup v1 blkio hierarchy or a cgroup v2 mount with the io controller (default: detect /sys/fs/cgroup, /sys/fs/cgroup/blkio, other cgroup2 mounts; none found: volumes stage without limits)")

	run := func(cmd *cobra.Command, withController, withNode bool) error {
		switch driver {
		case "block":
		case "file":
		default:
			return usageErrorf("--driver %q: use block or file", driver)
		}
		ctx, cancel := signalContext(cmd.Context())
		defer cancel()
		conn, err := dial(api, tokenFile)
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := serveReadiness(ctx, conn, api, healthAddr); err != nil {
			return err
		}
		if nodeID == "" && withNode {
			if nodeID, err = os.Hostname(); err != nil {
				return fmt.Errorf("no --node-id and no hostname: %w", err)
			}
		}
		if zoneLabel != "" && withNode {
			if zone, err = nodeZone(ctx, nodeID, zoneLabel, kubeDir); err != nil {
				return err
			}
		}
		var starter runner.Starter
		if nodeRunner != "" {
			starter = runner.Remote{Socket: nodeRunner}
		}
		if driver == "file" {
			if stateDir == "" {
				stateDir = "/var/lib/stowage/csi-file-node"
			}
			return runFileDriver(ctx, conn, fileDriverOptions{controller: withController, node: withNode, endpoint: endpoint, metricsAddr: metricsAddr,
				nodeID: nodeID, zone: zone, stateDir: stateDir, registrationDir: registrationDir, nfsClient: nfsClient, mountHelper: mountHelper, starter: starter})
		}
		if stateDir == "" {
			stateDir = "/var/lib/stowage/csi-node"
		}
		var ctrl *csi.ControllerService
		var node *csi.NodeService
		if withController {
			ctrl = csi.NewControllerService(pb.NewVolumeServiceClient(conn), pb.NewSnapshotServiceClient(conn), pb.NewPoolServiceClient(conn))
		}
		if withNode {
			node, err = csi.NewNodeService(csi.NodeConfig{NodeID: nodeID, Zone: zone, MaxVolumes: maxVolumes, StateDir: stateDir, LimitsInterval: limitsInterval, CgroupRoot: cgroupRoot, LocalHandoff: localHandoff, Starter: starter},
				pb.NewVolumeServiceClient(conn), pb.NewNodeServiceClient(conn))
			if err != nil {
				return err
			}
			if err := node.Register(ctx); err != nil {
				return err
			}
			go node.RunLimits(ctx)
			if registrationDir != "" {
				if _, _, err := csi.ServeRegistration(ctx, registrationDir, endpoint); err != nil {
					return err
				}
			}
		}
		d := csi.NewDriver(ctrl, node)
		if metricsAddr != "" {
			m := metrics.New()
			d.Interceptors = append(d.Interceptors, m.CSIInterceptor(csi.DriverName))
			if node != nil {
				m.WatchNodeLimits(node.LimitsEnforced)
			}
			if err := serveMetrics(ctx, m, metricsAddr); err != nil {
				return err
			}
		}
		return d.Serve(ctx, endpoint)
	}
	cmd.AddCommand(
		&cobra.Command{Use: "controller", Short: "Run the CSI controller service", Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error { return run(c, true, false) }},
		&cobra.Command{Use: "node", Short: "Run the CSI node plugin", Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error { return run(c, false, true) }},
		&cobra.Command{Use: "all", Short: "Run controller and node in one process (single-machine setups)", Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error { return run(c, true, true) }},
	)
	return cmd
}

type fileDriverOptions struct {
	controller, node                                                                       bool
	endpoint, metricsAddr, nodeID, zone, stateDir, registrationDir, nfsClient, mountHelper string
	starter                                                                                runner.Starter
}

func runFileDriver(ctx context.Context, conn *grpc.ClientConn, o fileDriverOptions) error {
	var ctrl *filecsi.ControllerService
	var node *filecsi.NodeService
	if o.controller {
		ctrl = filecsi.NewControllerService(pb.NewFileSystemServiceClient(conn), pb.NewAccessPointServiceClient(conn))
	}
	if o.node {
		var m filecsi.Mounter
		switch o.nfsClient {
		case "kernel":
			m = &filecsi.KernelMounter{StateDir: o.stateDir}
		case "fuse", "auto":
			if o.nfsClient == "auto" && filecsi.KernelNFS() {
				m = &filecsi.KernelMounter{StateDir: o.stateDir}
				break
			}
			helper := o.mountHelper
			if helper == "" {
				self, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find this binary for the FUSE NFS client: %w (set --mount-helper)", err)
				}
				helper = self
			}
			m = &filecsi.FUSEMounter{Helper: helper, StateDir: o.stateDir, NodeID: o.nodeID, Starter: o.starter}
		default:
			return usageErrorf("--nfs-client %q: use auto, kernel or fuse", o.nfsClient)
		}
		slog.Info("file driver node: NFS client chosen", "client", fmt.Sprintf("%T", m), "stateDir", o.stateDir)
		node = filecsi.NewNodeService(filecsi.NodeConfig{NodeID: o.nodeID, Zone: o.zone}, m, pb.NewFileSystemServiceClient(conn), pb.NewAccessPointServiceClient(conn))
		go node.Watch(ctx)
		if o.registrationDir != "" {
			if _, _, err := csi.ServeRegistrationFor(ctx, filecsi.DriverName, o.registrationDir, o.endpoint); err != nil {
				return err
			}
		}
	}
	d := filecsi.NewDriver(ctrl, node)
	if o.metricsAddr != "" {
		m := metrics.New()
		d.Interceptors = append(d.Interceptors, m.CSIInterceptor(filecsi.DriverName))
		if err := serveMetrics(ctx, m, o.metricsAddr); err != nil {
			return err
		}
	}
	return d.Serve(ctx, o.endpoint)
}

const healthAddressUsage = "serve http://<address>/readyz (200 while the Stowage API answers its health check with this component's token, else 503 saying which endpoint failed and why) and /healthz (200 while serving), host:port (empty: none)"

// serveReadiness serves the readiness endpoint of a component that calls
// the Stowage API through conn (dialled at api), when addr is set.
func serveReadiness(ctx context.Context, conn *grpc.ClientConn, api, addr string) error {
	if addr == "" {
		return nil
	}
	got, err := readiness.New(conn, api, slog.Default()).Serve(ctx, addr)
	if err != nil {
		return err
	}
	slog.Info("readiness serving", "url", "http://"+got.String()+"/readyz", "api", api)
	return nil
}

const metricsAddressUsage = "serve Prometheus metrics on http://<address>/metrics, host:port (empty: no metrics; docs/metrics.md lists them)"

func serveMetrics(ctx context.Context, m *metrics.Registry, addr string) error {
	got, err := m.Serve(ctx, addr)
	if err != nil {
		return err
	}
	slog.Info("metrics serving", "url", "http://"+got.String()+"/metrics")
	return nil
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{Use: "version", Short: "Print the version", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "stowage", csi.Version)
			return nil
		}}
}

// nodeZone is node's label zoneLabel, read through the Kubernetes API as
// the pod whose token and CA are in dir; it retries for 30 s while the
// apiserver does not answer or the label is not there yet.
func nodeZone(ctx context.Context, node, zoneLabel, dir string) (string, error) {
	cfg, err := kubeapi.InCluster(dir)
	if err != nil {
		return "", fmt.Errorf("--zone-label %s: %w; give --zone instead", zoneLabel, err)
	}
	c, err := kubeapi.New(cfg)
	if err != nil {
		return "", fmt.Errorf("--zone-label %s: %w", zoneLabel, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		zone, err := c.NodeLabel(ctx, node, zoneLabel)
		if err == nil {
			slog.Info("zone read from the node's label", "node", node, "label", zoneLabel, "zone", zone)
			return zone, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("the zone of node %s (--zone-label %s): %w", node, zoneLabel, err)
		}
		slog.Warn("cannot read the node's zone yet; retrying", "node", node, "label", zoneLabel, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}

// serverTLS is the TLS of --tls-cert-file and --tls-key-file, nil when
// neither is given.
func serverTLS(certFile, keyFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, usageErrorf("--tls-cert-file and --tls-key-file go together")
	}
	return apitls.ServerConfig(certFile, keyFile)
}
