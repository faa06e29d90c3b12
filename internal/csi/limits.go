package csi

import (
	"os"
	"path/filepath"
	"strings"

	"k8s.io/klog/v2"

	"github.com/stowage-io/stowage/internal/attach"
)

// applyLimits enforces a volume's IOPS and throughput on its loop device.
//
// cgroup v1 blkio rules are flat: a rule binds only tasks that are members of
// the very cgroup that holds it. So the rule goes into the root cgroup (for
// host processes) and into the cgroup of every pod the volume is published
// to, and of each of its containers. The limits loop re-applies this, which
// also covers containers that start after the publish.
func (n *NodeService) applyLimits(st *stagedVolume, l attach.Limits) error {
	if err := attach.SetLimits(st.Device, l); err != nil {
		return err
	}
	for target := range st.Targets {
		uid := podUID(target)
		if uid == "" {
			continue
		}
		for _, cg := range podCgroups(n.blkioRoot(), uid) {
			if err := attach.SetLimitsIn(cg, st.Device, l); err != nil {
				klog.ErrorS(err, "apply volume limits to pod cgroup", "volumeID", st.VolumeID, "cgroup", cg)
			}
		}
	}
	return nil
}

func (n *NodeService) blkioRoot() string {
	if n.cfg.BlkioRoot != "" {
		return n.cfg.BlkioRoot
	}
	return attach.BlkioRoot
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

// podCgroups returns the blkio cgroup of pod uid and of its containers, as
// the kubelet lays them out with the cgroupfs driver (…/kubepods/<qos>/pod<uid>/<container>)
// or the systemd one (…/kubepods-<qos>-pod<uid_with_underscores>.slice/…).
func podCgroups(root, uid string) []string {
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
				if kids, err := os.ReadDir(path); err == nil {
					for _, k := range kids {
						if k.IsDir() {
							out = append(out, filepath.Join(path, k.Name()))
						}
					}
				}
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
