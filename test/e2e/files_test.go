package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// createFileSystem makes a file system with the CLI and deletes it when
// the test ends (after the test's own cleanups: its claims' access points
// go first).
func createFileSystem(t *testing.T, name string) string {
	t.Helper()
	out, code := stowage("fs", "create", "--name", name, "-o", "json")
	if code != 0 {
		t.Fatalf("stowage fs create: %s", out)
	}
	var fs struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out), &fs); err != nil || fs.ID == "" {
		t.Fatalf("stowage fs create printed %q: %v", out, err)
	}
	t.Cleanup(func() {
		waitFor(t, "file system "+fs.ID+" deleted (its access points gone first)", 2*time.Minute, func() (bool, error) {
			out, code := stowage("fs", "delete", fs.ID)
			return code == 0 || strings.Contains(out, "not found"), nil
		})
	})
	return fs.ID
}

type accessPoint struct {
	ID         string `json:"id"`
	PosixUser  struct{ UID, GID uint32 }
	Root       string
	QuotaBytes int64
}

// describeAccessPoint reads the access point of a file volume's PV.
func describeAccessPoint(t *testing.T, pv *corev1.PersistentVolume) accessPoint {
	t.Helper()
	h := pv.Spec.CSI.VolumeHandle
	id := h[strings.LastIndex(h, ":")+1:]
	out, code := stowage("ap", "describe", id, "-o", "json")
	if code != 0 {
		t.Fatalf("stowage ap describe %s: %s", id, out)
	}
	var raw struct {
		ID        string `json:"id"`
		PosixUser struct {
			UID uint32 `json:"uid"`
			GID uint32 `json:"gid"`
		} `json:"posixUser"`
		RootDirectory struct {
			Path string `json:"path"`
		} `json:"rootDirectory"`
		QuotaBytes string `json:"quotaBytes"`
	}
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("stowage ap describe %s: %v: %s", id, err, out)
	}
	ap := accessPoint{ID: raw.ID, Root: raw.RootDirectory.Path}
	ap.PosixUser.UID, ap.PosixUser.GID = raw.PosixUser.UID, raw.PosixUser.GID
	fmt.Sscan(raw.QuotaBytes, &ap.QuotaBytes)
	return ap
}

// fuseMountsOf lists the FUSE NFS mounts on this machine of a volume
// handle's access point.
func fuseMountsOf(t *testing.T, apID string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, " - fuse.stowage-nfs ") && strings.Contains(line, apID) {
			out = append(out, strings.Fields(line)[4])
		}
	}
	return out
}

// clientWarnings returns the lost sessions and client ids in the logs of
// this node's FUSE NFS clients of an access point, a line each.
func clientWarnings(t *testing.T, apID string) string {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dataDir, "csi-file-node", "logs", "*.log"))
	var out []string
	for _, f := range logs {
		b, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(b), "/"+apID+" ") {
			continue
		}
		n := 0
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "session lost") || strings.Contains(l, "client id lost") || strings.Contains(l, "forgot this client") {
				if n++; n <= 5 {
					out = append(out, filepath.Base(f)+": "+l)
				}
			}
		}
		if n > 5 {
			out = append(out, fmt.Sprintf("%s: ... %d in all", filepath.Base(f), n))
		}
	}
	return strings.Join(out, "\n")
}

func fileClass(t *testing.T, name string, params map[string]string) {
	t.Helper()
	del := corev1.PersistentVolumeReclaimDelete
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: "file.csi.stowage.io", Parameters: params, ReclaimPolicy: &del}
	if v, ok := params["allowVolumeExpansion"]; ok {
		delete(params, "allowVolumeExpansion")
		allow := v == "true"
		sc.AllowVolumeExpansion = &allow
	}
	if _, err := kube.StorageV1().StorageClasses().Create(context.Background(), sc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kube.StorageV1().StorageClasses().Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

// Scenario 3: the seed's EFS class for a file system made with the CLI, a
// 5Gi RWX claim and two pods writing to the same directory, each through a
// FUSE NFS client of its own; each sees the other's files, owned as the
// access point promises.
func TestScenario3_EFSShared(t *testing.T) {
	fsID := createFileSystem(t, "e2e-scenario-3")
	dir := example("3-efs-shared")
	scYAML, err := os.ReadFile(filepath.Join(dir, "storageclass.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, strings.ReplaceAll(string(scYAML), "FILE_SYSTEM_ID", fsID), "apply", "-f", "-")
	kubectl(t, "", "apply", "-f", filepath.Join(dir, "claim-and-pods.yaml"))
	t.Cleanup(func() {
		kubectlErr("", "delete", "-f", filepath.Join(dir, "claim-and-pods.yaml"), "--wait=true")
		kubectlErr("", "delete", "storageclass", "efs-sc")
	})
	pv := pvOf(t, "default", "efs-claim")
	ap := describeAccessPoint(t, pv)
	if !strings.HasPrefix(ap.Root, "/dynamic_provisioning/") || ap.PosixUser.GID < 50000 {
		t.Errorf("access point %s: root %s, user %d:%d; want under /dynamic_provisioning with a gid from 50000", ap.ID, ap.Root, ap.PosixUser.UID, ap.PosixUser.GID)
	}
	waitPodPhase(t, "default", "efs-app-1", corev1.PodRunning)
	waitPodPhase(t, "default", "efs-app-2", corev1.PodRunning)
	for _, pair := range [][2]string{{"efs-app-1", "out-2.txt"}, {"efs-app-2", "out-1.txt"}} {
		var last string
		err := wait.PollUntilContextTimeout(context.Background(), pollEvery, time.Minute, true, func(context.Context) (bool, error) {
			out, err := kubectlErr("", "exec", pair[0], "--", "cat", "/data/"+pair[1])
			last = fmt.Sprintf("%v: %s", err, out)
			return err == nil && strings.Contains(out, "from efs-app-"), nil
		})
		if err != nil {
			t.Fatalf("%s does not read %s within a minute; last: %s\nthe FUSE NFS clients' warnings: %s", pair[0], pair[1], last, clientWarnings(t, ap.ID))
		}
	}
	// Two clients of one server, each with state of its own: neither may
	// have lost its session on the way (a shared client owner did that).
	if w := clientWarnings(t, ap.ID); w != "" {
		t.Errorf("the FUSE NFS clients of %s warned: %s", ap.ID, w)
	}
	want := fmt.Sprintf("%d %d", ap.PosixUser.UID, ap.PosixUser.GID)
	for _, f := range []string{"out-1.txt", "out-2.txt"} {
		if got := strings.TrimSpace(kubectl(t, "", "exec", "efs-app-1", "--", "stat", "-c", "%u %g", "/data/"+f)); got != want {
			t.Errorf("/data/%s is owned by %s, want the access point's %s", f, got, want)
		}
	}
	if got := strings.TrimSpace(kubectl(t, "", "exec", "efs-app-2", "--", "stat", "-c", "%a %u %g", "/data")); got != "700 "+want {
		t.Errorf("the access point's root: mode, owner %q; want 700 %s (directoryPerms, the access point's user)", got, want)
	}
	if m := fuseMountsOf(t, ap.ID); len(m) != 2 {
		t.Errorf("FUSE NFS mounts of %s: %v; want two, one per pod", ap.ID, m)
	}
}

// The file driver's promises beyond scenario 3: distinct gids from a range,
// subPathPattern and ensureUniqueDirectory, ROX refusing writes, and a
// quota'd claim stopping a writer at its size.
func TestFiles_ClassParameters(t *testing.T) {
	fsID := createFileSystem(t, "e2e-files")
	ns := namespace(t)

	fileClass(t, "e2e-gid-range", map[string]string{"provisioningMode": "efs-ap", "fileSystemId": fsID, "directoryPerms": "750",
		"gidRangeStart": "3000", "gidRangeEnd": "3010", "basePath": "/ranged"})
	fileClass(t, "e2e-subpath", map[string]string{"provisioningMode": "efs-ap", "fileSystemId": fsID, "directoryPerms": "700",
		"subPathPattern": "${.PVC.namespace}/${.PVC.name}", "ensureUniqueDirectory": "false", "basePath": "/by-claim"})
	fileClass(t, "e2e-quota", map[string]string{"provisioningMode": "efs-ap", "fileSystemId": fsID, "directoryPerms": "700",
		"quota": "true", "allowVolumeExpansion": "true"})

	createPVC(t, ns, claim("a", "e2e-gid-range", "1Gi", corev1.ReadWriteMany))
	createPVC(t, ns, claim("b", "e2e-gid-range", "1Gi", corev1.ReadWriteMany))
	createPVC(t, ns, claim("named", "e2e-subpath", "1Gi", corev1.ReadWriteMany))
	createPVC(t, ns, claim("small", "e2e-quota", "20Mi", corev1.ReadWriteOnce))
	ro := claim("ro", "e2e-gid-range", "1Gi", corev1.ReadOnlyMany)
	createPVC(t, ns, ro)

	apA, apB := describeAccessPoint(t, pvOf(t, ns, "a")), describeAccessPoint(t, pvOf(t, ns, "b"))
	if apA.PosixUser.GID == apB.PosixUser.GID || apA.PosixUser.GID < 3000 || apA.PosixUser.GID > 3010 || apB.PosixUser.GID < 3000 || apB.PosixUser.GID > 3010 {
		t.Errorf("gids %d and %d: want two distinct gids in 3000..3010", apA.PosixUser.GID, apB.PosixUser.GID)
	}
	if apNamed := describeAccessPoint(t, pvOf(t, ns, "named")); apNamed.Root != "/by-claim/"+ns+"/named" {
		t.Errorf("subPathPattern ${.PVC.namespace}/${.PVC.name} without ensureUniqueDirectory made %s, want /by-claim/%s/named", apNamed.Root, ns)
	}
	if apQ := describeAccessPoint(t, pvOf(t, ns, "small")); apQ.QuotaBytes != 20<<20 {
		t.Errorf("quota'd claim's access point has quota %d, want %d", apQ.QuotaBytes, 20<<20)
	}

	// ROX: the pod's mount refuses writes.
	out := runPod(t, ns, pod("rox", "if touch /ro/x 2>/tmp/err; then echo WROTE; else cat /tmp/err; fi", "ro"))
	if strings.Contains(out, "WROTE") || !strings.Contains(strings.ToLower(out), "read-only") {
		t.Errorf("a write to a ReadOnlyMany claim: %q; want a read-only file system error", out)
	}

	// Quota: the writer stops at the claim's size with EDQUOT.
	out = runPod(t, ns, pod("quota", "dd if=/dev/zero of=/small/fill bs=1M count=64 conv=fsync 2>&1; ls -l /small/fill", "small"))
	if !strings.Contains(out, "quota exceeded") {
		t.Errorf("writing 64 MiB into a 20 MiB quota'd claim: %q; want 'Disk quota exceeded'", out)
	}
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &pid); err != nil || pid <= 0 {
		t.Fatalf("pid file %s: %q", path, b)
	}
	return pid
}

// lines returns how many lines the writer pod's log file has, and fails
// if they are not the unbroken sequence 1..n (a lost or repeated write).
func sequenceLines(t *testing.T, ns, podName, path string) int {
	t.Helper()
	out, err := kubectlErr("", "-n", ns, "exec", podName, "--", "cat", path)
	if err != nil {
		t.Fatalf("read %s in %s: %v: %s", path, podName, err, out)
	}
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		n++
		if l != fmt.Sprint(n) {
			t.Fatalf("%s line %d is %q, want %d: a write was lost or repeated\n%s", path, n, l, n, out)
		}
	}
	return n
}

// The data path outlives the node plugin, pauses over an NFS server
// restart and a storage host (server) restart without losing writes, and a killed FUSE client fails its pod's
// I/O with an error (not a hang) that the node plugin reports by volume.
func TestFiles_Faults(t *testing.T) {
	needsHostProcesses(t)
	ns := namespace(t)
	createPVC(t, ns, claim("shared", "stowage-efs", "1Gi", corev1.ReadWriteMany))
	// The writer keeps one file open and appends a counter, each line
	// followed by busybox sync of the file (fsync).
	writer := pod("writer", `exec 3>>/shared/seq; i=0; while true; do i=$((i+1)); echo $i >&3; sync /shared/seq 2>/dev/null; sleep 0.2; done`, "shared")
	writer.Spec.RestartPolicy = corev1.RestartPolicyNever
	createPod(t, ns, writer)
	waitPodPhase(t, ns, "writer", corev1.PodRunning)
	grew := func(what string, from int, within time.Duration) int {
		t.Helper()
		var n int
		waitFor(t, what, within, func() (bool, error) {
			n = sequenceLines(t, ns, "writer", "/shared/seq")
			return n > from+5, nil
		})
		return n
	}
	n := grew("the writer to start", 0, time.Minute)

	step("kill the file driver's node plugin (the supervisor starts it again)")
	pidFile := filepath.Join(dataDir, "run", "csi-file.pid")
	old := readPID(t, pidFile)
	if err := syscallKill(old); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "csi-file restarted", time.Minute, func() (bool, error) {
		b, err := os.ReadFile(pidFile)
		return err == nil && strings.TrimSpace(string(b)) != fmt.Sprint(old) && strings.TrimSpace(string(b)) != "", nil
	})
	n = grew("the writer to go on while and after the plugin restarts", n, time.Minute)

	step("restart nfs-ganesha (the Stowage server starts it again)")
	gpid := readPID(t, filepath.Join(dataDir, "stowage", "ganesha", "ganesha.pid"))
	if err := syscallKill(gpid); err != nil {
		t.Fatal(err)
	}
	// NFSv4's grace period after a restart holds new opens for up to the
	// lease time; writes through open files resume once the client has
	// its session again.
	n = grew("the writer to resume after the NFS server restarts", n, 3*time.Minute)
	if p := waitPodPhase(t, ns, "writer", corev1.PodRunning); p.Status.Phase != corev1.PodRunning {
		t.Fatalf("writer is %s after the NFS server restart", p.Status.Phase)
	}

	step("kill the Stowage server, the storage host (nfs-ganesha goes with it; the supervisor starts both again)")
	serverPID := readPID(t, filepath.Join(dataDir, "run", "stowage-server.pid"))
	if err := syscallKill(serverPID); err != nil {
		t.Fatal(err)
	}
	n = grew("the writer to resume after the storage host restarts", n, 3*time.Minute)

	step("kill the writer's FUSE NFS client")
	pv := pvOf(t, ns, "shared")
	ap := describeAccessPoint(t, pv)
	mounts := fuseMountsOf(t, ap.ID)
	if len(mounts) != 1 {
		t.Fatalf("FUSE mounts of %s: %v, want 1", ap.ID, mounts)
	}
	clientPID := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(b), "nfs-mount") && strings.Contains(string(b), mounts[0]) {
			fmt.Sscan(e.Name(), &clientPID)
		}
	}
	if clientPID == 0 {
		t.Fatalf("no nfs-mount process serves %s", mounts[0])
	}
	if err := syscallKill(clientPID); err != nil {
		t.Fatal(err)
	}
	// The pod's next I/O fails at once (the mount is dead), and the node
	// plugin says which volume.
	start := time.Now()
	out, err := kubectlErr("", "-n", ns, "exec", "writer", "--", "cat", "/shared/seq")
	if err == nil || !strings.Contains(out, "not connected") {
		t.Errorf("reading through a mount whose client was killed: %v: %q; want 'Transport endpoint is not connected'", err, out)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the failed read took %s; it must fail, not hang", d)
	}
	waitFor(t, "the node plugin to report the dead mount by volume", time.Minute, func() (bool, error) {
		b, err := os.ReadFile(filepath.Join(dataDir, "logs", "csi-file.log"))
		return err == nil && strings.Contains(string(b), "file volume mount is not serving") && strings.Contains(string(b), pv.Spec.CSI.VolumeHandle), nil
	})
}
