package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Binaries `up` runs from the bin directory (built by
// hack/build-components.sh), and the CRDs it applies from there.
var componentBinaries = []string{
	"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl",
	"csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter", "snapshot-controller",
	"secrets-store-csi-driver",
}

// CapacityNamespace holds the CSIStorageCapacity objects of the cluster.
const CapacityNamespace = "kube-system"

// SnapshotCRDs are the snapshot.storage.k8s.io CRD files under <bin>/crds.
var SnapshotCRDs = []string{
	"snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
	"snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
	"snapshot.storage.k8s.io_volumesnapshots.yaml",
}

// SecretsStoreCRDs are the Secrets Store CSI driver's CRD files under
// <bin>/crds (SecretProviderClass, SecretProviderClassPodStatus).
var SecretsStoreCRDs = []string{
	"secrets-store.csi.x-k8s.io_secretproviderclasses.yaml",
	"secrets-store.csi.x-k8s.io_secretproviderclasspodstatuses.yaml",
}

// crdFiles are every CRD file `up` applies, with the component that
// copies each into <bin>/crds.
func crdFiles() map[string]string {
	m := map[string]string{}
	for _, f := range SnapshotCRDs {
		m[f] = "snapshot-crds"
	}
	for _, f := range SecretsStoreCRDs {
		m[f] = "secrets-store-crds"
	}
	return m
}

// crdName is the CRD object a file <group>_<plural>.yaml defines.
func crdName(file string) string {
	group, plural, _ := strings.Cut(strings.TrimSuffix(file, ".yaml"), "_")
	return plural + "." + group
}

// DefaultBinDir is where the component binaries are found when no
// --bin-dir is given: the _output/bin of the source tree that the running
// stowage binary was built in (found by walking up from it to a go.mod next
// to _output/bin), else /usr/local/lib/stowage/bin.
func DefaultBinDir(executable string) string {
	for dir := filepath.Dir(executable); ; dir = filepath.Dir(dir) {
		bin := filepath.Join(dir, "_output", "bin")
		if isDir(bin) && exists(filepath.Join(dir, "go.mod")) {
			return bin
		}
		if dir == filepath.Dir(dir) {
			return "/usr/local/lib/stowage/bin"
		}
	}
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// MissingBinaries lists what is not in binDir, so that `up` can name
// everything to build at once.
func MissingBinaries(binDir string) []string {
	var missing []string
	for _, b := range componentBinaries {
		st, err := os.Stat(filepath.Join(binDir, b))
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	crds := crdFiles()
	for _, f := range slices.Sorted(maps.Keys(crds)) {
		if !exists(filepath.Join(binDir, "crds", f)) {
			missing = append(missing, "crds/"+f+" (component "+crds[f]+")")
		}
	}
	return missing
}

// Where Stowage's daemons serve Prometheus metrics (docs/metrics.md): on
// loopback only, like the other components' metrics and health endpoints.
const (
	ServerMetricsAddress     = "127.0.0.1:9420"
	ControllerMetricsAddress = "127.0.0.1:9421"
	NodeMetricsAddress       = "127.0.0.1:9422"
	FileDriverMetricsAddress = "127.0.0.1:9423"
	// The Secrets Store CSI driver's metrics (its default is :8095, every
	// interface).
	SecretsStoreMetricsAddress = "127.0.0.1:9424"
	// Server2MetricsAddress is the second Stowage server's (multi-node).
	Server2MetricsAddress = "127.0.0.1:9425"
)

// KubernetesKeyAlias is the KMS key kube-apiserver's KMS v2 plugin
// encrypts Secrets with; `up` makes it at the first start.
const KubernetesKeyAlias = "alias/stowage/kubernetes"

// KMSProviderName is the kms provider's name in the encryption config
// (it is part of every stored Secret's prefix: k8s:enc:kms:v2:<name>:).
const KMSProviderName = "stowage"

// SecretsRotationInterval is the Secrets Store CSI driver's
// --rotation-poll-interval: how often a mounted SecretProviderClass volume
// is refetched (a cheap version check when nothing changed). The kubelet
// asks for a republish about every minute, so rotated values reach pods
// within about a minute and a half.
const SecretsRotationInterval = 30 * time.Second

// NFSAddress is where the storage host's nfs-ganesha serves access points:
// loopback, and not 2049, so that it never meets a kernel NFS server of the
// machine.
const NFSAddress = "127.0.0.1:12049"

// StowageEtcdClientCert is the Stowage servers' client certificate for etcd.
const StowageEtcdClientCert = "stowage-etcd-client"

// StowageEtcdPrefix is where the Stowage servers of a multi-node cluster
// keep their metadata in the cluster's etcd.
const StowageEtcdPrefix = "/stowage"

// StowageEndpoints is the Stowage API as its clients are told it: the
// server's socket, and on a multi-node cluster both servers' (the one that
// leads answers; the clients follow it).
func (c *Config) StowageEndpoints() string {
	l := c.Layout()
	if len(c.Workers) == 0 {
		return "unix://" + l.StowageSocket()
	}
	return "unix://" + l.StowageSocket() + ",unix://" + l.StowageSocket2()
}

// serverStoreArgs put a server of a multi-node cluster on the cluster's
// etcd, advertising its socket to the clients a standby refuses.
func (c *Config) serverStoreArgs(sock string) []string {
	pki := PKI{Dir: c.Layout().PKI()}
	return []string{
		fmt.Sprintf("--store=etcd://127.0.0.1:%d", etcdPort),
		"--store-prefix=" + StowageEtcdPrefix,
		"--etcd-ca-file=" + pki.Cert(CA),
		"--etcd-cert-file=" + pki.Cert(StowageEtcdClientCert),
		"--etcd-key-file=" + pki.Key(StowageEtcdClientCert),
		"--advertise-address=unix://" + sock,
	}
}

// secondServer is the standby of a multi-node cluster: the first server's
// command on its own socket and metrics address, started once the first
// is ready (the first mounts the pools' file systems; the standby finds
// them mounted). Whichever holds the lease in etcd leads.
func (c *Config) secondServer(comps []Component) Component {
	l := c.Layout()
	for _, comp := range comps {
		if comp.Name != "stowage-server" {
			continue
		}
		var args []string
		for _, a := range comp.Cmd.Args {
			switch {
			case strings.HasPrefix(a, "--listen="):
				a = "--listen=unix://" + l.StowageSocket2()
			case strings.HasPrefix(a, "--advertise-address="):
				a = "--advertise-address=unix://" + l.StowageSocket2()
			case strings.HasPrefix(a, "--metrics-address="):
				a = "--metrics-address=" + Server2MetricsAddress
			}
			args = append(args, a)
		}
		return Component{Name: "stowage-server-2", Needs: append([]string{"stowage-server"}, comp.Needs...),
			Cmd:   Command{Path: comp.Cmd.Path, Args: args, Env: comp.Cmd.Env},
			Ready: func(ctx context.Context) error { return dialUnix(l.StowageSocket2()) }}
	}
	panic("no stowage-server component")
}

// NodeGracePeriod is the controller manager's --node-monitor-grace-period.
const NodeGracePeriod = 20 * time.Second

// FilePoolSize is the size of the btrfs image holding the file systems'
// trees (sparse: it takes only what is written).
const FilePoolSize = "100G"

// Component is one process of the cluster.
type Component struct {
	Name string
	Cmd  Command
	// Ready returns nil once the component serves; nil Ready means "alive
	// for a moment".
	Ready func(ctx context.Context) error
	// Needs are the components (or steps) that must be ready first.
	Needs []string
}

// Components lists the cluster's processes in start order; `down` stops
// them in reverse.
func (c *Config) Components() []Component {
	l := c.Layout()
	pki := PKI{Dir: l.PKI()}
	bin := func(n string) string { return filepath.Join(c.BinDir, n) }
	kc := l.Kubeconfig
	etcdURL := fmt.Sprintf("https://127.0.0.1:%d", etcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeerPort)
	stowageAPI := c.StowageEndpoints()
	csiCtrl := l.CSIControllerSocket()
	// VolumeAttributesClass is beta and off by default in 1.33; the driver
	// implements ControllerModifyVolume, so turn it on end to end.
	vacGate := "--feature-gates=VolumeAttributesClass=true"
	const sidecarQPS, sidecarBurst = "100", "200"
	// sidecarFor runs sidecar binary bin as component name for the CSI
	// socket sock of the component driver.
	sidecarFor := func(name, bin, sock, driver string, extra ...string) Component {
		// The sidecars' client default of 5 requests/s (burst 10) made
		// them the bottleneck of many claims at once: each attach and
		// provision takes several API calls (docs/benchmarks.md, StatefulSet).
		args := append([]string{"--csi-address=" + sock, "--kubeconfig=" + kc(bin), "--leader-election=false", "--v=2",
			"--kube-api-qps=" + sidecarQPS, "--kube-api-burst=" + sidecarBurst}, extra...)
		return Component{Name: name, Cmd: Command{Path: filepath.Join(c.BinDir, bin), Args: args}, Needs: []string{"kube-apiserver", driver}}
	}
	sidecar := func(name string, extra ...string) Component {
		return sidecarFor(name, name, csiCtrl, "csi-controller", extra...)
	}
	fileSock := l.CSIFileSocket()
	// The provisioner publishes the pools' capacity per storage class and
	// topology segment as CSIStorageCapacity objects in kube-system (no
	// owner: it is not a pod here), refreshed every 30 s and after each
	// create and delete.
	provisioner := sidecar("csi-provisioner", "--extra-create-metadata", "--timeout=60s", "--retry-interval-start=500ms", "--retry-interval-max=30s", vacGate,
		"--enable-capacity", "--capacity-ownerref-level=-1", "--capacity-poll-interval=30s")
	provisioner.Cmd.Env = append(provisioner.Cmd.Env, "NAMESPACE="+CapacityNamespace)
	comps := []Component{
		{Name: "containerd", Cmd: Command{Path: "containerd", Args: []string{"--config", filepath.Join(l.Configs(), "containerd.toml")}},
			Ready: func(ctx context.Context) error { return dialUnix(l.ContainerdSocket()) }},
		{Name: "etcd", Cmd: Command{Path: bin("etcd"), Args: []string{
			"--name=" + c.NodeName,
			"--data-dir=" + l.Etcd(),
			"--listen-client-urls=" + etcdURL,
			"--advertise-client-urls=" + etcdURL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=" + c.NodeName + "=" + peerURL,
			"--listen-metrics-urls=http://127.0.0.1:2381",
			"--cert-file=" + pki.Cert("etcd-server"),
			"--key-file=" + pki.Key("etcd-server"),
			"--trusted-ca-file=" + pki.Cert(CA),
			"--client-cert-auth=true",
			"--snapshot-count=10000",
			"--log-level=warn",
		}}, Ready: func(ctx context.Context) error {
			return c.probe(ctx, etcdURL+"/health", "apiserver-etcd-client", `"health":"true"`)
		}},
		{Name: "stowage-server", Cmd: Command{Path: c.Stowage, Args: []string{
			"server",
			"--data-dir=" + l.Stowage(),
			"--listen=unix://" + l.StowageSocket(),
			"--local-handoff=" + l.LocalHandoffSocket(),
			"--metrics-address=" + ServerMetricsAddress,
			"--zone=" + c.Zone,
			"--node=" + c.NodeName,
			fmt.Sprintf("--pool=name=pool-a,zone=%s,node=%s,size=%s", c.Zone, c.NodeName, c.PoolSize),
			fmt.Sprintf("--file-pool=name=files-a,zone=%s,node=%s,size=%s", c.Zone, c.NodeName, FilePoolSize),
			"--nfs-listen=" + c.nfsListen(),
			// Component tokens are made by the server before it listens, so
			// they exist when the components (which need it ready) start.
			"--bootstrap-tokens-dir=" + l.StowageTokens(),
			"--kube-apiserver=" + c.APIServerURL(),
			"--kube-ca-file=" + pki.Cert(CA),
			"--kube-client-cert-file=" + pki.Cert(StowageServerCert),
			"--kube-client-key-file=" + pki.Key(StowageServerCert),
		}}, Ready: func(ctx context.Context) error { return dialUnix(l.StowageSocket()) }},
		// kube-apiserver encrypts Secrets with the KMS v2 plugin (its
		// --encryption-provider-config), so the plugin and the server behind
		// it start first.
		{Name: "kms-plugin", Needs: []string{"stowage-server", "kms key"}, Cmd: Command{Path: c.Stowage, Args: []string{
			"kms-plugin",
			"--listen=unix://" + l.KMSPluginSocket(),
			"--api=" + stowageAPI,
			"--token-file=" + l.StowageToken("kms-plugin"),
			"--key=" + KubernetesKeyAlias,
		}}, Ready: func(ctx context.Context) error { return dialUnix(l.KMSPluginSocket()) }},
		{Name: "kube-apiserver", Needs: []string{"etcd", "kms-plugin"}, Cmd: Command{Path: bin("kube-apiserver"), Args: []string{
			"--advertise-address=" + c.NodeIP,
			"--bind-address=" + c.NodeIP,
			fmt.Sprintf("--secure-port=%d", apiserverPort),
			"--etcd-servers=" + etcdURL,
			"--etcd-cafile=" + pki.Cert(CA),
			"--etcd-certfile=" + pki.Cert("apiserver-etcd-client"),
			"--etcd-keyfile=" + pki.Key("apiserver-etcd-client"),
			"--service-cluster-ip-range=" + c.ServiceCIDR,
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--client-ca-file=" + pki.Cert(CA),
			"--tls-cert-file=" + pki.Cert("apiserver"),
			"--tls-private-key-file=" + pki.Key("apiserver"),
			"--kubelet-client-certificate=" + pki.Cert("apiserver-kubelet-client"),
			"--kubelet-client-key=" + pki.Key("apiserver-kubelet-client"),
			"--kubelet-certificate-authority=" + pki.Cert(CA),
			"--kubelet-preferred-address-types=InternalIP,Hostname",
			"--service-account-issuer=https://kubernetes.default.svc." + clusterDomain,
			"--service-account-key-file=" + pki.ServiceAccountPub(),
			"--service-account-signing-key-file=" + pki.ServiceAccountKey(),
			"--requestheader-client-ca-file=" + pki.Cert(FrontProxyCA),
			"--requestheader-allowed-names=front-proxy-client",
			"--requestheader-extra-headers-prefix=X-Remote-Extra-",
			"--requestheader-group-headers=X-Remote-Group",
			"--requestheader-username-headers=X-Remote-User",
			"--proxy-client-cert-file=" + pki.Cert("front-proxy-client"),
			"--proxy-client-key-file=" + pki.Key("front-proxy-client"),
			"--runtime-config=storage.k8s.io/v1beta1=true",
			"--encryption-provider-config=" + l.EncryptionConfigFile(),
			vacGate,
			"--profiling=false",
			"--v=1",
		}}, Ready: func(ctx context.Context) error {
			return c.probe(ctx, c.APIServerURL()+"/readyz", "admin", "ok")
		}},
		{Name: "kube-controller-manager", Needs: []string{"kube-apiserver"}, Cmd: Command{Path: bin("kube-controller-manager"), Args: []string{
			"--kubeconfig=" + kc("controller-manager"),
			"--authentication-kubeconfig=" + kc("controller-manager"),
			"--authorization-kubeconfig=" + kc("controller-manager"),
			"--bind-address=127.0.0.1",
			"--leader-elect=false",
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + pki.ServiceAccountKey(),
			"--root-ca-file=" + pki.Cert(CA),
			"--cluster-signing-cert-file=" + pki.Cert(CA),
			"--cluster-signing-key-file=" + pki.Key(CA),
			"--cluster-name=" + clusterName,
			"--service-cluster-ip-range=" + c.ServiceCIDR,
			"--allocate-node-cidrs=false",
			// A lost node is NotReady this long after its last heartbeat
			// (default 50 s). Only a NotReady node's pods are force-deleted
			// under the out-of-service taint, so this bounds how soon a
			// StatefulSet's pod restarts elsewhere (docs/local-cluster.md).
			"--node-monitor-grace-period=" + NodeGracePeriod.String(),
			// Default 20/30: the PV controller and the attach/detach
			// controller share it, a few calls per claim.
			"--kube-api-qps=" + sidecarQPS, "--kube-api-burst=" + sidecarBurst,
			vacGate,
			"--profiling=false",
			"--v=1",
		}}, Ready: func(ctx context.Context) error { return c.probe(ctx, "https://127.0.0.1:10257/healthz", "", "ok") }},
		{Name: "kube-scheduler", Needs: []string{"kube-apiserver"}, Cmd: Command{Path: bin("kube-scheduler"), Args: []string{
			"--kubeconfig=" + kc("scheduler"),
			"--authentication-kubeconfig=" + kc("scheduler"),
			"--authorization-kubeconfig=" + kc("scheduler"),
			"--bind-address=127.0.0.1",
			"--leader-elect=false",
			vacGate,
			"--profiling=false",
			"--v=1",
		}}, Ready: func(ctx context.Context) error { return c.probe(ctx, "https://127.0.0.1:10259/healthz", "", "ok") }},
		{Name: "kubelet", Needs: []string{"kube-apiserver", "containerd", "images", "network"}, Cmd: Command{Path: bin("kubelet"), Args: []string{
			"--config=" + filepath.Join(l.Configs(), "kubelet.yaml"),
			"--kubeconfig=" + kc("kubelet"),
			"--root-dir=" + l.KubeletRoot(),
			"--hostname-override=" + c.NodeName,
			"--node-ip=" + c.NodeIP,
			"--node-labels=topology.kubernetes.io/zone=" + c.Zone,
			"--v=1",
		}}, Ready: func(ctx context.Context) error { return c.probe(ctx, "http://127.0.0.1:10248/healthz", "", "ok") }},
		{Name: "kube-proxy", Needs: []string{"kube-apiserver", "network"}, Cmd: Command{Path: bin("kube-proxy"), Args: []string{
			"--config=" + filepath.Join(l.Configs(), "kube-proxy.yaml"),
			"--v=1",
		}}, Ready: func(ctx context.Context) error { return c.probe(ctx, "http://127.0.0.1:10256/livez", "", "") }},
		{Name: "csi-controller", Needs: []string{"stowage-server"}, Cmd: Command{Path: c.Stowage, Args: []string{
			"csi", "controller",
			"--endpoint=unix://" + csiCtrl,
			"--api=" + stowageAPI,
			"--token-file=" + l.StowageToken("csi-controller"),
			"--metrics-address=" + ControllerMetricsAddress,
		}}, Ready: func(ctx context.Context) error { return dialUnix(csiCtrl) }},
		// A delete is retried until the volume is detached; retry soon and
		// often enough that a claim's volume goes within seconds of its pod.
		provisioner,
		sidecar("csi-attacher", "--timeout=60s", "--worker-threads=32"),
		sidecar("csi-resizer", "--timeout=60s", "--handle-volume-inuse-error=false", vacGate),
		sidecar("csi-snapshotter", "--extra-create-metadata", "--timeout=60s"),
		{Name: "snapshot-controller", Needs: []string{"kube-apiserver", "manifests"}, Cmd: Command{Path: bin("snapshot-controller"), Args: []string{
			"--kubeconfig=" + kc("snapshot-controller"),
			"--leader-election=false",
			"--v=2",
		}}},
		{Name: "csi-node", Needs: []string{"stowage-server"}, Cmd: Command{Path: c.Stowage, Args: []string{
			"csi", "node",
			"--endpoint=unix://" + l.CSINodeSocket(),
			"--api=" + stowageAPI,
			"--token-file=" + l.StowageToken("csi-node"),
			"--node-id=" + c.NodeName,
			"--zone=" + c.Zone,
			"--state-dir=" + l.CSINodeState(),
			"--local-handoff=" + l.LocalHandoffSocket(),
			"--kubelet-registration-dir=" + l.PluginsRegistry(),
			"--metrics-address=" + NodeMetricsAddress,
		}}, Ready: func(ctx context.Context) error { return dialUnix(l.CSINodeSocket()) }},
		// The file driver, controller and node in one process; its mounts
		// are FUSE client processes of their own (or kernel NFS mounts),
		// which outlive a restart of it.
		{Name: "csi-file", Needs: []string{"stowage-server"}, Cmd: Command{Path: c.Stowage, Args: []string{
			"csi", "all", "--driver=file",
			"--endpoint=unix://" + fileSock,
			"--api=" + stowageAPI,
			"--token-file=" + l.StowageToken("csi-file"),
			"--node-id=" + c.NodeName,
			"--zone=" + c.Zone,
			"--state-dir=" + l.CSIFileState(),
			"--kubelet-registration-dir=" + l.PluginsRegistry(),
			"--metrics-address=" + FileDriverMetricsAddress,
		}}, Ready: func(ctx context.Context) error { return dialUnix(fileSock) }},
		// Volume names and claims' namespaces and names reach CreateVolume
		// (subPathPattern, reuseAccessPoint) through --extra-create-metadata.
		sidecarFor("csi-file-provisioner", "csi-provisioner", fileSock, "csi-file", "--extra-create-metadata", "--timeout=60s", "--retry-interval-start=500ms", "--retry-interval-max=30s"),
		sidecarFor("csi-file-resizer", "csi-resizer", fileSock, "csi-file", "--timeout=60s", "--handle-volume-inuse-error=false"),
		// Secrets in pods: Stowage's Secrets Store provider, the upstream
		// driver that calls it, and the driver's kubelet registration.
		{Name: "secrets-provider", Needs: []string{"stowage-server"}, Cmd: Command{Path: c.Stowage, Args: []string{
			"secrets-provider",
			"--providers-dir=" + l.SecretsProviders(),
			"--api=" + stowageAPI,
			"--token-file=" + l.StowageToken("secrets-provider"),
		}}, Ready: func(ctx context.Context) error { return dialUnix(filepath.Join(l.SecretsProviders(), "stowage.sock")) }},
		{Name: "secrets-store-csi-driver", Needs: []string{"kube-apiserver", "manifests", "secrets-provider"}, Cmd: Command{Path: bin("secrets-store-csi-driver"), Args: []string{
			"--endpoint=unix://" + l.SecretsStoreSocket(),
			"--nodeid=" + c.NodeName,
			"--provider-volume=" + l.SecretsProviders(),
			"--additional-provider-volume-paths=",
			"--metrics-addr=" + SecretsStoreMetricsAddress,
			"--enable-secret-rotation=true",
			"--rotation-poll-interval=" + SecretsRotationInterval.String(),
			"--provider-health-check=true",
			"--kubeconfig=" + kc("secrets-store-csi-driver"),
			"--v=2",
		}}, Ready: func(ctx context.Context) error { return dialUnix(l.SecretsStoreSocket()) }},
		{Name: "secrets-store-registrar", Needs: []string{"secrets-store-csi-driver"}, Cmd: Command{Path: c.Stowage, Args: []string{
			"kubelet-register",
			"--driver=" + SecretsStoreDriverName,
			"--csi-endpoint=unix://" + l.SecretsStoreSocket(),
			"--kubelet-registration-dir=" + l.PluginsRegistry(),
		}}, Ready: func(ctx context.Context) error {
			return dialUnix(filepath.Join(l.PluginsRegistry(), SecretsStoreDriverName+"-reg.sock"))
		}},
	}
	if len(c.Workers) > 0 {
		for i := range comps {
			if comps[i].Name == "stowage-server" {
				comps[i].Cmd.Args = append(comps[i].Cmd.Args, c.serverStoreArgs(l.StowageSocket())...)
				comps[i].Needs = append(comps[i].Needs, "etcd")
				// On etcd a server listens before it leads, and only the
				// leader issues the component tokens: ready once they are
				// there too (the drivers and agents started next read them).
				listening := comps[i].Ready
				comps[i].Ready = func(ctx context.Context) error {
					if err := listening(ctx); err != nil {
						return err
					}
					return c.tokensIssued()
				}
				comps[i].Cmd.Args = append(comps[i].Cmd.Args, "--bootstrap-node-tokens="+strings.Join(c.workerNames(), ","),
					// Volumes attach over NBD to the other nodes of their zone.
					"--nbd-listen="+c.nbdListen())
				// The other zones' block pools are on storage hosts of their
				// own, which register with the servers (the machine's node keeps pool-a
				// of its zone, in the server).
				comps[i].Cmd.Args = append(comps[i].Cmd.Args, c.serverStorageHostArgs()...)
				if len(c.StorageHosts) > 0 {
					// The network step writes the agent token it reads.
					comps[i].Needs = append(comps[i].Needs, "network")
					// File systems are on the storage hosts' file trees,
					// each served by its own nfs-ganesha, so that they stay
					// served whichever server leads (or none).
					comps[i].Cmd.Args = withoutArgs(comps[i].Cmd.Args, "--file-pool=", "--nfs-listen=")
				}
			}
		}
	}
	if len(c.Workers) > 0 {
		comps = append(comps, c.secondServer(comps))
	}
	if c.chartInstall() {
		comps = withoutChartReplaced(comps)
		for i := range comps {
			if comps[i].Name == "stowage-server" {
				comps[i].Cmd.Args = append(comps[i].Cmd.Args, "--listen="+c.ServerTCPAddress(),
					"--tls-cert-file="+pki.Cert(StowageAPICert), "--tls-key-file="+pki.Key(StowageAPICert))
				// The chart's agent pods register with it; the network
				// step writes the agent token it reads.
				comps[i].Cmd.Args = append(comps[i].Cmd.Args, c.serverStorageHostArgs()...)
				comps[i].Needs = append(comps[i].Needs, "network")
			}
		}
	}
	for _, n := range c.storageHostNodes() {
		comps = append(comps, c.storageHostComponents(n)...)
	}
	for i := range c.Workers {
		comps = append(comps, c.workerComponents(c.workerNode(i))...)
	}
	return comps
}

// ComponentNames are the names of a one-node cluster's Components, in
// start order.
func ComponentNames() []string { return (&Config{}).componentNames() }

func (c *Config) componentNames() []string {
	var names []string
	for _, comp := range c.Components() {
		names = append(names, comp.Name)
	}
	return names
}

// processNames are the components and the supervisor.
func (c *Config) processNames() []string { return append(c.componentNames(), Supervisor) }

// workerNames are the workers' node names.
func (c *Config) workerNames() []string {
	var names []string
	for _, w := range c.Workers {
		names = append(names, w.Name)
	}
	return names
}

func dialUnix(sock string) error {
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return err
	}
	return conn.Close()
}

// probe GETs url and expects a 200 whose body contains want. With user, it
// authenticates with that user's client certificate and checks the server
// against the cluster CA; without, it skips verification (components'
// self-signed health endpoints on loopback).
func (c *Config) probe(ctx context.Context, url, user, want string) error {
	tlsConf := &tls.Config{InsecureSkipVerify: true}
	if user != "" {
		pki := PKI{Dir: c.Layout().PKI()}
		cert, err := tls.LoadX509KeyPair(pki.Cert(user), pki.Key(user))
		if err != nil {
			return err
		}
		caPEM, err := os.ReadFile(pki.Cert(CA))
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		tlsConf = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}
	}
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	if want != "" && !strings.Contains(string(body), want) {
		return fmt.Errorf("%s: unexpected answer %q", url, strings.TrimSpace(string(body)))
	}
	return nil
}

// tail returns the last n lines of a log file, to say why a component died.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	const max = 16 << 10
	off := st.Size() - max
	if off < 0 {
		off = 0
	}
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
