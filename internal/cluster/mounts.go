package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/pkg/loopdev"
)

// mountsUnder returns the mount points at or under any of dirs, deepest
// first, as /proc/self/mountinfo lists them.
func mountsUnder(dirs ...string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	seen := map[string]bool{}
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountPath(fields[4])
		for _, d := range dirs {
			if (mp == d || strings.HasPrefix(mp, d+"/")) && !seen[mp] {
				seen[mp] = true
				out = append(out, mp)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		di, dj := strings.Count(out[i], "/"), strings.Count(out[j], "/")
		if di != dj {
			return di > dj
		}
		return out[i] > out[j]
	})
	return out, sc.Err()
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountAll unmounts everything under dirs, deepest first, a few passes
// (the kubelet's root is a shared bind mount, so mounts may appear twice);
// a busy mount is detached lazily. It returns how many it unmounted.
func unmountAll(dirs ...string) (int, error) {
	n := 0
	var last error
	for pass := 0; pass < 5; pass++ {
		mps, err := mountsUnder(dirs...)
		if err != nil {
			return n, err
		}
		if len(mps) == 0 {
			return n, nil
		}
		last = nil
		for _, mp := range mps {
			err := unix.Unmount(mp, 0)
			if errors.Is(err, unix.EBUSY) {
				err = unix.Unmount(mp, unix.MNT_DETACH)
			}
			if err == nil {
				n++
			} else if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				last = fmt.Errorf("unmount %s: %w", mp, err)
			}
		}
	}
	mps, _ := mountsUnder(dirs...)
	if len(mps) > 0 {
		return n, errors.Join(last, fmt.Errorf("still mounted: %s", strings.Join(mps, ", ")))
	}
	return n, nil
}

// loopDevicesUnder returns the loop devices whose backing file is under dir.
func loopDevicesUnder(dir string) []string {
	var devs []string
	loops, _ := loopdev.Under(dir)
	for _, l := range loops {
		devs = append(devs, l.Path)
	}
	sort.Strings(devs)
	return devs
}

// detachLoops detaches the loop devices backed by files under dir. A
// device that is still mounted is only marked to go when it is unmounted
// (the kernel's autoclear), so unmount first.
func detachLoops(dir string) (int, error) {
	var errs []error
	n := 0
	for _, dev := range loopDevicesUnder(dir) {
		f, err := os.OpenFile(dev, os.O_RDONLY, 0)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.ENXIO) {
			errs = append(errs, fmt.Errorf("detach %s: %w", dev, err))
			continue
		}
		n++
	}
	// A device that another one holds open (the kubelet's loop over a raw
	// block volume) is cleared when that one lets go: give it a moment.
	left := loopDevicesUnder(dir)
	for i := 0; i < 20 && len(left) > 0; i++ {
		time.Sleep(100 * time.Millisecond)
		left = loopDevicesUnder(dir)
	}
	if len(left) > 0 {
		errs = append(errs, fmt.Errorf("loop devices still backed by files under %s: %s", dir, strings.Join(left, ", ")))
	}
	return n, errors.Join(errs...)
}
