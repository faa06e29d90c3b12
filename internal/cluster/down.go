package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stowage-io/stowage/internal/attach"
	"github.com/stowage-io/stowage/pkg/loopdev"
)

// DownOptions tune `stowage down`.
type DownOptions struct {
	Out io.Writer
	// Wipe deletes the data directory afterwards: certificates, etcd,
	// volumes, everything.
	Wipe bool
}

// Down stops everything `up` started in dataDir, by pid, and cleans what
// the processes leave behind: pod sandboxes, mounts, loop devices, network
// interfaces, iptables chains, containerd's files outside its state
// directory. Workloads stay in etcd (unless wiped) and come back with the
// next `up`, as after a node reboot. Down when nothing runs succeeds.
func Down(ctx context.Context, dataDir string, o DownOptions) error {
	start := time.Now()
	p := &progress{out: o.Out, start: start}
	if os.Geteuid() != 0 {
		return errors.New("stowage down must run as root")
	}
	c, err := LoadConfig(dataDir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		// Never brought up here (or half-way): clean up with the defaults.
		c = &Config{DataDir: dataDir}
		if err := c.Validate(); err != nil {
			return err
		}
	}
	l := c.Layout()
	report := func(format string, args ...any) { p.line("·", fmt.Sprintf(format, args...), "", 0) }
	var errs []error
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err)
			p.line("✗", err.Error(), "", 0)
		}
	}
	stop := func(names ...string) {
		for _, n := range names {
			t := time.Now()
			stopped, err := c.process(n).Stop(ctx, graceOf(n))
			keep(err)
			if stopped {
				p.line("✓", "stopped "+n, "", time.Since(t))
			}
		}
	}

	// The loop devices of the cluster, by their backing files' identity:
	// one whose file is on a FUSE mount (a network attachment's) that goes
	// away below no longer shows a path under the data directory.
	var ours []loopdev.Backing
	if loops, err := loopdev.Under(c.DataDir); err == nil {
		for _, d := range loops {
			if b, err := loopdev.BackingOfDevice(d.Number); err == nil {
				ours = append(ours, b)
			}
		}
	}

	// The supervisor first, so that it restarts nothing; the controllers,
	// so that nothing reacts to the node going away; then the kubelet, so
	// that it does not restart the pods stopped next.
	nodes := c.nodes()
	onNodes := func(names ...string) []string {
		var out []string
		for _, n := range nodes {
			for _, name := range names {
				out = append(out, name+n.suffix())
			}
		}
		return out
	}
	stop(append([]string{Supervisor, "kube-controller-manager", "kube-scheduler", "snapshot-controller",
		"csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter", "csi-file-provisioner", "csi-file-resizer"}, onNodes("kubelet")...)...)

	for _, n := range nodes {
		if st, _ := c.process("containerd" + n.suffix()).State(); st == Running {
			t := time.Now()
			k, err := stopPods(ctx, n.L.ContainerdSocket())
			keep(err)
			p.line("✓", fmt.Sprintf("stopped %d pod sandboxes of %s", k, n.Name), "", time.Since(t))
		}
	}
	// A container whose stop failed would still hold its volumes open, and
	// with them their loop devices: whatever still runs in a pod cgroup goes.
	if k := killCgroupTree("kubepods"); k > 0 {
		report("killed %d processes left in pod cgroups", k)
	}
	for _, n := range nodes[1:] {
		if k := killCgroupTree(n.cgroupRoot()); k > 0 {
			report("killed %d processes left in %s's pod cgroups", k, n.Name)
		}
	}
	stop(append(onNodes("kube-proxy", "csi-node", "csi-file", "secrets-store-registrar", "secrets-store-csi-driver"), "secrets-provider", "csi-controller")...)

	// Volumes: pods' mounts and the node plugin's staging mounts live under
	// the kubelet's root; their loop devices are backed by images in the
	// pool. The kubelet holds raw block volumes open through loop devices of
	// its own, backed by device files under its root: those go first, while
	// their backing paths still read as under the root. All must go before
	// the server can unmount the pool.
	t := time.Now()
	loops, n := 0, 0
	for _, nd := range nodes {
		k, err := detachLoops(nd.L.KubeletRoot())
		keep(err)
		loops += k
		m, err := unmountAll(nd.L.KubeletRoot())
		keep(err)
		n += m
	}
	pool := filepath.Join(l.Stowage(), "pools")
	for _, sub := range []string{"volumes", "snapshots"} {
		matches, _ := filepath.Glob(filepath.Join(pool, "*", sub))
		for _, m := range matches {
			k, err := detachLoops(m)
			keep(err)
			loops += k
		}
	}
	if n+loops > 0 {
		p.line("✓", fmt.Sprintf("unmounted %d volume mounts, detached %d loop devices", n, loops), "", time.Since(t))
	}
	// Volumes attached over the network, while the server that exports
	// them still runs: each `stowage nbd-attach` process (outside the node
	// plugin) is stopped, so it detaches its loop device and unmounts its
	// FUSE file cleanly; kernel NBD devices are disconnected.
	t = time.Now()
	attached := 0
	for _, nd := range nodes {
		k, err := attach.DetachAllNetwork(ctx, nd.L.CSINodeState())
		keep(err)
		attached += k
	}
	if attached > 0 {
		p.line("✓", fmt.Sprintf("detached %d volumes attached over the network", attached), "", time.Since(t))
	}
	stop(append([]string{"stowage-server-2", "stowage-server", "kube-apiserver", "kms-plugin", "etcd"}, onNodes("containerd")...)...)
	// Whatever else of ours runs (by the component list, in reverse).
	rest := c.componentNames()
	slices.Reverse(rest)
	stop(rest...)

	// Anything of ours still alive: shims of our containerd, and processes
	// of this cluster whose pid file was lost.
	if k := killStragglers(c); k > 0 {
		report("killed %d leftover processes", k)
	}

	t = time.Now()
	n, err = unmountAll(c.DataDir)
	keep(err)
	k, err := detachLoops(c.DataDir)
	keep(err)
	for _, b := range ours {
		if dev, found, _ := loopdev.FindFile(b); found {
			keep(loopdev.DetachFile(ctx, b))
			report("detached %s, whose backing file (%s) is no longer under %s", dev, b, c.DataDir)
			k++
		}
	}
	if n+k > 0 {
		p.line("✓", fmt.Sprintf("unmounted %d, detached %d loop devices", n, k), "", time.Since(t))
	}
	keep(teardownWorkers(ctx, c, report))
	keep(teardownNetwork(ctx, report))
	keep(cleanHostLeftovers(c, report))

	if o.Wipe {
		if left, _ := mountsUnder(c.DataDir); len(left) > 0 {
			keep(fmt.Errorf("not wiping %s: still mounted: %s", c.DataDir, strings.Join(left, ", ")))
		} else if err := os.RemoveAll(c.DataDir); err != nil {
			keep(err)
		} else {
			report("removed %s", c.DataDir)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("down finished with %d problems (see above)", len(errs))
	}
	fmt.Fprintf(o.Out, "\nStowage is down (%.1fs).\n", time.Since(start).Seconds())
	return nil
}

// graceOf is how long a component gets between SIGTERM and SIGKILL. The
// Stowage server unmounts its pool when it stops; containerd shuts its
// plugins down.
func graceOf(name string) time.Duration {
	switch name {
	case "stowage-server", "containerd", "etcd", "kube-apiserver":
		return 20 * time.Second
	}
	return 10 * time.Second
}

// stopPods stops and removes every pod sandbox through the CRI.
func stopPods(ctx context.Context, socket string) (int, error) {
	cri, err := dialCRI(socket)
	if err != nil {
		return 0, err
	}
	defer cri.Close()
	ids, err := cri.sandboxIDs(ctx)
	if err != nil {
		return 0, fmt.Errorf("list pod sandboxes: %w", err)
	}
	var errs []error
	for _, id := range ids {
		errs = append(errs, cri.stopAndRemove(ctx, id))
	}
	return len(ids), errors.Join(errs...)
}

// killStragglers kills, by pid, containerd shims serving our containerd
// socket and any process started for this cluster (its environment names
// the data directory) that is still alive.
func killStragglers(c *Config) int {
	sock := c.Layout().ContainerdSocket()
	marker := []byte(envCluster + "=" + c.DataDir)
	var pids []int
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if len(args) > 0 && strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") && slices.Contains(args, sock) {
			pids = append(pids, pid)
			continue
		}
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, marker) {
				pids = append(pids, pid)
				break
			}
		}
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if len(pids) > 0 {
		time.Sleep(500 * time.Millisecond)
	}
	return len(pids)
}

// cleanHostLeftovers removes what containerd 1.6, the CNI plugins and the
// kubelet write outside the data directory: shim sockets and fifos under
// /run/containerd (only when no containerd runs on the machine any more),
// the CNI result cache of our network, the /var/log/containers links into
// our pod logs, and the kubelet's pod cgroups.
func cleanHostLeftovers(c *Config, report func(string, ...any)) error {
	var errs []error
	if !containerdRunning() {
		for _, d := range []string{"/run/containerd/s", "/run/containerd/fifo"} {
			if exists(d) {
				if err := os.RemoveAll(d); err != nil {
					errs = append(errs, err)
				} else {
					report("removed %s", d)
				}
			}
		}
		os.Remove("/run/containerd") // only if empty
	}
	results, _ := filepath.Glob("/var/lib/cni/results/" + CNINetwork + "-*")
	for _, r := range results {
		if err := os.Remove(r); err != nil {
			errs = append(errs, err)
		}
	}
	if len(results) > 0 {
		report("removed %d CNI results in /var/lib/cni/results", len(results))
	}
	for _, d := range []string{"/var/lib/cni/results", "/var/lib/cni"} {
		os.Remove(d) // only if empty
	}
	links, _ := filepath.Glob("/var/log/containers/*.log")
	removed := 0
	for _, link := range links {
		if target, err := os.Readlink(link); err == nil && strings.HasPrefix(target, c.Layout().PodLogs()+"/") {
			if os.Remove(link) == nil {
				removed++
			}
		}
	}
	if removed > 0 {
		report("removed %d links in /var/log/containers", removed)
	}
	os.Remove("/var/log/containers") // only if empty
	// The kubelet's device plugin socket is always in /var/lib/kubelet,
	// whatever its root directory.
	if !kubeletRunning() {
		os.Remove("/var/lib/kubelet/device-plugins/kubelet.sock")
		for _, d := range []string{"/var/lib/kubelet/device-plugins", "/var/lib/kubelet"} {
			os.Remove(d) // only if empty
		}
	}
	if n := removeCgroupTrees("kubepods"); n > 0 {
		report("removed %d pod cgroups", n)
	}
	return errors.Join(errs...)
}

func containerdRunning() bool { return processRunning("containerd") }
func kubeletRunning() bool    { return processRunning("kubelet") }

// processRunning says whether a live process has this command name.
func processRunning(name string) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !alive(pid) { // a stopped one may linger as a zombie
			continue
		}
		if comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm")); err == nil && strings.TrimSpace(string(comm)) == name {
			return true
		}
	}
	return false
}

// removeCgroupTrees removes the (empty) cgroup directories named top in
// every cgroup hierarchy, deepest first. Non-empty ones stay.
func removeCgroupTrees(top string) int {
	n := 0
	for _, root := range cgroupRoots(top) {
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		slices.Reverse(dirs)
		for _, d := range dirs {
			if syscall.Rmdir(d) == nil {
				n++
			}
		}
	}
	return n
}

// killCgroupTree SIGKILLs every process in the cgroup directories named top
// (and below) of every hierarchy, and gives them a moment to exit.
func killCgroupTree(top string) int {
	pids := map[int]bool{}
	for _, root := range cgroupRoots(top) {
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
					pids[pid] = true
				}
			}
			return nil
		})
	}
	for pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	killed := len(pids)
	for i := 0; i < 50 && len(pids) > 0; i++ {
		for pid := range pids {
			if !alive(pid) {
				delete(pids, pid)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return killed
}

// cgroupRoots are the directories named top at the root of every cgroup
// hierarchy: /sys/fs/cgroup/<controller>/top for v1, /sys/fs/cgroup/top for
// a v2-only machine.
func cgroupRoots(top string) []string {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + top)
	if exists("/sys/fs/cgroup/" + top) {
		roots = append(roots, "/sys/fs/cgroup/"+top)
	}
	return roots
}
