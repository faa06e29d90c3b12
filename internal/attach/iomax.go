package attach

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// IOMaxFile is the cgroup v2 file of the io controller's throttle rules.
//
// Unlike v1 blkio, cgroup v2 is one nested hierarchy: a rule in a cgroup
// binds the I/O of every task in it and in all its descendants (a child's
// own rule can only be stricter), and writeback is charged to the cgroup
// that dirtied the pages. The root cgroup has no io.max.
const IOMaxFile = "io.max"

// SetIOMax writes the cgroup v2 io.max rule for the device numbered majmin
// into the directory cgroup. A zero field is "max" (unlimited); all zero
// removes the rule. A rule that is already right is not written again: a
// write restarts the throttle's accounting.
func SetIOMax(cgroup, majmin string, l Limits) error {
	var rule strings.Builder
	rule.WriteString(majmin)
	for _, k := range l.fields() {
		if *k.value < 0 {
			return fmt.Errorf("%s is negative (%d)", k.ioMaxKey, *k.value)
		}
		v := "max"
		if *k.value > 0 {
			v = strconv.FormatInt(*k.value, 10)
		}
		fmt.Fprintf(&rule, " %s=%s", k.ioMaxKey, v)
	}
	file := filepath.Join(cgroup, IOMaxFile)
	if cur, err := GetIOMax(cgroup, majmin); err == nil && cur == l {
		return nil
	}
	if err := writeRule(file, rule.String()); err != nil {
		return fmt.Errorf("device %s: %w", majmin, err)
	}
	return nil
}

// GetIOMax returns the io.max limits of the device numbered majmin in the
// directory cgroup; a device without a rule has zero (unlimited) limits.
func GetIOMax(cgroup, majmin string) (Limits, error) {
	file := filepath.Join(cgroup, IOMaxFile)
	f, err := os.Open(file)
	if err != nil {
		return Limits{}, err
	}
	defer f.Close()
	var l Limits
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 0 || fields[0] != majmin {
			continue
		}
		// "8:16 rbps=2097152 wbps=max riops=max wiops=120"
		for _, kv := range fields[1:] {
			k, v, _ := strings.Cut(kv, "=")
			for _, want := range l.fields() {
				if want.ioMaxKey != k || v == "max" {
					continue
				}
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return Limits{}, fmt.Errorf("parse %s line %q: %w", file, s.Text(), err)
				}
				*want.value = n
			}
		}
	}
	if err := s.Err(); err != nil {
		return Limits{}, fmt.Errorf("read %s: %w", file, err)
	}
	return l, nil
}
