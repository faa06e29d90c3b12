package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
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
	ns := namespace(t)
	createPVC(t, ns, claim("data", "", "1Gi"))
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
	waitVolumeGone(t, pv.Spec.CSI.VolumeHandle)
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), pv.Name) {
		t.Fatalf("a mount of %s is left after its pod and claim went", pv.Name)
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
	endpoint := strings.TrimSpace(kubectl(t, "", "-n", chartNamespace, "get", "daemonset", "stowage-csi-node", "-o",
		`jsonpath={.spec.template.spec.containers[0].args[?(@)]}`))
	if i := strings.Index(endpoint, "--api="); i >= 0 {
		endpoint = strings.Fields(endpoint[i+len("--api="):])[0]
	} else {
		t.Fatalf("the node plugin has no --api argument: %s", endpoint)
	}
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
