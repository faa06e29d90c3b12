package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// Worker is a node of a multi-node cluster other than the first: a network
// namespace of its own (stowage-<name>), with an address on a veth link to
// the machine, its own containerd, kubelet, kube-proxy, CSI node plugins
// and pod range. Its processes share the machine's mount namespace (they
// start with nsenter --net), so its mounts are visible to everything.
type Worker struct {
	Name    string `json:"name"`
	Zone    string `json:"zone"`
	IP      string `json:"ip"`
	PodCIDR string `json:"podCIDR"`
}

// MaxNodesPerCPU bounds --nodes: each node runs containerd, a kubelet,
// kube-proxy and four CSI node processes (about 0.1 CPU and 400 MiB idle),
// and a kubelet's housekeeping makes load spikes; more than this per CPU
// leaves no room for the pods.
const MaxNodesPerCPU = 3

// MaxNodes is the most nodes `up --nodes` allows on this machine.
func MaxNodes() int { return MaxNodesPerCPU * runtime.NumCPU() }

// workerNetns is the network namespace of a worker.
func workerNetns(name string) string { return "stowage-" + name }

// workerLink is the machine's end of the veth link to a worker (at most 15
// characters: interface names are limited).
func workerLink(index int) string { return fmt.Sprintf("stw-n%d", index) }

// workerIface is the worker's end, inside its namespace.
const workerIface = "eth0"

// SetNodes makes the workers of an n-node cluster over zones (node i, from
// 1, is in zones[(i-1) % len]): the first node is this machine's own (its
// zone becomes zones[0]); node i ≥ 2 is <node name>-<i> at the node
// address + 8 + i, with the pod range's i-1'th /24. n ≤ 1 means one node.
func (c *Config) SetNodes(n int, zones []string) error {
	if n < 1 {
		return fmt.Errorf("--nodes %d: a cluster has at least one node", n)
	}
	if max := MaxNodes(); n > max {
		return fmt.Errorf("--nodes %d: at most %d on this machine (%d CPUs × %d: every node runs containerd, a kubelet, kube-proxy and the CSI node plugins — about 0.1 CPU and 400 MiB each when idle — and the pods need the rest)", n, max, runtime.NumCPU(), MaxNodesPerCPU)
	}
	if len(zones) > 0 {
		c.Zone = zones[0]
	} else {
		zones = []string{c.Zone}
	}
	c.Workers = nil
	if n == 1 {
		return nil
	}
	ip := net.ParseIP(c.NodeIP).To4()
	if ip == nil {
		return fmt.Errorf("node IP %q is not an IPv4 address", c.NodeIP)
	}
	_, pods, err := net.ParseCIDR(c.PodCIDR)
	if err != nil {
		return fmt.Errorf("pod CIDR: %w", err)
	}
	if ones, _ := pods.Mask.Size(); ones > 24-bitsFor(n) {
		return fmt.Errorf("pod CIDR %s is too small for %d nodes (each gets a /24)", c.PodCIDR, n)
	}
	for i := 2; i <= n; i++ {
		wip := make(net.IP, 4)
		copy(wip, ip)
		if int(wip[3])+8+i > 254 {
			return fmt.Errorf("node IP %s leaves no room for %d node addresses after it", c.NodeIP, n)
		}
		wip[3] += byte(8 + i)
		sub := make(net.IP, 4)
		copy(sub, pods.IP.To4())
		sub[2] += byte(i - 1)
		c.Workers = append(c.Workers, Worker{
			Name:    fmt.Sprintf("%s-%d", c.NodeName, i),
			Zone:    zones[(i-1)%len(zones)],
			IP:      wip.String(),
			PodCIDR: sub.String() + "/24",
		})
	}
	return nil
}

func bitsFor(n int) int {
	b := 0
	for (1 << b) < n {
		b++
	}
	return b
}

// nodePodCIDR is the pod range of the machine's own node: all of PodCIDR
// for a one-node cluster, its first /24 when there are workers.
func (c *Config) nodePodCIDR() string {
	if len(c.Workers) == 0 {
		return c.PodCIDR
	}
	_, pods, err := net.ParseCIDR(c.PodCIDR)
	if err != nil {
		return c.PodCIDR
	}
	return pods.IP.String() + "/24"
}

// gatewayOf is the first address of a range: its bridge's address.
func gatewayOf(cidr string) string {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return ""
	}
	ip := n.IP.To4()
	out := make(net.IP, len(ip))
	copy(out, ip)
	out[3]++
	return out.String()
}

// nfsListen is where nfs-ganesha serves: loopback for one node; the node
// address when other nodes' namespaces must reach it.
// NBDPort is where the Stowage server exports block volumes over NBD to
// the nodes that are not their storage host (10809 is NBD's own port).
const NBDPort = "10809"

// nbdListen is the server's NBD address on a multi-node cluster: the
// machine's node address, which every node's namespace reaches.
func (c *Config) nbdListen() string { return net.JoinHostPort(c.NodeIP, NBDPort) }

// The file node plugin's pods of a chart install reach it there too.
func (c *Config) nfsListen() string {
	if len(c.Workers) == 0 && !c.chartInstall() {
		return NFSAddress
	}
	_, port, _ := net.SplitHostPort(NFSAddress)
	return net.JoinHostPort(c.NodeIP, port)
}

// nodeView is what differs between nodes: name, address, zone, pod range
// and the node's own directories (containerd, kubelet root, CNI, CSI
// state). Certificates, kubeconfigs, logs, pid files and the Stowage API
// are the cluster's.
type nodeView struct {
	Name, IP, Zone, PodCIDR string
	// Index is 1 for the machine's node, i for worker i.
	Index int
	// L is the node's layout: the data directory itself for the machine's
	// node, <data dir>/nodes/<name> for a worker.
	L Layout
	// Netns is the worker's namespace; "" for the machine's node.
	Netns string
	// storage marks a storage host (no kubelet, no pods; Index counts
	// storage hosts from 1).
	storage bool
}

func (c *Config) hostNode() nodeView {
	return nodeView{Name: c.NodeName, IP: c.NodeIP, Zone: c.Zone, PodCIDR: c.nodePodCIDR(), Index: 1, L: c.Layout()}
}

func (c *Config) workerNode(i int) nodeView {
	w := c.Workers[i]
	return nodeView{Name: w.Name, IP: w.IP, Zone: w.Zone, PodCIDR: w.PodCIDR, Index: i + 2,
		L: Layout(c.Layout().path("nodes", w.Name)), Netns: workerNetns(w.Name)}
}

// nodes lists every node, the machine's first.
func (c *Config) nodes() []nodeView {
	out := []nodeView{c.hostNode()}
	for i := range c.Workers {
		out = append(out, c.workerNode(i))
	}
	return out
}

// ContainerdSockets are the sockets of every node's containerd, the
// machine's first: one for a one-node cluster. Images a node's pods run
// must be in that node's containerd (test/conformance/e2eimages imports the
// external storage suite's images into each).
func (c *Config) ContainerdSockets() []string {
	var out []string
	for _, n := range c.nodes() {
		out = append(out, n.L.ContainerdSocket())
	}
	return out
}

// suffix names a worker's processes and files: "@<name>"; "" on the
// machine's node, whose components keep their one-node names.
func (n nodeView) suffix() string {
	if n.Netns == "" {
		return ""
	}
	return "@" + n.Name
}

// in wraps a command so that it runs in the node's network namespace.
func (n nodeView) in(cmd Command) Command {
	if n.Netns == "" {
		return cmd
	}
	return Command{Path: "nsenter", Args: append([]string{"--net=/run/netns/" + n.Netns, "--", cmd.Path}, cmd.Args...), Env: cmd.Env}
}

// nodeDirs are the directories a node needs before its processes start.
func (n nodeView) dirs() []string {
	l := n.L
	return []string{l.Configs(), filepath.Dir(l.ContainerdSocket()), l.CNIConfDir(), l.CNIIPAMDir(), l.KubeletRoot(), l.PluginsRegistry(),
		filepath.Dir(l.CSINodeSocket()), filepath.Dir(l.CSIFileSocket()), filepath.Dir(l.SecretsStoreSocket()), l.PodLogs(), l.CSINodeState(), l.CSIFileState()}
}

// cgroupRoot is the kubelet's --cgroup-root of a worker: every kubelet
// must have a tree of its own (each one removes pod cgroups it does not
// know).
func (n nodeView) cgroupRoot() string {
	if n.Netns == "" {
		return ""
	}
	return "stowage-" + n.Name
}

// ensureCgroupRoot makes the worker's cgroup in every hierarchy (the
// kubelet refuses a --cgroup-root that is missing in one); a new cpuset
// cgroup gets its parent's CPUs and memory nodes, without which no task
// may join it.
func ensureCgroupRoot(name string) error {
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || (f[2] != "cgroup" && f[2] != "cgroup2") {
			continue
		}
		dir := filepath.Join(f[1], name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		for _, knob := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(f[1], knob)); err == nil {
				if cur, _ := os.ReadFile(filepath.Join(dir, knob)); strings.TrimSpace(string(cur)) == "" {
					os.WriteFile(filepath.Join(dir, knob), b, 0o644)
				}
			}
		}
	}
	return nil
}

// setupWorkerNetwork makes a worker's namespace and its link to the
// machine: the worker's address on its end, routes both ways (the
// worker's pod range via its address), forwarding and bridge netfilter
// inside the namespace. Traffic between nodes is routed by the machine.
func (c *Config) setupWorkerNetwork(ctx context.Context, n nodeView) error {
	return c.setupNetns(ctx, n)
}

// setupNetns makes the namespace and link of a worker or storage host (a
// storage host has no pod range).
func (c *Config) setupNetns(ctx context.Context, n nodeView) error {
	ns := n.Netns
	if !exists("/run/netns/" + ns) {
		if _, err := run(ctx, "ip", "netns", "add", ns); err != nil {
			return err
		}
	}
	link := n.link()
	if _, err := net.InterfaceByName(link); err != nil {
		if _, err := run(ctx, "ip", "link", "add", link, "type", "veth", "peer", "name", workerIface, "netns", ns); err != nil {
			return err
		}
	}
	inNS := func(args ...string) error {
		_, err := run(ctx, "ip", append([]string{"-n", ns}, args...)...)
		return err
	}
	steps := [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "replace", n.IP + "/32", "dev", workerIface},
		{"link", "set", workerIface, "up"},
		{"route", "replace", c.NodeIP + "/32", "dev", workerIface},
		{"route", "replace", "default", "via", c.NodeIP, "dev", workerIface},
	}
	if _, err := run(ctx, "ip", "link", "set", link, "up"); err != nil {
		return err
	}
	for _, s := range steps {
		if err := inNS(s...); err != nil {
			return err
		}
	}
	routes := [][]string{{"route", "replace", n.IP + "/32", "dev", link}}
	if n.PodCIDR != "" {
		routes = append(routes, []string{"route", "replace", n.PodCIDR, "via", n.IP, "dev", link})
	}
	for _, r := range routes {
		if _, err := run(ctx, "ip", r...); err != nil {
			return err
		}
	}
	// Per-namespace settings; `ip netns exec` is fine for a sysctl (it
	// remounts /sys only for the command it runs).
	for _, kv := range []string{"net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"} {
		if _, err := run(ctx, "ip", "netns", "exec", ns, "sysctl", "-q", "-w", kv); err != nil && !strings.Contains(kv, "bridge") {
			return err
		}
	}
	return nil
}

// teardownWorkers removes the workers' namespaces (which takes their veth
// links and routes with them) and their cgroup trees.
func teardownWorkers(ctx context.Context, c *Config, report func(string, ...any)) error {
	var errs []error
	for i, w := range c.Workers {
		ns := workerNetns(w.Name)
		if exists("/run/netns/" + ns) {
			if _, err := run(ctx, "ip", "netns", "del", ns); err != nil {
				errs = append(errs, err)
			} else {
				report("removed network namespace %s", ns)
			}
		}
		if _, err := net.InterfaceByName(workerLink(i + 2)); err == nil {
			run(ctx, "ip", "link", "del", workerLink(i+2))
		}
		if k := removeCgroupTrees(c.workerNode(i).cgroupRoot()); k > 0 {
			report("removed %d cgroups of %s", k, w.Name)
		}
	}
	for _, n := range c.storageHostNodes() {
		if exists("/run/netns/" + n.Netns) {
			if _, err := run(ctx, "ip", "netns", "del", n.Netns); err != nil {
				errs = append(errs, err)
			} else {
				report("removed network namespace %s", n.Netns)
			}
		}
		if _, err := net.InterfaceByName(n.link()); err == nil {
			run(ctx, "ip", "link", "del", n.link())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove worker namespaces: %v", errs)
	}
	return nil
}

// workerComponents are a worker's processes, each in its namespace.
func (c *Config) workerComponents(n nodeView) []Component {
	l, nl := c.Layout(), n.L
	bin := func(b string) string { return filepath.Join(c.BinDir, b) }
	s := n.suffix()
	stowageAPI := c.StowageEndpoints()
	netStep := "network" + s
	return []Component{
		{Name: "containerd" + s, Needs: []string{netStep}, Cmd: n.in(Command{Path: "containerd", Args: []string{"--config", filepath.Join(nl.Configs(), "containerd.toml")}}),
			Ready: func(ctx context.Context) error { return dialUnix(nl.ContainerdSocket()) }},
		{Name: "kubelet" + s, Needs: []string{"kube-apiserver", "containerd" + s, "images" + s, netStep}, Cmd: n.in(Command{Path: bin("kubelet"), Args: []string{
			"--config=" + filepath.Join(nl.Configs(), "kubelet.yaml"),
			"--kubeconfig=" + l.Kubeconfig("kubelet"+s),
			"--root-dir=" + nl.KubeletRoot(),
			"--hostname-override=" + n.Name,
			"--node-ip=" + n.IP,
			"--node-labels=topology.kubernetes.io/zone=" + n.Zone,
			"--v=1",
		}}), Ready: func(ctx context.Context) error { return c.probe(ctx, "http://"+n.IP+":10248/healthz", "", "ok") }},
		{Name: "kube-proxy" + s, Needs: []string{"kube-apiserver", netStep}, Cmd: n.in(Command{Path: bin("kube-proxy"), Args: []string{
			"--config=" + filepath.Join(nl.Configs(), "kube-proxy.yaml"),
			"--v=1",
		}}), Ready: func(ctx context.Context) error { return c.probe(ctx, "http://"+n.IP+":10256/livez", "", "") }},
		{Name: "csi-node" + s, Needs: []string{"stowage-server", netStep}, Cmd: n.in(Command{Path: c.Stowage, Args: []string{
			"csi", "node",
			"--endpoint=unix://" + nl.CSINodeSocket(),
			"--api=" + stowageAPI,
			"--token-file=" + l.StowageToken("csi-node"+s),
			"--node-id=" + n.Name,
			"--zone=" + n.Zone,
			"--state-dir=" + nl.CSINodeState(),
			"--kubelet-registration-dir=" + nl.PluginsRegistry(),
			"--metrics-address=" + NodeMetricsAddress,
		}}), Ready: func(ctx context.Context) error { return dialUnix(nl.CSINodeSocket()) }},
		{Name: "csi-file" + s, Needs: []string{"stowage-server", netStep}, Cmd: n.in(Command{Path: c.Stowage, Args: []string{
			"csi", "node", "--driver=file",
			"--endpoint=unix://" + nl.CSIFileSocket(),
			"--api=" + stowageAPI,
			"--token-file=" + l.StowageToken("csi-file"),
			"--node-id=" + n.Name,
			"--zone=" + n.Zone,
			"--state-dir=" + nl.CSIFileState(),
			"--kubelet-registration-dir=" + nl.PluginsRegistry(),
			"--metrics-address=" + FileDriverMetricsAddress,
		}}), Ready: func(ctx context.Context) error { return dialUnix(nl.CSIFileSocket()) }},
		{Name: "secrets-store-csi-driver" + s, Needs: []string{"kube-apiserver", "manifests", "secrets-provider", netStep}, Cmd: n.in(Command{Path: bin("secrets-store-csi-driver"), Args: []string{
			"--endpoint=unix://" + nl.SecretsStoreSocket(),
			"--nodeid=" + n.Name,
			"--provider-volume=" + l.SecretsProviders(),
			"--additional-provider-volume-paths=",
			"--metrics-addr=" + SecretsStoreMetricsAddress,
			"--enable-secret-rotation=true",
			"--rotation-poll-interval=" + SecretsRotationInterval.String(),
			"--provider-health-check=true",
			"--kubeconfig=" + l.Kubeconfig("secrets-store-csi-driver"),
			"--v=2",
		}}), Ready: func(ctx context.Context) error { return dialUnix(nl.SecretsStoreSocket()) }},
		{Name: "secrets-store-registrar" + s, Needs: []string{"secrets-store-csi-driver" + s}, Cmd: n.in(Command{Path: c.Stowage, Args: []string{
			"kubelet-register",
			"--driver=" + SecretsStoreDriverName,
			"--csi-endpoint=unix://" + nl.SecretsStoreSocket(),
			"--kubelet-registration-dir=" + nl.PluginsRegistry(),
		}}), Ready: func(ctx context.Context) error {
			return dialUnix(filepath.Join(nl.PluginsRegistry(), SecretsStoreDriverName+"-reg.sock"))
		}},
	}
}
