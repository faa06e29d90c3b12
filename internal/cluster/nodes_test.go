package cluster

import (
	"github.com/stowage-io/stowage/internal/auth"
	"os"

	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func threeNodes(t *testing.T) *Config {
	t.Helper()
	c := &Config{DataDir: "/var/lib/stowage", NodeName: "vm", BinDir: "/bin", Stowage: "/usr/bin/stowage"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := c.SetNodes(3, []string{"zone-a", "zone-b", "zone-c"}); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSetNodes_NamesAddressesRangesZones(t *testing.T) {
	c := threeNodes(t)
	want := []Worker{
		{Name: "vm-2", Zone: "zone-b", IP: "198.51.100.12", PodCIDR: "198.18.1.0/24"},
		{Name: "vm-3", Zone: "zone-c", IP: "198.51.100.13", PodCIDR: "198.18.2.0/24"},
	}
	if !slices.Equal(c.Workers, want) || c.Zone != "zone-a" {
		t.Fatalf("workers %+v, zone %s; want %+v and zone-a", c.Workers, c.Zone, want)
	}
	if got := c.nodePodCIDR(); got != "198.18.0.0/24" {
		t.Errorf("the machine's node's pod range %s, want 198.18.0.0/24 (the others' /24s must not overlap it)", got)
	}
	if got := c.nfsListen(); got != "198.51.100.2:12049" {
		t.Errorf("nfs-ganesha listens on %s; other nodes' namespaces cannot reach loopback", got)
	}
	// Zones wrap around.
	if err := c.SetNodes(4, []string{"a", "b"}); err != nil || c.Workers[2].Zone != "b" || c.Workers[1].Zone != "a" {
		t.Errorf("4 nodes over 2 zones: %+v, %v", c.Workers, err)
	}
	// One node: no workers, the whole pod range, loopback NFS.
	if err := c.SetNodes(1, nil); err != nil || len(c.Workers) != 0 || c.nodePodCIDR() != c.PodCIDR || c.nfsListen() != NFSAddress {
		t.Errorf("one node: workers %v, pods %s, nfs %s, err %v", c.Workers, c.nodePodCIDR(), c.nfsListen(), err)
	}
}

func TestSetNodes_TooMany_RefusedSayingTheLimitAndWhy(t *testing.T) {
	c := &Config{DataDir: "/d", NodeName: "vm"}
	c.Validate()
	err := c.SetNodes(50, nil)
	want := fmt.Sprintf("at most %d on this machine (%d CPUs", MaxNodesPerCPU*runtime.NumCPU(), runtime.NumCPU())
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "kubelet") {
		t.Fatalf("--nodes 50: %v; want a refusal containing %q and what a node costs", err, want)
	}
	if err := c.SetNodes(0, nil); err == nil {
		t.Error("--nodes 0 accepted")
	}
}

func TestWorkers_OwnProcessesInTheirNamespace_OwnDirsAndIdentity(t *testing.T) {
	c := threeNodes(t)
	comps := map[string]Component{}
	for _, comp := range c.Components() {
		if _, dup := comps[comp.Name]; dup {
			t.Fatalf("two components named %s", comp.Name)
		}
		comps[comp.Name] = comp
	}
	for _, name := range []string{"containerd", "kubelet", "kube-proxy", "csi-node", "csi-file", "secrets-store-csi-driver", "secrets-store-registrar"} {
		if _, ok := comps[name]; !ok {
			t.Errorf("the machine's node has no %s", name)
		}
		comp, ok := comps[name+"@vm-3"]
		if !ok {
			t.Errorf("worker vm-3 has no %s", name)
			continue
		}
		if comp.Cmd.Path != "nsenter" || comp.Cmd.Args[0] != "--net=/run/netns/stowage-vm-3" {
			t.Errorf("%s@vm-3 does not start in its namespace: %s %v", name, comp.Cmd.Path, comp.Cmd.Args)
		}
	}
	args := strings.Join(comps["kubelet@vm-3"].Cmd.Args, " ")
	for _, want := range []string{"--root-dir=/var/lib/stowage/nodes/vm-3/kubelet", "--node-ip=198.51.100.13", "--hostname-override=vm-3",
		"kubelet@vm-3.kubeconfig", "zone=zone-c", "/var/lib/stowage/nodes/vm-3/config/kubelet.yaml"} {
		if !strings.Contains(args, want) {
			t.Errorf("kubelet@vm-3 args %q lack %q", args, want)
		}
	}
	if a := strings.Join(comps["csi-node@vm-3"].Cmd.Args, " "); !strings.Contains(a, "--node-id=vm-3") || !strings.Contains(a, "tokens/csi-node@vm-3") {
		t.Errorf("csi-node@vm-3 args %q: want its own node id and token", a)
	}
	if a := strings.Join(comps["stowage-server"].Cmd.Args, " "); !strings.Contains(a, "--bootstrap-node-tokens=vm-2,vm-3") || !strings.Contains(a, "--nfs-listen=198.51.100.2:12049") {
		t.Errorf("stowage-server args %q: want tokens for the workers and NFS on the node address", a)
	}
	if a := strings.Join(comps["stowage-server"].Cmd.Args, " "); !strings.Contains(a, "--nbd-listen=198.51.100.2:10809") {
		t.Errorf("stowage-server args %q: want NBD on the node address", a)
	}
	var kubelet map[string]any
	b, err := c.kubeletConfig(c.workerNode(1))
	if err != nil {
		t.Fatal(err)
	}
	yaml.Unmarshal(b, &kubelet)
	if kubelet["cgroupRoot"] != "/stowage-vm-3" || kubelet["podLogsDir"] != "/var/lib/stowage/nodes/vm-3/pod-logs" ||
		kubelet["containerRuntimeEndpoint"] != "unix:///var/lib/stowage/nodes/vm-3/run/containerd/containerd.sock" ||
		kubelet["healthzBindAddress"] != "198.51.100.13" || !strings.HasSuffix(kubelet["tlsCertFile"].(string), "kubelet-serving@vm-3.crt") {
		t.Errorf("vm-3's kubelet config: %s", b)
	}
	cni, _ := c.cniConfig(c.workerNode(1))
	if !strings.Contains(string(cni), `"subnet": "198.18.2.0/24"`) || !strings.Contains(string(cni), "/var/lib/stowage/nodes/vm-3/cni/ipam") {
		t.Errorf("vm-3's CNI config: %s", cni)
	}
	names := map[string]bool{}
	for _, s := range c.CertSpecs() {
		names[s.Name+" "+s.CN] = true
	}
	if !names["kubelet@vm-3 system:node:vm-3"] || !names["kubelet-serving@vm-3 system:node:vm-3"] {
		t.Error("vm-3 has no kubelet client and serving certificates of its own node identity")
	}
	if !slices.Contains(c.nodeReadyNeeds(), "csi-file@vm-2") {
		t.Error("node ready does not wait for the workers' plugins")
	}
}

// The zones but the machine's get storage hosts of their own (agents in
// namespaces apart from every node); the server reaches their pools over
// the agent API, after they are up.
func TestComponents_FourNodesThreeZones_StorageHostsApartFromNodes(t *testing.T) {
	c := threeNodes(t)
	if err := c.SetNodes(4, []string{"zone-a", "zone-b", "zone-c"}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetStorageHosts(1); err != nil {
		t.Fatal(err)
	}
	want := []StorageHost{{Name: "vm-storage-1", Zone: "zone-b", IP: "198.51.100.43"}, {Name: "vm-storage-2", Zone: "zone-c", IP: "198.51.100.44"}}
	if !slices.Equal(c.StorageHosts, want) {
		t.Fatalf("storage hosts %+v, want %+v", c.StorageHosts, want)
	}
	comps := map[string]Component{}
	for _, comp := range c.Components() {
		comps[comp.Name] = comp
	}
	srv := comps["stowage-server"]
	args := strings.Join(srv.Cmd.Args, " ")
	var pools []string
	for _, a := range srv.Cmd.Args {
		if p, ok := strings.CutPrefix(a, "--pool=name="); ok {
			pools = append(pools, strings.SplitN(p, ",", 2)[0])
		}
	}
	if !slices.Equal(pools, []string{"pool-a"}) || !strings.Contains(args, "--agent-token-file=/var/lib/stowage/stowage/agent.token") ||
		!strings.Contains(args, "--bootstrap-storage-host-tokens=pool-vm-storage-1,pool-vm-storage-2") || strings.Contains(args, "--agent=") {
		t.Errorf("server pools %v, args %q: want pool-a in the server, and the storage hosts' pools registered by them with a token each", pools, args)
	}
	if !strings.Contains(args, "--agent-token-per-host") {
		t.Errorf("server args %q: want --agent-token-per-host (each storage host has a token of its own)", args)
	}
	if strings.Contains(args, "--file-pool=") || strings.Contains(args, "--nfs-listen=") {
		t.Errorf("server args %q: want no file tree and no nfs-ganesha in the server (the storage hosts have them)", args)
	}
	srv2 := comps["stowage-server-2"]
	if !slices.Contains(srv.Cmd.Args, "--listen=unix:///var/lib/stowage/run/stowage-api.sock") || !slices.Contains(srv2.Cmd.Args, "--listen=unix:///var/lib/stowage/run/stowage-api-2.sock") ||
		!slices.Contains(srv2.Cmd.Args, "--advertise-address=unix:///var/lib/stowage/run/stowage-api-2.sock") || !slices.Contains(srv2.Needs, "stowage-server") ||
		!strings.Contains(args, "--store=etcd://127.0.0.1:") {
		t.Errorf("servers: %v / %v: want two on etcd, each on its own socket, the second after the first", srv.Cmd.Args, srv2.Cmd.Args)
	}
	if a := strings.Join(comps["csi-node@vm-2"].Cmd.Args, " "); !strings.Contains(a, "--api=unix:///var/lib/stowage/run/stowage-api.sock,unix:///var/lib/stowage/run/stowage-api-2.sock") {
		t.Errorf("csi-node@vm-2 is not given both servers: %s", a)
	}
	// The machine's node plugin and the servers (whichever leads) share
	// one local handoff socket; the other nodes have no local pools.
	const handoff = "--local-handoff=/var/lib/stowage/run/local-handoff.sock"
	if !slices.Contains(srv.Cmd.Args, handoff) || !slices.Contains(srv2.Cmd.Args, handoff) || !slices.Contains(comps["csi-node"].Cmd.Args, handoff) {
		t.Errorf("server %v, standby %v, csi-node %v: want all three given %s", srv.Cmd.Args, srv2.Cmd.Args, comps["csi-node"].Cmd.Args, handoff)
	}
	if !slices.Contains(comps["stowage-agent@vm-storage-2"].Needs, "stowage-server") {
		t.Errorf("an agent starts before the server it registers with: needs %v", comps["stowage-agent@vm-storage-2"].Needs)
	}
	agent := strings.Join(comps["stowage-agent@vm-storage-1"].Cmd.Args, " ")
	for _, w := range []string{"--net=/run/netns/stowage-vm-storage-1", "agent --listen=198.51.100.43:7100", "--nbd-listen=198.51.100.43:10809", "name=pool-vm-storage-1,dir=/var/lib/stowage/storage-hosts/vm-storage-1/pool,zone=zone-b,node=vm-storage-1",
		// Its own agent token, derived from the cluster's for its pool.
		"--token-file=/var/lib/stowage/storage-hosts/vm-storage-1/agent.token", "--server=unix:///var/lib/stowage/run/stowage-api.sock,unix:///var/lib/stowage/run/stowage-api-2.sock",
		"--server-token-file=/var/lib/stowage/stowage/tokens/storage-host@pool-vm-storage-1",
		// The agent API over TLS, with a certificate for its address,
		// which both servers trust by the cluster's CA.
		"--tls-cert-file=/var/lib/stowage/pki/agent@vm-storage-1.crt", "--tls-key-file=/var/lib/stowage/pki/agent@vm-storage-1.key",
		// Its own file tree, served by its own nfs-ganesha at its address.
		"--file-pool=dir=/var/lib/stowage/storage-hosts/vm-storage-1/files,size=100G", "--nfs-listen=198.51.100.43:12049"} {
		if !strings.Contains(agent, w) {
			t.Errorf("agent of vm-storage-1: %q lacks %q", agent, w)
		}
	}
	for _, s := range []Component{srv, srv2} {
		if !slices.Contains(s.Cmd.Args, "--agent-ca-file=/var/lib/stowage/pki/ca.crt") {
			t.Errorf("%s does not trust the storage hosts' certificates: %v", s.Name, s.Cmd.Args)
		}
	}
	certs := map[string]CertSpec{}
	for _, cs := range c.CertSpecs() {
		certs[cs.Name] = cs
	}
	if cs := certs["agent@vm-storage-2"]; !cs.Server || len(cs.IPs) != 1 || cs.IPs[0].String() != "198.51.100.44" || cs.Issuer != CA {
		t.Errorf("the certificate of vm-storage-2's agent: %+v, want a serving one for 198.51.100.44 from the CA", cs)
	}
	if err := c.SetStorageHosts(0); err == nil {
		t.Error("--storage-hosts-per-zone 0 accepted")
	}
}

func TestContainerdSockets_EveryNode_TheMachinesFirst(t *testing.T) {
	c := threeNodes(t)
	want := []string{
		"/var/lib/stowage/run/containerd/containerd.sock",
		"/var/lib/stowage/nodes/vm-2/run/containerd/containerd.sock",
		"/var/lib/stowage/nodes/vm-3/run/containerd/containerd.sock",
	}
	if got := c.ContainerdSockets(); !slices.Equal(got, want) {
		t.Errorf("three nodes: %v, want %v", got, want)
	}
	if err := c.SetNodes(1, nil); err != nil {
		t.Fatal(err)
	}
	if got := c.ContainerdSockets(); !slices.Equal(got, want[:1]) {
		t.Errorf("one node: %v, want %v", got, want[:1])
	}
}

// Every storage host gets a token of its own, derived from the cluster's
// agent token for its pool (what the servers, with --agent-token-per-host,
// present to it): no host's token is another's or the cluster's.
func TestWriteStorageHostTokens_OnePerHostDerivedFromTheClusters(t *testing.T) {
	dir, err := os.MkdirTemp("", "stw") // short: the CSI socket paths under it must fit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &Config{DataDir: dir, NodeName: "vm", BinDir: "/bin", Stowage: "/usr/bin/stowage"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := c.SetNodes(4, []string{"zone-a", "zone-b", "zone-c"}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetStorageHosts(1); err != nil {
		t.Fatal(err)
	}
	if err := writeAgentToken(c.Layout().AgentTokenFile()); err != nil {
		t.Fatal(err)
	}
	if err := c.writeStorageHostTokens(); err != nil {
		t.Fatal(err)
	}
	cluster, err := auth.ReadTokenFile(c.Layout().AgentTokenFile())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{cluster: "the cluster"}
	for _, n := range c.storageHostNodes() {
		got, err := auth.ReadTokenFile(n.agentTokenFile())
		if err != nil {
			t.Fatalf("storage host %s: %v", n.Name, err)
		}
		if want := auth.StorageHostAgentToken(cluster, storageHostPool(n.Name)); got != want {
			t.Errorf("storage host %s holds %q, want the token derived for %s", n.Name, got, storageHostPool(n.Name))
		}
		if who, dup := seen[got]; dup {
			t.Errorf("storage host %s holds the token of %s", n.Name, who)
		}
		seen[got] = n.Name
	}
	if len(seen) != 3 {
		t.Errorf("want the cluster's token and two hosts' own, got %d", len(seen))
	}
}
