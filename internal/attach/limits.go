// Package attach is the node side of the data path beyond the loop device
// itself (pkg/loopdev): it enforces EBS-style performance limits on a
// volume's device with cgroup throttling, v1 blkio rules or v2 io.max.
package attach

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/stowage-io/stowage/pkg/loopdev"
)

// BlkioRoot is the root of the cgroup v1 blkio hierarchy, where SetLimits
// writes its rules.
//
// cgroup v1 blkio throttling is flat, not hierarchical: a rule in a cgroup
// limits only I/O issued by tasks that are members of exactly that cgroup. A
// root rule therefore throttles root-cgroup tasks (and writeback from kernel
// threads) but not tasks in child cgroups such as Kubernetes pods, which
// need the rule written into their own cgroup with SetLimitsIn.
const BlkioRoot = "/sys/fs/cgroup/blkio"

// Limits are EBS-style performance limits for one device. Zero means
// unlimited. Throughput is in bytes per second.
type Limits struct {
	ReadIOPS, WriteIOPS, ReadBPS, WriteBPS int64
}

// limitField is one limit with its names in both cgroup versions; the
// order is the order rules are written.
type limitField struct {
	blkioFile, ioMaxKey string
	value               *int64
}

func (l *Limits) fields() []limitField {
	return []limitField{
		{"blkio.throttle.read_iops_device", "riops", &l.ReadIOPS},
		{"blkio.throttle.write_iops_device", "wiops", &l.WriteIOPS},
		{"blkio.throttle.read_bps_device", "rbps", &l.ReadBPS},
		{"blkio.throttle.write_bps_device", "wbps", &l.WriteBPS},
	}
}

// SetLimits throttles I/O to device from tasks in the root blkio cgroup.
// Limits replace the previous ones; a zero field removes that rule.
func SetLimits(device string, l Limits) error {
	return SetLimitsIn(BlkioRoot, device, l)
}

// GetLimits returns the root blkio cgroup's limits for device.
func GetLimits(device string) (Limits, error) {
	return GetLimitsIn(BlkioRoot, device)
}

// ClearLimits removes every root blkio rule for device.
func ClearLimits(device string) error {
	return SetLimits(device, Limits{})
}

// SetLimitsIn throttles I/O to device from tasks in the cgroup v1 blkio
// directory cgroup. Use it for the cgroup of the workload that does the I/O,
// since v1 rules do not reach child cgroups.
func SetLimitsIn(cgroup, device string, l Limits) error {
	majmin, err := DeviceNumber(device)
	if err != nil {
		return fmt.Errorf("set limits: %w", err)
	}
	if err := SetBlkio(cgroup, majmin, l); err != nil {
		return fmt.Errorf("set limits on %s: %w", device, err)
	}
	return nil
}

// SetBlkio writes the cgroup v1 blkio throttle rules for the device
// numbered majmin ("MAJ:MIN") into the blkio directory cgroup.
func SetBlkio(cgroup, majmin string, l Limits) error {
	for _, f := range l.fields() {
		if *f.value < 0 {
			return fmt.Errorf("%s is negative (%d)", f.blkioFile, *f.value)
		}
	}
	for _, f := range l.fields() {
		file := filepath.Join(cgroup, f.blkioFile)
		// A rule that is already right is not written again: a write
		// restarts the throttle's accounting slice, and the node re-applies
		// limits every few seconds.
		if cur, err := readRule(file, majmin); err == nil && cur == *f.value {
			continue
		}
		// Writing 0 deletes the rule; it is accepted even when none exists.
		if err := writeRule(file, majmin+" "+strconv.FormatInt(*f.value, 10)); err != nil {
			return fmt.Errorf("device %s: %w", majmin, err)
		}
	}
	return nil
}

// GetLimitsIn returns the limits for device in the cgroup v1 blkio directory
// cgroup.
func GetLimitsIn(cgroup, device string) (Limits, error) {
	majmin, err := DeviceNumber(device)
	if err != nil {
		return Limits{}, fmt.Errorf("get limits: %w", err)
	}
	var l Limits
	for _, f := range l.fields() {
		file := filepath.Join(cgroup, f.blkioFile)
		v, err := readRule(file, majmin)
		if err != nil {
			return Limits{}, fmt.Errorf("get limits of %s (%s): %w", device, majmin, err)
		}
		*f.value = v
	}
	return l, nil
}

func writeRule(file, rule string) error {
	// One write per rule: cgroupfs parses each write separately. O_TRUNC
	// is what a shell's > does; cgroupfs ignores it, and a plain file (a
	// test's fake cgroup) then holds the last rule written.
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(rule); err != nil {
		f.Close()
		return fmt.Errorf("write %q to %s: %w", rule, file, err)
	}
	return f.Close()
}

func readRule(file, majmin string) (int64, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		dev, value, ok := strings.Cut(strings.TrimSpace(s.Text()), " ")
		if !ok || dev != majmin {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse %s line %q: %w", file, s.Text(), err)
		}
		return v, nil
	}
	if err := s.Err(); err != nil {
		return 0, fmt.Errorf("read %s: %w", file, err)
	}
	return 0, nil
}

// DeviceNumber returns "MAJ:MIN" of a block device node, the key of its
// rules in both cgroup versions.
func DeviceNumber(device string) (string, error) { return loopdev.DeviceNumber(device) }
