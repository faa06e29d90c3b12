package multinode

import (
	"encoding/json"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

type volumeState struct {
	Pool        string `json:"pool"`
	StateReason string `json:"stateReason"`
}

func describeVolume(t *testing.T, id string) volumeState {
	t.Helper()
	var v volumeState
	if err := json.Unmarshal([]byte(stowage(t, "", "volume", "describe", id, "-o", "json")), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// The storage host of zone-b (a namespace of its own with only a Stowage
// agent) is killed while a pod on a zone-b node writes and fsyncs to a
// volume it serves over NBD: the pod's I/O waits; the volume's state says
// its storage host is unreachable, and an attach of another of its
// volumes fails naming it; once the host is back (`stowage node start`)
// the server declares the export again, the node reconnects, the I/O
// resumes, and every line fsynced before the loss is there.
func TestNodes_StorageHostLost_IOWaitsAndResumes_NothingFsyncedLost(t *testing.T) {
	ns := namespace(t)
	node := nodeOf(t, "zone-b")
	kubectl(t, `apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: j}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: stowage-gp3
  resources: {requests: {storage: 1Gi}}
`, "-n", ns, "apply", "-f", "-")
	kubectl(t, podOn("writer", node, "i=$(wc -l < /data/j.txt 2>/dev/null || echo 0); while true; do i=$((i+1)); echo $i >> /data/j.txt; sync /data/j.txt; sleep 0.2; done",
		"    volumeMounts: [{name: d, mountPath: /data}]", "  volumes: [{name: d, persistentVolumeClaim: {claimName: j}}]"), "-n", ns, "apply", "-f", "-")
	waitRunning(t, ns, "writer")
	pv := kubectl(t, "", "-n", ns, "get", "pvc", "j", "-o", "jsonpath={.spec.volumeName}")
	vol := kubectl(t, "", "get", "pv", pv, "-o", "jsonpath={.spec.csi.volumeHandle}")
	pool := describeVolume(t, vol).Pool
	host, ok := strings.CutPrefix(pool, "pool-")
	if !ok || !strings.Contains(host, "storage") {
		t.Fatalf("volume %s of a zone-b pod is in pool %s, not on a storage host of its own", vol, pool)
	}
	a := attachmentsOf(t, vol)
	if len(a) != 1 || a[0].NodeID != node || a[0].ExportName == "" {
		t.Fatalf("attachments %+v: want one over NBD to %s", a, node)
	}
	// Another volume of the same storage host, not attached.
	var spare struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(stowage(t, "", "volume", "create", "--name", ns+"-spare", "--size", "1", "--zone", "zone-b", "-o", "json")), &spare); err != nil || spare.ID == "" {
		t.Fatalf("volume create: %v (id %q)", err, spare.ID)
	}
	spareID := spare.ID
	t.Cleanup(func() { cluster.StowageCmd("volume", "delete", spareID).Run() })

	lines := func() int {
		out, err := kubectlErr("", "-n", ns, "exec", "writer", "--", "tail", "-1", "/data/j.txt")
		n, _ := strconv.Atoi(strings.TrimSpace(out))
		if err != nil {
			return -1
		}
		return n
	}
	waitFor(t, "the writer to fsync 10 lines", time.Minute, func() (bool, error) { return lines() >= 10, nil })
	acked := lines()

	if out, err := exec.Command(stowageBin, "node", "stop", host, "--data-dir", dataDir).CombinedOutput(); err != nil {
		t.Fatalf("stowage node stop %s: %v\n%s", host, err, out)
	}
	stopped := time.Now()
	restored := false
	t.Cleanup(func() {
		if !restored {
			exec.Command(stowageBin, "node", "start", host, "--data-dir", dataDir).Run()
		}
	})
	waitFor(t, "volume "+vol+" to say its storage host is unreachable", 30*time.Second, func() (bool, error) {
		r := describeVolume(t, vol).StateReason
		return strings.Contains(r, "unreachable") && strings.Contains(r, pool), nil
	})
	during := lines()
	time.Sleep(3 * time.Second)
	if after := lines(); after > during+1 {
		t.Errorf("the writer went on from %d to %d lines with its storage host down: its fsyncs did not wait", during, after)
	}
	out, err := cluster.StowageCmd("volume", "attach", spareID, "--node", node).CombinedOutput()
	if err == nil || !strings.Contains(string(out), pool) || !strings.Contains(string(out), "unreachable") && !strings.Contains(string(out), "could not export") {
		t.Errorf("attach of %s with its storage host down: %v, %s; want an error naming the storage host", spareID, err, out)
	}

	if out, err := exec.Command(stowageBin, "node", "start", host, "--data-dir", dataDir).CombinedOutput(); err != nil {
		t.Fatalf("stowage node start %s: %v\n%s", host, err, out)
	}
	restored = true
	started := time.Now()
	waitFor(t, "the writer to go on after its storage host came back", 2*time.Minute, func() (bool, error) { return lines() > during+5, nil })
	t.Logf("storage host %s down for %.1f s; the writer's fsyncs resumed %.1f s after `stowage node start`",
		host, started.Sub(stopped).Seconds(), time.Since(started).Seconds())
	if seq := kubectl(t, "", "-n", ns, "exec", "writer", "--", "sh", "-c", "awk '$1 != NR {print NR\": \"$0; exit}' /data/j.txt"); seq != "" {
		t.Errorf("the journal is not 1..N: %s", seq)
	}
	if n := lines(); n < acked {
		t.Errorf("the journal has %d lines, fewer than the %d fsynced before the loss", n, acked)
	}
	waitFor(t, "the volume's state reason to clear", 30*time.Second, func() (bool, error) { return describeVolume(t, vol).StateReason == "", nil })
}
