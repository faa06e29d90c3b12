package cluster

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"text/template"

	"sigs.k8s.io/yaml"
)

// The files `up` renders. Each is rewritten on every `up` (unchanged content
// leaves the file alone); a running component keeps the file it read.

// Kubeconfig renders a kubeconfig for user, with the CA and the user's
// client certificate embedded, so it can be copied elsewhere on this machine.
func (c *Config) Kubeconfig(user string) ([]byte, error) {
	pki := PKI{Dir: c.Layout().PKI()}
	ca, err := os.ReadFile(pki.Cert(CA))
	if err != nil {
		return nil, err
	}
	crt, err := os.ReadFile(pki.Cert(user))
	if err != nil {
		return nil, err
	}
	key, err := os.ReadFile(pki.Key(user))
	if err != nil {
		return nil, err
	}
	b64 := base64.StdEncoding.EncodeToString
	ctx := clusterName + "-" + user
	if user == "admin" {
		ctx = clusterName
	}
	kc := map[string]any{
		"apiVersion": "v1",
		"kind":       "Config",
		"clusters": []any{map[string]any{"name": clusterName, "cluster": map[string]any{
			"server": c.APIServerURL(), "certificate-authority-data": b64(ca)}}},
		"users": []any{map[string]any{"name": user, "user": map[string]any{
			"client-certificate-data": b64(crt), "client-key-data": b64(key)}}},
		"contexts":        []any{map[string]any{"name": ctx, "context": map[string]any{"cluster": clusterName, "user": user}}},
		"current-context": ctx,
		"preferences":     map[string]any{},
	}
	return yaml.Marshal(kc)
}

// CNIConfig is the pods' network: one bridge, addresses from the pod range,
// no masquerading (pod traffic never leaves the machine), host ports.
func (c *Config) CNIConfig() ([]byte, error) { return c.cniConfig(c.hostNode()) }

func (c *Config) cniConfig(n nodeView) ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       CNINetwork,
		"plugins": []any{
			map[string]any{
				"type":         "bridge",
				"bridge":       CNIBridge,
				"isGateway":    true,
				"ipMasq":       false,
				"hairpinMode":  true,
				"forceAddress": false,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": n.L.CNIIPAMDir(),
					"ranges":  []any{[]any{map[string]any{"subnet": n.PodCIDR, "gateway": gatewayOf(n.PodCIDR)}}},
					"routes":  []any{map[string]any{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]any{"portMappings": true}},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	return append(b, '\n'), err
}

var containerdTemplate = template.Must(template.New("containerd").Parse(`# Rendered by stowage up. containerd runs as a plain process with its own
# root, state and socket under the Stowage data directory.
version = 2
root = "{{.Root}}"
state = "{{.State}}"
oom_score = 0

[grpc]
  address = "{{.Socket}}"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{{.SandboxImage}}"
    # Root here may lack CAP_SYS_RESOURCE; without this runc cannot lower
    # oom_score_adj and every pod sandbox fails to start.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    disable_apparmor = true
    systemd_cgroup = false
    enable_unprivileged_ports = false
    enable_unprivileged_icmp = false
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{{.CNIBinDir}}"
      conf_dir = "{{.CNIConfDir}}"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          Root = "{{.RuncRoot}}"
          SystemdCgroup = false
  [plugins."io.containerd.internal.v1.opt"]
    path = "{{.Opt}}"
`))

// ContainerdConfig renders containerd's config.toml.
func (c *Config) ContainerdConfig(cniBinDir string) ([]byte, error) {
	return c.containerdConfig(c.hostNode(), cniBinDir)
}

func (c *Config) containerdConfig(n nodeView, cniBinDir string) ([]byte, error) {
	l := n.L
	var b bytes.Buffer
	err := containerdTemplate.Execute(&b, map[string]string{
		"Root":         filepath.Join(l.Containerd(), "root"),
		"State":        filepath.Join(l.Containerd(), "state"),
		"Socket":       l.ContainerdSocket(),
		"SandboxImage": PauseImage,
		"CNIBinDir":    cniBinDir,
		"CNIConfDir":   l.CNIConfDir(),
		"RuncRoot":     filepath.Join(l.Containerd(), "runc"),
		"Opt":          filepath.Join(l.Containerd(), "opt"),
	})
	return b.Bytes(), err
}

// KubeletConfig renders the KubeletConfiguration.
func (c *Config) KubeletConfig() ([]byte, error) { return c.kubeletConfig(c.hostNode()) }

func (c *Config) kubeletConfig(n nodeView) ([]byte, error) {
	l := n.L
	pki := PKI{Dir: c.Layout().PKI()}
	healthz := "127.0.0.1"
	if n.Netns != "" {
		// The machine probes it, from outside the worker's namespace.
		healthz = n.IP
	}
	kc := map[string]any{
		"apiVersion":         "kubelet.config.k8s.io/v1beta1",
		"kind":               "KubeletConfiguration",
		"address":            n.IP,
		"port":               10250,
		"readOnlyPort":       0,
		"healthzBindAddress": healthz,
		"healthzPort":        10248,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true},
			"x509":      map[string]any{"clientCAFile": pki.Cert(CA)},
		},
		"authorization":            map[string]any{"mode": "Webhook"},
		"tlsCertFile":              pki.Cert("kubelet-serving" + n.suffix()),
		"tlsPrivateKeyFile":        pki.Key("kubelet-serving" + n.suffix()),
		"cgroupDriver":             "cgroupfs",
		"containerRuntimeEndpoint": "unix://" + l.ContainerdSocket(),
		// cgroup v1 machines are still common; 1.35+ refuses them unless told.
		"failCgroupV1":  false,
		"failSwapOn":    false,
		"clusterDomain": clusterDomain,
		"resolvConf":    "/etc/resolv.conf",
		"podLogsDir":    l.PodLogs(),
		// Flex volume plugins are not used; keep the kubelet from creating
		// its default directory under /usr/libexec.
		"volumePluginDir": filepath.Join(l.KubeletRoot(), "volume-plugins"),
		// A developer machine's disk is often fuller than a node's: evict
		// only when it is really full, and never collect the local images,
		// which cannot be pulled again.
		"evictionHard": map[string]string{
			"memory.available":  "100Mi",
			"nodefs.available":  "1%",
			"nodefs.inodesFree": "1%",
			"imagefs.available": "1%",
		},
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"serializeImagePulls":         false,
		"maxPods":                     110,
		"rotateCertificates":          false,
		"serverTLSBootstrap":          false,
		"staticPodPath":               "",
		"protectKernelDefaults":       false,
		"shutdownGracePeriod":         "0s",
		// The attach/detach controller detaches a volume only after the
		// node's status stops listing it in use; a short status period
		// makes detaches (and so deletes) take seconds instead of ten or
		// more. Unchanged status is still reported only every 5 minutes.
		"nodeStatusUpdateFrequency": "2s",
		// A node that stops renewing its lease is NotReady after the
		// controller manager's --node-monitor-grace-period (NodeGracePeriod);
		// a 16 s lease is renewed every 4 s, five renewals in that period.
		"nodeLeaseDurationSeconds": 16,
	}
	if r := n.cgroupRoot(); r != "" {
		kc["cgroupRoot"] = "/" + r
	}
	return yaml.Marshal(kc)
}

// KubeProxyConfig renders the KubeProxyConfiguration: iptables mode, node
// ports only on the node address, no sysctl changes.
func (c *Config) KubeProxyConfig() ([]byte, error) { return c.kubeProxyConfig(c.hostNode()) }

func (c *Config) kubeProxyConfig(n nodeView) ([]byte, error) {
	healthz := "127.0.0.1:10256"
	if n.Netns != "" {
		healthz = n.IP + ":10256"
	}
	kc := map[string]any{
		"apiVersion":         "kubeproxy.config.k8s.io/v1alpha1",
		"kind":               "KubeProxyConfiguration",
		"clientConnection":   map[string]any{"kubeconfig": c.Layout().Kubeconfig("kube-proxy")},
		"mode":               "iptables",
		"clusterCIDR":        c.PodCIDR,
		"hostnameOverride":   n.Name,
		"bindAddress":        n.IP,
		"healthzBindAddress": healthz,
		"metricsBindAddress": "127.0.0.1:10249",
		"nodePortAddresses":  []string{n.IP + "/32"},
		"iptables":           map[string]any{"localhostNodePorts": false},
		// Zero leaves the machine's conntrack settings as they are.
		"conntrack": map[string]any{
			"maxPerCore":            0,
			"min":                   0,
			"tcpEstablishedTimeout": "0s",
			"tcpCloseWaitTimeout":   "0s",
		},
	}
	return yaml.Marshal(kc)
}

// renderFiles writes every configuration file and kubeconfig.
func (c *Config) renderFiles(cniBinDir string) error {
	l := c.Layout()
	for _, u := range c.kubeconfigUsers() {
		b, err := c.Kubeconfig(u)
		if err != nil {
			return fmt.Errorf("kubeconfig %s: %w", u, err)
		}
		if err := writeFileAtomic(l.Kubeconfig(u), b, 0o600); err != nil {
			return err
		}
	}
	files := []struct {
		path string
		gen  func() ([]byte, error)
	}{
		{l.EncryptionConfigFile(), func() ([]byte, error) {
			return EncryptionConfig(KMSProviderName, "unix://"+l.KMSPluginSocket(), 0)
		}},
	}
	for _, n := range c.nodes() {
		n := n
		nl := n.L
		files = append(files, []struct {
			path string
			gen  func() ([]byte, error)
		}{
			{filepath.Join(nl.Configs(), "containerd.toml"), func() ([]byte, error) { return c.containerdConfig(n, cniBinDir) }},
			{filepath.Join(nl.Configs(), "kubelet.yaml"), func() ([]byte, error) { return c.kubeletConfig(n) }},
			{filepath.Join(nl.Configs(), "kube-proxy.yaml"), func() ([]byte, error) { return c.kubeProxyConfig(n) }},
			{filepath.Join(nl.CNIConfDir(), "10-"+CNINetwork+".conflist"), func() ([]byte, error) { return c.cniConfig(n) }},
		}...)
	}
	for _, f := range files {
		b, err := f.gen()
		if err != nil {
			return fmt.Errorf("%s: %w", f.path, err)
		}
		if err := writeFileAtomic(f.path, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
