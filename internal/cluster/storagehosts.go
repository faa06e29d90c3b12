package cluster

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/stowage-io/stowage/internal/auth"
)

// StorageHost is a storage host of a multi-node cluster, apart from every
// compute node as EBS is apart from EC2: a network namespace of its own
// (stowage-<name>) with an address on a veth link to the machine and one
// process, `stowage agent`, which owns one block pool of its zone and
// exports its volumes over NBD. The agent registers its pool with the
// servers (through their sockets, which every namespace sees); the servers
// reach it through the agent API; nodes attach its volumes over the
// network.
type StorageHost struct {
	Name string `json:"name"`
	Zone string `json:"zone"`
	IP   string `json:"ip"`
}

// AgentPort is where a storage host's agent serves the agent API.
const AgentPort = "7100"

// SetStorageHosts gives every zone of the workers but the machine's own
// perZone storage hosts (the machine's node stays its zone's storage host,
// in the server). Storage host k (from 1) is <node name>-storage-<k> at
// the node address + 40 + k.
func (c *Config) SetStorageHosts(perZone int) error {
	c.StorageHosts = nil
	if len(c.Workers) == 0 {
		return nil
	}
	if perZone < 1 {
		return fmt.Errorf("--storage-hosts-per-zone %d: every zone needs at least one storage host for its block volumes", perZone)
	}
	ip := net.ParseIP(c.NodeIP).To4()
	if ip == nil {
		return fmt.Errorf("node IP %q is not an IPv4 address", c.NodeIP)
	}
	seen := map[string]bool{c.Zone: true}
	k := 0
	for _, w := range c.Workers {
		if seen[w.Zone] {
			continue
		}
		seen[w.Zone] = true
		for j := 0; j < perZone; j++ {
			k++
			if int(ip[3])+40+k > 254 {
				return fmt.Errorf("node IP %s leaves no room for %d storage host addresses after it", c.NodeIP, k)
			}
			hip := make(net.IP, 4)
			copy(hip, ip)
			hip[3] += byte(40 + k)
			c.StorageHosts = append(c.StorageHosts, StorageHost{Name: fmt.Sprintf("%s-storage-%d", c.NodeName, k), Zone: w.Zone, IP: hip.String()})
		}
	}
	return nil
}

// storageHostPool is the block pool of a storage host.
func storageHostPool(name string) string { return "pool-" + name }

// storageHostLink is the machine's end of the veth link to storage host k.
func storageHostLink(k int) string { return fmt.Sprintf("stw-s%d", k) }

// storageHostNode is a storage host seen as a node without pods: its
// namespace, address and directory (<data dir>/storage-hosts/<name>).
func (c *Config) storageHostNode(k int) nodeView {
	h := c.StorageHosts[k]
	return nodeView{Name: h.Name, IP: h.IP, Zone: h.Zone, Index: k + 1,
		L: Layout(c.Layout().path("storage-hosts", h.Name)), Netns: workerNetns(h.Name), storage: true}
}

func (c *Config) storageHostNodes() []nodeView {
	var out []nodeView
	for k := range c.StorageHosts {
		out = append(out, c.storageHostNode(k))
	}
	return out
}

// link is the machine's end of the node's veth link.
func (n nodeView) link() string {
	if n.storage {
		return storageHostLink(n.Index)
	}
	return workerLink(n.Index)
}

// AgentTokenFile is the one token every storage host's agent requires and
// the servers present (made by the first storage host's network step).
func (l Layout) AgentTokenFile() string { return l.path("stowage", "agent.token") }

func (n nodeView) agentAddress() string { return net.JoinHostPort(n.IP, AgentPort) }

// agentTokenFile is a storage host's own agent token, derived from the
// cluster's for its pool (the servers run with --agent-token-per-host).
func (n nodeView) agentTokenFile() string { return filepath.Join(string(n.L), "agent.token") }

// writeStorageHostTokens writes every storage host's own agent token,
// derived from the cluster's (which must exist).
func (c *Config) writeStorageHostTokens() error {
	cluster, err := auth.ReadTokenFile(c.Layout().AgentTokenFile())
	if err != nil {
		return err
	}
	for _, n := range c.storageHostNodes() {
		if err := os.MkdirAll(string(n.L), 0o700); err != nil {
			return err
		}
		if err := auth.WriteTokenFile(n.agentTokenFile(), auth.StorageHostAgentToken(cluster, storageHostPool(n.Name))); err != nil {
			return fmt.Errorf("agent token of storage host %s: %w", n.Name, err)
		}
	}
	return nil
}

// nfsAddress is where a storage host's nfs-ganesha serves its file tree.
func (n nodeView) nfsAddress() string {
	_, port, _ := net.SplitHostPort(NFSAddress)
	return net.JoinHostPort(n.IP, port)
}

// withoutArgs is args without those that start with one of prefixes.
func withoutArgs(args []string, prefixes ...string) []string {
	var out []string
	for _, a := range args {
		if !slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(a, p) }) {
			out = append(out, a)
		}
	}
	return out
}

// storageHostComponents is a storage host's one process: its agent.
func (c *Config) storageHostComponents(n nodeView) []Component {
	pki := PKI{Dir: c.Layout().PKI()}
	return []Component{{Name: "stowage-agent" + n.suffix(), Needs: []string{"network" + n.suffix(), "stowage-server"}, Cmd: n.in(Command{Path: c.Stowage, Args: []string{
		"agent",
		"--listen=" + n.agentAddress(),
		"--nbd-listen=" + net.JoinHostPort(n.IP, NBDPort),
		"--token-file=" + n.agentTokenFile(),
		"--data-dir=" + string(n.L),
		fmt.Sprintf("--pool=name=%s,dir=%s,zone=%s,node=%s,size=%s", storageHostPool(n.Name), filepath.Join(string(n.L), "pool"), n.Zone, n.Name, c.PoolSize),
		// Its file-tree pool (btrfs, for access-point quotas) under the
		// same name, served by its own nfs-ganesha at its address.
		fmt.Sprintf("--file-pool=dir=%s,size=%s", filepath.Join(string(n.L), "files"), FilePoolSize),
		"--nfs-listen=" + n.nfsAddress(),
		"--tls-cert-file=" + pki.Cert(storageHostCert(n.Name)),
		"--tls-key-file=" + pki.Key(storageHostCert(n.Name)),
		"--server=" + c.StowageEndpoints(),
		"--server-token-file=" + c.Layout().StowageToken(storageHostTokenName(n.Name)),
	}}), Ready: func(ctx context.Context) error { return c.poolRegistered(ctx, storageHostPool(n.Name)) }}}
}

// tokensIssued is nil once the leading server has written every token
// file of the cluster's components, nodes and storage hosts.
func (c *Config) tokensIssued() error {
	names := []string{"admin", "csi-controller", "csi-node", "csi-file", "secrets-provider", "kms-plugin"}
	for _, w := range c.workerNames() {
		names = append(names, "csi-node@"+w)
	}
	for _, h := range c.StorageHosts {
		names = append(names, storageHostTokenName(h.Name))
	}
	for _, n := range names {
		if _, err := os.Stat(c.Layout().StowageToken(n)); err != nil {
			return fmt.Errorf("the leading server has not issued the token of %s yet: %w", n, err)
		}
	}
	return nil
}

// fileSystemNeeds is what the default file system waits for: the server
// and the manifests, and the storage hosts' agents when the file trees
// are theirs.
func (c *Config) fileSystemNeeds() []string {
	needs := []string{"stowage-server", "manifests"}
	for _, n := range c.storageHostNodes() {
		needs = append(needs, "stowage-agent"+n.suffix())
	}
	return needs
}

// takesRegistrations: storage hosts register with the servers, which
// then need the agent token (written by the network step) and a token per
// storage host: the multi-node cluster's storage hosts, or the chart's
// agent pods.
func (c *Config) takesRegistrations() bool { return len(c.StorageHosts) > 0 || c.chartInstall() }

// storageHostCert is the agent API's serving certificate of storage host
// name, for its address.
func storageHostCert(name string) string { return "agent@" + name }

// storageHostTokenName is the token file (in the servers' tokens
// directory) of a storage host's principal stowage:storage-host:<pool>.
func storageHostTokenName(name string) string { return "storage-host@" + storageHostPool(name) }

// poolRegistered is nil once the servers list pool: its agent registered.
func (c *Config) poolRegistered(ctx context.Context, pool string) error {
	cmd := exec.CommandContext(ctx, c.Stowage, "--endpoint="+c.StowageEndpoints(), "pool", "list", "-o", "json")
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			err = fmt.Errorf("%v: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return fmt.Errorf("list pools: %w", err)
	}
	var resp struct {
		Pools []struct {
			Name string `json:"name"`
		} `json:"pools"`
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		return fmt.Errorf("list pools: %w (output %q)", err, out)
	}
	for _, p := range resp.Pools {
		if p.Name == pool {
			return nil
		}
	}
	return fmt.Errorf("pool %s is not registered with the servers yet", pool)
}

// serverStorageHostArgs let the servers take the storage hosts'
// registrations: the agent token they present, and a token for each
// storage host's principal.
func (c *Config) serverStorageHostArgs() []string {
	if !c.takesRegistrations() {
		return nil
	}
	var pools []string
	for _, h := range c.StorageHosts {
		pools = append(pools, storageHostPool(h.Name))
	}
	if c.chartInstall() {
		// The chart's agent pod on the node (agents.enabled), once the
		// node is labelled a storage host.
		pools = append(pools, storageHostPool(c.NodeName))
	}
	args := []string{"--agent-token-file=" + c.Layout().AgentTokenFile(), "--bootstrap-storage-host-tokens=" + strings.Join(pools, ",")}
	if len(c.StorageHosts) > 0 {
		// They serve the agent API with TLS (storageHostCert), each with
		// a token of its own (writeStorageHostTokens).
		args = append(args, "--agent-ca-file="+PKI{Dir: c.Layout().PKI()}.Cert(CA), "--agent-token-per-host")
	}
	return args
}

// setupStorageHost makes a storage host's namespace and link, and its
// agent token if it has none.
func (c *Config) setupStorageHost(ctx context.Context, n nodeView) error {
	if err := c.setupNetns(ctx, n); err != nil {
		return err
	}
	if err := os.MkdirAll(string(n.L), 0o700); err != nil {
		return err
	}
	return writeAgentToken(c.Layout().AgentTokenFile())
}

// writeAgentToken makes the agent token file unless it is there; of
// storage hosts set up at once, one writes it and the others keep it.
func writeAgentToken(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b := make([]byte, 32)
	rand.Read(b)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := f.WriteString(base64.RawURLEncoding.EncodeToString(b) + "\n"); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

func (c *Config) storageHostNames() []string {
	var names []string
	for _, h := range c.StorageHosts {
		names = append(names, h.Name)
	}
	return names
}
