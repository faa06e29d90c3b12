package multinode

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// leadingServer is the Stowage server component that leads now: the one
// whose log's last leadership line says it leads.
func leadingServer(t *testing.T) (name string, pid int) {
	t.Helper()
	for _, comp := range []string{"stowage-server", "stowage-server-2"} {
		b, err := os.ReadFile(filepath.Join(dataDir, "logs", comp+".log"))
		if err != nil {
			continue
		}
		log := string(b)
		lead, stand := strings.LastIndex(log, "leading: serving the API"), strings.LastIndex(log, "standby: waiting to lead")
		if lead < 0 || lead < stand {
			continue
		}
		p, err := os.ReadFile(filepath.Join(dataDir, "run", comp+".pid"))
		if err != nil {
			continue
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(p)))
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			return comp, pid
		}
	}
	t.Fatal("no Stowage server says it leads")
	return "", 0
}

// Two Stowage servers share the cluster's etcd; the leading one is killed
// (SIGKILL) while a StatefulSet scales from 0 to 4 replicas: the other
// takes over, and every claim binds and every pod runs.
func TestNodes_LeadingServerKilledDuringScaleUp_EveryClaimBinds(t *testing.T) {
	ns := namespace(t)
	kubectl(t, `apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 0
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: docker.io/library/busybox:1.36
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "hostname > /data/who; sync; sleep 3600"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: stowage-gp3
      resources: {requests: {storage: 1Gi}}
`, "-n", ns, "apply", "-f", "-")
	leader, pid := leadingServer(t)
	kubectl(t, "", "-n", ns, "scale", "statefulset", "web", "--replicas=4")
	time.Sleep(1500 * time.Millisecond)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	t.Logf("killed the leading server %s (pid %d) during the scale-up", leader, pid)
	waitFor(t, "another server to serve the API", time.Minute, func() (bool, error) {
		_, err := cluster.StowageCmd("pool", "list").CombinedOutput()
		return err == nil, nil
	})
	t.Logf("the Stowage API answered %.1f s after the leader's SIGKILL", time.Since(killed).Seconds())
	waitFor(t, "all 4 claims Bound and pods Running", 4*time.Minute, func() (bool, error) {
		out, err := kubectlErr("", "-n", ns, "get", "pods", "-l", "app=web", "--field-selector=status.phase=Running", "-o", "name")
		return len(strings.Fields(out)) == 4, err
	})
	t.Logf("every claim bound and every pod Running %.1f s after the kill", time.Since(killed).Seconds())
	for i := 0; i < 4; i++ {
		pvc := fmt.Sprintf("data-web-%d", i)
		if phase := kubectl(t, "", "-n", ns, "get", "pvc", pvc, "-o", "jsonpath={.status.phase}"); phase != "Bound" {
			t.Errorf("claim %s is %s", pvc, phase)
		}
		if who := kubectl(t, "", "-n", ns, "exec", fmt.Sprintf("web-%d", i), "--", "cat", "/data/who"); who != fmt.Sprintf("web-%d", i) {
			t.Errorf("web-%d reads %q from its volume", i, who)
		}
	}
	// Every volume the claims name exists once in the Stowage server.
	out := stowage(t, "", "volume", "list")
	for i := 0; i < 4; i++ {
		pv := kubectl(t, "", "-n", ns, "get", "pvc", fmt.Sprintf("data-web-%d", i), "-o", "jsonpath={.spec.volumeName}")
		vol := kubectl(t, "", "get", "pv", pv, "-o", "jsonpath={.spec.csi.volumeHandle}")
		if strings.Count(out, vol) != 1 {
			t.Errorf("volume %s of claim data-web-%d is listed %d times", vol, i, strings.Count(out, vol))
		}
	}
}
