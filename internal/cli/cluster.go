package cli

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/stowage-io/stowage/internal/cluster"
)

// `up`, `down` and `status` manage a local single-node Kubernetes with
// Stowage installed (internal/cluster); the hidden `pause` is the sandbox
// process of that cluster's pods.

func stowageExecutable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("cannot find the stowage binary: %w", err)
	}
	return filepath.EvalSymlinks(exe)
}

func newUpCmd() *cobra.Command {
	var cfg cluster.Config
	var skipCheck, supervise bool
	var timeout time.Duration
	var nodes int
	var zones []string
	var storageHosts int
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a local Kubernetes (one node, or several with --nodes) with Stowage installed",
		Long: `Starts containerd, etcd, the Kubernetes control plane, a kubelet and kube-proxy,
the Stowage server with one storage pool, and the block CSI driver with its
sidecars, all as processes on this machine (no Docker), then installs the
CSIDriver, the StorageClasses stowage-gp3 (default) and stowage-io2 and the
VolumeSnapshotClass stowage-snapshots. It returns when the node is Ready and a
claim of the default class has been bound and mounted by a pod.

Running it again keeps what runs and starts what does not. The component
binaries are not built here: hack/build-components.sh builds them into
_output/bin. Needs root; installs missing Debian packages with apt-get.`,
		Example: `  sudo stowage up
  export KUBECONFIG=/var/lib/stowage/kubeconfig/admin.kubeconfig
  kubectl get nodes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if supervise {
				ctx, cancel := signalContext(cmd.Context())
				defer cancel()
				return cluster.Supervise(ctx, cfg.DataDir, cmd.OutOrStdout())
			}
			exe, err := stowageExecutable()
			if err != nil {
				return err
			}
			cfg.Stowage = exe
			if cfg.BinDir == "" {
				cfg.BinDir = cluster.DefaultBinDir(exe)
			}
			if cfg.BinDir, err = filepath.Abs(cfg.BinDir); err != nil {
				return err
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			return cluster.Up(ctx, &cfg, cluster.UpOptions{Out: cmd.OutOrStdout(), SkipCheck: skipCheck, Timeout: timeout, Nodes: nodes, Zones: zones, StorageHostsPerZone: storageHosts,
				InstallGiven: cmd.Flags().Changed("install")})
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", cluster.DefaultDataDir, "where everything of the cluster lives: certificates, etcd, containerd, the kubelet, volumes, logs")
	f.StringVar(&cfg.BinDir, "bin-dir", "", "where the Kubernetes, etcd and CSI sidecar binaries are (default: _output/bin of the source tree this stowage was built in, else /usr/local/lib/stowage/bin)")
	f.StringVar(&cfg.NodeName, "node-name", "", "the node's name (default: hostname)")
	f.StringVar(&cfg.NodeIP, "node-ip", cluster.DefaultNodeIP, "the node's address, put on interface "+cluster.NodeInterface+"; the API listens there")
	f.StringVar(&cfg.PodCIDR, "pod-cidr", cluster.DefaultPodCIDR, "pod addresses")
	f.StringVar(&cfg.ServiceCIDR, "service-cidr", cluster.DefaultServiceCIDR, "service addresses")
	f.StringVar(&cfg.Zone, "zone", cluster.DefaultZone, "the node's and the pool's zone")
	f.StringVar(&cfg.PoolSize, "pool-size", cluster.DefaultPoolSize, "size of the storage pool (a sparse xfs image in the data directory)")
	f.IntVar(&nodes, "nodes", 0, "how many nodes: this machine's and N-1 more, each a network namespace with its own containerd, kubelet, kube-proxy and CSI node plugins (default: as the cluster was, else 1)")
	f.IntVar(&storageHosts, "storage-hosts-per-zone", 1, "with --nodes: storage hosts (network namespaces with a Stowage agent and a block pool, apart from the nodes) in each zone but the first, whose storage host is this machine's node")
	f.StringSliceVar(&zones, "zones", nil, "the nodes' zones, round robin from the first node (e.g. zone-a,zone-b,zone-c; default: --zone for all)")
	f.StringVar(&cfg.Install, "install", "", "how the CSI drivers and the secrets provider run: "+cluster.InstallProcesses+" (host processes the supervisor restarts) or "+cluster.InstallChart+
		" (the Helm chart deploy/helm/stowage, from images built here; the server stays on the host) (default: as the cluster was, else "+cluster.InstallProcesses+")")
	f.BoolVar(&skipCheck, "skip-check", false, "return once the node is Ready, without provisioning and mounting a test volume")
	f.DurationVar(&timeout, "wait", 2*time.Minute, "how long to wait for each component, the node and the check")
	// `up` starts itself with --supervise, detached, as the process that
	// restarts crashed components.
	f.BoolVar(&supervise, "supervise", false, "run as the cluster's supervisor (started by up)")
	f.MarkHidden("supervise")
	return cmd
}

func newDownCmd() *cobra.Command {
	var dataDir string
	var wipe bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the local cluster that `stowage up` started",
		Long: `Stops every process that stowage up started (by pid: SIGTERM, then SIGKILL),
stops the pods' containers, unmounts volumes and detaches their loop devices,
and removes the network interfaces and iptables chains of the cluster.
Kubernetes objects and Stowage volumes stay in the data directory and come
back with the next up; --wipe deletes the data directory too.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			return cluster.Down(ctx, dataDir, cluster.DownOptions{Out: cmd.OutOrStdout(), Wipe: wipe})
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", cluster.DefaultDataDir, "the data directory given to stowage up")
	cmd.Flags().BoolVar(&wipe, "wipe", false, "also delete the data directory: certificates, etcd, volumes, logs")
	return cmd
}

func newStatusCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show which components of the local cluster run",
		Long:  "Shows each component of the cluster that stowage up started (running with its pid, dead, or not started), whether the node is Ready, and the API endpoints. Exits 1 when a component is not running.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := cluster.GetStatus(cmd.Context(), dataDir)
			if err != nil {
				if errors.Is(err, cluster.ErrNoCluster) {
					fmt.Fprintln(cmd.OutOrStdout(), err)
					return errors.New("not running")
				}
				return err
			}
			st.Print(cmd.OutOrStdout())
			if !st.AllRunning() {
				return errors.New("some components are not running (their logs say why)")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", cluster.DefaultDataDir, "the data directory given to stowage up")
	return cmd
}

// newPauseCmd is the process of the pod sandbox image: it holds the pod's
// namespaces, reaps any child that is reparented to it, and exits on
// SIGTERM or SIGINT.
func newPauseCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "pause",
		Short:  "Sleep until SIGTERM, reaping children (the pod sandbox process)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sigs := make(chan os.Signal, 8)
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
			for s := range sigs {
				if s != syscall.SIGCHLD {
					return nil
				}
				for {
					var ws syscall.WaitStatus
					pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
					if pid <= 0 || err != nil {
						break
					}
				}
			}
			return nil
		},
	}
}

// newNodeStopCmd and newNodeStartCmd simulate losing and regaining a node
// of the local multi-node cluster.
func newNodeStopCmd() *cobra.Command {
	var dataDir string
	var outOfService, partition bool
	cmd := &cobra.Command{
		Use:   "stop NODE",
		Short: "Simulate losing a node of the local cluster: its link down, all its processes killed (as by a power cut)",
		Long: `For tests and demos of node loss on a cluster made by ` + "`stowage up --nodes N`" + `. The node's
link goes down first, then every process in its network namespace (kubelet,
containerd, the pods, kube-proxy, the CSI node plugins) is killed with SIGKILL.
Its mounts stay, as on a node that is off. With --out-of-service the node is
then tainted ` + cluster.OutOfServiceTaint + `, which tells Kubernetes the
node is gone for good: its pods are deleted and start elsewhere once it is
NotReady. With --partition only the link goes down: everything on the node
keeps running, cut off (a network partition); a volume attached there over
the network is fenced when Kubernetes attaches it elsewhere, so the node's
writes fail when its link comes back.
` + "`stowage node start`" + ` brings it back.`,
		Example: `  stowage node stop vm-2 --out-of-service
  stowage node start vm-2`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			return cluster.NodeStop(ctx, dataDir, args[0], cluster.NodeStopOptions{Out: cmd.OutOrStdout(), OutOfService: outOfService, Partition: partition})
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", cluster.DefaultDataDir, "the cluster's data directory")
	cmd.Flags().BoolVar(&outOfService, "out-of-service", false, "taint the node "+cluster.OutOfServiceTaint+" once it is down")
	cmd.Flags().BoolVar(&partition, "partition", false, "only cut the node's link; its processes keep running (a network partition)")
	return cmd
}

func newNodeStartCmd() *cobra.Command {
	var dataDir string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "start NODE",
		Short: "Bring a node stopped with `stowage node stop` back: link up, taint removed, its processes started",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			return cluster.NodeStart(ctx, dataDir, args[0], cmd.OutOrStdout(), timeout)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", cluster.DefaultDataDir, "the cluster's data directory")
	cmd.Flags().DurationVar(&timeout, "wait", 2*time.Minute, "how long to wait for each component and the node")
	return cmd
}
