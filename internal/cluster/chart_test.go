package cluster

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// On a chart install the host runs Kubernetes, the server and its KMS
// plugin, and none of what the chart's pods do; the server also listens on
// the node's address, where the pods reach it and its NFS.
func TestComponents_ChartInstall_DriversArePods(t *testing.T) {
	c := &Config{DataDir: "/var/lib/stowage", NodeName: "vm", Install: InstallChart}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	names := c.componentNames()
	for _, n := range chartReplaces {
		if slices.Contains(names, n) {
			t.Errorf("a chart install runs %s as a host process", n)
		}
	}
	for _, n := range []string{"containerd", "etcd", "stowage-server", "kms-plugin", "kube-apiserver", "kubelet", "kube-proxy"} {
		if !slices.Contains(names, n) {
			t.Errorf("a chart install does not run %s on the host", n)
		}
	}
	for _, comp := range c.Components() {
		if comp.Name != "stowage-server" {
			continue
		}
		args := strings.Join(comp.Cmd.Args, " ")
		// It takes the registration of the chart's agent pod on the node.
		for _, want := range []string{"--listen=unix://", "--listen=198.51.100.2:7420", "--nfs-listen=198.51.100.2:",
			"--agent-token-file=/var/lib/stowage/stowage/agent.token", "--bootstrap-storage-host-tokens=pool-vm"} {
			if !strings.Contains(args, want) {
				t.Errorf("the server's arguments lack %s: %s", want, args)
			}
		}
		if !slices.Contains(comp.Needs, "network") {
			t.Errorf("the server does not wait for the network step, which writes the agent token it reads: needs %v", comp.Needs)
		}
	}
	if got := c.nodeReadyNeeds(); !slices.Equal(got, []string{"kubelet", "kube-proxy", "chart"}) {
		t.Errorf("node ready waits for %v", got)
	}
	p := &Config{DataDir: "/var/lib/stowage", NodeName: "vm"}
	p.Validate()
	if !slices.Contains(p.componentNames(), "csi-node") {
		t.Errorf("a host-process install runs no node plugin: %v", p.componentNames())
	}
	for _, comp := range p.Components() {
		if comp.Name == "stowage-server" && strings.Contains(strings.Join(comp.Cmd.Args, " "), ":7420") {
			t.Errorf("a host-process install's server listens on TCP: %v", comp.Cmd.Args)
		}
	}
}

// The values up gives the chart render with the chart itself (helm
// template, its schema): the pods dial the server on the host, use the
// kubelet's directory of the local cluster and keep their state outside it.
func TestChartValues_RenderWithTheChart(t *testing.T) {
	helm := filepath.Join("..", "..", "_output", "bin", "helm")
	if _, err := os.Stat(helm); err != nil {
		t.Skip("helm is not built (hack/build-components.sh builds it): " + err.Error())
	}
	c := &Config{DataDir: "/var/lib/stowage", NodeName: "vm", Install: InstallChart, FSType: "xfs"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	imgs := []Image{{Name: ImageRepo + "/stowage:up-0123456789ab"}, {Name: ImageRepo + "/csi-provisioner:v5.1.0"}}
	values, err := c.ChartValues(imgs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ChartValues([]Image{{Name: "docker.io/library/busybox:1.36"}}); err == nil {
		t.Error("ChartValues took an image the chart does not run")
	}
	dir := t.TempDir()
	if err := writeChart(filepath.Join(dir, "stowage")); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(values)
	vf := filepath.Join(dir, "values.json")
	os.WriteFile(vf, data, 0o644)
	out, err := exec.Command(helm, "template", ChartRelease, filepath.Join(dir, "stowage"), "--namespace", ChartNamespace, "--values", vf).CombinedOutput()
	if err != nil {
		t.Fatalf("helm template with up's values: %v\n%s", err, out)
	}
	m := string(out)
	for _, want := range []string{
		"--api=198.51.100.2:7420",
		"image: localhost/stowage/stowage:up-0123456789ab",
		"--endpoint=unix:///var/lib/stowage/kubelet/plugins/block.csi.stowage.io/csi.sock",
		"path: /var/lib/stowage/csi-pods",
		"--local-handoff=/var/lib/stowage/run/local-handoff.sock",
		"name: stowage-gp3",
		"csi.storage.k8s.io/fstype: \"xfs\"",
		"--rotation-poll-interval=30s",
		"--zone-label=topology.kubernetes.io/zone",
		// The agent pod, on a labelled node, in a zone of its own.
		"--pool=name=pool-$(NODE_NAME),zone=zone-agents,node=$(NODE_NAME),size=10G",
		"--listen=$(HOST_IP):7109",
		"--server-token-file=/etc/stowage/tokens/storage-host-$(NODE_NAME)",
		"secretName: stowage-agent-token",
		`stowage.io/storage-host: "true"`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("the rendered chart lacks %q", want)
		}
	}
	if strings.Contains(m, "kind: StatefulSet") {
		t.Error("the rendered chart runs a server in the cluster; up's server is on the host")
	}
}
