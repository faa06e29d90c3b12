package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The chart's release on the local cluster (stowage up --install=chart).
const (
	chartNamespace = "stowage-system"
	nodePluginSel  = "app.kubernetes.io/instance=stowage,app.kubernetes.io/component=csi-node"
	controllerSel  = "app.kubernetes.io/instance=stowage,app.kubernetes.io/component=csi-controller"
)

// needsChart skips a test of the chart's pods on a host-process install.
func needsChart(t *testing.T) {
	t.Helper()
	if !chartInstall {
		t.Skip("tests the Helm chart's pods: run with STOWAGE_E2E_INSTALL=chart (hack/test.sh does)")
	}
}

// needsHostProcesses skips a test that stops or reads the drivers' host
// processes on a chart install, where the drivers are pods.
func needsHostProcesses(t *testing.T) {
	t.Helper()
	if chartInstall {
		t.Skip("stops or reads the drivers' host processes; with STOWAGE_E2E_INSTALL=chart the drivers are the chart's pods")
	}
}

// releasePod is the one running pod of the release matching selector.
func releasePod(t *testing.T, selector string) corev1.Pod {
	t.Helper()
	var found corev1.Pod
	waitFor(t, "one running pod "+selector, podTimeout, func() (bool, error) {
		pl, err := kube.CoreV1().Pods(chartNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err
		}
		var running []corev1.Pod
		for _, p := range pl.Items {
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
				running = append(running, p)
			}
		}
		if len(running) != 1 {
			return false, nil
		}
		found = running[0]
		return true, nil
	})
	return found
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitReady waits until the pod of selector is Ready (want) or not.
func waitReady(t *testing.T, selector string, want bool, timeout time.Duration) corev1.Pod {
	t.Helper()
	var p corev1.Pod
	waitFor(t, fmt.Sprintf("pod %s Ready=%v", selector, want), timeout, func() (bool, error) {
		pl, err := kube.CoreV1().Pods(chartNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err
		}
		for _, q := range pl.Items {
			if q.DeletionTimestamp == nil && q.Status.Phase == corev1.PodRunning && podReady(&q) == want {
				p = q
				return true, nil
			}
		}
		return false, nil
	})
	return p
}

// The node plugin's pod is deleted (an upgrade, an eviction) while a pod
// writes to its block volume: the writer keeps writing, without an I/O
// error, and the new plugin pod, from the state the old one left on the
// host, unmounts and detaches the volume when the writer goes.
func TestChart_NodePluginPodDeletedUnderWriter(t *testing.T) {
	needsChart(t)
	pluginPodDeletedUnderWriter(t, claim("data", "", "1Gi"), func(pv *corev1.PersistentVolume) []string {
		waitVolumeGone(t, pv.Spec.CSI.VolumeHandle)
		mounts, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for _, l := range strings.Split(string(mounts), "\n") {
			if strings.Contains(l, pv.Name) {
				left = append(left, l)
			}
		}
		return left
	})
}

// The same for a file volume: its FUSE NFS client is the node runner's
// child, not the plugin's, so the mount serves on while the plugin's pod
// is deleted and comes back.
func TestChart_FileNodePluginPodDeletedUnderWriter(t *testing.T) {
	needsChart(t)
	pluginPodDeletedUnderWriter(t, claim("data", "stowage-efs", "1Gi", corev1.ReadWriteMany), func(pv *corev1.PersistentVolume) []string {
		h := pv.Spec.CSI.VolumeHandle
		return fuseMountsOf(t, h[strings.LastIndex(h, ":")+1:])
	})
}

// pluginPodDeletedUnderWriter deletes the node plugin's pod while a pod
// appends to and fsyncs a file on c's volume: the writer goes on without
// an error or a restart, and the new plugin pod tears the volume down when
// the writer and its claim go (left lists what is still mounted of it).
func pluginPodDeletedUnderWriter(t *testing.T, c *corev1.PersistentVolumeClaim, left func(*corev1.PersistentVolume) []string) {
	ns := namespace(t)
	createPVC(t, ns, c)
	// It fails (and its pod ends) on the first write or fsync that fails.
	createPod(t, ns, pod("writer", `set -e; i=0; while true; do i=$((i+1)); echo "line $i" >> /data/log; sync /data/log; sleep 0.1; done`, "data"))
	waitPodPhase(t, ns, "writer", corev1.PodRunning)
	pv := pvOf(t, ns, "data")
	lines := func() int {
		out, err := kubectlErr("", "-n", ns, "exec", "writer", "--", "sh", "-c", "wc -l < /data/log")
		if err != nil {
			t.Fatalf("count the writer's lines: %v: %s", err, out)
		}
		n, err := strconv.Atoi(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("wc -l: %q", out)
		}
		return n
	}
	waitFor(t, "the writer's first lines", time.Minute, func() (bool, error) { return lines() > 5, nil })

	old := releasePod(t, nodePluginSel)
	step("delete the node plugin's pod " + old.Name + " under the writer")
	if err := kube.CoreV1().Pods(chartNamespace).Delete(context.Background(), old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod "+old.Name+" gone", podTimeout, func() (bool, error) {
		_, err := kube.CoreV1().Pods(chartNamespace).Get(context.Background(), old.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	before := lines()
	nu := waitReady(t, nodePluginSel, true, podTimeout)
	if nu.Name == old.Name {
		t.Fatalf("the node plugin's pod is still %s", old.Name)
	}
	time.Sleep(2 * time.Second)
	if after := lines(); after <= before {
		t.Fatalf("the writer wrote nothing after the node plugin's pod came back (%d lines, then %d)", before, after)
	}
	w, err := kube.CoreV1().Pods(ns).Get(context.Background(), "writer", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if w.Status.Phase != corev1.PodRunning || w.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Fatalf("the writer is %s with %d restarts, want Running without one\n%s", w.Status.Phase, w.Status.ContainerStatuses[0].RestartCount, describe(ns, "pod", "writer"))
	}

	// The new plugin pod tears the volume down.
	if err := kube.CoreV1().Pods(ns).Delete(context.Background(), "writer", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, ns, "writer")
	if err := kube.CoreV1().PersistentVolumeClaims(ns).Delete(context.Background(), "data", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the volume's PV gone", 2*time.Minute, func() (bool, error) {
		_, err := kube.CoreV1().PersistentVolumes().Get(context.Background(), pv.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if l := left(pv); len(l) > 0 {
		t.Fatalf("mounts of %s are left after its pod and claim went:\n%s", pv.Name, strings.Join(l, "\n"))
	}
}

// With the Stowage server unreachable (paused), the drivers' pods go
// not-Ready; their log and the kubelet's event say which endpoint they
// tried. They are Ready again once it answers.
func TestChart_ServerUnreachable_DriversNotReady(t *testing.T) {
	needsChart(t)
	waitReady(t, nodePluginSel, true, podTimeout)
	b, err := os.ReadFile(filepath.Join(dataDir, "run", "stowage-server.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	endpoint := nodePluginArg(t, "--api=")
	step(fmt.Sprintf("pause the Stowage server (pid %d, %s)", pid, endpoint))
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	p := waitReady(t, nodePluginSel, false, time.Minute)
	waitReady(t, controllerSel, false, time.Minute)
	logs := kubectl(t, "", "-n", chartNamespace, "logs", p.Name, "-c", "block-node", "--since=2m")
	if !strings.Contains(logs, "not ready") || !strings.Contains(logs, endpoint) {
		t.Errorf("the node plugin's log does not say it is not ready naming %s:\n%s", endpoint, logs)
	}
	waitFor(t, "an Unhealthy event of "+p.Name+" naming "+endpoint, time.Minute, func() (bool, error) {
		evs, err := kube.CoreV1().Events(chartNamespace).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + p.Name + ",reason=Unhealthy"})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if strings.Contains(e.Message, endpoint) {
				return true, nil
			}
		}
		return false, nil
	})
	resume()
	step("resume the Stowage server")
	waitReady(t, nodePluginSel, true, time.Minute)
	waitReady(t, controllerSel, true, time.Minute)
}

// nodePluginArg is the value of the block node plugin's argument flag
// ("--api="); the test fails when it has none.
func nodePluginArg(t *testing.T, flag string) string {
	t.Helper()
	args := strings.TrimSpace(kubectl(t, "", "-n", chartNamespace, "get", "daemonset", "stowage-csi-node", "-o",
		`jsonpath={.spec.template.spec.containers[0].args[?(@)]}`))
	i := strings.Index(args, flag)
	if i < 0 {
		t.Fatalf("the node plugin has no %s argument: %s", flag, args)
	}
	return strings.Fields(args[i+len(flag):])[0]
}

// The chart's pods dial the server's TCP address with TLS (apiTLS, which
// stowage up --install=chart sets): they trust ca.crt of the tokens
// Secret, the cluster's CA, which signs the server's certificate. A
// client with that CA is served there; one without it is told to give
// --ca-file.
func TestChart_DriversDialTheServerWithTLS(t *testing.T) {
	needsChart(t)
	waitReady(t, nodePluginSel, true, podTimeout)
	endpoint := nodePluginArg(t, "--api=")
	if ca := nodePluginArg(t, "--ca-file="); ca != "/etc/stowage/tokens/ca.crt" {
		t.Errorf("the node plugin trusts %s, want the tokens Secret's ca.crt", ca)
	}
	if got := kubectl(t, "", "-n", chartNamespace, "get", "secret", "stowage-tokens", "-o", `jsonpath={.data.ca\.crt}`); got == "" {
		t.Error("the tokens Secret has no ca.crt")
	}
	admin := filepath.Join(dataDir, "stowage", "tokens", "admin")
	ca := filepath.Join(dataDir, "pki", "ca.crt")
	out, code := stowage("--endpoint", endpoint, "--token-file", admin, "--ca-file", ca, "pool", "list")
	if code != 0 || !strings.Contains(out, "pool-a") {
		t.Fatalf("pool list at %s over TLS with the cluster's CA: exit %d: %s", endpoint, code, out)
	}
	t.Setenv("STOWAGE_CA_FILE", "")
	out, code = stowage("--endpoint", endpoint, "--token-file", admin, "--timeout", "5s", "pool", "list")
	if code != 5 || !strings.Contains(out, "--ca-file") {
		t.Fatalf("pool list at %s in clear: exit %d: %s; want exit 5 (unreachable) saying to give --ca-file", endpoint, code, out)
	}
}

// Each Stowage container of the chart serves Prometheus metrics on its
// port named "metrics" (metrics.enabled): the host reaches the pods'
// addresses, as a Prometheus in the cluster would.
func TestChart_MetricsOnThePodsPorts(t *testing.T) {
	needsChart(t)
	for sel, want := range map[string]string{
		nodePluginSel: "stowage_node_limits_enforced",
		controllerSel: "stowage_",
	} {
		p := releasePod(t, sel)
		for _, c := range p.Spec.Containers {
			for _, port := range c.Ports {
				if port.Name != "metrics" {
					continue
				}
				url := fmt.Sprintf("http://%s:%d/metrics", p.Status.PodIP, port.ContainerPort)
				resp, err := http.Get(url)
				if err != nil {
					t.Errorf("pod %s container %s: %v", p.Name, c.Name, err)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "stowage_") {
					t.Errorf("%s (pod %s container %s): %d, %d bytes without a stowage_ metric", url, p.Name, c.Name, resp.StatusCode, len(body))
				}
				if c.Name == "block-node" {
					if !strings.Contains(string(body), want) {
						t.Errorf("%s lacks %s", url, want)
					}
				}
			}
		}
	}
}

// The chart's in-cluster server (server.external.address empty): its
// StatefulSet, rendered by the chart alone (the release's drivers already
// run on this cluster, so the test applies only templates/server.yaml, in
// a namespace of its own), runs in a privileged pod on a claim of the
// cluster's own block storage; its sized pools become xfs images inside
// the pod, it answers its components' tokens over its Service, and its
// volumes outlive the pod's restart (bbolt on the claim).
func TestChart_InClusterServer(t *testing.T) {
	needsChart(t)
	ns := namespace(t)
	image := kubectl(t, "", "-n", chartNamespace, "get", "daemonset", "stowage-csi-node", "-o", "jsonpath={.spec.template.spec.containers[0].image}")
	repo, tag, ok := strings.Cut(strings.TrimPrefix(image, "localhost/stowage/"), ":")
	if !ok || repo != "stowage" {
		t.Fatalf("the node plugin's image %q is not localhost/stowage/stowage:<tag>", image)
	}
	runDir := filepath.Join(dataDir, "e2e-in-cluster-server-run")
	t.Cleanup(func() { os.RemoveAll(runDir) })
	out, err := exec.Command(filepath.Join(repoRoot, "_output", "bin", "helm"), "template", "srv", filepath.Join(repoRoot, "deploy", "helm", "stowage"),
		"--namespace", ns, "--show-only", "templates/server.yaml",
		"--set", "image.stowage.tag="+tag, "--set", "runDir="+runDir, "--set", "metrics.enabled=false",
		"--set", "server.inCluster.storage.storageClassName="+defaultClass, "--set", "server.inCluster.storage.size=3Gi",
		"--set", `server.inCluster.pools[0]=name=pool-x\,zone=zone-a\,size=1G`,
		"--set", `server.inCluster.filePools[0]=name=files-x\,zone=zone-a\,size=1G`).CombinedOutput()
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	kubectl(t, string(out), "-n", ns, "apply", "-f", "-")
	t.Cleanup(func() {
		kubectlErr(string(out), "-n", ns, "delete", "-f", "-", "--wait=true")
		kubectlErr("", "-n", ns, "delete", "pvc", "data-srv-server-0", "--wait=true")
	})
	// Through its Service (by address: the local cluster runs no cluster
	// DNS), with a token the server made at its start: the block
	// controller's, which may create volumes.
	svcIP := kubectl(t, "", "-n", ns, "get", "service", "srv-server", "-o", "jsonpath={.spec.clusterIP}")
	cli := func(args ...string) (string, error) {
		return kubectlErr("", append([]string{"-n", ns, "exec", "srv-server-0", "--", "stowage", "--endpoint", svcIP + ":7420",
			"--token-file", "/var/lib/stowage/tokens/csi-controller", "--timeout", "10s"}, args...)...)
	}
	serving := func() {
		waitPodPhase(t, ns, "srv-server-0", corev1.PodRunning)
		var last string
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("the last pool list: %s\nthe server's log:\n%s", last, must(kubectlErr("", "-n", ns, "logs", "srv-server-0", "--tail=30")))
			}
		})
		waitFor(t, "the in-cluster server to answer with its pools", 2*time.Minute, func() (bool, error) {
			out, err := cli("pool", "list")
			last = fmt.Sprint(out, err)
			return err == nil && strings.Contains(out, "pool-x"), nil
		})
		// Its file pool, a btrfs image, served by nfs-ganesha from the image.
		logs := must(kubectlErr("", "-n", ns, "logs", "srv-server-0"))
		for _, want := range []string{`msg="file-tree pool ready" pool=files-x`, `msg="NFS serving"`} {
			if !strings.Contains(logs, want) {
				t.Errorf("the in-cluster server's log lacks %s:\n%s", want, logs)
			}
		}
	}
	serving()
	created, err := cli("volume", "create", "--name", "in-cluster", "--size", "1", "--zone", "zone-a", "-o", "json")
	if err != nil {
		t.Fatalf("volume create on the in-cluster server: %v\n%s", err, created)
	}
	var vol struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(created), &vol); err != nil || vol.ID == "" {
		t.Fatalf("volume create printed %q (%v)", created, err)
	}
	// Its pool is an xfs image the server made and mounted inside its pod:
	// clones by reflink.
	if out, err := cli("pool", "list"); err != nil || !strings.Contains(out, "reflink") {
		t.Errorf("the in-cluster server's pool does not clone by reflink (an xfs image): %v\n%s", err, out)
	}
	step("restart the in-cluster server's pod; its volume must still be there")
	kubectl(t, "", "-n", ns, "delete", "pod", "srv-server-0", "--wait=true")
	serving()
	if out, err := cli("volume", "describe", vol.ID); err != nil || !strings.Contains(out, "in-cluster") {
		t.Fatalf("after the restart, volume %s: %v\n%s", vol.ID, err, out)
	}
	if out, err := cli("volume", "delete", vol.ID); err != nil {
		t.Errorf("volume delete: %v\n%s", err, out)
	}
}

// must is s, with err appended when there is one (for test logs).
func must(s string, err error) string {
	if err != nil {
		return s + " (" + err.Error() + ")"
	}
	return s
}

// The chart's agent pod (agents.enabled, which stowage up --install=chart
// sets, on nodes labelled stowage.io/storage-host=true) is a storage host:
// it registers its pool pool-<node> with the server on the host, which
// connects back to it through the agent API and places volumes of its zone
// there. The volume lives in the pod's pool, and after the pod is deleted
// and recreated the server reconnects and acts on it again.
func TestChart_AgentPodRegistersItsPool(t *testing.T) {
	needsChart(t)
	const (
		label    = "stowage.io/storage-host"
		zone     = "zone-agents"
		agentSel = "app.kubernetes.io/instance=stowage,app.kubernetes.io/component=agent"
	)
	nodes, err := kube.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 1 {
		t.Fatalf("want the chart cluster's one node: %v (%d nodes)", err, len(nodes.Items))
	}
	node := nodes.Items[0].Name
	pool := "pool-" + node
	step("label node " + node + " " + label + "=true: the agent DaemonSet runs a pod there")
	kubectl(t, "", "label", "node", node, label+"=true", "--overwrite")
	t.Cleanup(func() {
		kubectlErr("", "label", "node", node, label+"-")
		waitFor(t, "the agent pod gone after the label", podTimeout, func() (bool, error) {
			pl, err := kube.CoreV1().Pods(chartNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: agentSel})
			return err == nil && len(pl.Items) == 0, err
		})
		// Its agent gone, the server forgets its pool, and stops trying
		// to reconnect to it.
		if out, code := stowage("pool", "deregister", pool); code != 0 || !strings.Contains(out, "deregistered") {
			t.Errorf("stowage pool deregister %s: exit %d: %s", pool, code, out)
		}
	})
	agentLog := func(p corev1.Pod) string {
		return must(kubectlErr("", "-n", chartNamespace, "logs", p.Name, "--tail=40"))
	}
	registered := func(p corev1.Pod) {
		t.Helper()
		var last string
		defer func() {
			if t.Failed() {
				t.Logf("the last pool list: %s\nthe agent's log:\n%s", last, agentLog(p))
			}
		}()
		waitFor(t, pool+" listed by the server in "+zone, 2*time.Minute, func() (bool, error) {
			out, code := stowage("pool", "list", "-o", "json")
			last = out
			if code != 0 {
				return false, nil
			}
			var resp struct {
				Pools []struct{ Name, Zone string } `json:"pools"`
			}
			if err := json.Unmarshal([]byte(out), &resp); err != nil {
				return false, fmt.Errorf("pool list -o json: %v: %s", err, out)
			}
			for _, p := range resp.Pools {
				if p.Name == pool {
					if p.Zone != zone {
						return false, fmt.Errorf("pool %s is in zone %q, want %q", pool, p.Zone, zone)
					}
					return true, nil
				}
			}
			return false, nil
		})
	}
	p := releasePod(t, agentSel)
	registered(p)

	out, code := stowage("volume", "create", "--name", "on-agent-pod", "--size", "1", "--zone", zone, "-o", "json")
	if code != 0 {
		t.Fatalf("volume create in %s: exit %d: %s", zone, code, out)
	}
	var vol struct{ ID, Pool string }
	if err := json.Unmarshal([]byte(out), &vol); err != nil || vol.ID == "" {
		t.Fatalf("volume create printed %q (%v)", out, err)
	}
	t.Cleanup(func() { stowage("volume", "delete", vol.ID) })
	if vol.Pool != pool {
		t.Fatalf("volume %s in %s went to pool %q, want the agent pod's %s", vol.ID, zone, vol.Pool, pool)
	}
	// The image is in the pool the pod mounted (an xfs image in its own
	// mount namespace, not seen from the host).
	dir := filepath.Join(dataDir, "agent-pods", "pools", pool, "volumes")
	inPod := func(p corev1.Pod) string {
		return must(kubectlErr("", "-n", chartNamespace, "exec", p.Name, "--", "sh", "-c", "echo "+dir+"/*"))
	}
	if got := inPod(p); !strings.Contains(got, vol.ID) {
		t.Errorf("the agent pod's %s does not hold volume %s: %s", dir, vol.ID, got)
	}

	// A One Zone file system of its zone is on the pod's file tree, served
	// by the pod's own nfs-ganesha on the node's address: a claim of a
	// class for it is mounted by the file node plugin from there, and what
	// the pod writes lands in the agent pod's tree.
	step("a file system in " + zone + " on the agent pod's file tree; a pod writes through its NFS")
	out, code = stowage("fs", "create", "--name", "on-agent-pod", "--zone", zone, "-o", "json")
	if code != 0 {
		t.Fatalf("fs create in %s: exit %d: %s", zone, code, out)
	}
	var fs struct {
		ID         string `json:"id"`
		Pool       string `json:"pool"`
		NfsAddress string `json:"nfsAddress"`
	}
	if err := json.Unmarshal([]byte(out), &fs); err != nil || fs.ID == "" {
		t.Fatalf("fs create printed %q (%v)", out, err)
	}
	t.Cleanup(func() {
		waitFor(t, "file system "+fs.ID+" deleted (its access points gone first)", 2*time.Minute, func() (bool, error) {
			out, code := stowage("fs", "delete", fs.ID)
			return code == 0 || strings.Contains(out, "not found"), nil
		})
	})
	if fs.Pool != pool || !strings.HasSuffix(fs.NfsAddress, ":12059") {
		t.Fatalf("file system %s: pool %q, NFS at %q; want the agent pod's %s, served at <node IP>:12059", fs.ID, fs.Pool, fs.NfsAddress, pool)
	}
	// Its volumes (One Zone: zone-agents, where no node is) are not
	// mounted by a pod here; an NFS client on the host reaches the pod's
	// nfs-ganesha, as a node of that zone would.
	out, code = stowage("ap", "create", "--fs", fs.ID, "--path", "/shared", "--uid", "1000", "--gid", "1000", "--permissions", "0750", "-o", "json")
	if code != 0 {
		t.Fatalf("ap create on %s: exit %d: %s", fs.ID, code, out)
	}
	var ap struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out), &ap); err != nil || ap.ID == "" {
		t.Fatalf("ap create printed %q (%v)", out, err)
	}
	t.Cleanup(func() { stowage("ap", "delete", ap.ID) })
	src := filepath.Join(t.TempDir(), "f.txt")
	if err := os.WriteFile(src, []byte("through-the-agent-pod\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(fs.NfsAddress)
	url := fmt.Sprintf("nfs://%s/%s/f.txt?version=4&nfsport=%s&uid=4321&gid=4321", host, ap.ID, port)
	waitFor(t, "nfs-cp through the agent pod's nfs-ganesha at "+fs.NfsAddress, time.Minute, func() (bool, error) {
		out, err := exec.Command("nfs-cp", src, url).CombinedOutput()
		if err != nil {
			t.Logf("nfs-cp: %v: %s", err, out)
		}
		return err == nil, nil
	})
	// It is in the pod's tree (the stowage image has a shell, no stat)...
	tree := filepath.Join(dataDir, "agent-pods", "files", pool, "filesystems", fs.ID, "shared")
	if got := must(kubectlErr("", "-n", chartNamespace, "exec", p.Name, "--", "sh", "-c", "echo "+tree+"/*")); !strings.Contains(got, tree+"/f.txt") {
		t.Errorf("the agent pod's tree %s holds %q, want f.txt", tree, got)
	}
	// ...owned by the access point's user, as the file system's own
	// (unsquashed) export shows.
	ls, err := exec.Command("nfs-ls", fmt.Sprintf("nfs://%s/%s/shared?version=4&nfsport=%s&uid=0&gid=0", host, fs.ID, port)).CombinedOutput()
	var line string
	for _, l := range strings.Split(string(ls), "\n") {
		if strings.Contains(l, "f.txt") {
			line = l
		}
	}
	if err != nil || strings.Count(" "+strings.Join(strings.Fields(line), "  ")+" ", " 1000 ") < 2 || strings.Contains(line, "4321") {
		t.Errorf("nfs-ls of the file system's export: %v: %q; want f.txt owned by 1000:1000 (written as 4321 through the access point)", err, ls)
	}

	step("delete the agent pod " + p.Name + "; its DaemonSet recreates it and the server reconnects")
	kubectl(t, "", "-n", chartNamespace, "delete", "pod", p.Name, "--wait=true")
	p = waitReady(t, agentSel, true, podTimeout)
	registered(p)
	var snap struct{ ID string }
	waitFor(t, "a snapshot of "+vol.ID+" through the recreated agent pod", time.Minute, func() (bool, error) {
		out, code := stowage("snapshot", "create", vol.ID, "--name", "after-restart", "-o", "json")
		if code != 0 {
			t.Logf("snapshot create: exit %d: %s", code, out)
			return false, nil
		}
		return json.Unmarshal([]byte(out), &snap) == nil && snap.ID != "", nil
	})
	if got := inPod(p); !strings.Contains(got, vol.ID) {
		t.Errorf("after the restart, the agent pod's %s does not hold volume %s: %s", dir, vol.ID, got)
	}
	if out, code := stowage("snapshot", "delete", snap.ID); code != 0 {
		t.Errorf("snapshot delete %s: exit %d: %s", snap.ID, code, out)
	}
	if out, code := stowage("volume", "delete", vol.ID); code != 0 {
		t.Errorf("volume delete %s: exit %d: %s", vol.ID, code, out)
	}
	if got := inPod(p); strings.Contains(got, vol.ID) {
		t.Errorf("after volume delete, the agent pod's %s still holds %s: %s", dir, vol.ID, got)
	}
}

// The chart's node plugins (nodeZoneLabel, which stowage up --install=chart
// sets) take their zone from their node's topology.kubernetes.io/zone
// label through the Kubernetes API, and report it to the kubelet: the
// node's driver topology label is that zone.
func TestChart_NodePluginsZoneFromTheNodesLabel(t *testing.T) {
	needsChart(t)
	p := waitReady(t, nodePluginSel, true, podTimeout)
	n, err := kube.CoreV1().Nodes().Get(context.Background(), p.Spec.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	zone := n.Labels["topology.kubernetes.io/zone"]
	if zone == "" {
		t.Fatalf("node %s has no topology.kubernetes.io/zone label", n.Name)
	}
	if got := n.Labels["topology.block.csi.stowage.io/zone"]; got != zone {
		t.Errorf("node %s: the block driver's topology label is %q, want its zone %q", n.Name, got, zone)
	}
	for _, c := range []string{"block-node", "file-node"} {
		logs := must(kubectlErr("", "-n", chartNamespace, "logs", p.Name, "-c", c))
		if !strings.Contains(logs, "zone read from the node's label") || !strings.Contains(logs, "zone="+zone) {
			t.Errorf("the %s container of %s does not log the zone %s it read from its node's label:\n%s", c, p.Name, zone, logs[:min(len(logs), 2000)])
		}
	}
}
