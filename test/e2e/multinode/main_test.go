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
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stowage-io/stowage/test/e2e/harness"
)

var (
	cluster    *harness.Cluster
	stowageBin string
	dataDir    = "/var/lib/stowage"
)

// zones are the zones; node i (from 1, the machine's first) is in
// zones[(i-1) % 3], so zone-a has two nodes: the machine's (its storage
// host) and the fourth.
var zones = []string{"zone-a", "zone-b", "zone-c"}

const nodes = 4

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) (code int) {
	repo, err := filepath.Abs("../../..")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	cluster = harness.New("multinode", repo, dataDir)
	stowageBin = cluster.Stowage
	enough := func() error {
		if n := runningNodes(); n < nodes {
			return fmt.Errorf("a cluster of %d node(s) runs from %s; these tests need %d: `stowage down` it first (this suite then brings up its own)", n, dataDir, nodes)
		}
		return nil
	}
	if err := cluster.Setup(enough, "--nodes", fmt.Sprint(nodes), "--zones", strings.Join(zones, ",")); err != nil {
		fmt.Println("multinode: FAIL:", err)
		return 1
	}
	defer func() {
		if problems := cluster.Teardown(); problems != "" {
			fmt.Println("multinode: FAIL: " + problems)
			code = 1
		}
	}()
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

func kubectlErr(stdin string, args ...string) (string, error) {
	return cluster.KubectlErr(stdin, args...)
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
	c := cluster.StowageCmd(args...)
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
// container's volumeMounts lines, volumes the pod's (YAML, indented). It
// is pinned by a node selector, not nodeName: a WaitForFirstConsumer
// claim binds only for a pod the scheduler places.
func podOn(name, node, script, mounts, volumes string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, labels: {app: %s}}
spec:
  nodeSelector: {kubernetes.io/hostname: %s}
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
