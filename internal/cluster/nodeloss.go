package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// OutOfServiceTaint is the taint that tells Kubernetes a node is down for
// good: pods on it are deleted at once and their volumes detached
// (non-graceful node shutdown, GA in 1.28), instead of after the default
// five-minute toleration.
const OutOfServiceTaint = "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"

// NodeStopOptions tune NodeStop.
type NodeStopOptions struct {
	Out io.Writer
	// OutOfService taints the node with OutOfServiceTaint once it is
	// down, as an operator does after making sure it is.
	OutOfService bool
	// Partition only cuts the node's link: its processes (kubelet, pods,
	// node plugins, network attachments) keep running, unreachable, as on
	// the far side of a network partition. When the link comes back they
	// find their work taken over — which fencing is for.
	Partition bool
}

// worker finds a worker by name; the machine's own node cannot be
// stopped (it runs the control plane and the storage host).
func (c *Config) worker(name string) (int, error) {
	if name == c.NodeName {
		return 0, fmt.Errorf("node %s is this machine's own: it runs the control plane and the Stowage server, so it cannot be stopped alone (stop a worker: %s)", name, strings.Join(c.workerNames(), ", "))
	}
	for i, w := range c.Workers {
		if w.Name == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("no node %s in the cluster of %s (its nodes: %s; storage hosts: %s)", name, c.DataDir,
		strings.Join(append([]string{c.NodeName}, c.workerNames()...), ", "), strings.Join(c.storageHostNames(), ", "))
}

// stoppable is the worker or storage host called name, and its processes.
func (c *Config) stoppable(name string) (nodeView, []Component, error) {
	for _, n := range c.storageHostNodes() {
		if n.Name == name {
			return n, c.storageHostComponents(n), nil
		}
	}
	i, err := c.worker(name)
	if err != nil {
		return nodeView{}, nil, err
	}
	n := c.workerNode(i)
	return n, c.workerComponents(n), nil
}

// NodeStop simulates losing a worker node: its link goes down (no packet
// in or out), then every process in its network namespace — kubelet,
// containerd and its shims, the pods, kube-proxy, the CSI node plugins and
// their mount processes — is killed with SIGKILL, as by a power cut. Its
// mounts stay in the kernel, as on a node that is off. The supervisor does
// not restart it (its pid files are gone); NodeStart brings it back.
func NodeStop(ctx context.Context, dataDir, name string, o NodeStopOptions) error {
	if os.Geteuid() != 0 {
		return errors.New("stowage node stop must run as root")
	}
	c, err := LoadConfig(dataDir)
	if err != nil {
		return err
	}
	n, comps, err := c.stoppable(name)
	if err != nil {
		return err
	}
	if n.storage && o.OutOfService {
		return fmt.Errorf("%s is a storage host, not a Kubernetes node: --out-of-service does not apply", name)
	}
	start := time.Now()
	if _, err := run(ctx, "ip", "link", "set", n.link(), "down"); err != nil {
		return fmt.Errorf("cut node %s's link: %w", name, err)
	}
	fmt.Fprintf(o.Out, "node %s: link %s down\n", name, n.link())
	if o.Partition {
		fmt.Fprintf(o.Out, "node %s: partitioned: its processes keep running, cut off\n", name)
		return c.taintOutOfService(ctx, name, o)
	}
	for _, comp := range comps {
		os.Remove(c.process(comp.Name).PidFile)
	}
	killed := 0
	for round := 0; round < 20; round++ {
		pids := netnsPids(ctx, n.Netns)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			if syscall.Kill(pid, syscall.SIGKILL) == nil && round == 0 {
				killed++
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if left := netnsPids(ctx, n.Netns); len(left) > 0 {
		return fmt.Errorf("node %s: %d processes survived SIGKILL: %v", name, len(left), left)
	}
	fmt.Fprintf(o.Out, "node %s: killed %d processes (kubelet, containerd, pods, node plugins) in %s\n", name, killed, time.Since(start).Round(time.Millisecond))
	return c.taintOutOfService(ctx, name, o)
}

func (c *Config) taintOutOfService(ctx context.Context, name string, o NodeStopOptions) error {
	if !o.OutOfService {
		return nil
	}
	if _, err := c.kubectl().run(ctx, nil, "taint", "node", name, OutOfServiceTaint, "--overwrite"); err != nil {
		return fmt.Errorf("taint node %s out of service: %w", name, err)
	}
	fmt.Fprintf(o.Out, "node %s: tainted %s\n", name, OutOfServiceTaint)
	return nil
}

// NodeStart brings a stopped worker back: its link comes up, the
// out-of-service taint goes, and `up` starts its processes again (the
// others are left as they are).
func NodeStart(ctx context.Context, dataDir, name string, out io.Writer, timeout time.Duration) error {
	if os.Geteuid() != 0 {
		return errors.New("stowage node start must run as root")
	}
	c, err := LoadConfig(dataDir)
	if err != nil {
		return err
	}
	n, _, err := c.stoppable(name)
	if err != nil {
		return err
	}
	if _, err := run(ctx, "ip", "link", "set", n.link(), "up"); err != nil {
		return err
	}
	// The route via a link that was down is gone: put it back.
	if err := c.setupNetns(ctx, n); err != nil {
		return err
	}
	if !n.storage {
		c.kubectl().run(ctx, nil, "taint", "node", name, "node.kubernetes.io/out-of-service-")
	}
	return Up(ctx, c, UpOptions{Out: out, SkipCheck: true, Timeout: timeout})
}

// netnsPids are the processes whose network namespace is ns.
func netnsPids(ctx context.Context, ns string) []int {
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}
