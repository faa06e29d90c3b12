package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// ComponentStatus is one line of `stowage status`.
type ComponentStatus struct {
	Name  string
	State State
	Pid   int
	Log   string
}

// Status is what `stowage status` reports.
type Status struct {
	Config     *Config
	Components []ComponentStatus
	NodeReady  string // "True", "False", "Unknown", or why it could not be read
	// WorkersReady is each worker's Ready, in Config.Workers' order.
	WorkersReady []string
	// ChartPods is, on a chart install, how many of the release's pods are
	// Ready ("3 of 5 pods Ready"), or why that is unknown.
	ChartPods string
}

// ErrNoCluster says that `up` never ran with this data directory.
var ErrNoCluster = errors.New("no cluster")

// GetStatus reads the pid files of dataDir's cluster and asks the API for
// the node's Ready condition when the apiserver runs.
func GetStatus(ctx context.Context, dataDir string) (*Status, error) {
	c, err := LoadConfig(dataDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s (run `stowage up`)", ErrNoCluster, dataDir)
	}
	if err != nil {
		return nil, err
	}
	s := &Status{Config: c}
	for _, n := range c.processNames() {
		st, pid := c.process(n).State()
		s.Components = append(s.Components, ComponentStatus{Name: n, State: st, Pid: pid, Log: c.Layout().LogFile(n)})
	}
	s.NodeReady = "unknown (the apiserver is not running)"
	if st, _ := c.process("kube-apiserver").State(); st == Running {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		ready := func(node string) string {
			out, err := c.kubectl().get(ctx, `{.status.conditions[?(@.type=="Ready")].status}`, "node", node)
			switch {
			case err != nil:
				return "unknown (" + err.Error() + ")"
			case out == "":
				return "not registered"
			}
			return out
		}
		s.NodeReady = ready(c.NodeName)
		if c.chartInstall() {
			out, err := c.kubectl().get(ctx, `{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{" "}{end}`, "pods", "-n", ChartNamespace)
			if err != nil {
				s.ChartPods = "unknown (" + err.Error() + ")"
			} else {
				f := strings.Fields(out)
				s.ChartPods = fmt.Sprintf("%d of %d pods Ready", strings.Count(out, "True"), len(f))
			}
		}
		for _, w := range c.Workers {
			s.WorkersReady = append(s.WorkersReady, ready(w.Name))
		}
	} else {
		for range c.Workers {
			s.WorkersReady = append(s.WorkersReady, s.NodeReady)
		}
	}
	return s, nil
}

// AllRunning says whether every component runs.
func (s *Status) AllRunning() bool {
	for _, c := range s.Components {
		if c.State != Running {
			return false
		}
	}
	return true
}

// Print writes the status as a table.
func (s *Status) Print(out io.Writer) {
	c := s.Config
	l := c.Layout()
	fmt.Fprintf(out, "Kubernetes API  %s   (export KUBECONFIG=%s)\n", c.APIServerURL(), l.AdminKubeconfig())
	fmt.Fprintf(out, "Stowage API     %s\n", c.StowageEndpoints())
	if len(c.Workers) > 0 {
		fmt.Fprintf(out, "Stowage servers stowage-server and stowage-server-2 on etcd (%s), one leading\n", StowageEtcdPrefix)
	}
	if c.chartInstall() {
		fmt.Fprintf(out, "Drivers         the Helm chart's pods: release %s in namespace %s, %s (the server on the host at %s)\n", ChartRelease, ChartNamespace, s.ChartPods, c.ServerTCPAddress())
	}
	fmt.Fprintf(out, "Node            %s (%s, zone %s, this machine's network): Ready=%s\n", c.NodeName, c.NodeIP, c.Zone, s.NodeReady)
	for i, w := range c.Workers {
		fmt.Fprintf(out, "Node            %s (%s, zone %s, network namespace %s): Ready=%s\n", w.Name, w.IP, w.Zone, workerNetns(w.Name), s.WorkersReady[i])
	}
	if len(c.Workers) == 0 {
		fmt.Fprintf(out, "Storage host    %s (block pool pool-a, file pool files-a, zone %s; in the Stowage server)\n", c.NodeName, c.Zone)
	} else {
		files := "file pool files-a, "
		if len(c.StorageHosts) > 0 {
			files = "" // the file trees are on the storage hosts
		}
		fmt.Fprintf(out, "Storage host    %s (block pool pool-a, %szone %s; in the Stowage server, NBD at %s)\n", c.NodeName, files, c.Zone, c.nbdListen())
	}
	for _, n := range c.storageHostNodes() {
		fmt.Fprintf(out, "Storage host    %s (%s, zone %s, network namespace %s; block and file pool %s, agent API %s, NBD at %s:%s, NFS at %s)\n",
			n.Name, n.IP, n.Zone, n.Netns, storageHostPool(n.Name), n.agentAddress(), n.IP, NBDPort, n.nfsAddress())
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tSTATE\tPID\tLOG")
	for _, cs := range s.Components {
		pid := "-"
		if cs.Pid > 0 {
			pid = fmt.Sprint(cs.Pid)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cs.Name, cs.State, pid, cs.Log)
	}
	tw.Flush()
}
