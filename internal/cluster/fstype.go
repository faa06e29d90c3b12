package cluster

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// capSysResource is CAP_SYS_RESOURCE's bit in the capability sets.
const capSysResource = 24

// chooseFSType picks the file system of the StorageClasses `stowage up`
// installs. The classes allow online expansion, and the kernel grows a
// mounted ext4 only for a caller with CAP_SYS_RESOURCE (EXT4_IOC_RESIZE_FS);
// sandboxes often drop it even for root. Without it a raised claim would
// stay at FileSystemResizePending until its pod restarts, so the classes
// use xfs, which grows online without it. The choice is made once, at the
// first `up`, and kept in cluster.json: a StorageClass's parameters cannot
// change once it exists.
func chooseFSType(status []byte) (fsType, why string) {
	has, err := hasCapability(status, capSysResource)
	switch {
	case err != nil:
		return "ext4", fmt.Sprintf("cannot read this process's capabilities (%v); classes use ext4", err)
	case has:
		return "ext4", "classes use ext4 (this process has CAP_SYS_RESOURCE, so ext4 grows online)"
	default:
		return "xfs", "classes use xfs: this process lacks CAP_SYS_RESOURCE, without which a mounted ext4 cannot grow online"
	}
}

// hasCapability reads the effective capability set from a
// /proc/<pid>/status text.
func hasCapability(status []byte, bit uint) (bool, error) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return false, fmt.Errorf("CapEff %q: %w", strings.TrimSpace(v), err)
		}
		return n&(1<<bit) != 0, nil
	}
	return false, fmt.Errorf("no CapEff line")
}

// selfFSType is chooseFSType for this process.
func selfFSType() (string, string) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "ext4", fmt.Sprintf("cannot read /proc/self/status (%v); classes use ext4", err)
	}
	return chooseFSType(status)
}

// classesFSTypeLine is the parameter line deploy/local's classes are
// written with; manifestBundle replaces its value with Config.FSType.
const classesFSTypeLine = "csi.storage.k8s.io/fstype: ext4"
