package multinode

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Node loss: a Deployment's pod writes and fsyncs numbered lines to an
// RWX access point from a node of zone-b or zone-c. `stowage node stop
// --out-of-service` cuts that node's link and kills everything on it; the
// pod runs again on the other node within seconds (measured), every line
// acknowledged before the loss is there, and it goes on counting. `stowage
// node start` brings the node back Ready, untainted, and the node cleans
// up the lost pod's mount.
func TestNodes_NodeLoss_PodMovesToTheOtherNode_NoAcknowledgedLineLost(t *testing.T) {
	ns := namespace(t)
	kubectl(t, `apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: journal}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: stowage-efs
  resources: {requests: {storage: 1Gi}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: journal}
spec:
  replicas: 1
  selector: {matchLabels: {app: journal}}
  template:
    metadata: {labels: {app: journal}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms: [{matchExpressions: [{key: topology.kubernetes.io/zone, operator: In, values: [zone-b, zone-c]}]}]
      containers:
      - name: c
        image: docker.io/library/busybox:1.36
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "i=$(wc -l < /data/j.txt 2>/dev/null || echo 0); while true; do i=$((i+1)); echo $i >> /data/j.txt; sync /data/j.txt; sleep 0.2; done"]
        volumeMounts: [{name: d, mountPath: /data}]
      volumes: [{name: d, persistentVolumeClaim: {claimName: journal}}]
`, "-n", ns, "apply", "-f", "-")
	kubectl(t, "", "-n", ns, "rollout", "status", "deployment/journal", "--timeout=120s")
	running := func() (pod, node string) {
		out, _ := kubectlErr("", "-n", ns, "get", "pods", "-l", "app=journal", "--field-selector=status.phase=Running",
			"-o", `jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.metadata.deletionTimestamp}{"\n"}{end}`)
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 2 {
				return f[0], f[1]
			}
		}
		return "", ""
	}
	oldPod, lost := running()
	if oldPod == "" {
		t.Fatal("no running journal pod")
	}
	time.Sleep(3 * time.Second)
	// The last line the pod has fsynced, read through the pod itself.
	acked, err := strconv.Atoi(strings.TrimSpace(kubectl(t, "", "-n", ns, "exec", oldPod, "--", "tail", "-1", "/data/j.txt")))
	if err != nil || acked < 5 {
		t.Fatalf("the journal has %d lines after 3 s (%v)", acked, err)
	}

	start := time.Now()
	out, err := exec.Command(stowageBin, "node", "stop", lost, "--out-of-service", "--data-dir", dataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("stowage node stop %s: %v\n%s", lost, err, out)
	}
	restored := false
	t.Cleanup(func() {
		if !restored {
			exec.Command(stowageBin, "node", "start", lost, "--data-dir", dataDir).Run()
		}
	})
	var newPod, newNode string
	waitFor(t, "the journal pod to run on another node", 2*time.Minute, func() (bool, error) {
		p, n := running()
		if p != "" && p != oldPod {
			newPod, newNode = p, n
			return true, nil
		}
		return false, nil
	})
	failover := time.Since(start)
	t.Logf("node %s lost: pod %s Running on %s %.1f s after `stowage node stop --out-of-service`", lost, newPod, newNode, failover.Seconds())
	if newNode == lost {
		t.Fatalf("the new pod runs on the lost node %s", lost)
	}
	if failover > 60*time.Second {
		t.Errorf("failover took %s, more than 60 s", failover)
	}
	waitFor(t, "the new pod to go on counting", 30*time.Second, func() (bool, error) {
		out, err := kubectlErr("", "-n", ns, "exec", newPod, "--", "sh", "-c", "wc -l < /data/j.txt; tail -1 /data/j.txt")
		f := strings.Fields(out)
		if err != nil || len(f) != 2 {
			return false, err
		}
		lines, _ := strconv.Atoi(f[0])
		last, _ := strconv.Atoi(f[1])
		return lines > acked && last == lines, nil
	})
	// Every line up to the acknowledged one is there, in order.
	seq := kubectl(t, "", "-n", ns, "exec", newPod, "--", "sh", "-c", "head -n "+strconv.Itoa(acked)+" /data/j.txt | awk '$1 != NR {print NR\": \"$0; exit}'")
	if seq != "" {
		t.Errorf("the journal's first %d lines are not 1..%d: %s", acked, acked, seq)
	}

	out, err = exec.Command(stowageBin, "node", "start", lost, "--data-dir", dataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("stowage node start %s: %v\n%s", lost, err, out)
	}
	restored = true
	if taints := kubectl(t, "", "get", "node", lost, "-o", "jsonpath={.spec.taints}"); strings.Contains(taints, "out-of-service") {
		t.Errorf("node %s still tainted after start: %s", lost, taints)
	}
	waitFor(t, "node "+lost+" to clean up the lost pod's mount", 2*time.Minute, func() (bool, error) {
		out, _ := exec.Command("grep", "-c", "nodes/"+lost+"/kubelet/pods/", "/proc/self/mounts").Output()
		return strings.TrimSpace(string(out)) == "0", nil
	})
}
