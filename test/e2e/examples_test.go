package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// K2: what a pod writes to a hostPath directory is there for the next pod
// on the node after the first one is gone (examples/k2-hostpath).
func TestK2_HostPathOutlivesPod(t *testing.T) {
	const hostDir = "/var/tmp/stowage-example-hostpath"
	os.RemoveAll(hostDir)
	t.Cleanup(func() {
		kubectlErr("", "delete", "-f", example("k2-hostpath", "pods.yaml"), "--ignore-not-found", "--wait=true")
		kubectlErr("", "delete", "-f", example("k2-hostpath", "reader.yaml"), "--ignore-not-found", "--wait=true")
		os.RemoveAll(hostDir)
	})
	kubectl(t, "", "apply", "-f", example("k2-hostpath", "pods.yaml"))
	waitPodPhase(t, "default", "hostpath-writer", corev1.PodSucceeded)
	kubectl(t, "", "delete", "pod", "hostpath-writer", "--wait=true")

	kubectl(t, "", "apply", "-f", example("k2-hostpath", "reader.yaml"))
	waitPodPhase(t, "default", "hostpath-reader", corev1.PodSucceeded)
	if out := kubectl(t, "", "logs", "hostpath-reader"); !strings.Contains(out, "written by hostpath-writer") {
		t.Fatalf("the reader pod did not find what the deleted writer pod wrote; it printed %q", out)
	}
	b, err := os.ReadFile(hostDir + "/log.txt")
	if err != nil || !strings.Contains(string(b), "written by hostpath-writer") {
		t.Fatalf("the data is not in the node's directory %s: %q, %v", hostDir, b, err)
	}
}

// K14: a storage ResourceQuota refuses a claim that would exceed it
// (examples/k14-storage-quota).
func TestK14_StorageQuota(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() {
		kubectlErr("", "delete", "namespace", "quota-demo", "--ignore-not-found", "--wait=true", "--timeout=3m")
	})
	kubectl(t, "", "apply", "-f", example("k14-storage-quota", "quota.yaml"))
	// Admission counts against the quota's status, which the quota
	// controller fills in first.
	waitFor(t, "the quota's status", time.Minute, func() (bool, error) {
		q, err := kube.CoreV1().ResourceQuotas("quota-demo").Get(ctx, "storage", metav1.GetOptions{})
		return err == nil && len(q.Status.Hard) == 3, nil
	})
	kubectl(t, "", "apply", "-f", example("k14-storage-quota", "claim-fits.yaml"))
	out, err := kubectlErr("", "apply", "-f", example("k14-storage-quota", "claim-too-big.yaml"))
	if err == nil {
		t.Fatalf("a claim beyond the class's 8Gi quota was accepted:\n%s", out)
	}
	for _, want := range []string{"exceeded quota: storage", "stowage-gp3.storageclass.storage.k8s.io/requests.storage"} {
		if !strings.Contains(out, want) {
			t.Fatalf("refusal does not say %q:\n%s", want, out)
		}
	}
	if _, err := kube.CoreV1().PersistentVolumeClaims("quota-demo").Get(ctx, "too-big", metav1.GetOptions{}); err == nil {
		t.Fatal("the refused claim exists")
	}
	waitFor(t, "the quota to show 5Gi used", time.Minute, func() (bool, error) {
		q, err := kube.CoreV1().ResourceQuotas("quota-demo").Get(ctx, "storage", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		used := q.Status.Used[corev1.ResourceRequestsStorage]
		return used.String() == "5Gi", nil
	})
}
