package csi

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stowage-io/stowage/internal/attach"
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

// fakeTree makes directories and files (path -> contents) under a temp dir.
func fakeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

func fixedDevno(string) (string, error) { return "7:3", nil }

var blkioFiles = []string{"blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device", "blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"}

func blkioTree(t *testing.T, cgroups ...string) string {
	files := map[string]string{}
	for _, cg := range cgroups {
		for _, f := range blkioFiles {
			files[filepath.Join(cg, f)] = ""
		}
	}
	return fakeTree(t, files)
}

func ioTree(t *testing.T, controllers string, cgroups ...string) string {
	files := map[string]string{"cgroup.controllers": controllers}
	for _, cg := range cgroups {
		files[filepath.Join(cg, "io.max")] = ""
	}
	return fakeTree(t, files)
}

const (
	podDir = "kubepods/besteffort/pod1b2c-3d"
	ctrDir = "kubepods/besteffort/pod1b2c-3d/ctr-a"
)

var volumeLimits = attach.Limits{ReadIOPS: 3000, WriteIOPS: 3000, ReadBPS: 125 << 20, WriteBPS: 125 << 20}

// cgroup v1 rules are flat: the root (host processes) and the pod and each
// of its containers get one.
func TestCgroupV1_Apply_RootPodAndContainers(t *testing.T) {
	root := blkioTree(t, ".", podDir, ctrDir, "kubepods/besteffort/podother")
	l := blkioLimiter(root)
	l.devno = fixedDevno
	if err := l.Apply("/dev/loop3", volumeLimits, []string{"1b2c-3d"}); err != nil {
		t.Fatal(err)
	}
	for _, cg := range []string{".", podDir, ctrDir} {
		if got := readFile(t, filepath.Join(root, cg, "blkio.throttle.write_iops_device")); got != "7:3 3000" {
			t.Errorf("%s: write_iops rule %q, want %q", cg, got, "7:3 3000")
		}
	}
	if got := readFile(t, filepath.Join(root, "kubepods/besteffort/podother/blkio.throttle.write_iops_device")); got != "" {
		t.Errorf("another pod's cgroup got rule %q", got)
	}
	if err := l.Clear("/dev/loop3", []string{"1b2c-3d"}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, ctrDir, "blkio.throttle.read_bps_device")); got != "7:3 0" {
		t.Errorf("after Clear the container's read_bps rule is %q, want the removal %q", got, "7:3 0")
	}
}

// cgroup v2 is nested: the pod's cgroup gets the rule, which binds its
// containers; they and the root (which has no io.max) get none.
func TestCgroupV2_Apply_PodCgroupOnly(t *testing.T) {
	root := ioTree(t, "cpuset cpu io memory pids", podDir, ctrDir)
	l := ioMaxLimiter(root)
	l.devno = fixedDevno
	if err := l.Apply("/dev/loop3", attach.Limits{ReadIOPS: 3000, WriteIOPS: 3000, WriteBPS: 125 << 20}, []string{"1b2c-3d"}); err != nil {
		t.Fatal(err)
	}
	if got, want := readFile(t, filepath.Join(root, podDir, "io.max")), "7:3 riops=3000 wiops=3000 rbps=max wbps=131072000"; got != want {
		t.Errorf("pod io.max %q, want %q", got, want)
	}
	if got := readFile(t, filepath.Join(root, ctrDir, "io.max")); got != "" {
		t.Errorf("container io.max %q, want no rule (the pod's binds it)", got)
	}
	if _, err := os.Stat(filepath.Join(root, "io.max")); err == nil {
		t.Error("a rule was written into the root cgroup, which has no io.max")
	}
	if err := l.Clear("/dev/loop3", []string{"1b2c-3d"}); err != nil {
		t.Fatal(err)
	}
	if got, want := readFile(t, filepath.Join(root, podDir, "io.max")), "7:3 riops=max wiops=max rbps=max wbps=max"; got != want {
		t.Errorf("after Clear pod io.max %q, want %q (the kernel then drops the line)", got, want)
	}
}

func TestDetectLimiter_FakeTrees(t *testing.T) {
	v1 := blkioTree(t, ".")
	v2 := ioTree(t, "cpu io memory")
	v2NoIO := ioTree(t, "cpu memory")
	empty := t.TempDir()
	for _, tt := range []struct {
		name       string
		candidates []string
		want       string // "v1", "v2" or "none"
	}{
		{"V2First_LikeTheKubelet", []string{v2, v1}, "v2"},
		{"HybridHost_V1Blkio", []string{empty, v1, v2NoIO}, "v1"},
		{"V2WithoutIO_ThenV1", []string{v2NoIO, v1}, "v1"},
		{"Neither_NotEnforced", []string{empty, v2NoIO}, "none"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := detectAmong(tt.candidates)
			got := "none"
			if c, ok := l.(cgroupLimiter); ok {
				got = map[bool]string{true: "v1", false: "v2"}[c.hostRule]
			}
			if got != tt.want {
				t.Fatalf("detected %s (%s), want %s", got, l, tt.want)
			}
			if got == "none" && !strings.Contains(l.String(), "without the io controller") {
				t.Errorf("a node without limits says %q; want why", l)
			}
		})
	}
	if _, err := detectLimiter(empty); err == nil {
		t.Error("a configured cgroup root that is neither v1 blkio nor v2 io was accepted")
	}
	if l, err := detectLimiter(v2); err != nil || !l.Enforced() {
		t.Errorf("configured v2 root: %v, %v", l, err)
	}
}

func TestCgroup2Mounts_FromMountinfo(t *testing.T) {
	mi := filepath.Join(fakeTree(t, map[string]string{"mountinfo": `25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 31 0:30 / /sys/fs/cgroup/blkio rw,nosuid shared:14 - cgroup cgroup rw,blkio
`}), "mountinfo")
	if got := cgroup2Mounts(mi); !slices.Equal(got, []string{"/sys/fs/cgroup/unified"}) {
		t.Errorf("cgroup2Mounts = %v, want [/sys/fs/cgroup/unified]", got)
	}
}
