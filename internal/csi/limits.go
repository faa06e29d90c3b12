package csi

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/klog/v2"

	"github.com/stowage-io/stowage/internal/attach"
)

// limiter enforces a volume's IOPS and throughput on its loop device for
// the processes that do the volume's I/O: the host's and those of the pods
// it is published to.
type limiter interface {
	// Apply sets l for device, for the host and the pods with UIDs pods.
	Apply(device string, l attach.Limits, pods []string) error
	// Clear removes what Apply set for device.
	Clear(device string, pods []string) error
	// Enforced reports whether the rules bind anything on this node.
	Enforced() bool
	// String says which mechanism is used, or why there is none.
	String() string
}

// detectLimiter chooses how this node enforces limits. A configured root
// must be usable; otherwise the first usable of the cgroup v2 mount at
// /sys/fs/cgroup (what the kubelet uses when it is there), the cgroup v1
// blkio hierarchy, and any other cgroup2 mount with the io controller. A
// node with none of them stages volumes without limits and says so.
func detectLimiter(root string) (limiter, error) {
	if root != "" {
		l, why := limiterAt(root)
		if l == nil {
			return nil, fmt.Errorf("cgroup root %s cannot carry I/O limits: %s", root, why)
		}
		return l, nil
	}
	candidates := []string{cgroupMount, attach.BlkioRoot}
	candidates = append(candidates, cgroup2Mounts(mountInfoFile)...)
	return detectAmong(candidates), nil
}

// Variables so tests can point them at fake trees.
var (
	cgroupMount   = "/sys/fs/cgroup"
	mountInfoFile = "/proc/self/mountinfo"
)

func detectAmong(candidates []string) limiter {
	var whys []string
	for _, dir := range candidates {
		l, why := limiterAt(dir)
		if l != nil {
			return l
		}
		whys = append(whys, why)
	}
	return noLimits{reason: "no cgroup v1 blkio hierarchy and no cgroup v2 io controller (" + strings.Join(whys, "; ") + ")"}
}

// limiterAt returns the limiter for the cgroup hierarchy mounted at dir, or
// why there is none.
func limiterAt(dir string) (limiter, string) {
	if _, err := os.Stat(filepath.Join(dir, "blkio.throttle.read_iops_device")); err == nil {
		return blkioLimiter(dir), ""
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return nil, dir + " is neither cgroup v1 blkio nor cgroup v2"
	}
	if !slices.Contains(strings.Fields(string(b)), "io") {
		return nil, dir + " is cgroup v2 without the io controller"
	}
	return ioMaxLimiter(dir), ""
}

// cgroup2Mounts lists the mount points of cgroup2 file systems in a
// mountinfo file.
func cgroup2Mounts(mountinfo string) []string {
	b, err := os.ReadFile(mountinfo)
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		// "36 25 0:31 / /sys/fs/cgroup/unified rw,... shared:9 - cgroup2 cgroup2 rw"
		pre, post, ok := strings.Cut(line, " - ")
		if f, p := strings.Fields(pre), strings.Fields(post); ok && len(f) > 4 && len(p) > 0 && p[0] == "cgroup2" {
			out = append(out, f[4])
		}
	}
	return out
}

// cgroupLimiter writes a volume's rules into a cgroup hierarchy: into the
// root when host processes can be bound there, and into the cgroups that
// cgroups returns for each pod.
type cgroupLimiter struct {
	kind     string
	root     string
	hostRule bool
	cgroups  func(root, uid string) []string
	set      func(cgroup, majmin string, l attach.Limits) error
	devno    func(device string) (string, error)
}

// blkioLimiter writes cgroup v1 blkio throttle rules. They are flat: a rule
// binds only tasks that are members of the very cgroup that holds it. So
// the rule goes into the root cgroup (for host processes, and writeback,
// which v1 charges to the root) and into the cgroup of every pod the volume
// is published to and each of its containers. The limits loop re-applies
// this, which also covers containers that start after the publish.
func blkioLimiter(root string) cgroupLimiter {
	return cgroupLimiter{kind: "cgroup v1 blkio at", root: root, hostRule: true,
		cgroups: podCgroups, set: attach.SetBlkio, devno: attach.DeviceNumber}
}

// ioMaxLimiter writes cgroup v2 io.max rules. v2 is nested: a rule in a
// pod's cgroup binds all its containers, those that start later too, so it
// goes into the pod's cgroup only (container cgroups are the runtime's).
// Each pod gets the volume's budget, as with v1. The root cgroup has no
// io.max, so host processes are not limited; pods' writeback is, since v2
// charges it to the cgroup that dirtied the pages. A pod cgroup without
// io.max is one whose parent does not delegate the io controller; the
// error logged names the file.
func ioMaxLimiter(root string) cgroupLimiter {
	return cgroupLimiter{kind: "cgroup v2 io.max under", root: root,
		cgroups: podDirs, set: attach.SetIOMax, devno: attach.DeviceNumber}
}

func (c cgroupLimiter) Apply(device string, l attach.Limits, pods []string) error {
	majmin, err := c.devno(device)
	if err != nil {
		return err
	}
	if c.hostRule {
		if err := c.set(c.root, majmin, l); err != nil {
			return fmt.Errorf("%s: %w", device, err)
		}
	}
	for _, uid := range pods {
		for _, cg := range c.cgroups(c.root, uid) {
			if err := c.set(cg, majmin, l); err != nil {
				klog.ErrorS(err, "apply volume limits to pod cgroup", "device", device, "cgroup", cg)
			}
		}
	}
	return nil
}

func (c cgroupLimiter) Clear(device string, pods []string) error {
	return c.Apply(device, attach.Limits{}, pods)
}

func (c cgroupLimiter) Enforced() bool { return true }

func (c cgroupLimiter) String() string { return c.kind + " " + c.root }

// noLimits is a node that cannot limit I/O.
type noLimits struct{ reason string }

func (noLimits) Apply(string, attach.Limits, []string) error { return nil }
func (noLimits) Clear(string, []string) error                { return nil }
func (noLimits) Enforced() bool                              { return false }
func (l noLimits) String() string                            { return "none: " + l.reason }

// podsOf returns the UIDs of the pods a volume is published to.
func (n *NodeService) podsOf(st *stagedVolume) []string {
	var uids []string
	for target := range st.Targets {
		if uid := podUID(target); uid != "" {
			uids = append(uids, uid)
		}
	}
	slices.Sort(uids)
	return slices.Compact(uids)
}

// podUID finds the pod UID in a kubelet publish path: …/pods/<uid>/volumes/…
// for file systems, …/volumeDevices/publish/<pv>/<uid> for raw block.
func podUID(target string) string {
	parts := strings.Split(filepath.Clean(target), string(filepath.Separator))
	for i, p := range parts {
		if p == "pods" && i+2 < len(parts) && parts[i+2] == "volumes" {
			return parts[i+1]
		}
		if p == "volumeDevices" && i+3 < len(parts) && parts[i+1] == "publish" {
			return parts[len(parts)-1]
		}
	}
	return ""
}

// podCgroups returns the cgroup of pod uid and those of its containers.
func podCgroups(root, uid string) []string {
	var out []string
	for _, pod := range podDirs(root, uid) {
		out = append(out, pod)
		if kids, err := os.ReadDir(pod); err == nil {
			for _, k := range kids {
				if k.IsDir() {
					out = append(out, filepath.Join(pod, k.Name()))
				}
			}
		}
	}
	return out
}

// podDirs returns the cgroup of pod uid, as the kubelet lays them out with
// the cgroupfs driver (…/kubepods/<qos>/pod<uid>) or the systemd one
// (…/kubepods-<qos>-pod<uid_with_underscores>.slice).
func podDirs(root, uid string) []string {
	names := []string{"pod" + uid, "pod" + strings.ReplaceAll(uid, "-", "_")}
	var out []string
	var walk func(dir string, depth int)
	walk = func(dir string, depth int) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			path := filepath.Join(dir, e.Name())
			if matchesPod(e.Name(), names) {
				out = append(out, path)
				continue
			}
			// Below the top level the kubelet nests QoS classes
			// (besteffort, burstable); at the top only kubepods is ours.
			if depth < 3 && (depth > 0 || strings.HasPrefix(e.Name(), "kubepods")) {
				walk(path, depth+1)
			}
		}
	}
	walk(root, 0)
	return out
}

func matchesPod(name string, podNames []string) bool {
	for _, p := range podNames {
		if name == p || strings.HasSuffix(name, "-"+p+".slice") {
			return true
		}
	}
	return false
}
