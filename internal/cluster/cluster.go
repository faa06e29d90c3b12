// Package cluster brings up and tears down a local single-node Kubernetes
// with Stowage installed: containerd, etcd, the control plane, a kubelet and
// kube-proxy, the Stowage server, the block CSI driver with the upstream
// sidecars, and the objects (CSIDriver, StorageClasses, snapshot class) that
// make `kubectl apply -f examples/...` work at once. Every process runs on the
// host, detached, with its pid file and log under the data directory, so that
// `stowage down` can stop exactly what `stowage up` started.
package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Defaults of a local cluster. The address ranges are reserved blocks that
// are never routed (RFC 5737 TEST-NET-2 for the node, RFC 2544 benchmarking
// for pods and services) and are not the private ranges a machine's own
// network is likely to use; nothing is masqueraded, so no pod traffic leaves
// the machine.
const (
	DefaultDataDir     = "/var/lib/stowage"
	DefaultNodeIP      = "198.51.100.2"
	DefaultPodCIDR     = "198.18.0.0/16"
	DefaultServiceCIDR = "198.19.0.0/16"
	DefaultZone        = "zone-a"
	DefaultPoolSize    = "100G"

	// BusyboxImage is the name test pods use for the local busybox image
	// (Debian's busybox-static, whatever its version, under the tag that
	// upstream manifests commonly name); imagePullPolicy must be
	// IfNotPresent or Never, since no registry is reachable.
	BusyboxImage = "docker.io/library/busybox:1.36"
	// PauseImage is the sandbox image: the stowage binary itself, run as
	// `stowage pause`.
	PauseImage = "localhost/stowage/pause:1"

	// DriverName is the block CSI driver's name (internal/csi.DriverName;
	// repeated here so that this package does not import the driver).
	DriverName = "block.csi.stowage.io"
	// FileDriverName is the file CSI driver's (internal/csi/filecsi).
	FileDriverName = "file.csi.stowage.io"
	// SecretsStoreDriverName is the upstream Secrets Store CSI driver's.
	SecretsStoreDriverName = "secrets-store.csi.k8s.io"

	// NodeInterface carries the node address; CNIBridge is the pods' bridge.
	NodeInterface = "stowage0"
	CNIBridge     = "stowage-cni0"
	CNINetwork    = "stowage"

	apiserverPort = 6443
	etcdPort      = 2379
	etcdPeerPort  = 2380
	clusterDomain = "cluster.local"
	clusterName   = "stowage"
)

// Config says how to build the cluster. It is written to <data dir>/cluster.json
// by `up`, so that `down`, `status` and the supervisor act on the same cluster.
type Config struct {
	DataDir     string `json:"dataDir"`
	BinDir      string `json:"binDir"`
	Stowage     string `json:"stowage"` // the stowage binary that runs the server and drivers
	NodeName    string `json:"nodeName"`
	NodeIP      string `json:"nodeIP"`
	PodCIDR     string `json:"podCIDR"`
	ServiceCIDR string `json:"serviceCIDR"`
	Zone        string `json:"zone"`
	PoolSize    string `json:"poolSize"`
	// FSType is the file system of the StorageClasses `up` installs:
	// ext4, or xfs where ext4 cannot grow online (chooseFSType).
	FSType string `json:"fsType,omitempty"`
	// Workers are the nodes besides this machine's (SetNodes); none for a
	// one-node cluster.
	Workers []Worker `json:"workers,omitempty"`
	// StorageHosts hold the block pools of the zones other than the
	// machine's (SetStorageHosts); none for a one-node cluster.
	StorageHosts []StorageHost `json:"storageHosts,omitempty"`
	// Install is how the drivers run: InstallProcesses (also "") or
	// InstallChart.
	Install string `json:"install,omitempty"`
}

// Validate fills defaults and checks the addresses.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return err
	}
	c.DataDir = filepath.Clean(abs)
	if c.DataDir == "/" {
		return errors.New("the data directory cannot be /")
	}
	if c.NodeIP == "" {
		c.NodeIP = DefaultNodeIP
	}
	if c.PodCIDR == "" {
		c.PodCIDR = DefaultPodCIDR
	}
	if c.ServiceCIDR == "" {
		c.ServiceCIDR = DefaultServiceCIDR
	}
	if c.Zone == "" {
		c.Zone = DefaultZone
	}
	if c.PoolSize == "" {
		c.PoolSize = DefaultPoolSize
	}
	switch c.Install {
	case "", InstallProcesses, InstallChart:
	default:
		return fmt.Errorf("--install %q: want %s (host processes) or %s (the Helm chart's pods)", c.Install, InstallProcesses, InstallChart)
	}
	if c.Install == InstallProcesses {
		c.Install = ""
	}
	if c.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("no node name given and the hostname is unknown: %w", err)
		}
		c.NodeName = h
	}
	c.NodeName = strings.ToLower(c.NodeName)
	ip := net.ParseIP(c.NodeIP).To4()
	if ip == nil {
		return fmt.Errorf("node IP %q is not an IPv4 address", c.NodeIP)
	}
	_, pods, err := net.ParseCIDR(c.PodCIDR)
	if err != nil {
		return fmt.Errorf("pod CIDR: %w", err)
	}
	_, svcs, err := net.ParseCIDR(c.ServiceCIDR)
	if err != nil {
		return fmt.Errorf("service CIDR: %w", err)
	}
	if pods.Contains(svcs.IP) || svcs.Contains(pods.IP) {
		return fmt.Errorf("pod CIDR %s and service CIDR %s overlap", c.PodCIDR, c.ServiceCIDR)
	}
	if pods.Contains(ip) || svcs.Contains(ip) {
		return fmt.Errorf("node IP %s is inside the pod or service range", c.NodeIP)
	}
	// Unix socket paths are limited to 107 bytes; the longest is the CSI
	// socket under the kubelet's plugin directory.
	if n := len(c.Layout().CSINodeSocket()); n > 107 {
		return fmt.Errorf("data directory %s is too long: the CSI socket path under it would be %d bytes (at most 107)", c.DataDir, n)
	}
	return nil
}

// APIServerURL is where clients reach the Kubernetes API.
func (c *Config) APIServerURL() string {
	return fmt.Sprintf("https://%s:%d", c.NodeIP, apiserverPort)
}

// ServiceIP is the first address of the service range: the `kubernetes`
// Service's ClusterIP, which the apiserver certificate must name.
func (c *Config) ServiceIP() net.IP {
	_, n, err := net.ParseCIDR(c.ServiceCIDR)
	if err != nil {
		return nil
	}
	ip := n.IP.To4()
	out := make(net.IP, len(ip))
	copy(out, ip)
	out[3]++
	return out
}

// PodGateway is the bridge's address: the first of the pod range.
func (c *Config) PodGateway() string {
	_, n, err := net.ParseCIDR(c.PodCIDR)
	if err != nil {
		return ""
	}
	ip := n.IP.To4()
	out := make(net.IP, len(ip))
	copy(out, ip)
	out[3]++
	return out.String()
}

// Layout names every file and directory under the data directory.
func (c *Config) Layout() Layout { return Layout(c.DataDir) }

func (c *Config) save() error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(c.Layout().ConfigFile(), append(b, '\n'), 0o644)
}

// LoadConfig reads the configuration `up` saved in dataDir; os.ErrNotExist
// (wrapped) when no cluster was ever brought up there.
func LoadConfig(dataDir string) (*Config, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(Layout(abs).ConfigFile())
	if err != nil {
		return nil, err
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", Layout(abs).ConfigFile(), err)
	}
	c.DataDir = abs
	return &c, nil
}

// Layout is the data directory.
type Layout string

func (l Layout) path(p ...string) string { return filepath.Join(append([]string{string(l)}, p...)...) }

func (l Layout) ConfigFile() string  { return l.path("cluster.json") }
func (l Layout) PKI() string         { return l.path("pki") }
func (l Layout) Kubeconfigs() string { return l.path("kubeconfig") }
func (l Layout) Kubeconfig(user string) string {
	return l.path("kubeconfig", user+".kubeconfig")
}
func (l Layout) AdminKubeconfig() string  { return l.Kubeconfig("admin") }
func (l Layout) Configs() string          { return l.path("config") }
func (l Layout) Logs() string             { return l.path("logs") }
func (l Layout) Run() string              { return l.path("run") }
func (l Layout) PidFile(c string) string  { return l.path("run", c+".pid") }
func (l Layout) LogFile(c string) string  { return l.path("logs", c+".log") }
func (l Layout) Etcd() string             { return l.path("etcd") }
func (l Layout) Containerd() string       { return l.path("containerd") }
func (l Layout) ContainerdSocket() string { return l.path("run", "containerd", "containerd.sock") }
func (l Layout) CNIConfDir() string       { return l.path("cni", "net.d") }
func (l Layout) CNIIPAMDir() string       { return l.path("cni", "ipam") }
func (l Layout) KubeletRoot() string      { return l.path("kubelet") }
func (l Layout) PodLogs() string          { return l.path("pod-logs") }
func (l Layout) Images() string           { return l.path("images") }
func (l Layout) Stowage() string          { return l.path("stowage") }
func (l Layout) CSINodeState() string     { return l.path("csi-node") }
func (l Layout) StowageSocket() string    { return l.path("run", "stowage-api.sock") }

// LocalHandoffSocket is where the server (the one that leads) hands the
// machine's node plugin the images of its local attachments.
func (l Layout) LocalHandoffSocket() string { return l.path("run", "local-handoff.sock") }

// StowageSocket2 is the second server's API socket (multi-node clusters).
func (l Layout) StowageSocket2() string { return l.path("run", "stowage-api-2.sock") }
func (l Layout) CSIControllerSocket() string {
	return l.path("run", "csi-controller.sock")
}
func (l Layout) CSINodeSocket() string {
	return l.path("kubelet", "plugins", DriverName, "csi.sock")
}
func (l Layout) PluginsRegistry() string { return l.path("kubelet", "plugins_registry") }

// CSIFileSocket is the file driver's CSI socket; CSIFileState its node
// state (one record per mount).
func (l Layout) CSIFileSocket() string {
	return l.path("kubelet", "plugins", FileDriverName, "csi.sock")
}
func (l Layout) CSIFileState() string { return l.path("csi-file-node") }

// KMSPluginSocket is where kube-apiserver dials the KMS v2 plugin;
// EncryptionConfigFile is its --encryption-provider-config.
func (l Layout) KMSPluginSocket() string      { return l.path("run", "kms-plugin.sock") }
func (l Layout) EncryptionConfigFile() string { return l.path("config", "encryption.yaml") }

// SecretsProviders is the Secrets Store CSI driver's --provider-volume,
// where Stowage's provider serves stowage.sock; SecretsStoreSocket is the
// driver's CSI socket.
func (l Layout) SecretsProviders() string { return l.path("run", "secrets-store-providers") }
func (l Layout) SecretsStoreSocket() string {
	return l.path("kubelet", "plugins", SecretsStoreDriverName, "csi.sock")
}

// StowageTokens holds the components' Stowage API tokens (mode 0600 files,
// made by the server at its start).
func (l Layout) StowageTokens() string { return l.path("stowage", "tokens") }

// StowageToken is the token file of a component (csi-controller, csi-node,
// csi-file, secrets-provider, kms-plugin).
func (l Layout) StowageToken(component string) string { return l.path("stowage", "tokens", component) }
