package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// HostPackages are the Debian packages the cluster runs on: the container
// runtime, the CNI plugins, iptables and conntrack for kube-proxy, the
// static busybox of the test image, and the tools the kubelet and the
// Stowage server call (mount, losetup, mkfs, ip).
var HostPackages = []string{
	"containerd", "runc", "containernetworking-plugins",
	"iptables", "conntrack", "iproute2", "kmod",
	"busybox-static", "util-linux", "mount", "e2fsprogs", "xfsprogs",
}

// CNIBinDir is where Debian's containernetworking-plugins puts the plugins.
const CNIBinDir = "/usr/lib/cni"

// missingPackages returns the packages dpkg does not report installed.
func missingPackages(ctx context.Context, pkgs []string) []string {
	var missing []string
	for _, p := range pkgs {
		out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Status}", p).Output()
		if err != nil || !strings.Contains(string(out), "install ok installed") {
			missing = append(missing, p)
		}
	}
	return missing
}

// ensurePackages installs what is missing with apt-get; it returns what it
// installed. Without dpkg (not Debian) it checks the commands instead and
// says which package would provide a missing one.
func ensurePackages(ctx context.Context) ([]string, error) {
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		for cmd, pkg := range map[string]string{"containerd": "containerd", "runc": "runc", "ctr": "containerd", "iptables": "iptables", "conntrack": "conntrack", "ip": "iproute2", "busybox": "busybox-static"} {
			if _, err := exec.LookPath(cmd); err != nil {
				return nil, fmt.Errorf("%s is not installed (Debian package %s); install it with your package manager", cmd, pkg)
			}
		}
		return nil, nil
	}
	missing := missingPackages(ctx, HostPackages)
	if len(missing) == 0 {
		return nil, nil
	}
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	update := exec.CommandContext(ctx, "apt-get", "update", "-qq")
	update.Env = env
	if out, err := update.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("apt-get update: %v: %s", err, out)
	}
	install := exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)...)
	install.Env = env
	if out, err := install.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("apt-get install %s: %v: %s", strings.Join(missing, " "), err, out)
	}
	if still := missingPackages(ctx, missing); len(still) > 0 {
		return missing, fmt.Errorf("apt-get did not install %s", strings.Join(still, " "))
	}
	return missing, nil
}
