package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
)

// guardChain keeps pod traffic on this machine: pods may reach each other,
// the node and services, but nothing routed out of another interface.
const guardChain = "STOWAGE-FORWARD"

func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// setupNetwork puts the node address on its own interface (a dummy, or an
// empty bridge where the kernel has no dummy driver), enables forwarding
// between pods and services, and installs the guard chain.
func (c *Config) setupNetwork(ctx context.Context) error {
	if _, err := net.InterfaceByName(NodeInterface); err != nil {
		if _, err := run(ctx, "ip", "link", "add", NodeInterface, "type", "dummy"); err != nil {
			if _, err2 := run(ctx, "ip", "link", "add", NodeInterface, "type", "bridge"); err2 != nil {
				return fmt.Errorf("create the node interface %s: %w", NodeInterface, errors.Join(err, err2))
			}
		}
	}
	if !hasAddr(NodeInterface, c.NodeIP) {
		if _, err := run(ctx, "ip", "addr", "add", c.NodeIP+"/32", "dev", NodeInterface); err != nil {
			return err
		}
	}
	if _, err := run(ctx, "ip", "link", "set", NodeInterface, "up"); err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	// Service traffic between pods on one bridge goes through iptables only
	// when bridged packets are handed to it; the setting exists when the
	// kernel has br_netfilter (built in or loaded).
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
		exec.CommandContext(ctx, "modprobe", "br_netfilter").Run()
	}
	if err := os.WriteFile("/proc/sys/net/bridge/bridge-nf-call-iptables", []byte("1"), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "warning: cannot enable bridge-nf-call-iptables (no br_netfilter?): pod-to-service traffic between pods on this node may fail: %v\n", err)
	}
	return c.installGuard(ctx)
}

func (c *Config) installGuard(ctx context.Context) error {
	if _, err := run(ctx, "iptables", "-w", "-N", guardChain); err != nil && !strings.Contains(err.Error(), "exists") {
		return err
	}
	if _, err := run(ctx, "iptables", "-w", "-F", guardChain); err != nil {
		return err
	}
	if len(c.Workers) > 0 {
		// Other nodes are network namespaces behind links stw-*: traffic
		// from them may go to another of them or to this node's pods, and
		// pods may reach them; nothing from them goes anywhere else.
		for _, r := range [][]string{
			{"-i", "stw-+", "-o", "stw-+", "-j", "RETURN"},
			{"-i", "stw-+", "-o", CNIBridge, "-j", "RETURN"},
			{"-i", "stw-+", "-m", "comment", "--comment", "stowage: node traffic stays on this machine", "-j", "REJECT"},
			{"-s", c.PodCIDR, "-o", "stw-+", "-j", "RETURN"},
		} {
			if _, err := run(ctx, "iptables", append([]string{"-w", "-A", guardChain}, r...)...); err != nil {
				return err
			}
		}
	}
	if _, err := run(ctx, "iptables", "-w", "-A", guardChain, "-s", c.PodCIDR, "!", "-o", CNIBridge,
		"-m", "comment", "--comment", "stowage: pod traffic stays on this machine", "-j", "REJECT"); err != nil {
		return err
	}
	if _, err := run(ctx, "iptables", "-w", "-C", "FORWARD", "-j", guardChain); err != nil {
		if _, err := run(ctx, "iptables", "-w", "-I", "FORWARD", "1", "-j", guardChain); err != nil {
			return err
		}
	}
	return nil
}

func hasAddr(iface, ip string) bool {
	i, err := net.InterfaceByName(iface)
	if err != nil {
		return false
	}
	addrs, err := i.Addrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.String() == ip {
			return true
		}
	}
	return false
}

// teardownNetwork removes the interfaces and the iptables chains that the
// cluster created: ours, the kubelet's and kube-proxy's KUBE-*, and the CNI
// plugins' CNI-*. Built-in chains keep every rule that does not jump to one
// of those.
func teardownNetwork(ctx context.Context, report func(string, ...any)) error {
	var errs []error
	for _, iface := range []string{CNIBridge, NodeInterface} {
		if _, err := net.InterfaceByName(iface); err == nil {
			if _, err := run(ctx, "ip", "link", "del", iface); err != nil {
				errs = append(errs, err)
			} else {
				report("removed interface %s", iface)
			}
		}
	}
	for _, bin := range []string{"iptables", "ip6tables"} {
		n, err := removeChains(ctx, bin, func(chain string) bool {
			return strings.HasPrefix(chain, "KUBE-") || strings.HasPrefix(chain, "CNI-") || chain == guardChain
		})
		if err != nil {
			errs = append(errs, err)
		}
		if n > 0 {
			report("removed %d %s chains", n, bin)
		}
	}
	return errors.Join(errs...)
}

// removeChains deletes the chains that match, in every table, after
// deleting the rules of other chains that jump to them.
func removeChains(ctx context.Context, bin string, match func(string) bool) (int, error) {
	if _, err := exec.LookPath(bin); err != nil {
		return 0, nil
	}
	out, err := run(ctx, bin+"-save")
	if err != nil {
		return 0, err
	}
	var errs []error
	n := 0
	for _, t := range parseRuleset(out, match) {
		for _, r := range t.jumps {
			// iptables-save quotes arguments with spaces (comments) the way
			// a shell would; let the shell split the rule.
			del := bin + " -w -t " + t.table + " -D" + strings.TrimPrefix(r, "-A")
			if out, err := exec.CommandContext(ctx, "sh", "-c", del).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %v: %s", del, err, out))
			}
		}
		for _, ch := range t.chains {
			if _, err := run(ctx, bin, "-w", "-t", t.table, "-F", ch); err != nil {
				errs = append(errs, err)
			}
		}
		for _, ch := range t.chains {
			if _, err := run(ctx, bin, "-w", "-t", t.table, "-X", ch); err != nil {
				errs = append(errs, err)
			} else {
				n++
			}
		}
	}
	return n, errors.Join(errs...)
}

// tableChains is what to remove from one table.
type tableChains struct {
	table  string
	chains []string // chains to flush and delete
	jumps  []string // rules ("-A CHAIN …") of other chains that jump to them
}

// parseRuleset reads iptables-save output.
func parseRuleset(save string, match func(string) bool) []tableChains {
	var tables []tableChains
	sc := bufio.NewScanner(strings.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var cur *tableChains
		if len(tables) > 0 {
			cur = &tables[len(tables)-1]
		}
		switch {
		case strings.HasPrefix(line, "*"):
			tables = append(tables, tableChains{table: line[1:]})
		case strings.HasPrefix(line, ":") && cur != nil:
			if f := strings.Fields(line[1:]); len(f) > 0 && match(f[0]) {
				cur.chains = append(cur.chains, f[0])
			}
		case strings.HasPrefix(line, "-A ") && cur != nil:
			f := strings.Fields(line)
			if len(f) < 2 || match(f[1]) {
				continue
			}
			for i := 2; i+1 < len(f); i++ {
				if (f[i] == "-j" || f[i] == "-g") && match(f[i+1]) {
					cur.jumps = append(cur.jumps, line)
					break
				}
			}
		}
	}
	return tables
}
