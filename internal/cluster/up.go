package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/stowage-io/stowage/deploy/local"
)

// UpOptions tune `stowage up`.
type UpOptions struct {
	Out io.Writer
	// SkipCheck skips the end-to-end check (a claim of the default class
	// bound and mounted by a pod), which otherwise runs on every `up`.
	SkipCheck bool
	// Timeout bounds each wait (a component becoming ready, the node, the
	// check).
	Timeout time.Duration
	// Nodes is how many nodes the cluster has (0: as cluster.json says, or
	// one); Zones their zones, round robin (empty: Config.Zone for all).
	Nodes int
	Zones []string
	// StorageHostsPerZone is how many storage hosts each zone but the
	// machine's gets on a multi-node cluster (0: 1).
	StorageHostsPerZone int
	// InstallGiven says Config.Install was chosen for this `up`; otherwise
	// the cluster keeps how it was installed.
	InstallGiven bool
}

// progress prints one line per finished step, with the step's own time and
// the time since `up` started.
type progress struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
}

func (p *progress) line(mark, name, msg string, took time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	text := name
	if msg != "" {
		text = fmt.Sprintf("%-24s %s", name, msg)
	}
	if took > 0 {
		text += " " + fmtDuration(took)
	}
	fmt.Fprintf(p.out, "[%5.1fs] %s %s\n", time.Since(p.start).Seconds(), mark, text)
}

func fmtDuration(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return fmt.Sprintf("(%.1fs)", d.Seconds())
}

// step is one unit of `up`; steps run as soon as the steps they need are done.
type step struct {
	name  string
	needs []string
	run   func(ctx context.Context) (string, error)
}

func (p *progress) runSteps(ctx context.Context, steps []step) error {
	done := map[string]chan struct{}{}
	for _, s := range steps {
		done[s.name] = make(chan struct{})
	}
	for _, s := range steps {
		for _, n := range s.needs {
			if done[n] == nil {
				return fmt.Errorf("step %s needs unknown step %s", s.name, n)
			}
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, s := range steps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, n := range s.needs {
				select {
				case <-done[n]:
				case <-ctx.Done():
					return
				}
			}
			t := time.Now()
			msg, err := s.run(ctx)
			if err != nil {
				if ctx.Err() == nil {
					p.line("✗", s.name, "failed", time.Since(t))
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
					mu.Unlock()
				}
				cancel()
				return
			}
			p.line("✓", s.name, msg, time.Since(t))
			close(done[s.name])
		}()
	}
	wg.Wait()
	if len(errs) == 0 && ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.Join(errs...)
}

// Up brings the cluster up from nothing, or completes a partly running one:
// components already running are kept, certificates and keys are reused.
// It returns once the node is Ready and (unless skipped) a claim of the
// default class has been bound, mounted by a pod and deleted again.
func Up(ctx context.Context, c *Config, o UpOptions) error {
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	p := &progress{out: o.Out, start: time.Now()}
	if os.Geteuid() != 0 {
		return errors.New("stowage up must run as root: it starts containerd and the kubelet, mounts file systems and sets up network interfaces")
	}
	if err := c.Validate(); err != nil {
		return err
	}
	if old, err := LoadConfig(c.DataDir); err == nil && !o.InstallGiven {
		c.Install = old.Install
	}
	if o.Nodes == 0 && len(o.Zones) == 0 {
		if old, err := LoadConfig(c.DataDir); err == nil && len(old.Workers) > 0 {
			c.Workers, c.Zone, c.StorageHosts = old.Workers, old.Zone, old.StorageHosts
		}
	} else {
		if o.Nodes == 0 {
			o.Nodes = 1
		}
		if err := c.SetNodes(o.Nodes, o.Zones); err != nil {
			return err
		}
		if o.StorageHostsPerZone == 0 {
			o.StorageHostsPerZone = 1
		}
		if err := c.SetStorageHosts(o.StorageHostsPerZone); err != nil {
			return err
		}
	}
	if c.chartInstall() && len(c.Workers) > 0 {
		return fmt.Errorf("--install=%s runs on one node for now: the chart's agents and in-cluster server are not brought up on a multi-node cluster; drop --nodes or --install", InstallChart)
	}
	missing := MissingBinaries(c.BinDir)
	if c.chartInstall() && !exists(filepath.Join(c.BinDir, "helm")) {
		missing = append(missing, "helm")
	}
	if len(missing) > 0 {
		return fmt.Errorf("component binaries missing in %s: %s\n  build them from the source tree with: bash hack/build-components.sh (see docs/building.md),\n  or point --bin-dir at a directory that has them", c.BinDir, strings.Join(missing, ", "))
	}
	if err := c.checkSameCluster(); err != nil {
		return err
	}
	if old, err := LoadConfig(c.DataDir); err == nil && old.FSType != "" {
		c.FSType = old.FSType
	} else if c.FSType == "" {
		var why string
		c.FSType, why = selfFSType()
		fmt.Fprintf(o.Out, "StorageClasses: %s\n", why)
	}
	l := c.Layout()

	t := time.Now()
	installed, err := ensurePackages(ctx)
	if err != nil {
		return err
	}
	if len(installed) > 0 {
		p.line("✓", "packages", "installed "+strings.Join(installed, " "), time.Since(t))
	} else {
		p.line("✓", "packages", "all installed", time.Since(t))
	}

	t = time.Now()
	for _, d := range []string{l.Logs(), l.Run(), filepath.Dir(l.ContainerdSocket()), l.Configs(), l.CNIConfDir(), l.CNIIPAMDir(),
		l.KubeletRoot(), l.PluginsRegistry(), filepath.Dir(l.CSINodeSocket()), filepath.Dir(l.SecretsStoreSocket()), l.SecretsProviders(), l.PodLogs(), l.Images(), l.Stowage(), l.CSINodeState(), l.Etcd()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, n := range c.nodes()[1:] {
		for _, d := range n.dirs() {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		if err := ensureCgroupRoot(n.cgroupRoot()); err != nil {
			return err
		}
	}
	os.Chmod(l.Etcd(), 0o700)
	issued, err := PKI{Dir: l.PKI()}.Ensure(c.CertSpecs(), time.Now())
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	if err := c.renderFiles(CNIBinDir); err != nil {
		return err
	}
	if err := c.save(); err != nil {
		return err
	}
	msg := "reused"
	if len(issued) > 0 {
		msg = fmt.Sprintf("issued %d", len(issued))
	}
	p.line("✓", "certificates, configs", msg, time.Since(t))

	if err := p.runSteps(ctx, c.upSteps(o)); err != nil {
		return fmt.Errorf("%w\n  logs: %s; `stowage status --data-dir %s` shows what runs; `stowage down` stops it", err, l.Logs(), c.DataDir)
	}
	var dead []string
	for _, comp := range c.Components() {
		if st, _ := c.process(comp.Name).State(); st != Running {
			dead = append(dead, fmt.Sprintf("%s (log: %s)\n%s", comp.Name, l.LogFile(comp.Name), indent(tail(l.LogFile(comp.Name), 10))))
		}
	}
	if len(dead) > 0 {
		return fmt.Errorf("components stopped during `up`: %s", strings.Join(dead, "\n"))
	}
	fmt.Fprintf(o.Out, "\nStowage is up in %.1fs: Kubernetes API %s, Stowage API %s\n", time.Since(p.start).Seconds(), c.APIServerURL(), c.StowageEndpoints())
	fmt.Fprintf(o.Out, "\nexport KUBECONFIG=%s\n", l.AdminKubeconfig())
	if c.DataDir != DefaultDataDir {
		// The CLI finds the API socket of a cluster in the default data
		// directory by itself; elsewhere it needs to be told.
		fmt.Fprintf(o.Out, "export STOWAGE_DATA_DIR=%s\n", c.DataDir)
	}
	return nil
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

// checkSameCluster refuses to run over a running cluster that was brought
// up with other addresses or another node name.
func (c *Config) checkSameCluster() error {
	old, err := LoadConfig(c.DataDir)
	if err != nil {
		return nil
	}
	running := false
	for _, n := range old.processNames() {
		if st, _ := old.process(n).State(); st == Running {
			running = true
			break
		}
	}
	if !running {
		return nil
	}
	if old.NodeName != c.NodeName || old.NodeIP != c.NodeIP || old.PodCIDR != c.PodCIDR || old.ServiceCIDR != c.ServiceCIDR || old.Zone != c.Zone ||
		!slices.Equal(old.Workers, c.Workers) || !slices.Equal(old.StorageHosts, c.StorageHosts) || old.Install != c.Install {
		return fmt.Errorf("a cluster with other settings runs from %s (node %s, %s, %d nodes); run `stowage down` first", c.DataDir, old.NodeName, old.NodeIP, len(old.Workers)+1)
	}
	return nil
}

func (c *Config) process(name string) Process {
	return Process{Name: name, PidFile: c.Layout().PidFile(name), Cluster: c.DataDir}
}

func (c *Config) upSteps(o UpOptions) []step {
	var steps []step
	var all []string
	comps := c.Components()
	for _, comp := range comps {
		needs := comp.Needs
		// The sidecars act on objects that `manifests` creates and are
		// allowed to by its RBAC rules.
		if strings.HasPrefix(comp.Name, "csi-") && comp.Name != "csi-controller" && !strings.HasPrefix(comp.Name, "csi-node") && !strings.HasPrefix(comp.Name, "csi-file") {
			needs = append(needs, "manifests")
		}
		steps = append(steps, step{name: comp.Name, needs: needs, run: c.startComponent(comp, o.Timeout)})
		all = append(all, comp.Name)
	}
	steps = append(steps,
		step{name: "network", run: func(ctx context.Context) (string, error) {
			if err := c.setupNetwork(ctx); err != nil {
				return "", err
			}
			// Before the servers, which read it at start to present it to
			// the storage hosts that register.
			if c.takesRegistrations() {
				if err := writeAgentToken(c.Layout().AgentTokenFile()); err != nil {
					return "", fmt.Errorf("agent token: %w", err)
				}
				if err := c.writeStorageHostTokens(); err != nil {
					return "", err
				}
			}
			return c.NodeIP + " on " + NodeInterface + ", pods " + c.PodCIDR, nil
		}},
		step{name: "images", needs: []string{"containerd"}, run: func(ctx context.Context) (string, error) { return c.importImages(ctx, c.hostNode()) }},
		step{name: "manifests", needs: []string{"kube-apiserver"}, run: c.applyManifests},
		step{name: "file system", needs: c.fileSystemNeeds(), run: c.defaultFileSystem},
		step{name: "kms key", needs: []string{"stowage-server"}, run: c.kubernetesKey},
		step{name: "node ready", needs: c.nodeReadyNeeds(), run: func(ctx context.Context) (string, error) {
			return c.waitNode(ctx, o.Timeout)
		}},
		step{name: "default serviceaccount", needs: []string{"kube-controller-manager"}, run: func(ctx context.Context) (string, error) {
			k := c.kubectl()
			return "", poll(ctx, o.Timeout, 300*time.Millisecond, "the default ServiceAccount", func(ctx context.Context) (bool, error) {
				out, err := k.get(ctx, "{.metadata.name}", "serviceaccount", "default", "-n", "default")
				return out == "default", err
			})
		}},
	)
	all = append(all, "network", "images", "manifests", "file system", "kms key", "node ready", "default serviceaccount")
	if c.chartInstall() {
		steps = append(steps, step{name: "chart", needs: []string{"stowage-server", "manifests", "kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler"},
			run: c.installChart})
		all = append(all, "chart")
	}
	for _, n := range c.storageHostNodes() {
		steps = append(steps, step{name: "network" + n.suffix(), needs: []string{"network"}, run: func(ctx context.Context) (string, error) {
			return n.IP + " in network namespace " + n.Netns + " (storage host)", c.setupStorageHost(ctx, n)
		}})
		all = append(all, "network"+n.suffix())
	}
	for _, n := range c.nodes()[1:] {
		n := n
		s := n.suffix()
		steps = append(steps,
			step{name: "network" + s, needs: []string{"network"}, run: func(ctx context.Context) (string, error) {
				return n.IP + " in network namespace " + n.Netns + ", pods " + n.PodCIDR, c.setupWorkerNetwork(ctx, n)
			}},
			step{name: "images" + s, needs: []string{"containerd" + s}, run: func(ctx context.Context) (string, error) { return c.importImages(ctx, n) }},
		)
		all = append(all, "network"+s, "images"+s)
	}
	steps = append(steps, step{name: Supervisor, needs: all, run: c.startComponent(c.supervisorComponent(), o.Timeout)})
	if !o.SkipCheck {
		steps = append(steps, step{name: "check", needs: all, run: func(ctx context.Context) (string, error) {
			return c.checkVolume(ctx, o.Timeout)
		}})
	}
	return steps
}

// startComponent starts comp unless it runs already, then waits until it is
// ready; a process that exits meanwhile fails the step with its last log
// lines.
func (c *Config) startComponent(comp Component, timeout time.Duration) func(ctx context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		proc := c.process(comp.Name)
		logFile := c.Layout().LogFile(comp.Name)
		unlock, err := c.startLock()
		if err != nil {
			return "", err
		}
		st, pid := proc.State()
		msg := fmt.Sprintf("already running (pid %d)", pid)
		if st != Running {
			cmd, err := comp.Cmd.resolved()
			if err == nil {
				pid, err = proc.start(cmd, logFile)
			}
			if err != nil {
				unlock()
				return "", err
			}
			msg = fmt.Sprintf("started (pid %d)", pid)
		}
		unlock()
		if st == Running && comp.Ready == nil {
			return msg, nil
		}
		died := func() error {
			return fmt.Errorf("exited; last lines of %s:\n%s", logFile, indent(tail(logFile, 15)))
		}
		if comp.Ready == nil {
			// Nothing to probe: it is up if it is still alive a moment later.
			select {
			case <-time.After(1500 * time.Millisecond):
			case <-ctx.Done():
				return "", ctx.Err()
			}
			if !alive(pid) {
				return "", died()
			}
			return msg, nil
		}
		deadline := time.Now().Add(timeout)
		for {
			err := comp.Ready(ctx)
			if err == nil {
				return msg, nil
			}
			if !alive(pid) {
				return "", died()
			}
			if time.Now().After(deadline) {
				return "", fmt.Errorf("not ready after %s: %v (log: %s)", timeout, err, logFile)
			}
			select {
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
	}
}

func (c *Config) importImages(ctx context.Context, n nodeView) (string, error) {
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		return "", fmt.Errorf("ctr (package containerd) is not installed: %w", err)
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("busybox (package busybox-static) is not installed: %w", err)
	}
	pause, err := PauseImageFiles(c.Stowage)
	if err != nil {
		return "", err
	}
	bb, err := BusyboxImageFiles(busybox)
	if err != nil {
		return "", err
	}
	var did []string
	for _, img := range []Image{pause, bb} {
		imported, err := importImage(ctx, ctr, n.L.ContainerdSocket(), c.Layout().Images(), img)
		if err != nil {
			return "", err
		}
		if imported {
			did = append(did, img.Name)
		}
	}
	if len(did) == 0 {
		return "present", nil
	}
	return "imported " + strings.Join(did, ", "), nil
}

// manifestBundle is deploy/local's files, in name order, as one document
// stream.
// The StorageClasses get fsType as their file system.
// With only, just those files.
func manifestBundle(fsType string, only ...string) ([]byte, error) {
	names, err := fs.Glob(local.Manifests, "*.yaml")
	if err != nil {
		return nil, err
	}
	if len(only) > 0 {
		names = slices.DeleteFunc(names, func(n string) bool { return !slices.Contains(only, n) })
	}
	sort.Strings(names)
	var b bytes.Buffer
	for _, n := range names {
		data, err := fs.ReadFile(local.Manifests, n)
		if err != nil {
			return nil, err
		}
		if fsType != "" && bytes.Contains(data, []byte(classesFSTypeLine)) {
			data = bytes.ReplaceAll(data, []byte(classesFSTypeLine), []byte("csi.storage.k8s.io/fstype: "+fsType))
		}
		fmt.Fprintf(&b, "---\n# %s\n", n)
		b.Write(data)
		if !bytes.HasSuffix(data, []byte("\n")) {
			b.WriteByte('\n')
		}
	}
	return b.Bytes(), nil
}

// applyManifests applies the snapshot CRDs, waits until they are served,
// then applies deploy/local. A chart install applies only chartManifests:
// the chart has the rest.
func (c *Config) applyManifests(ctx context.Context) (string, error) {
	k := c.kubectl()
	if c.chartInstall() {
		bundle, err := manifestBundle(c.FSType, chartManifests...)
		if err != nil {
			return "", err
		}
		if _, err := k.run(ctx, bundle, "apply", "--server-side", "--force-conflicts", "--field-manager=stowage-up", "-f", "-"); err != nil {
			return "", err
		}
		return "RBAC of the host's server and of the nodes (the chart has the rest)", nil
	}
	crds := []string{}
	args := []string{"apply", "--server-side", "--force-conflicts", "--field-manager=stowage-up"}
	for _, f := range append(slices.Clone(SnapshotCRDs), SecretsStoreCRDs...) {
		args = append(args, "-f", filepath.Join(c.BinDir, "crds", f))
		crds = append(crds, "crd/"+crdName(f))
	}
	if _, err := k.run(ctx, nil, args...); err != nil {
		return "", err
	}
	if _, err := k.run(ctx, nil, append([]string{"wait", "--for=condition=Established", "--timeout=60s"}, crds...)...); err != nil {
		return "", err
	}
	bundle, err := manifestBundle(c.FSType)
	if err != nil {
		return "", err
	}
	if _, err := k.run(ctx, bundle, "apply", "--server-side", "--force-conflicts", "--field-manager=stowage-up", "-f", "-"); err != nil {
		return "", err
	}
	return "snapshot and Secrets Store CRDs, CSIDrivers, StorageClasses, RBAC", nil
}

// nodeReadyNeeds are the processes every node must run before it can be
// Ready with its drivers registered.
func (c *Config) nodeReadyNeeds() []string {
	if c.chartInstall() {
		return []string{"kubelet", "kube-proxy", "chart"}
	}
	var needs []string
	for _, n := range c.nodes() {
		for _, p := range []string{"kubelet", "csi-node", "csi-file", "secrets-store-registrar", "kube-proxy"} {
			needs = append(needs, p+n.suffix())
		}
	}
	return needs
}

// waitNode waits for every node to be Ready and for its kubelet to have
// registered the CSI drivers (its CSINode lists them).
func (c *Config) waitNode(ctx context.Context, timeout time.Duration) (string, error) {
	k := c.kubectl()
	drivers := []string{DriverName, FileDriverName, SecretsStoreDriverName}
	names := strings.Join(drivers, ", ")
	var ready []string
	for _, n := range c.nodes() {
		kubelet := c.process("kubelet" + n.suffix())
		err := poll(ctx, timeout, 300*time.Millisecond, "node "+n.Name+" to be Ready", func(ctx context.Context) (bool, error) {
			if st, _ := kubelet.State(); st != Running {
				return false, fmt.Errorf("its kubelet exited")
			}
			out, err := k.get(ctx, `{.status.conditions[?(@.type=="Ready")].status}`, "node", n.Name)
			return out == "True", err
		})
		if err != nil {
			// Say why: the node's Ready condition and the kubelet's last
			// lines.
			why, _ := k.get(ctx, `{.status.conditions[?(@.type=="Ready")].message}`, "node", n.Name)
			log := c.Layout().LogFile("kubelet" + n.suffix())
			return "", fmt.Errorf("%w; Ready condition: %q; last lines of %s:\n%s", err, why, log, indent(tail(log, 15)))
		}
		err = poll(ctx, timeout, 300*time.Millisecond, "the kubelet to register "+names+" (CSINode "+n.Name+")", func(ctx context.Context) (bool, error) {
			out, err := k.get(ctx, "{.spec.drivers[*].name}", "csinode", n.Name)
			have := strings.Fields(out)
			for _, d := range drivers {
				if !slices.Contains(have, d) {
					return false, err
				}
			}
			return true, err
		})
		if err != nil {
			l, s := c.Layout(), n.suffix()
			return "", fmt.Errorf("%w (node plugin logs: %s, %s, %s, %s; kubelet log: %s)", err, l.LogFile("csi-node"+s), l.LogFile("csi-file"+s), l.LogFile("secrets-store-csi-driver"+s), l.LogFile("secrets-store-registrar"+s), l.LogFile("kubelet"+s))
		}
		ready = append(ready, n.Name)
	}
	return strings.Join(ready, ", ") + " Ready, " + names + " registered", nil
}

const checkName = "stowage-up-check"

func checkManifest() []byte {
	return []byte(`apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: ` + checkName + `
  namespace: default
  labels: {app.kubernetes.io/managed-by: stowage-up}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: stowage-gp3
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata:
  name: ` + checkName + `
  namespace: default
  labels: {app.kubernetes.io/managed-by: stowage-up}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
    - name: check
      image: ` + BusyboxImage + `
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "echo stowage > /data/check && sync && grep -q stowage /data/check && grep ' /data ' /proc/mounts"]
      volumeMounts: [{name: data, mountPath: /data}]
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: ` + checkName + `}
`)
}

// checkVolume proves the storage path end to end: a claim of the default
// class (WaitForFirstConsumer) is provisioned for a pod, attached, formatted,
// mounted and written, then the pod and claim are deleted and the volume
// goes with them.
func (c *Config) checkVolume(ctx context.Context, timeout time.Duration) (string, error) {
	k := c.kubectl()
	// A check left over from an interrupted `up` goes first.
	if _, err := k.run(ctx, nil, "delete", "pod,pvc", checkName, "-n", "default", "--ignore-not-found", "--wait=true", "--timeout=60s"); err != nil {
		return "", err
	}
	if _, err := k.run(ctx, checkManifest(), "apply", "-f", "-"); err != nil {
		return "", err
	}
	var phase string
	err := poll(ctx, timeout, 300*time.Millisecond, "the check pod to mount a "+"stowage-gp3 volume", func(ctx context.Context) (bool, error) {
		var err error
		phase, err = k.get(ctx, "{.status.phase}", "pod", checkName, "-n", "default")
		if phase == "Failed" {
			return false, nil
		}
		return phase == "Succeeded", err
	})
	if err != nil || phase != "Succeeded" {
		desc, _ := k.run(context.Background(), nil, "describe", "pvc,pod", checkName, "-n", "default")
		logs, _ := k.run(context.Background(), nil, "logs", checkName, "-n", "default")
		if err == nil {
			err = fmt.Errorf("the check pod failed")
		}
		return "", fmt.Errorf("%w\n%s\n%s\n  (the claim and pod %s are left in namespace default to look at)", err, indent(desc), indent(logs), checkName)
	}
	pv, err := k.get(ctx, "{.spec.volumeName}", "pvc", checkName, "-n", "default")
	if err != nil {
		return "", err
	}
	if _, err := k.run(ctx, nil, "delete", "pod,pvc", checkName, "-n", "default", "--wait=true", "--timeout=60s"); err != nil {
		return "", err
	}
	if pv != "" {
		if err := poll(ctx, timeout, 300*time.Millisecond, "volume "+pv+" to be deleted", func(ctx context.Context) (bool, error) {
			out, err := k.get(ctx, "{.metadata.name}", "pv", pv)
			return out == "", err
		}); err != nil {
			return "", err
		}
	}
	return "claim bound, pod mounted " + pv + ", deleted", nil
}

// DefaultFileSystemName names the file system `up` makes for the
// stowage-efs StorageClass (a client token: made once, found after).
const DefaultFileSystemName = "stowage-default"

// EFSClassName is the StorageClass of access points in the default file
// system.
const EFSClassName = "stowage-efs"

// efsClass is the stowage-efs StorageClass for file system id: one access
// point per claim under /dynamic_provisioning, as the EFS driver's example
// class does, with a gid of its own per claim.
func efsClass(id string) []byte {
	return []byte(`# Made by stowage up for its default file system; apply your own with
# another fileSystemId (stowage fs create) for a file system of your own.
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: ` + EFSClassName + `
provisioner: ` + FileDriverName + `
parameters:
  provisioningMode: efs-ap
  fileSystemId: ` + id + `
  directoryPerms: "700"
  gidRangeStart: "50000"
  gidRangeEnd: "7000000"
  basePath: /dynamic_provisioning
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: true
`)
}

// defaultFileSystem makes (or finds) the default file system and applies
// the stowage-efs class for it.
func (c *Config) defaultFileSystem(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, c.Stowage, "--endpoint="+c.StowageEndpoints(), "fs", "create", "--name", DefaultFileSystemName, "-o", "json")
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = strings.TrimSpace(string(ee.Stderr))
		}
		return "", fmt.Errorf("create the default file system: %v: %s", err, stderr)
	}
	var fs struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(out, &fs); err != nil || fs.ID == "" {
		return "", fmt.Errorf("create the default file system: unexpected output %q: %v", out, err)
	}
	if _, err := c.kubectl().run(ctx, efsClass(fs.ID), "apply", "--server-side", "--force-conflicts", "--field-manager=stowage-up", "-f", "-"); err != nil {
		return "", err
	}
	return fs.ID + ", StorageClass " + EFSClassName, nil
}

// kubernetesKey makes (or finds) the KMS key that kube-apiserver's KMS v2
// plugin encrypts Secrets with.
func (c *Config) kubernetesKey(ctx context.Context) (string, error) {
	stowage := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, c.Stowage, append([]string{"--endpoint=" + c.StowageEndpoints()}, args...)...)
		out, err := cmd.Output()
		if ee, ok := err.(*exec.ExitError); ok {
			err = fmt.Errorf("%v: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return out, err
	}
	var key struct {
		KeyID string `json:"id"`
	}
	out, err := stowage("key", "describe", KubernetesKeyAlias, "-o", "json")
	verb := "present"
	if err != nil {
		out, err = stowage("key", "create", "--alias", KubernetesKeyAlias, "--description", "kube-apiserver's Secrets (KMS v2)", "-o", "json")
		if err != nil {
			return "", fmt.Errorf("create the KMS key %s: %w", KubernetesKeyAlias, err)
		}
		verb = "created"
	}
	if err := json.Unmarshal(out, &key); err != nil || key.KeyID == "" {
		return "", fmt.Errorf("KMS key %s: unexpected output %q: %v", KubernetesKeyAlias, out, err)
	}
	return KubernetesKeyAlias + " (" + key.KeyID + ") " + verb, nil
}
