package csi

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestPodUID_KubeletPaths(t *testing.T) {
	for _, tc := range []struct{ path, want string }{
		{"/var/lib/kubelet/pods/1b2c-3d/volumes/kubernetes.io~csi/pvc-1/mount", "1b2c-3d"},
		{"/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pvc-1/9f8e-7d", "9f8e-7d"},
		{"/tmp/sanity/target", ""},
	} {
		if got := podUID(tc.path); got != tc.want {
			t.Errorf("podUID(%q) = %q, want %q", tc.path, got, tc.want)
		}
	}
}

func TestPodCgroups_CgroupfsAndSystemdLayouts_FindPodAndContainers(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{
		"kubepods/besteffort/pod1b2c-3d/ctr-a",
		"kubepods/besteffort/pod1b2c-3d/ctr-b",
		"kubepods/burstable/podother/ctr-c",
		"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod9f8e_7d.slice/cri-x.scope",
	} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got := podCgroups(root, "1b2c-3d")
	want := []string{
		filepath.Join(root, "kubepods/besteffort/pod1b2c-3d"),
		filepath.Join(root, "kubepods/besteffort/pod1b2c-3d/ctr-a"),
		filepath.Join(root, "kubepods/besteffort/pod1b2c-3d/ctr-b"),
	}
	if !slices.Equal(got, want) {
		t.Errorf("cgroupfs layout: got %v, want %v", got, want)
	}
	got = podCgroups(root, "9f8e-7d")
	if len(got) != 2 || filepath.Base(got[1]) != "cri-x.scope" {
		t.Errorf("systemd layout: got %v, want the pod slice and its scope", got)
	}
	if got := podCgroups(root, "absent"); len(got) != 0 {
		t.Errorf("absent pod: got %v, want none", got)
	}
}
