package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	chart "github.com/stowage-io/stowage/deploy/helm/stowage"
)

// How `stowage up` runs the CSI drivers and the secrets provider.
const (
	// InstallProcesses: host processes that the supervisor restarts.
	InstallProcesses = "processes"
	// InstallChart: the Helm chart's pods (deploy/helm/stowage), from
	// images built here, with the server, its KMS plugin and Kubernetes
	// itself on the host: the server is the cloud behind the drivers.
	InstallChart = "chart"
)

// The chart's release on the local cluster.
const (
	ChartRelease   = "stowage"
	ChartNamespace = "stowage-system"
	// ServerTCPPort is where the server listens on the node's address too
	// when the drivers are pods, which cannot reach its unix socket.
	ServerTCPPort = 7420
	// chartTokensSecret holds the components' tokens in ChartNamespace.
	chartTokensSecret = "stowage-tokens"
	// chartAgentTokenSecret holds the token the agent pods require.
	chartAgentTokenSecret = "stowage-agent-token"
	// ChartAgentZone is the zone of the agent pods' pools: a zone of its
	// own, so that the node's volumes stay in the server's pool (zone
	// c.Zone) and only a volume asked for in it goes to an agent.
	ChartAgentZone = "zone-agents"
	// ChartAgentNFSPort is where the chart's agent pod serves its file
	// tree's access points, on the node's address (host network).
	ChartAgentNFSPort = 12059
	// ChartStorageHostLabel marks a node whose agent pod runs (the
	// chart's agents.nodeSelector).
	ChartStorageHostLabel = "stowage.io/storage-host"
)

// chartReplaces are the host processes whose work the chart's pods do.
var chartReplaces = []string{
	"csi-controller", "csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter", "snapshot-controller",
	"csi-node", "csi-file", "csi-file-provisioner", "csi-file-resizer",
	"secrets-provider", "secrets-store-csi-driver", "secrets-store-registrar",
}

// chartManifests are the deploy/local files a chart install still applies:
// the rules for the host's server and for the nodes, which the chart leaves
// to the cluster's owner.
var chartManifests = []string{"05-node-volume-reads.yaml", "06-stowage-server-tokenreview.yaml"}

func (c *Config) chartInstall() bool { return c.Install == InstallChart }

// ServerTCPAddress is the server's address for the chart's pods.
func (c *Config) ServerTCPAddress() string {
	return net.JoinHostPort(c.NodeIP, strconv.Itoa(ServerTCPPort))
}

// withoutChartReplaced drops the host processes the chart replaces.
func withoutChartReplaced(comps []Component) []Component {
	return slices.DeleteFunc(comps, func(comp Component) bool { return slices.Contains(chartReplaces, comp.Name) })
}

// chartImages are the images the chart's pods run: the stowage image, tagged
// with a digest of the binary so that a new build rolls the pods, and one
// per upstream sidecar.
func (c *Config) chartImages() ([]Image, error) {
	sum, err := fileSHA256(c.Stowage)
	if err != nil {
		return nil, err
	}
	return RoleImages(c.Stowage, c.BinDir, "up-"+sum[:12])
}

func fileSHA256(p string) (string, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", sha256.Sum256(data)), nil
}

// chartImageKeys map an image's repository to its key in the chart's values.
var chartImageKeys = map[string]string{
	"stowage":                  "stowage",
	"csi-provisioner":          "csiProvisioner",
	"csi-attacher":             "csiAttacher",
	"csi-resizer":              "csiResizer",
	"csi-snapshotter":          "csiSnapshotter",
	"snapshot-controller":      "snapshotController",
	"secrets-store-csi-driver": "secretsStoreDriver",
}

// ChartValues are the chart's values for this cluster: the server outside
// the cluster (on the host), the kubelet's directories, the classes of
// deploy/local and imgs' tags.
func (c *Config) ChartValues(imgs []Image) (map[string]any, error) {
	l := c.Layout()
	images := map[string]any{"registry": ImageRepo, "pullPolicy": "IfNotPresent"}
	for _, img := range imgs {
		repo, tag, ok := strings.Cut(strings.TrimPrefix(img.Name, ImageRepo+"/"), ":")
		key := chartImageKeys[repo]
		if !ok || key == "" {
			return nil, fmt.Errorf("image %s is none the chart runs", img.Name)
		}
		images[key] = map[string]any{"repository": repo, "tag": tag}
	}
	fsType := c.FSType
	if fsType == "" {
		fsType = "ext4"
	}
	block := func(name, typ string, params map[string]any, def bool) map[string]any {
		params["type"] = typ
		params["csi.storage.k8s.io/fstype"] = fsType
		return map[string]any{"name": name, "default": def, "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer",
			"allowVolumeExpansion": true, "parameters": params}
	}
	return map[string]any{
		"image":      images,
		"kubeletDir": l.KubeletRoot(),
		"runDir":     l.Run(),
		"zone":       c.Zone,
		// The node plugins read their zone from the node's label, which
		// the kubelet sets (--node-labels), as on a cluster of several zones.
		"nodeZoneLabel": "topology.kubernetes.io/zone",
		"server": map[string]any{
			"tokensSecret": chartTokensSecret,
			"external":     map[string]any{"address": c.ServerTCPAddress()},
		},
		// One node: one controller, which still elects itself leader.
		"controller": map[string]any{"replicas": 1},
		// Not the data directory: it holds the kubelet's, and a plugin
		// whose state mount held the pods' volume mounts too could not
		// remove a mount point it had unmounted (EBUSY: its hidden copy).
		"node":               map[string]any{"stateDir": l.path("csi-pods")},
		"secretsProvider":    map[string]any{"providersDir": l.SecretsProviders()},
		"secretsStoreDriver": map[string]any{"enabled": true, "rotationPollInterval": SecretsRotationInterval.String()},
		"snapshotController": map[string]any{"enabled": true},
		// The pods dial the server's TCP address with TLS (its certificate
		// StowageAPICert), trusting ca.crt of the tokens Secret.
		"apiTLS": map[string]any{"enabled": true},
		// A storage host's agent as a pod, on the node once it is labelled
		// ChartStorageHostLabel=true: it registers pool-<node> with the
		// host's server. Ports apart from the server's own agent and NBD
		// listeners.
		"agents": map[string]any{"enabled": true, "zone": ChartAgentZone, "port": 7109, "nbdPort": 10819,
			"poolSize": "10G", "dataDir": l.path("agent-pods"), "tokenSecret": chartAgentTokenSecret,
			// Its file tree, NFS apart from the host server's ganesha.
			"fileTree":     map[string]any{"enabled": true, "size": "10G", "nfsPort": ChartAgentNFSPort},
			"nodeSelector": map[string]any{ChartStorageHostLabel: "true"}},
		"blockStorageClasses": []any{
			block("stowage-gp3", "gp3", map[string]any{}, true),
			block("stowage-io2", "io2", map[string]any{"iops": "10000"}, false),
		},
	}, nil
}

// installChart builds and imports the images, puts the components' tokens
// in a Secret and installs (or upgrades) the chart's release, waiting until
// its pods are ready.
func (c *Config) installChart(ctx context.Context) (string, error) {
	l := c.Layout()
	imgs, err := c.chartImages()
	if err != nil {
		return "", err
	}
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		return "", fmt.Errorf("ctr (package containerd) is not installed: %w", err)
	}
	imported := 0
	for _, img := range imgs {
		did, err := importImage(ctx, ctr, l.ContainerdSocket(), l.Images(), img)
		if err != nil {
			return "", err
		}
		if did {
			imported++
		}
	}
	k := c.kubectl()
	if _, err := k.run(ctx, []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"`+ChartNamespace+`"}}`), "apply", "-f", "-"); err != nil {
		return "", err
	}
	secret, err := c.chartTokens()
	if err != nil {
		return "", err
	}
	// On stdin: a token never goes in an argument list.
	if _, err := k.run(ctx, secret, "apply", "-f", "-"); err != nil {
		return "", err
	}
	values, err := c.ChartValues(imgs)
	if err != nil {
		return "", err
	}
	dir := l.path("chart")
	if err := writeChart(filepath.Join(dir, "stowage")); err != nil {
		return "", err
	}
	vf := filepath.Join(dir, "values.json")
	data, _ := json.MarshalIndent(values, "", "  ")
	if err := writeFileAtomic(vf, data, 0o644); err != nil {
		return "", err
	}
	helm := exec.CommandContext(ctx, filepath.Join(c.BinDir, "helm"), "upgrade", "--install", ChartRelease, filepath.Join(dir, "stowage"),
		"--namespace", ChartNamespace, "--values", vf, "--kubeconfig", l.AdminKubeconfig(), "--wait", "--timeout", "3m")
	helm.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(dir, "cache"), "HELM_CONFIG_HOME="+filepath.Join(dir, "config"),
		"HELM_DATA_HOME="+filepath.Join(dir, "data"))
	if out, err := helm.CombinedOutput(); err != nil {
		return "", fmt.Errorf("helm upgrade --install %s: %v\n%s\n  the release's pods: %s", ChartRelease, err, strings.TrimSpace(string(out)), c.chartPods(ctx))
	}
	rev, _ := k.get(ctx, "{.items[0].metadata.labels.version}", "secret", "-n", ChartNamespace, "-l", "owner=helm,name="+ChartRelease+",status=deployed")
	return fmt.Sprintf("release %s in %s (revision %s), %d of %d images imported, drivers at %s", ChartRelease, ChartNamespace, rev, imported, len(imgs), c.ServerTCPAddress()), nil
}

// chartPods is a line per pod of the release: name, phase, readiness.
func (c *Config) chartPods(ctx context.Context) string {
	out, err := c.kubectl().run(ctx, nil, "get", "pods", "-n", ChartNamespace, "-o", "wide")
	if err != nil {
		return err.Error()
	}
	return "\n" + indent(strings.TrimSpace(out))
}

// chartTokens are the Secrets of the chart's tokens, as a List: the
// components' (chartTokensSecret), from the tokens the server made at its
// start: csi-controller, csi-file, secrets-provider, csi-node-<node> and
// storage-host-<node> (the agent pod's, which registers pool-<node>), with
// ca.crt, the CA of the server's TLS certificate; and
// the agent token (chartAgentTokenSecret) that the agent pods require and
// the server presents.
func (c *Config) chartTokens() ([]byte, error) {
	l := c.Layout()
	read := func(p string) ([]byte, error) {
		tok, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("token %s (the server writes it at its start, the network step the agent token): %w", filepath.Base(p), err)
		}
		return []byte(strings.TrimSpace(string(tok))), nil
	}
	data := map[string][]byte{}
	for key, file := range map[string]string{"csi-controller": "csi-controller", "csi-file": "csi-file", "secrets-provider": "secrets-provider",
		"csi-node-" + c.NodeName: "csi-node", "storage-host-" + c.NodeName: storageHostTokenName(c.NodeName)} {
		tok, err := read(l.StowageToken(file))
		if err != nil {
			return nil, err
		}
		data[key] = tok
	}
	agent, err := read(l.AgentTokenFile())
	if err != nil {
		return nil, err
	}
	// The CA of the server's TLS certificate (apiTLS.enabled): not a
	// secret, but every component that reads its token reads it there.
	ca, err := os.ReadFile(PKI{Dir: l.PKI()}.Cert(CA))
	if err != nil {
		return nil, fmt.Errorf("the cluster's CA: %w", err)
	}
	data["ca.crt"] = ca
	secret := func(name string, data map[string][]byte) map[string]any {
		return map[string]any{"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
			"metadata": map[string]any{"name": name, "namespace": ChartNamespace}, "data": data}
	}
	return json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": []any{
		secret(chartTokensSecret, data), secret(chartAgentTokenSecret, map[string][]byte{"token": agent})}})
}

// writeChart writes the embedded chart to dir, replacing what is there.
func writeChart(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return fs.WalkDir(chart.Chart, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, p)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		data, err := fs.ReadFile(chart.Chart, p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	})
}
