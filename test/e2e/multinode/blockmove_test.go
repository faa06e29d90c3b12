package multinode

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// nodesOf are the nodes of a zone, by name (the machine's node of zone-a
// first: the workers' names are its name with a suffix).
func nodesOf(t *testing.T, zone string) []string {
	t.Helper()
	return strings.Fields(kubectl(t, "", "get", "nodes", "-l", "topology.kubernetes.io/zone="+zone, "-o", "jsonpath={.items[*].metadata.name}"))
}

// attachment is a volume's attachment as `stowage volume describe -o json`
// shows it.
type attachment struct {
	NodeID        string `json:"nodeId"`
	LocalTarget   string `json:"localTarget"`
	ExportAddress string `json:"exportAddress"`
	ExportName    string `json:"exportName"`
	Generation    string `json:"generation"` // protojson writes uint64 as a string
}

func attachmentsOf(t *testing.T, volumeID string) []attachment {
	t.Helper()
	var v struct {
		Zonal       bool         `json:"zonal"`
		Attachments []attachment `json:"attachments"`
	}
	if err := json.Unmarshal([]byte(stowage(t, "", "volume", "describe", volumeID, "-o", "json")), &v); err != nil {
		t.Fatal(err)
	}
	if !v.Zonal {
		t.Errorf("volume %s is not zonal on a multi-node cluster", volumeID)
	}
	return v.Attachments
}

// A block volume in zone-a, whose storage host is the machine's node, used
// by a StatefulSet's pod that writes a blob and then fsyncs a numbered
// line every 0.2 s:
//   - on the storage host it is attached by loop device;
//   - moved (cordon + delete) to zone-a's other node it is attached over
//     NBD, the blob's checksum is the same, and an attach of the volume to
//     a second node is refused, naming the holder;
//   - that node cut off (`stowage node stop --partition --out-of-service`:
//     its link down, its pod still running and writing there), the pod
//     runs on the storage host again (time measured), with every fsynced
//     line;
//   - the link back (`stowage node start`), the old pod's attachment
//     reconnects and is refused by the storage host (fencing: its writes
//     fail, none lands), and the node cleans up after itself.
func TestNodes_BlockVolume_MovesInItsZone_SurvivesNodeLoss_StaleNodeFenced(t *testing.T) {
	ns := namespace(t)
	zoneA := nodesOf(t, "zone-a")
	if len(zoneA) < 2 {
		t.Fatalf("zone-a has nodes %v; this test needs two (up --nodes 4 --zones zone-a,zone-b,zone-c)", zoneA)
	}
	host, other := zoneA[0], zoneA[1]
	cordon := func(node string) {
		kubectl(t, "", "cordon", node)
		t.Cleanup(func() { kubectlErr("", "uncordon", node) })
	}
	uncordon := func(node string) { kubectl(t, "", "uncordon", node) }

	cordon(other)
	kubectl(t, `apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms: [{matchExpressions: [{key: topology.kubernetes.io/zone, operator: In, values: [zone-a]}]}]
      containers:
      - name: c
        image: docker.io/library/busybox:1.36
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "cd /data; [ -f blob.md5 ] || { head -c 8388608 /dev/urandom > blob; md5sum blob > blob.md5; sync; }; i=$(wc -l < j.txt 2>/dev/null || echo 0); while true; do i=$((i+1)); echo $i >> j.txt; sync j.txt; sleep 0.2; done"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: stowage-gp3
      resources: {requests: {storage: 1Gi}}
`, "-n", ns, "apply", "-f", "-")
	nodeOfPod := func() string {
		out, _ := kubectlErr("", "-n", ns, "get", "pod", "db-0", "-o", `jsonpath={.status.phase} {.spec.nodeName} {.metadata.deletionTimestamp}`)
		if f := strings.Fields(out); len(f) == 2 && f[0] == "Running" {
			return f[1]
		}
		return ""
	}
	waitOn := func(node string, timeout time.Duration) {
		t.Helper()
		waitFor(t, "pod db-0 Running on "+node, timeout, func() (bool, error) { return nodeOfPod() == node, nil })
	}
	checksum := func() {
		t.Helper()
		waitFor(t, "the blob and its checksum", time.Minute, func() (bool, error) {
			out, err := kubectlErr("", "-n", ns, "exec", "db-0", "--", "sh", "-c", "cd /data && md5sum -c blob.md5")
			if err != nil {
				err = fmt.Errorf("%w: %s", err, out)
			}
			return err == nil, err
		})
	}
	waitOn(host, 2*time.Minute)
	checksum()
	pv := kubectl(t, "", "-n", ns, "get", "pvc", "data-db-0", "-o", "jsonpath={.spec.volumeName}")
	vol := kubectl(t, "", "get", "pv", pv, "-o", "jsonpath={.spec.csi.volumeHandle}")
	if a := attachmentsOf(t, vol); len(a) != 1 || a[0].NodeID != host || a[0].ExportName != "" {
		t.Fatalf("on its storage host %s the volume's attachments are %+v; want one local attachment", host, a)
	}

	// Moved to the zone's other node: attached over the network.
	uncordon(other)
	cordon(host)
	kubectl(t, "", "-n", ns, "delete", "pod", "db-0", "--wait=true")
	waitOn(other, 2*time.Minute)
	checksum()
	a := attachmentsOf(t, vol)
	if len(a) != 1 || a[0].NodeID != other || a[0].ExportName == "" || a[0].LocalTarget != "" {
		t.Fatalf("on %s the volume's attachments are %+v; want one NBD attachment", other, a)
	}
	stale := a[0].ExportName
	t.Logf("volume %s attached to %s over NBD: export %s at %s, generation %s", vol, other, stale, a[0].ExportAddress, a[0].Generation)
	if out, err := cluster.StowageCmd("volume", "attach", vol, "--node", host).CombinedOutput(); err == nil || !strings.Contains(string(out), "already attached to node "+other) {
		t.Errorf("attach of the in-use volume to %s: %v, %s; want a refusal naming %s", host, err, out, other)
	}

	// The node is lost.
	uncordon(host)
	time.Sleep(2 * time.Second)
	acked, err := strconv.Atoi(strings.TrimSpace(kubectl(t, "", "-n", ns, "exec", "db-0", "--", "tail", "-1", "/data/j.txt")))
	if err != nil || acked < 5 {
		t.Fatalf("the journal has %d lines (%v)", acked, err)
	}
	start := time.Now()
	if out, err := exec.Command(stowageBin, "node", "stop", other, "--partition", "--out-of-service", "--data-dir", dataDir).CombinedOutput(); err != nil {
		t.Fatalf("stowage node stop %s: %v\n%s", other, err, out)
	}
	restored := false
	t.Cleanup(func() {
		if !restored {
			exec.Command(stowageBin, "node", "start", other, "--data-dir", dataDir).Run()
		}
	})
	waitOn(host, 3*time.Minute)
	failover := time.Since(start)
	t.Logf("node %s cut off: db-0 Running on %s %.1f s after `stowage node stop --partition --out-of-service`", other, host, failover.Seconds())
	if failover > 60*time.Second {
		t.Errorf("failover took %s, more than 60 s", failover)
	}
	checksum()
	waitFor(t, "db-0 to go on counting", 30*time.Second, func() (bool, error) {
		out, err := kubectlErr("", "-n", ns, "exec", "db-0", "--", "sh", "-c", "wc -l < /data/j.txt; tail -1 /data/j.txt")
		f := strings.Fields(out)
		if err != nil || len(f) != 2 {
			return false, err
		}
		lines, _ := strconv.Atoi(f[0])
		last, _ := strconv.Atoi(f[1])
		return lines > acked && last == lines, nil
	})
	if seq := kubectl(t, "", "-n", ns, "exec", "db-0", "--", "sh", "-c", "head -n "+strconv.Itoa(acked)+" /data/j.txt | awk '$1 != NR {print NR\": \"$0; exit}'"); seq != "" {
		t.Errorf("the journal's first %d lines are not 1..%d: %s", acked, acked, seq)
	}

	// The node comes back: its attachment was detached (the out-of-service
	// taint let Kubernetes detach it), so the storage host refuses it.
	if out, err := exec.Command(stowageBin, "node", "start", other, "--data-dir", dataDir).CombinedOutput(); err != nil {
		t.Fatalf("stowage node start %s: %v\n%s", other, err, out)
	}
	restored = true
	serverLog := filepath.Join(dataDir, "logs", "stowage-server.log")
	waitFor(t, "the storage host to refuse "+other+"'s stale attachment", 2*time.Minute, func() (bool, error) {
		b, err := os.ReadFile(serverLog)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "nbd client refused") && strings.Contains(line, "attachment="+stale) {
				t.Logf("server: %s", line)
				return true, nil
			}
		}
		return false, err
	})
	waitFor(t, other+" to clean up the lost pod's mounts and its network attachment", 3*time.Minute, func() (bool, error) {
		mounts, _ := os.ReadFile("/proc/self/mounts")
		if strings.Contains(string(mounts), "nodes/"+other+"/kubelet/pods/") {
			return false, nil
		}
		_, err := os.Stat(filepath.Join(dataDir, "nodes", other, "csi-node", "network", stale))
		return os.IsNotExist(err), nil
	})
	if n := nodeOfPod(); n != host {
		t.Errorf("db-0 runs on %q after %s came back, want %s", n, other, host)
	}
}
