// Package multinode runs the behaviours that need several nodes on a
// 3-node, 3-zone cluster made by `stowage up --nodes 3 --zones
// zone-a,zone-b,zone-c`: every node but the machine's own is a network
// namespace with its own containerd, kubelet, kube-proxy and CSI node
// plugins.
//
//	go test ./multinode/ -count=1          # from test/e2e, as root
//
// It brings the cluster up itself when none runs and tears it down after,
// checking that nothing is left (mounts, loop devices, namespaces, links);
// a running cluster of 3 or more nodes is used as it is, and a running
// cluster of fewer nodes fails the run (stop it first: it cannot be
// reshaped while it runs).
package multinode

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	repoRoot   string
	stowageBin string
	kubectlBin string
	dataDir    = "/var/lib/stowage"
	kubeconfig string
	apiSocket  string
)

// zones are the nodes' zones, the machine's node first.
var zones = []string{"zone-a", "zone-b", "zone-c"}

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) (code int) {
	if os.Geteuid() != 0 {
		fmt.Println("multinode: FAIL: not run: it needs root (it runs a local Kubernetes with network namespaces and mounts)")
		return 1
	}
	var err error
	if repoRoot, err = filepath.Abs("../../.."); err != nil {
		fmt.Println(err)
		return 1
	}
	kubeconfig = filepath.Join(dataDir, "kubeconfig", "admin.kubeconfig")
	apiSocket = "unix://" + filepath.Join(dataDir, "run", "stowage-api.sock")
	stowageBin = filepath.Join(repoRoot, "bin", "stowage")
	kubectlBin = filepath.Join(repoRoot, "_output", "bin", "kubectl")
	step("building bin/stowage")
	if out, err := command(repoRoot, "go", "build", "-o", stowageBin, "./cmd/stowage").CombinedOutput(); err != nil {
		fmt.Printf("multinode: build stowage: %v\n%s", err, out)
		return 1
	}
	startedHere := false
	if exec.Command(stowageBin, "status", "--data-dir", dataDir).Run() == nil {
		if n := runningNodes(); n < len(zones) {
			fmt.Printf("multinode: FAIL: a cluster of %d node(s) runs from %s; these tests need %d: `stowage down` it first (this suite then brings up its own)\n", n, dataDir, len(zones))
			return 1
		}
	} else {
		step("no cluster runs: stowage up --nodes 3 --zones " + strings.Join(zones, ","))
		if out, err := command(repoRoot, "bash", "hack/build-components.sh").CombinedOutput(); err != nil {
			fmt.Printf("multinode: build components: %v\n%s", err, out)
			return 1
		}
		startedHere = true
		up := exec.Command(stowageBin, "up", "--data-dir", dataDir, "--nodes", "3", "--zones", strings.Join(zones, ","))
		up.Stdout, up.Stderr = os.Stdout, os.Stderr
		if err := up.Run(); err != nil {
			fmt.Println("multinode: stowage up:", err)
			down()
			return 1
		}
	}
	if startedHere && os.Getenv("STOWAGE_E2E_KEEP") != "1" {
		defer func() {
			if err := down(); err != nil {
				fmt.Println("multinode: FAIL: stowage down:", err)
				code = 1
			}
			if left := leftovers(); left != "" {
				fmt.Println("multinode: FAIL: left behind after stowage down:\n" + left)
				code = 1
			}
		}()
	}
	return m.Run()
}

// runningNodes is how many nodes the running cluster's config has.
func runningNodes() int {
	b, err := os.ReadFile(filepath.Join(dataDir, "cluster.json"))
	if err != nil {
		return 0
	}
	var c struct {
		Workers []json.RawMessage `json:"workers"`
	}
	json.Unmarshal(b, &c)
	return 1 + len(c.Workers)
}

func down() error {
	step("stowage down --wipe (this run started the cluster)")
	d := exec.Command(stowageBin, "down", "--wipe", "--data-dir", dataDir)
	d.Stdout, d.Stderr = os.Stdout, os.Stderr
	return d.Run()
}

// leftovers lists what of the cluster is still in the kernel: mounts under
// the data directory, loop devices backed by its files, network
// namespaces stowage-*, links stw-*.
func leftovers() string {
	var b strings.Builder
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], dataDir+"/") {
			fmt.Fprintf(&b, "mount %s (%s)\n", f[1], f[0])
		}
	}
	if out, _ := exec.Command("losetup", "-a").Output(); strings.Contains(string(out), dataDir+"/") {
		fmt.Fprintf(&b, "loop devices: %s\n", out)
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "stowage-") {
		fmt.Fprintf(&b, "network namespaces: %s\n", out)
	}
	if out, _ := exec.Command("ip", "-o", "link").Output(); strings.Contains(string(out), " stw-") {
		fmt.Fprintf(&b, "links: %s\n", out)
	}
	return b.String()
}

func step(msg string) { fmt.Printf("multinode %s: %s\n", time.Now().Format("15:04:05"), msg) }

func command(dir, name string, args ...string) *exec.Cmd {
	c := exec.Command(name, args...)
	c.Dir = dir
	return c
}

func kubectlErr(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, kubectlBin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	var stderr strings.Builder
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return strings.TrimSpace(string(out) + "\n" + stderr.String()), err
	}
	return strings.TrimSpace(string(out)), nil
}

func kubectl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := kubectlErr(stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func stowage(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	c := exec.Command(stowageBin, append(args, "--endpoint", apiSocket)...)
	c.Stdin = strings.NewReader(stdin)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("stowage %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		time.Sleep(time.Second)
	}
	t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, last)
}

// nodeOf is the node of a zone: the cluster's nodes are labelled with it.
func nodeOf(t *testing.T, zone string) string {
	t.Helper()
	out := kubectl(t, "", "get", "nodes", "-l", "topology.kubernetes.io/zone="+zone, "-o", "jsonpath={.items[*].metadata.name}")
	f := strings.Fields(out)
	if len(f) == 0 {
		t.Fatalf("no node in zone %s", zone)
	}
	return f[0]
}

// namespace makes a namespace for one test and deletes it afterwards.
func namespace(t *testing.T) string {
	t.Helper()
	ns := "mn-" + strings.ToLower(strings.NewReplacer("_", "-", "/", "-").Replace(t.Name()))
	if len(ns) > 60 {
		ns = ns[:60]
	}
	ns = strings.TrimRight(ns, "-")
	kubectlErr("", "delete", "namespace", ns, "--wait=true")
	kubectl(t, "", "create", "namespace", ns)
	t.Cleanup(func() { kubectlErr("", "delete", "namespace", ns, "--wait=true", "--timeout=120s") })
	waitFor(t, "the default service account of "+ns, time.Minute, func() (bool, error) {
		_, err := kubectlErr("", "-n", ns, "get", "serviceaccount", "default")
		return err == nil, nil
	})
	return ns
}

// podOn is a busybox pod pinned to node running script; mounts are the
// container's volumeMounts lines, volumes the pod's (YAML, indented).
func podOn(name, node, script, mounts, volumes string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, labels: {app: %s}}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", %q]
%s
%s`, name, name, node, script, mounts, volumes)
}

func waitRunning(t *testing.T, ns, pod string) {
	t.Helper()
	waitFor(t, "pod "+ns+"/"+pod+" Running", 2*time.Minute, func() (bool, error) {
		out, err := kubectlErr("", "-n", ns, "get", "pod", pod, "-o", "jsonpath={.status.phase}")
		return out == "Running", err
	})
}
