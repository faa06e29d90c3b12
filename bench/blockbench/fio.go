package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// fioJob is one of the four access patterns of the issue.
type fioJob struct {
	name    string // randread, randwrite, read, write (fio's --rw)
	bs      string
	iodepth int
	unit    string // what the figure is: IOPS or MiB/s
}

// fioJobs are the patterns. Sequential jobs use a lower queue depth
// than random ones: 8 × 1 MiB in flight already saturates a single device,
// and 32 × 1 MiB would mostly measure queueing.
var fioJobs = []fioJob{
	{"randread", "4k", 32, "IOPS"},
	{"randwrite", "4k", 32, "IOPS"},
	{"read", "1m", 8, "MiB/s"},
	{"write", "1m", 8, "MiB/s"},
}

func (j fioJob) label() string {
	if j.bs == "4k" {
		return "4 KiB " + j.name + " (QD32)"
	}
	return "1 MiB sequential " + j.name + " (QD8)"
}

// fioResult is one fio run, reduced to what the tables show.
type fioResult struct {
	value  float64 // IOPS or MiB/s, per the job's unit
	p99us  float64 // completion latency p99, microseconds
	cgroup string  // fio's blkio cgroup while it ran
	// cpuBusy is the whole machine's CPU use while fio ran, 0–1. The
	// volume's extra loop device costs CPU per I/O (its worker thread), so
	// on a small machine a saturated CPU, not the disk, can set the ratio.
	cpuBusy float64
}

type fioOutput struct {
	Jobs []struct {
		Read  fioSide `json:"read"`
		Write fioSide `json:"write"`
	} `json:"jobs"`
}

type fioSide struct {
	IOPS    float64 `json:"iops"`
	BWBytes float64 `json:"bw_bytes"`
	ClatNS  struct {
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

// fioArgs is the command line for job on file; it is printed in the report
// so any figure can be re-run by hand.
func fioArgs(j fioJob, file, size string, runtime time.Duration) []string {
	return []string{
		"--name=" + j.name, "--filename=" + file, "--size=" + size,
		"--rw=" + j.name, "--bs=" + j.bs, "--iodepth=" + strconv.Itoa(j.iodepth),
		"--ioengine=libaio", "--direct=1", "--numjobs=1",
		"--runtime=" + strconv.Itoa(int(runtime.Seconds())), "--time_based",
	}
}

// runFio runs one job and keeps its JSON output under outDir.
func runFio(ctx context.Context, outDir, tag string, j fioJob, file, size string, runtime time.Duration) (fioResult, error) {
	args := append(fioArgs(j, file, size, runtime), "--output-format=json")
	cmd := exec.CommandContext(ctx, "fio", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	busy0, total0 := cpuTicks()
	if err := cmd.Start(); err != nil {
		return fioResult{}, err
	}
	// Read while fio runs: blkio throttling rules only bind tasks of the
	// cgroup that holds them, so which cgroup fio is in decides whether the
	// volume's limits apply at all.
	cg := blkioCgroup(cmd.Process.Pid)
	if err := cmd.Wait(); err != nil {
		return fioResult{}, fmt.Errorf("fio %s on %s: %w: %s", j.name, file, err, strings.TrimSpace(errb.String()))
	}
	busy1, total1 := cpuTicks()
	raw := out.Bytes()
	_ = os.WriteFile(filepath.Join(outDir, "fio-"+tag+"-"+j.name+".json"), raw, 0o644)
	// fio may print warnings before the JSON document.
	if i := bytes.IndexByte(raw, '{'); i > 0 {
		raw = raw[i:]
	}
	var o fioOutput
	if err := json.Unmarshal(raw, &o); err != nil || len(o.Jobs) != 1 {
		return fioResult{}, fmt.Errorf("fio %s on %s: unreadable output (%v): %.200s", j.name, file, err, out.String())
	}
	side := o.Jobs[0].Read
	if strings.Contains(j.name, "write") {
		side = o.Jobs[0].Write
	}
	r := fioResult{value: side.IOPS, p99us: side.ClatNS.Percentile["99.000000"] / 1000, cgroup: cg}
	if total1 > total0 {
		r.cpuBusy = float64(busy1-busy0) / float64(total1-total0)
	}
	if j.unit == "MiB/s" {
		r.value = side.BWBytes / (1 << 20)
	}
	return r, nil
}

// prefill writes the whole test file once, untimed, so every timed job,
// on the baseline and on the volume alike, works on allocated blocks of
// real data rather than on holes.
func prefill(ctx context.Context, file, size string) error {
	cmd := exec.CommandContext(ctx, "fio", "--name=prefill", "--filename="+file, "--size="+size,
		"--rw=write", "--bs=1m", "--iodepth=8", "--ioengine=libaio", "--direct=1", "--output-format=terse")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("fio prefill of %s: %w: %s", file, err, out)
	}
	return nil
}

// blkioCgroup returns the cgroup v1 blkio path of pid ("/" is the root),
// or what the host has instead.
func blkioCgroup(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && parts[1] == "blkio" {
			return parts[2]
		}
	}
	return "no cgroup v1 blkio hierarchy"
}

// cpuTicks returns the busy and total CPU time of the machine so far, from
// the first line of /proc/stat; idle and iowait count as not busy.
func cpuTicks() (busy, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		// Fields 8 and 9 (guest, guest_nice) are already in user and nice.
		if i >= 8 {
			break
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}
