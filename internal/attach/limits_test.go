package attach

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/pkg/loopdev"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches real loop devices")
	}
}

// newImage creates a sparse backing file and registers a Detach for it, so
// the device is released even if the test fails between Attach and its own
// cleanup. t.TempDir is created first so its removal runs after the Detach.
func newImage(t testing.TB, name string, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := loopdev.Detach(context.Background(), path); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return path
}

func mustAttach(t testing.TB, path string) string {
	t.Helper()
	dev, err := loopdev.Attach(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return dev
}

func requireBlkio(t testing.TB) {
	t.Helper()
	requireRoot(t)
	if _, err := os.Stat(filepath.Join(BlkioRoot, "blkio.throttle.write_iops_device")); err != nil {
		t.Skipf("needs cgroup v1 blkio throttling at %s: %v", BlkioRoot, err)
	}
}

// limitedDevice attaches a fresh image and clears its limits on cleanup, which
// runs before the image's Detach.
func limitedDevice(t *testing.T) string {
	t.Helper()
	dev := mustAttach(t, newImage(t, "vol.img", 256<<20))
	t.Cleanup(func() {
		if err := ClearLimits(dev); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return dev
}

func TestSetLimits_RoundTrip(t *testing.T) {
	requireBlkio(t)
	dev := limitedDevice(t)
	tests := []struct {
		name string
		l    Limits
	}{
		{"AllSet", Limits{ReadIOPS: 3000, WriteIOPS: 2000, ReadBPS: 125 << 20, WriteBPS: 100 << 20}},
		{"SomeZero_RulesRemoved", Limits{ReadIOPS: 3000, WriteBPS: 1 << 20}},
		{"AllZero_Unlimited", Limits{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := SetLimits(dev, tt.l); err != nil {
				t.Fatal(err)
			}
			got, err := GetLimits(dev)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.l {
				t.Fatalf("GetLimits(%s) = %+v, want %+v", dev, got, tt.l)
			}
		})
	}
}

func TestSetLimits_InvalidInput_Error(t *testing.T) {
	requireBlkio(t)
	dev := limitedDevice(t)
	plain := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		device string
		l      Limits
	}{
		{"NegativeIOPS", dev, Limits{ReadIOPS: -1}},
		{"RegularFile", plain, Limits{ReadIOPS: 100}},
		{"MissingDevice", "/dev/does-not-exist", Limits{ReadIOPS: 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := SetLimits(tt.device, tt.l)
			if err == nil || !strings.Contains(err.Error(), tt.device) {
				t.Fatalf("SetLimits(%s, %+v) = %v, want an error naming the device", tt.device, tt.l, err)
			}
		})
	}
	if got, err := GetLimits(dev); err != nil || got != (Limits{}) {
		t.Fatalf("after a rejected SetLimits, GetLimits = %+v, %v; want no rules", got, err)
	}
}

func TestDetach_ClearsLimits(t *testing.T) {
	requireBlkio(t)
	img := newImage(t, "vol.img", 64<<20)
	dev := mustAttach(t, img)
	t.Cleanup(func() { _ = ClearLimits(dev) })
	if err := SetLimits(dev, Limits{WriteIOPS: 100}); err != nil {
		t.Fatal(err)
	}
	if err := loopdev.Detach(context.Background(), img); err != nil {
		t.Fatal(err)
	}
	// Rules belong to the device number, not the binding, so a leftover
	// would throttle whichever volume gets this device next.
	if got, err := GetLimits(dev); err != nil || got != (Limits{}) {
		t.Fatalf("GetLimits(%s) after Detach = %+v, %v; want none", dev, got, err)
	}
}

const throttleIOPS = 200

func TestSetLimits_WriteIOPS_ThrottlesDirectWrites(t *testing.T) {
	requireBlkio(t)
	requireFio(t)
	dev := limitedDevice(t)
	if err := SetLimits(dev, Limits{WriteIOPS: throttleIOPS}); err != nil {
		t.Fatal(err)
	}
	limited := fioWriteIOPS(t, dev, "")
	t.Logf("%s limited to %d write IOPS: measured %.0f", dev, throttleIOPS, limited)
	if limited > 1.2*throttleIOPS {
		t.Fatalf("%s measured %.0f write IOPS with a %d limit", dev, limited, throttleIOPS)
	}
	if err := ClearLimits(dev); err != nil {
		t.Fatal(err)
	}
	free := fioWriteIOPS(t, dev, "")
	t.Logf("%s unlimited: measured %.0f write IOPS", dev, free)
	if free < 5*throttleIOPS {
		t.Fatalf("%s measured only %.0f write IOPS after ClearLimits", dev, free)
	}
}

// TestSetLimits_ChildCgroupTask pins down that cgroup v1 throttling is flat:
// a root rule does not limit a task in a child cgroup, a rule in that cgroup
// does. If a kernel changes this, the package comment of BlkioRoot is wrong.
func TestSetLimits_ChildCgroupTask(t *testing.T) {
	requireBlkio(t)
	requireFio(t)
	tests := []struct {
		name        string
		ruleIn      func(child string) string
		wantLimited bool
	}{
		{"RuleInRoot_NotThrottled", func(string) string { return BlkioRoot }, false},
		{"RuleInOwnCgroup_Throttled", func(child string) string { return child }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := limitedDevice(t)
			child := newBlkioCgroup(t)
			cg := tt.ruleIn(child)
			if err := SetLimitsIn(cg, dev, Limits{WriteIOPS: throttleIOPS}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = SetLimitsIn(cg, dev, Limits{}) })
			iops := fioWriteIOPS(t, dev, child)
			t.Logf("rule in %s, fio in %s: %.0f write IOPS", cg, child, iops)
			if limited := iops <= 1.2*throttleIOPS; limited != tt.wantLimited {
				t.Fatalf("rule in %s, task in %s: %.0f IOPS with a %d limit; limited = %v, want %v",
					cg, child, iops, throttleIOPS, limited, tt.wantLimited)
			}
		})
	}
}

func requireFio(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("fio"); err != nil {
		t.Skip("needs fio to measure IOPS")
	}
}

// newBlkioCgroup makes a child blkio cgroup and removes it on cleanup, which
// runs after the test's fio has exited and so left the cgroup empty.
func newBlkioCgroup(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("stowage-attach-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	dir := filepath.Join(BlkioRoot, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot create a blkio cgroup: %v", err)
	}
	t.Cleanup(func() {
		// A cgroup is busy until its exited tasks are reaped by the kernel.
		var err error
		for range 100 {
			if err = os.Remove(dir); err == nil || errors.Is(err, fs.ErrNotExist) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Errorf("cleanup: remove cgroup %s: %v", dir, err)
	})
	return dir
}

// fioWriteIOPS runs 2 s of 4 KiB direct random writes against dev and returns
// the measured IOPS. A non-empty cgroup runs fio as a member of it.
func fioWriteIOPS(t *testing.T, dev, cgroup string) float64 {
	t.Helper()
	args := []string{"fio", "--name=throttle", "--filename=" + dev, "--rw=randwrite", "--bs=4k",
		"--direct=1", "--ioengine=libaio", "--iodepth=16", "--time_based", "--runtime=2",
		"--size=128m", "--output-format=json"}
	var cmd *exec.Cmd
	if cgroup == "" {
		cmd = exec.Command(args[0], args[1:]...)
	} else {
		// Join the cgroup before exec so every I/O fio issues is attributed
		// to it.
		script := `echo $$ > "$1/cgroup.procs" && shift && exec "$@"`
		cmd = exec.Command("sh", append([]string{"-c", script, "sh", cgroup}, args...)...)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("fio on %s: %v: %s", dev, err, stderr.String())
	}
	// fio may print notices before the JSON document.
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var res struct {
		Jobs []struct {
			Write struct {
				IOPS float64 `json:"iops"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) == 0 {
		t.Fatalf("fio on %s: parse output (%v): %s", dev, err, out)
	}
	return res.Jobs[0].Write.IOPS
}

// Re-applying the same limits writes nothing (a write would restart the
// throttle's accounting); a changed limit is written.
func TestSetLimits_SameLimitsAgain_NoWrite(t *testing.T) {
	requireBlkio(t)
	dev := limitedDevice(t)
	l := Limits{ReadIOPS: 3000, WriteIOPS: 3000, ReadBPS: 125 << 20, WriteBPS: 125 << 20}
	if err := SetLimits(dev, l); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, f := range l.fields() {
		if _, err := unix.InotifyAddWatch(fd, filepath.Join(BlkioRoot, f.blkioFile), unix.IN_MODIFY); err != nil {
			t.Fatal(err)
		}
	}
	writes := func() int {
		buf := make([]byte, 4096)
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		return n / unix.SizeofInotifyEvent
	}
	if err := SetLimits(dev, l); err != nil {
		t.Fatal(err)
	}
	if n := writes(); n != 0 {
		t.Fatalf("re-applying the same limits wrote %d throttle files", n)
	}
	l.WriteIOPS = 2000
	if err := SetLimits(dev, l); err != nil {
		t.Fatal(err)
	}
	if n := writes(); n != 1 {
		t.Fatalf("changing one limit wrote %d throttle files, want 1", n)
	}
	if got, err := GetLimits(dev); err != nil || got != l {
		t.Fatalf("GetLimits = %+v, %v; want %+v", got, err, l)
	}
}
