package cluster

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/stowage-io/stowage/deploy/local"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "defaults", cfg: Config{DataDir: "/var/lib/stowage", NodeName: "n"}},
		{name: "overlapping ranges", cfg: Config{DataDir: "/d", NodeName: "n", PodCIDR: "198.18.0.0/15", ServiceCIDR: "198.19.0.0/16"}, wantErr: "overlap"},
		{name: "node inside pods", cfg: Config{DataDir: "/d", NodeName: "n", NodeIP: "198.18.5.5"}, wantErr: "inside"},
		{name: "IPv6 node", cfg: Config{DataDir: "/d", NodeName: "n", NodeIP: "fd00::2"}, wantErr: "IPv4"},
		{name: "root data dir", cfg: Config{DataDir: "/", NodeName: "n"}, wantErr: "cannot be /"},
		{name: "long data dir", cfg: Config{DataDir: "/" + strings.Repeat("d", 80), NodeName: "n"}, wantErr: "too long"},
		{name: "chart install", cfg: Config{DataDir: "/d", NodeName: "n", Install: InstallChart}},
		{name: "unknown install", cfg: Config{DataDir: "/d", NodeName: "n", Install: "helm"}, wantErr: `--install "helm": want processes (host processes) or chart`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tt.cfg.NodeIP != DefaultNodeIP || tt.cfg.PodCIDR != DefaultPodCIDR || tt.cfg.ServiceCIDR != DefaultServiceCIDR || tt.cfg.Zone != DefaultZone {
					t.Errorf("defaults not filled: %+v", tt.cfg)
				}
				if got := tt.cfg.ServiceIP().String(); got != "198.19.0.1" {
					t.Errorf("service IP %s, want 198.19.0.1", got)
				}
				if got := tt.cfg.PodGateway(); got != "198.18.0.1" {
					t.Errorf("pod gateway %s, want 198.18.0.1", got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestContainerdConfig_HasTheSettingsPodsNeedHere(t *testing.T) {
	c := testConfig(t)
	b, err := c.ContainerdConfig("/usr/lib/cni")
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	for _, want := range []string{
		"restrict_oom_score_adj = true",
		`sandbox_image = "` + PauseImage + `"`,
		`address = "` + c.Layout().ContainerdSocket() + `"`,
		`root = "` + filepath.Join(c.DataDir, "containerd", "root") + `"`,
		`bin_dir = "/usr/lib/cni"`,
		`conf_dir = "` + c.Layout().CNIConfDir() + `"`,
		"netns_mounts_under_state_dir = true",
		"SystemdCgroup = false",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("containerd config lacks %q:\n%s", want, conf)
		}
	}
}

func TestKubeletConfig(t *testing.T) {
	c := testConfig(t)
	b, err := c.KubeletConfig()
	if err != nil {
		t.Fatal(err)
	}
	var kc map[string]any
	if err := yaml.Unmarshal(b, &kc); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"kind":                     "KubeletConfiguration",
		"cgroupDriver":             "cgroupfs",
		"containerRuntimeEndpoint": "unix://" + c.Layout().ContainerdSocket(),
		"failCgroupV1":             false,
		"failSwapOn":               false,
		"address":                  DefaultNodeIP,
		"podLogsDir":               c.Layout().PodLogs(),
	} {
		if kc[k] != want {
			t.Errorf("%s = %v, want %v", k, kc[k], want)
		}
	}
	authn := kc["authentication"].(map[string]any)
	if authn["anonymous"].(map[string]any)["enabled"] != false || authn["webhook"].(map[string]any)["enabled"] != true {
		t.Errorf("authentication = %v, want webhook on and anonymous off", authn)
	}
}

func TestKubeProxyConfig(t *testing.T) {
	c := testConfig(t)
	b, err := c.KubeProxyConfig()
	if err != nil {
		t.Fatal(err)
	}
	var kc map[string]any
	if err := yaml.Unmarshal(b, &kc); err != nil {
		t.Fatal(err)
	}
	if kc["mode"] != "iptables" || kc["clusterCIDR"] != DefaultPodCIDR || kc["hostnameOverride"] != "node-1" {
		t.Errorf("kube-proxy config: %v", kc)
	}
	if np := kc["nodePortAddresses"].([]any); len(np) != 1 || np[0] != DefaultNodeIP+"/32" {
		t.Errorf("nodePortAddresses = %v, want only the node address", np)
	}
}

func TestCNIConfig_BridgeWithoutMasquerade(t *testing.T) {
	c := testConfig(t)
	b, err := c.CNIConfig()
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Name    string           `json:"name"`
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	if conf.Name != CNINetwork || len(conf.Plugins) != 2 || conf.Plugins[0]["type"] != "bridge" || conf.Plugins[1]["type"] != "portmap" {
		t.Fatalf("CNI config: %s", b)
	}
	br := conf.Plugins[0]
	if br["ipMasq"] != false || br["bridge"] != CNIBridge || br["isGateway"] != true {
		t.Errorf("bridge plugin: %v", br)
	}
	ipam := br["ipam"].(map[string]any)
	rng := ipam["ranges"].([]any)[0].([]any)[0].(map[string]any)
	if rng["subnet"] != DefaultPodCIDR || rng["gateway"] != "198.18.0.1" || ipam["dataDir"] != c.Layout().CNIIPAMDir() {
		t.Errorf("ipam: %v", ipam)
	}
}

func TestRenderFiles_WritesEveryFileOnceAndLeavesSameContentAlone(t *testing.T) {
	c := testConfig(t)
	if _, err := (PKI{Dir: c.Layout().PKI()}).Ensure(c.CertSpecs(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := c.renderFiles("/usr/lib/cni"); err != nil {
		t.Fatal(err)
	}
	files := []string{
		filepath.Join(c.Layout().Configs(), "containerd.toml"),
		filepath.Join(c.Layout().Configs(), "kubelet.yaml"),
		filepath.Join(c.Layout().Configs(), "kube-proxy.yaml"),
		filepath.Join(c.Layout().CNIConfDir(), "10-stowage.conflist"),
	}
	for _, u := range kubeconfigUsers {
		files = append(files, c.Layout().Kubeconfig(u))
	}
	mtimes := map[string]time.Time{}
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		mtimes[f] = st.ModTime()
	}
	if st, _ := os.Stat(c.Layout().AdminKubeconfig()); st.Mode().Perm() != 0o600 {
		t.Errorf("admin kubeconfig mode %v, want 0600", st.Mode().Perm())
	}
	time.Sleep(10 * time.Millisecond)
	if err := c.renderFiles("/usr/lib/cni"); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if st, _ := os.Stat(f); !st.ModTime().Equal(mtimes[f]) {
			t.Errorf("%s was rewritten with the same content", f)
		}
	}
}

func TestManifests_AreTheObjectsUpPromises(t *testing.T) {
	bundle, err := manifestBundle("")
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]map[string]any{}
	for _, doc := range strings.Split(string(bundle), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("%v in:\n%s", err, doc)
		}
		if obj == nil {
			continue
		}
		md := obj["metadata"].(map[string]any)
		found[obj["kind"].(string)+"/"+md["name"].(string)] = obj
	}
	for _, want := range []string{"CSIDriver/" + DriverName, "StorageClass/stowage-gp3", "StorageClass/stowage-io2", "VolumeSnapshotClass/stowage-snapshots",
		"ClusterRole/stowage:csi-provisioner", "ClusterRoleBinding/stowage:csi-attacher", "ClusterRoleBinding/stowage:snapshot-controller",
		"ClusterRoleBinding/stowage:node-volume-reads", "ClusterRoleBinding/stowage:stowage-server-tokenreview"} {
		if found[want] == nil {
			t.Errorf("deploy/local has no %s", want)
		}
	}
	gp3 := found["StorageClass/stowage-gp3"]
	if gp3["metadata"].(map[string]any)["annotations"].(map[string]any)["storageclass.kubernetes.io/is-default-class"] != "true" ||
		gp3["volumeBindingMode"] != "WaitForFirstConsumer" || gp3["allowVolumeExpansion"] != true || gp3["provisioner"] != DriverName {
		t.Errorf("stowage-gp3: %v", gp3)
	}
	if p := found["StorageClass/stowage-io2"]["parameters"].(map[string]any); p["type"] != "io2" || p["iops"] != "10000" {
		t.Errorf("stowage-io2 parameters: %v", p)
	}
	spec := found["CSIDriver/"+DriverName]["spec"].(map[string]any)
	if spec["attachRequired"] != true || spec["podInfoOnMount"] != false || spec["fsGroupPolicy"] != "File" {
		t.Errorf("CSIDriver spec: %v", spec)
	}
	if vsc := found["VolumeSnapshotClass/stowage-snapshots"]; vsc["driver"] != DriverName || vsc["deletionPolicy"] != "Delete" {
		t.Errorf("VolumeSnapshotClass: %v", vsc)
	}
	// Every identity the sidecars run as is bound.
	for _, s := range sidecarUsers() {
		if found["ClusterRoleBinding/stowage:"+s] == nil {
			t.Errorf("no ClusterRoleBinding for the %s identity", s)
		}
	}
	names, _ := fs.Glob(local.Manifests, "*.yaml")
	if len(names) < 4 {
		t.Errorf("embedded manifests: %v", names)
	}
}

// sidecarUsers are the sidecar identities with certificates.
func sidecarUsers() []string {
	return []string{"csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter", "snapshot-controller"}
}

func TestDefaultBinDir_FindsTheSourceTreesOutput(t *testing.T) {
	repo := t.TempDir()
	os.MkdirAll(filepath.Join(repo, "_output", "bin"), 0o755)
	os.MkdirAll(filepath.Join(repo, "bin"), 0o755)
	os.WriteFile(filepath.Join(repo, "go.mod"), []byte("module x\n"), 0o644)
	if got, want := DefaultBinDir(filepath.Join(repo, "bin", "stowage")), filepath.Join(repo, "_output", "bin"); got != want {
		t.Errorf("DefaultBinDir = %s, want %s", got, want)
	}
	if got := DefaultBinDir(filepath.Join(t.TempDir(), "stowage")); got != "/usr/local/lib/stowage/bin" {
		t.Errorf("DefaultBinDir outside a source tree = %s", got)
	}
}

func TestMissingBinaries_NamesEachOne(t *testing.T) {
	dir := t.TempDir()
	for _, b := range componentBinaries[1:] {
		os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\n"), 0o755)
	}
	os.MkdirAll(filepath.Join(dir, "crds"), 0o755)
	for _, f := range append(SnapshotCRDs[1:], SecretsStoreCRDs[1:]...) {
		os.WriteFile(filepath.Join(dir, "crds", f), nil, 0o644)
	}
	got := MissingBinaries(dir)
	if len(got) != 3 || got[0] != componentBinaries[0] ||
		!strings.Contains(got[1], SecretsStoreCRDs[0]+" (component secrets-store-crds)") ||
		!strings.Contains(got[2], SnapshotCRDs[0]+" (component snapshot-crds)") {
		t.Errorf("MissingBinaries = %v, want %s, %s and %s with their components", got, componentBinaries[0], SecretsStoreCRDs[0], SnapshotCRDs[0])
	}
	if got, want := crdName(SecretsStoreCRDs[0]), "secretproviderclasses.secrets-store.csi.x-k8s.io"; got != want {
		t.Errorf("crdName(%s) = %s, want %s", SecretsStoreCRDs[0], got, want)
	}
}

func TestParseRuleset_FindsChainsAndTheRulesThatJumpToThem(t *testing.T) {
	save := `# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:KUBE-SERVICES - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j DOCKER
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A KUBE-SERVICES -j CNI-HOSTPORT-DNAT
COMMIT
*filter
:FORWARD ACCEPT [0:0]
:STOWAGE-FORWARD - [0:0]
-A FORWARD -j STOWAGE-FORWARD
-A FORWARD -j ACCEPT
COMMIT
`
	match := func(c string) bool {
		return strings.HasPrefix(c, "KUBE-") || strings.HasPrefix(c, "CNI-") || c == guardChain
	}
	got := parseRuleset(save, match)
	if len(got) != 2 {
		t.Fatalf("tables: %+v", got)
	}
	nat, filter := got[0], got[1]
	if nat.table != "nat" || strings.Join(nat.chains, ",") != "KUBE-SERVICES,CNI-HOSTPORT-DNAT" {
		t.Errorf("nat chains: %+v", nat)
	}
	if len(nat.jumps) != 2 || !strings.Contains(nat.jumps[0], "kubernetes service portals") || !strings.HasPrefix(nat.jumps[1], "-A OUTPUT") {
		t.Errorf("nat jumps (only from chains that stay): %q", nat.jumps)
	}
	if filter.table != "filter" || len(filter.chains) != 1 || len(filter.jumps) != 1 || filter.jumps[0] != "-A FORWARD -j STOWAGE-FORWARD" {
		t.Errorf("filter: %+v", filter)
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`/var/lib/a\040b`: "/var/lib/a b",
		`/plain`:          "/plain",
		`/tab\011x\134y`:  "/tab\tx\\y",
		`/trailing\04`:    `/trailing\04`,
	} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}
