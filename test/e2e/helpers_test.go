package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

const (
	busybox      = "docker.io/library/busybox:1.36"
	defaultClass = "stowage-gp3"
	driverName   = "block.csi.stowage.io"
	pollEvery    = time.Second
	podTimeout   = 3 * time.Minute
)

// namespace makes a namespace for one test and deletes it (and waits for its
// volumes to go) when the test ends.
func namespace(t *testing.T) string {
	t.Helper()
	name := "e2e-" + strings.ToLower(strings.NewReplacer("_", "-", "/", "-").Replace(t.Name()))
	if len(name) > 60 {
		name = name[:60]
	}
	name = strings.TrimRight(name, "-")
	ctx := context.Background()
	_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "default service account in "+name, time.Minute, func() (bool, error) {
		_, err := kube.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	t.Cleanup(func() {
		if err := kube.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete namespace %s: %v", name, err)
			return
		}
		waitFor(t, "namespace "+name+" gone", 3*time.Minute, func() (bool, error) {
			_, err := kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
	})
	return name
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), pollEvery, timeout, true, func(context.Context) (bool, error) { return cond() })
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// claim returns a PVC in ns; class "" means the default class (nil field).
func claim(name, class, size string, modes ...corev1.PersistentVolumeAccessMode) *corev1.PersistentVolumeClaim {
	if len(modes) == 0 {
		modes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: modes,
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
		},
	}
	if class != "" {
		c.Spec.StorageClassName = &class
	}
	return c
}

func createPVC(t *testing.T, ns string, c *corev1.PersistentVolumeClaim) *corev1.PersistentVolumeClaim {
	t.Helper()
	out, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(context.Background(), c, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pod is a busybox pod that runs script with the claims mounted at /<claim>.
func pod(name, script string, claims ...string) *corev1.Pod {
	one := int64(1)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &one,
			RestartPolicy:                 corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "app", Image: busybox, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"/bin/sh", "-c", script},
			}},
		},
	}
	for _, c := range claims {
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: c, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c}}})
		p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: c, MountPath: "/" + c})
	}
	return p
}

func createPod(t *testing.T, ns string, p *corev1.Pod) {
	t.Helper()
	if _, err := kube.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func waitPodPhase(t *testing.T, ns, name string, phases ...corev1.PodPhase) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), pollEvery, podTimeout, true, func(ctx context.Context) (bool, error) {
		var err error
		p, err = kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, ph := range phases {
			if p.Status.Phase == ph {
				return true, nil
			}
		}
		return p.Status.Phase == corev1.PodFailed, nil
	})
	if err != nil || (p != nil && p.Status.Phase == corev1.PodFailed && !contains(phases, corev1.PodFailed)) {
		t.Fatalf("pod %s/%s did not reach %v: %v\n%s", ns, name, phases, err, describe(ns, "pod", name))
	}
	return p
}

func contains[T comparable](xs []T, x T) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// runPod runs a pod to completion and returns its log.
func runPod(t *testing.T, ns string, p *corev1.Pod) string {
	t.Helper()
	createPod(t, ns, p)
	waitPodPhase(t, ns, p.Name, corev1.PodSucceeded)
	out := kubectl(t, "", "-n", ns, "logs", p.Name)
	if err := kube.CoreV1().Pods(ns).Delete(context.Background(), p.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, ns, p.Name)
	return out
}

func waitGone(t *testing.T, ns, podName string) {
	t.Helper()
	waitFor(t, "pod "+podName+" gone", podTimeout, func() (bool, error) {
		_, err := kube.CoreV1().Pods(ns).Get(context.Background(), podName, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}

func podExec(t *testing.T, ns, podName string, cmd ...string) string {
	t.Helper()
	return kubectl(t, "", append([]string{"-n", ns, "exec", podName, "--"}, cmd...)...)
}

func waitBound(t *testing.T, ns, name string) *corev1.PersistentVolumeClaim {
	t.Helper()
	var c *corev1.PersistentVolumeClaim
	err := wait.PollUntilContextTimeout(context.Background(), pollEvery, podTimeout, true, func(ctx context.Context) (bool, error) {
		var err error
		c, err = kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && c.Status.Phase == corev1.ClaimBound, nil
	})
	if err != nil {
		t.Fatalf("claim %s/%s not bound: %v\n%s", ns, name, err, describe(ns, "pvc", name))
	}
	return c
}

func pvOf(t *testing.T, ns, claimName string) *corev1.PersistentVolume {
	t.Helper()
	c := waitBound(t, ns, claimName)
	pv, err := kube.CoreV1().PersistentVolumes().Get(context.Background(), c.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pv
}

func describe(ns, kind, name string) string {
	out, _ := kubectlErr("", "-n", ns, "describe", kind, name)
	return out
}

// volumeExists asks the Stowage API whether a backend volume exists.
func volumeExists(t *testing.T, id string) bool {
	t.Helper()
	out, code := stowage("volume", "describe", id)
	switch code {
	case 0:
		return true
	case 3:
		return false
	}
	t.Fatalf("stowage volume describe %s: exit %d: %s", id, code, out)
	return false
}

func waitVolumeGone(t *testing.T, id string) {
	t.Helper()
	waitFor(t, "backend volume "+id+" deleted", 2*time.Minute, func() (bool, error) { return !volumeExists(t, id), nil })
}

func checksumScript(path string) string {
	return fmt.Sprintf("md5sum %s | cut -d' ' -f1", path)
}

// syscallKill sends SIGKILL to pid.
func syscallKill(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
