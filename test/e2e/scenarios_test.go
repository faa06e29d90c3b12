package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func example(parts ...string) string {
	return filepath.Join(append([]string{repoRoot, "examples"}, parts...)...)
}

// Scenario 1: the EBS-style encrypted gp3 class, a 10Gi claim in prod, a
// Deployment appending the date; a new pod sees the old lines.
func TestScenario1_EBSClassAndClaim(t *testing.T) {
	dir := example("1-ebs-class-and-claim")
	kubectl(t, "", "apply", "-f", filepath.Join(dir, "storageclass.yaml"))
	kubectl(t, "", "apply", "-f", filepath.Join(dir, "app.yaml"))
	t.Cleanup(func() {
		kubectlErr("", "delete", "-f", filepath.Join(dir, "app.yaml"), "--wait=true")
		kubectlErr("", "delete", "-f", filepath.Join(dir, "storageclass.yaml"))
	})
	kubectl(t, "", "-n", "prod", "rollout", "status", "deploy/date-writer", "--timeout=180s")
	pv := pvOf(t, "prod", "data")
	if out, _ := stowage("volume", "describe", pv.Spec.CSI.VolumeHandle); !strings.Contains(out, "encrypted: true") || !strings.Contains(out, "type: gp3") {
		t.Fatalf("scenario 1 volume is not an encrypted gp3 volume:\n%s", out)
	}
	var before string
	waitFor(t, "two dated lines", time.Minute, func() (bool, error) {
		out, err := kubectlErr("", "-n", "prod", "exec", "deploy/date-writer", "--", "cat", "/data/out.txt")
		before = out
		return err == nil && strings.Count(out, "\n") >= 1, nil
	})
	old := kubectl(t, "", "-n", "prod", "get", "pod", "-l", "app=date-writer", "-o", "jsonpath={.items[0].metadata.name}")
	kubectl(t, "", "-n", "prod", "delete", "pod", old, "--wait=true")
	kubectl(t, "", "-n", "prod", "rollout", "status", "deploy/date-writer", "--timeout=180s")
	waitFor(t, "the new pod sees the old lines", 2*time.Minute, func() (bool, error) {
		out, err := kubectlErr("", "-n", "prod", "exec", "deploy/date-writer", "--", "cat", "/data/out.txt")
		return err == nil && strings.HasPrefix(out, before) && len(out) > len(before), nil
	})
}

// Scenario 2: a volume made with the CLI becomes a static PV that my-pvc binds.
func TestScenario2_StaticPV(t *testing.T) {
	volID := createStaticVolume(t, "e2e-scenario-2", 5)
	pvYAML, err := os.ReadFile(example("2-static-pv", "pv.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, strings.ReplaceAll(string(pvYAML), "VOLUME_ID", volID), "apply", "-f", "-")
	kubectl(t, "", "apply", "-f", example("2-static-pv", "claim-and-pod.yaml"))
	t.Cleanup(func() {
		kubectlErr("", "delete", "-f", example("2-static-pv", "claim-and-pod.yaml"), "--wait=true")
		kubectlErr("", "delete", "pv", "static-data", "--wait=true")
	})
	if got := waitBound(t, "default", "my-pvc").Spec.VolumeName; got != "static-data" {
		t.Fatalf("my-pvc bound to %s, want static-data", got)
	}
	waitPodPhase(t, "default", "static-app", corev1.PodRunning)
	waitFor(t, "the pod wrote to the static volume", time.Minute, func() (bool, error) {
		out, err := kubectlErr("", "exec", "static-app", "--", "cat", "/data/hello.txt")
		return err == nil && strings.Contains(out, "hello from a static PV"), nil
	})
}

// Scenario 5: claims under Delete and Retain; after the claims go, the
// Delete volume is gone and the Retain volume stays.
func TestScenario5_Lifecycle(t *testing.T) {
	dir := example("5-lifecycle")
	kubectl(t, "", "apply", "-f", filepath.Join(dir, "classes.yaml"))
	kubectl(t, "", "apply", "-f", filepath.Join(dir, "claims-and-pods.yaml"))
	t.Cleanup(func() {
		kubectlErr("", "delete", "-f", filepath.Join(dir, "claims-and-pods.yaml"), "--wait=true")
		kubectlErr("", "delete", "-f", filepath.Join(dir, "classes.yaml"))
	})
	waitPodPhase(t, "default", "lifecycle-pod", corev1.PodRunning)
	delPV := pvOf(t, "default", "claim-delete")
	retPV := pvOf(t, "default", "claim-retain")
	t.Cleanup(func() {
		kube.CoreV1().PersistentVolumes().Delete(context.Background(), retPV.Name, metav1.DeleteOptions{})
		stowage("volume", "delete", retPV.Spec.CSI.VolumeHandle)
	})
	kubectl(t, "", "delete", "pod", "lifecycle-pod", "--wait=true")
	kubectl(t, "", "delete", "pvc", "claim-delete", "claim-retain", "--wait=true")
	waitFor(t, "the Delete PV gone", 2*time.Minute, func() (bool, error) {
		_, err := kube.CoreV1().PersistentVolumes().Get(context.Background(), delPV.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	waitVolumeGone(t, delPV.Spec.CSI.VolumeHandle)
	waitFor(t, "the Retain PV Released", 2*time.Minute, func() (bool, error) {
		p, err := kube.CoreV1().PersistentVolumes().Get(context.Background(), retPV.Name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.VolumeReleased, nil
	})
	if !volumeExists(t, retPV.Spec.CSI.VolumeHandle) {
		t.Fatal("the Retain volume was deleted")
	}
}
