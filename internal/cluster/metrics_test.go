package cluster

import (
	"net"
	"slices"
	"testing"
)

func TestComponents_StowageDaemonsServeMetricsOnDistinctLoopbackPorts(t *testing.T) {
	c := &Config{DataDir: "/var/lib/stowage", BinDir: "/opt/bin", Stowage: "/usr/bin/stowage", NodeName: "n"}
	want := map[string]string{
		"stowage-server": ServerMetricsAddress,
		"csi-controller": ControllerMetricsAddress,
		"csi-node":       NodeMetricsAddress,
	}
	seen := map[string]string{}
	for _, comp := range c.Components() {
		addr, ok := want[comp.Name]
		if !ok {
			continue
		}
		if !slices.Contains(comp.Cmd.Args, "--metrics-address="+addr) {
			t.Errorf("%s: %s lacks --metrics-address=%s", comp.Name, comp.Cmd, addr)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil || !net.ParseIP(host).IsLoopback() {
			t.Errorf("%s: metrics address %s is not host:port on loopback", comp.Name, addr)
		}
		if other, dup := seen[port]; dup {
			t.Errorf("%s and %s share metrics port %s", comp.Name, other, port)
		}
		seen[port] = comp.Name
		delete(want, comp.Name)
	}
	for name := range want {
		t.Errorf("no component %s", name)
	}
}
