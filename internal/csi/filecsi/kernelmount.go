package filecsi

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// KernelNFS reports whether this node's kernel has an NFSv4 client (nfs4 in
// /proc/filesystems, or a module that loads).
func KernelNFS() bool {
	if hasFilesystem("nfs4") {
		return true
	}
	if err := exec.Command("modprobe", "nfs").Run(); err == nil {
		return hasFilesystem("nfs4")
	}
	return false
}

func hasFilesystem(name string) bool {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 0 && fields[len(fields)-1] == name {
			return true
		}
	}
	return false
}

// KernelMounter mounts with the kernel's NFS client, with the options the
// EFS CSI driver uses (NFSv4.1, hard, 600 ds timeout, 2 retransmissions,
// noresvport), and a record per mount in StateDir.
type KernelMounter struct {
	StateDir string
}

// kernelMountArgs is the mount(8) command line for m.
func kernelMountArgs(m Mount) ([]string, error) {
	host, port, err := net.SplitHostPort(m.Server)
	if err != nil {
		return nil, fmt.Errorf("NFS server %q is not host:port: %w", m.Server, err)
	}
	opts := "nfsvers=4.1,port=" + port + ",hard,timeo=600,retrans=2,noresvport,rsize=1048576,wsize=1048576"
	if m.ReadOnly {
		opts += ",ro"
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return []string{"-t", "nfs4", "-o", opts, host + ":" + m.Export, m.Target}, nil
}

func (k *KernelMounter) Mount(ctx context.Context, m Mount) error {
	args, err := kernelMountArgs(m)
	if err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "mount", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("mount %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return records(k.StateDir).write(&mountRecord{VolumeID: m.VolumeID, Target: filepath.Clean(m.Target), Server: m.Server, Export: m.Export, ReadOnly: m.ReadOnly})
}

func (k *KernelMounter) Unmount(ctx context.Context, target string) error {
	target = filepath.Clean(target)
	mounted, fstype, err := isMountPoint(target)
	if err != nil {
		return err
	}
	if mounted {
		if !strings.HasPrefix(fstype, "nfs") {
			return fmt.Errorf("%s is a %s mount this driver did not make; not unmounting it", target, fstype)
		}
		if out, err := exec.CommandContext(ctx, "umount", target).CombinedOutput(); err != nil {
			return fmt.Errorf("umount %s: %v: %s", target, err, strings.TrimSpace(string(out)))
		}
	}
	return records(k.StateDir).remove(target)
}

func (k *KernelMounter) Mounted(target string) (string, error) {
	r, err := records(k.StateDir).read(filepath.Clean(target))
	if err != nil || r == nil {
		return "", err
	}
	if mounted, _, err := isMountPoint(target); err != nil || !mounted {
		return "", err
	}
	return r.VolumeID, nil
}

func (k *KernelMounter) Check(ctx context.Context, target string) error {
	if mounted, _, err := isMountPoint(target); err != nil {
		return err
	} else if !mounted {
		return fmt.Errorf("%s is not mounted", target)
	}
	_, err := statfs(ctx, target)
	return err
}

func (k *KernelMounter) Mounts() (map[string]string, error) { return records(k.StateDir).list() }
