package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// writeScript writes 16 MiB of random data to dir/data and prints its md5.
func writeScript(dir string) string {
	return fmt.Sprintf("dd if=/dev/urandom of=%[1]s/data bs=1M count=16 2>/dev/null && sync && %[2]s", dir, checksumScript(dir+"/data"))
}

// K1: emptyDir is shared by the containers of a pod; a generic ephemeral
// volume is provisioned by Stowage and deleted with its pod.
func TestK1_EphemeralVolumes(t *testing.T) {
	ns := namespace(t)
	one := int64(1)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "shared"},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &one,
			RestartPolicy:                 corev1.RestartPolicyNever,
			Volumes: []corev1.Volume{
				{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "eph", VolumeSource: corev1.VolumeSource{Ephemeral: &corev1.EphemeralVolumeSource{
					VolumeClaimTemplate: &corev1.PersistentVolumeClaimTemplate{Spec: claim("", defaultClass, "1Gi").Spec}}}},
			},
			Containers: []corev1.Container{
				{Name: "writer", Image: busybox, ImagePullPolicy: corev1.PullIfNotPresent,
					Command:      []string{"/bin/sh", "-c", "echo from-writer > /scratch/msg; echo eph-data > /eph/f; sleep 3600"},
					VolumeMounts: []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}, {Name: "eph", MountPath: "/eph"}}},
				{Name: "reader", Image: busybox, ImagePullPolicy: corev1.PullIfNotPresent,
					Command:      []string{"/bin/sh", "-c", "sleep 3600"},
					VolumeMounts: []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}}},
			},
		},
	}
	createPod(t, ns, p)
	waitPodPhase(t, ns, "shared", corev1.PodRunning)
	waitFor(t, "reader sees the writer's file", time.Minute, func() (bool, error) {
		out, err := kubectlErr("", "-n", ns, "exec", "shared", "-c", "reader", "--", "cat", "/scratch/msg")
		return err == nil && out == "from-writer", nil
	})
	pv := pvOf(t, ns, "shared-eph")
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != driverName {
		t.Fatalf("ephemeral PV %s is not a %s volume: %+v", pv.Name, driverName, pv.Spec.PersistentVolumeSource)
	}
	if got := podExec(t, ns, "shared", "cat", "/eph/f"); got != "eph-data" {
		t.Fatalf("ephemeral volume content %q", got)
	}
	volID := pv.Spec.CSI.VolumeHandle
	if err := kube.CoreV1().Pods(ns).Delete(context.Background(), "shared", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ephemeral claim deleted with its pod", 3*time.Minute, func() (bool, error) {
		_, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "shared-eph", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	waitFor(t, "ephemeral PV deleted", 3*time.Minute, func() (bool, error) {
		_, err := kube.CoreV1().PersistentVolumes().Get(context.Background(), pv.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	waitVolumeGone(t, volID)
}

// createStaticVolume makes a backend volume with the CLI and returns its id.
func createStaticVolume(t *testing.T, name string, sizeGiB int) string {
	t.Helper()
	out, code := stowage("volume", "create", "--name", name, "--size", strconv.Itoa(sizeGiB), "--zone", "zone-a", "-o", "json")
	if code != 0 {
		t.Fatalf("stowage volume create: exit %d: %s", code, out)
	}
	i := strings.Index(out, `"vol-`)
	if i < 0 {
		t.Fatalf("no volume id in %s", out)
	}
	id := out[i+1 : i+1+len("vol-")+17]
	t.Cleanup(func() { stowage("volume", "delete", id) })
	return id
}

func staticPV(name, volID, size, class string, policy corev1.PersistentVolumeReclaimPolicy) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: policy,
			StorageClassName:              class,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: driverName, VolumeHandle: volID, FSType: "ext4"}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "topology.block.csi.stowage.io/zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"zone-a"}}},
			}}}},
		},
	}
}

func createPV(t *testing.T, pv *corev1.PersistentVolume) {
	t.Helper()
	if _, err := kube.CoreV1().PersistentVolumes().Create(context.Background(), pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kube.CoreV1().PersistentVolumes().Delete(context.Background(), pv.Name, metav1.DeleteOptions{})
	})
}

// K3 and K5: a static PV of a CLI-made volume binds a claim that fits it; a
// claim that no PV fits stays Pending, with the reason in its events.
func TestK3K5_StaticProvisioningAndBinding(t *testing.T) {
	ns := namespace(t)
	volID := createStaticVolume(t, "e2e-static-"+ns, 10)
	pvName := "e2e-static-" + ns
	createPV(t, staticPV(pvName, volID, "10Gi", "", corev1.PersistentVolumeReclaimRetain))

	empty := ""
	fits := claim("fits", "", "5Gi")
	fits.Spec.StorageClassName = &empty
	createPVC(t, ns, fits)
	if got := waitBound(t, ns, "fits").Spec.VolumeName; got != pvName {
		t.Fatalf("claim bound to %s, want the static PV %s", got, pvName)
	}
	sum := runPod(t, ns, pod("w", writeScript("/fits"), "fits"))
	if got := runPod(t, ns, pod("r", checksumScript("/fits/data"), "fits")); got != sum {
		t.Fatalf("static volume read back %q, wrote %q", got, sum)
	}

	tooBig := claim("too-big", "", "50Gi")
	tooBig.Spec.StorageClassName = &empty
	createPVC(t, ns, tooBig)
	waitFor(t, "a FailedBinding event on the claim", time.Minute, func() (bool, error) {
		evs, err := kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=too-big"})
		if err != nil {
			return false, nil
		}
		for _, e := range evs.Items {
			if e.Reason == "FailedBinding" && strings.Contains(e.Message, "no persistent volumes available") {
				return true, nil
			}
		}
		return false, nil
	})
	c, _ := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "too-big", metav1.GetOptions{})
	if c.Status.Phase != corev1.ClaimPending {
		t.Fatalf("claim without a fitting PV is %s, want Pending", c.Status.Phase)
	}
	if d := describe(ns, "pvc", "too-big"); !strings.Contains(d, "no persistent volumes available") {
		t.Fatalf("kubectl describe pvc does not show why it is Pending:\n%s", d)
	}
}

// K4, K12: a claim without a class gets the default class (stowage-gp3) and a
// new volume and PV; K6 Delete: deleting the claim removes the backend volume.
func TestK4K12K6_DynamicDefaultClassAndDelete(t *testing.T) {
	ns := namespace(t)
	createPVC(t, ns, claim("data", "", "1Gi"))
	createPod(t, ns, pod("app", "echo hi > /data/x; sleep 3600", "data"))
	waitPodPhase(t, ns, "app", corev1.PodRunning)
	c := waitBound(t, ns, "data")
	if c.Spec.StorageClassName == nil || *c.Spec.StorageClassName != defaultClass {
		t.Fatalf("claim without a class got class %v, want the default %s", c.Spec.StorageClassName, defaultClass)
	}
	pv := pvOf(t, ns, "data")
	volID := pv.Spec.CSI.VolumeHandle
	if !volumeExists(t, volID) {
		t.Fatalf("backend volume %s of PV %s does not exist", volID, pv.Name)
	}
	if out, _ := stowage("volume", "describe", volID); !strings.Contains(out, "kubernetes.io/created-for/pvc/name: data") {
		t.Errorf("volume %s lacks the created-for tags:\n%s", volID, out)
	}
	kube.CoreV1().Pods(ns).Delete(context.Background(), "app", metav1.DeleteOptions{})
	waitGone(t, ns, "app")
	if err := kube.CoreV1().PersistentVolumeClaims(ns).Delete(context.Background(), "data", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitVolumeGone(t, volID)
}

// K6 Retain: the backend volume outlives claim and PV, and comes back with
// its data as a static PV.
func TestK6_RetainAndReimport(t *testing.T) {
	ns := namespace(t)
	kubectl(t, `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: e2e-retain}
provisioner: block.csi.stowage.io
parameters: {type: gp3}
reclaimPolicy: Retain
volumeBindingMode: Immediate
`, "apply", "-f", "-")
	t.Cleanup(func() { kubectlErr("", "delete", "storageclass", "e2e-retain") })
	createPVC(t, ns, claim("keep", "e2e-retain", "1Gi"))
	sum := runPod(t, ns, pod("w", writeScript("/keep"), "keep"))
	pv := pvOf(t, ns, "keep")
	volID := pv.Spec.CSI.VolumeHandle
	t.Cleanup(func() { stowage("volume", "delete", volID) })
	if err := kube.CoreV1().PersistentVolumeClaims(ns).Delete(context.Background(), "keep", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "PV Released", 2*time.Minute, func() (bool, error) {
		p, err := kube.CoreV1().PersistentVolumes().Get(context.Background(), pv.Name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.VolumeReleased, nil
	})
	if !volumeExists(t, volID) {
		t.Fatalf("Retain: backend volume %s is gone", volID)
	}
	if err := kube.CoreV1().PersistentVolumes().Delete(context.Background(), pv.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if !volumeExists(t, volID) {
		t.Fatalf("Retain: backend volume %s deleted with its PV", volID)
	}
	createPV(t, staticPV("e2e-reimport-"+ns, volID, "1Gi", "", corev1.PersistentVolumeReclaimRetain))
	empty := ""
	again := claim("again", "", "1Gi")
	again.Spec.StorageClassName = &empty
	again.Spec.VolumeName = "e2e-reimport-" + ns
	createPVC(t, ns, again)
	if got := runPod(t, ns, pod("r", checksumScript("/again/data"), "again")); got != sum {
		t.Fatalf("re-imported volume has %q, wrote %q", got, sum)
	}
}

// K7: ReadWriteOncePod: a second pod of the same claim is not started. A
// block volume attached to a node is refused to another node, naming it.
func TestK7_AccessModes(t *testing.T) {
	ns := namespace(t)
	createPVC(t, ns, claim("solo", defaultClass, "1Gi", corev1.ReadWriteOncePod))
	createPod(t, ns, pod("first", "sleep 3600", "solo"))
	waitPodPhase(t, ns, "first", corev1.PodRunning)
	createPod(t, ns, pod("second", "sleep 3600", "solo"))
	time.Sleep(15 * time.Second)
	p, err := kube.CoreV1().Pods(ns).Get(context.Background(), "second", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodPending {
		t.Fatalf("second pod of a ReadWriteOncePod claim is %s, want Pending", p.Status.Phase)
	}

	volID := pvOf(t, ns, "solo").Spec.CSI.VolumeHandle
	out, code := stowage("volume", "attach", volID, "--node", "some-other-node")
	if code == 0 || !(strings.Contains(out, "attached to node") || strings.Contains(out, "not registered")) {
		t.Fatalf("attach of an in-use RWO volume to another node: exit %d: %s", code, out)
	}
}

// K8: ext4 and xfs file systems, and a raw block device in the pod.
func TestK8_VolumeModes(t *testing.T) {
	ns := namespace(t)
	for _, fs := range []string{"ext4", "xfs"} {
		class := "e2e-" + fs
		kubectl(t, fmt.Sprintf(`apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: %s}
provisioner: block.csi.stowage.io
parameters: {type: gp3, csi.storage.k8s.io/fstype: %s}
volumeBindingMode: WaitForFirstConsumer
`, class, fs), "apply", "-f", "-")
		t.Cleanup(func() { kubectlErr("", "delete", "storageclass", class) })
		createPVC(t, ns, claim(fs, class, "1Gi"))
		got := runPod(t, ns, pod("fs-"+fs, "stat -f -c %T /"+fs, fs))
		want := map[string]string{"ext4": "ext2/ext3", "xfs": "xfs"}[fs]
		if got != want {
			t.Errorf("%s volume mounted as %q, want %q", fs, got, want)
		}
	}

	block := claim("raw", defaultClass, "1Gi")
	mode := corev1.PersistentVolumeBlock
	block.Spec.VolumeMode = &mode
	createPVC(t, ns, block)
	p := pod("raw", "dd if=/dev/urandom of=/tmp/in bs=1M count=4 2>/dev/null && dd if=/tmp/in of=/dev/xvda bs=1M count=4 conv=fsync 2>/dev/null && "+
		"dd if=/dev/xvda of=/tmp/out bs=1M count=4 2>/dev/null && cmp /tmp/in /tmp/out && echo same")
	p.Spec.Volumes = []corev1.Volume{{Name: "raw", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "raw"}}}}
	p.Spec.Containers[0].VolumeDevices = []corev1.VolumeDevice{{Name: "raw", DevicePath: "/dev/xvda"}}
	if got := runPod(t, ns, p); got != "same" {
		t.Fatalf("raw block device round trip: %q", got)
	}
}

// K9: Immediate binds at once; WaitForFirstConsumer waits for a pod and
// creates the volume in that pod's node's zone; allowedTopologies is honoured.
func TestK9_BindingModesAndTopology(t *testing.T) {
	ns := namespace(t)
	kubectl(t, `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: e2e-immediate}
provisioner: block.csi.stowage.io
volumeBindingMode: Immediate
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: e2e-zone-b}
provisioner: block.csi.stowage.io
volumeBindingMode: Immediate
allowedTopologies:
- matchLabelExpressions:
  - key: topology.block.csi.stowage.io/zone
    values: [zone-b]
`, "apply", "-f", "-")
	t.Cleanup(func() { kubectlErr("", "delete", "storageclass", "e2e-immediate", "e2e-zone-b") })

	createPVC(t, ns, claim("now", "e2e-immediate", "1Gi"))
	waitBound(t, ns, "now")

	createPVC(t, ns, claim("later", defaultClass, "1Gi"))
	time.Sleep(5 * time.Second)
	if c, _ := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "later", metav1.GetOptions{}); c.Status.Phase != corev1.ClaimPending {
		t.Fatalf("WaitForFirstConsumer claim is %s before any pod, want Pending", c.Status.Phase)
	}
	createPod(t, ns, pod("consumer", "sleep 3600", "later"))
	waitPodPhase(t, ns, "consumer", corev1.PodRunning)
	pv := pvOf(t, ns, "later")
	p, _ := kube.CoreV1().Pods(ns).Get(context.Background(), "consumer", metav1.GetOptions{})
	node, err := kube.CoreV1().Nodes().Get(context.Background(), p.Spec.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	zone := node.Labels["topology.block.csi.stowage.io/zone"]
	found := false
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == "topology.block.csi.stowage.io/zone" && contains(e.Values, zone) {
				found = true
			}
		}
	}
	if zone == "" || !found {
		t.Fatalf("PV node affinity %+v does not name the pod's node's zone %q", pv.Spec.NodeAffinity, zone)
	}

	createPVC(t, ns, claim("nowhere", "e2e-zone-b", "1Gi"))
	waitFor(t, "a ProvisioningFailed event for a zone without pools", 2*time.Minute, func() (bool, error) {
		evs, err := kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=nowhere"})
		if err != nil {
			return false, nil
		}
		for _, e := range evs.Items {
			if e.Reason == "ProvisioningFailed" && strings.Contains(e.Message, "zone-b") {
				return true, nil
			}
		}
		return false, nil
	})
}

// K10: raising the claim's request grows volume and file system while the
// pod runs; the data stays.
//
// The default class, as a user would: `stowage up` makes its classes xfs
// where root lacks CAP_SYS_RESOURCE (as here), without which the kernel
// refuses to grow a mounted ext4, and ext4 elsewhere (internal/cluster
// chooseFSType; internal/csi tests both file systems).
func TestK10_OnlineExpansion(t *testing.T) {
	ns := namespace(t)
	createPVC(t, ns, claim("grow", defaultClass, "1Gi"))
	createPod(t, ns, pod("app", writeScript("/grow")+" > /tmp/sum; sleep 3600", "grow"))
	waitPodPhase(t, ns, "app", corev1.PodRunning)
	var sum string
	waitFor(t, "data written", time.Minute, func() (bool, error) {
		out, err := kubectlErr("", "-n", ns, "exec", "app", "--", "cat", "/tmp/sum")
		sum = out
		return err == nil && len(out) == 32, nil
	})
	patch := []byte(`{"spec":{"resources":{"requests":{"storage":"3Gi"}}}}`)
	if _, err := kube.CoreV1().PersistentVolumeClaims(ns).Patch(context.Background(), "grow", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the file system in the running pod to grow past 2 GiB", 3*time.Minute, func() (bool, error) {
		out, err := kubectlErr("", "-n", ns, "exec", "app", "--", "sh", "-c", "df -k /grow | tail -1 | awk '{print $2}'")
		if err != nil {
			return false, nil
		}
		kb, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
		return kb > 2<<20, nil
	})
	waitFor(t, "claim capacity 3Gi", 2*time.Minute, func() (bool, error) {
		c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "grow", metav1.GetOptions{})
		return err == nil && c.Status.Capacity.Storage().Cmp(resource.MustParse("3Gi")) >= 0, nil
	})
	if got := podExec(t, ns, "app", "sh", "-c", checksumScript("/grow/data")); got != sum {
		t.Fatalf("after expansion the data reads %q, wrote %q", got, sum)
	}
}

// K11: snapshot, restore from it, and clone a claim; checksums equal.
func TestK11_SnapshotRestoreClone(t *testing.T) {
	ns := namespace(t)
	createPVC(t, ns, claim("src", defaultClass, "1Gi"))
	sum := runPod(t, ns, pod("w", writeScript("/src"), "src"))
	kubectl(t, fmt.Sprintf(`apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap, namespace: %s}
spec:
  volumeSnapshotClassName: stowage-snapshots
  source: {persistentVolumeClaimName: src}
`, ns), "apply", "-f", "-")
	waitFor(t, "snapshot ready", 3*time.Minute, func() (bool, error) {
		out, err := kubectlErr("", "-n", ns, "get", "volumesnapshot", "snap", "-o", "jsonpath={.status.readyToUse}")
		return err == nil && out == "true", nil
	})
	kubectl(t, fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: restored, namespace: %[1]s}
spec:
  storageClassName: stowage-gp3
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: cloned, namespace: %[1]s}
spec:
  storageClassName: stowage-gp3
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
  dataSource: {kind: PersistentVolumeClaim, name: src}
`, ns), "apply", "-f", "-")
	for _, c := range []string{"restored", "cloned"} {
		if got := runPod(t, ns, pod("r-"+c, checksumScript("/"+c+"/data"), c)); got != sum {
			t.Errorf("%s volume reads %q, source wrote %q", c, got, sum)
		}
	}
	kubectl(t, "", "-n", ns, "delete", "volumesnapshot", "snap", "--wait=true")
}

// K13: each StatefulSet replica has its own volume, which follows it when the
// pod is recreated.
func TestK13_StatefulSetVolumesFollowPods(t *testing.T) {
	ns := namespace(t)
	kubectl(t, fmt.Sprintf(`apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web, namespace: %s}
spec:
  serviceName: web
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: %s
        imagePullPolicy: IfNotPresent
        command: ["/bin/sh", "-c", "[ -f /data/who ] || hostname > /data/who; sleep 3600"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: stowage-gp3
      resources: {requests: {storage: 1Gi}}
`, ns, busybox), "apply", "-f", "-")
	for _, p := range []string{"web-0", "web-1"} {
		waitPodPhase(t, ns, p, corev1.PodRunning)
	}
	pv0 := pvOf(t, ns, "data-web-0").Name
	if pv1 := pvOf(t, ns, "data-web-1").Name; pv1 == pv0 {
		t.Fatalf("both replicas share PV %s", pv0)
	}
	waitFor(t, "web-0 wrote its name", time.Minute, func() (bool, error) {
		out, err := kubectlErr("", "-n", ns, "exec", "web-0", "--", "cat", "/data/who")
		return err == nil && out == "web-0", nil
	})
	old, _ := kube.CoreV1().Pods(ns).Get(context.Background(), "web-0", metav1.GetOptions{})
	if err := kube.CoreV1().Pods(ns).Delete(context.Background(), "web-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web-0 recreated and running", podTimeout, func() (bool, error) {
		p, err := kube.CoreV1().Pods(ns).Get(context.Background(), "web-0", metav1.GetOptions{})
		return err == nil && p.UID != old.UID && p.Status.Phase == corev1.PodRunning, nil
	})
	if got := podExec(t, ns, "web-0", "cat", "/data/who"); got != "web-0" {
		t.Fatalf("recreated web-0 sees %q in its volume, want its own file", got)
	}
	if pvOf(t, ns, "data-web-0").Name != pv0 {
		t.Fatal("recreated web-0 got another volume")
	}
	kubectl(t, "", "-n", ns, "delete", "statefulset", "web", "--wait=true")
}
