// Command netblockbench compares fio on a volume image attached over the
// network path (blockexport NBD server on loopback → `stowage nbd-attach`:
// NBD client, FUSE file, loop device) with the same image on a plain local
// loop device and with the image file itself on its file system, in one
// run. Jobs alternate between the three targets so load drift hits all.
//
// It needs root, fio and a stowage binary (bench/.bin/stowage); run it
// with bench/netblock.sh. Everything it makes is removed at the end.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stowage-io/stowage/bench/benchkit"
	"github.com/stowage-io/stowage/internal/attach"
	"github.com/stowage-io/stowage/internal/blockexport"
	"github.com/stowage-io/stowage/pkg/loopdev"
)

type job struct {
	rw      string
	bs      string
	qd      int
	mibs    bool // the figure is MiB/s, else IOPS
	summary string
}

var jobs = []job{
	{"randread", "4k", 1, false, "4 KiB random read QD1"},
	{"randwrite", "4k", 1, false, "4 KiB random write QD1"},
	{"randread", "4k", 32, false, "4 KiB random read QD32"},
	{"randwrite", "4k", 32, false, "4 KiB random write QD32"},
	{"read", "1m", 8, true, "1 MiB sequential read QD8"},
	{"write", "1m", 8, true, "1 MiB sequential write QD8"},
}

// uringParam offers FUSE over io_uring to FUSE servers while it is Y.
const uringParam = "/sys/module/fuse/parameters/enable_uring"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "netblockbench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		stowage = flag.String("stowage", "bench/.bin/stowage", "the stowage binary (its nbd-attach command)")
		dir     = flag.String("dir", "/var/tmp", "directory on the pool file system for the image")
		size    = flag.Int64("size-mib", 1024, "image size")
		runtime = flag.Duration("runtime", 5*time.Second, "runtime of each fio job")
		conns   = flag.Int("connections", 4, "NBD connections of the network path")
		only    = flag.String("only", "", "run only the jobs whose summary contains this (e.g. \"read QD32\")")
		prof    = flag.String("cpuprofile", "", "write a CPU profile of this process (the NBD server) to this file")
		warm    = flag.Bool("warm", false, "read the image into the host's page cache before the jobs (the NBD server reads through it)")
		fuse    = flag.Bool("fuse-file", false, "also run fio on the network path's FUSE file itself (below its loop device)")
		uring   = flag.Bool("fuse-uring", true, "serve the FUSE file over io_uring: set the fuse module's enable_uring to Y for the run (false: N), and put it back after")
	)
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("needs root (loop devices, FUSE)")
	}
	bin, err := filepath.Abs(*stowage)
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	var u benchkit.UndoStack
	defer u.Run()

	work, err := os.MkdirTemp(*dir, "netblockbench-")
	if err != nil {
		return err
	}
	u.Push("remove "+work, func() error { return os.RemoveAll(work) })
	image := filepath.Join(work, "vol.img")
	benchkit.Progress("prefill %s (%d MiB)", image, *size)
	if out, err := exec.CommandContext(ctx, "fio", "--name=prefill", "--filename="+image, "--size="+strconv.FormatInt(*size, 10)+"m",
		"--rw=write", "--bs=1m", "--iodepth=8", "--ioengine=libaio", "--direct=1", "--output-format=terse").CombinedOutput(); err != nil {
		return fmt.Errorf("prefill: %v: %s", err, out)
	}

	if *warm {
		if out, err := exec.CommandContext(ctx, "dd", "if="+image, "of=/dev/null", "bs=1M").CombinedOutput(); err != nil {
			return fmt.Errorf("warm the page cache: %v: %s", err, out)
		}
	}

	ex := blockexport.New(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go ex.Serve(l)
	u.Push("stop the exporter", ex.Close)
	secret := blockexport.NewSecret()
	if err := ex.Export(ctx, blockexport.Attachment{ID: "bench-att", VolumeID: "bench-vol", ImagePath: image, Generation: 1, Secret: secret}); err != nil {
		return err
	}
	if old, err := os.ReadFile(uringParam); err == nil {
		v := "N"
		if *uring {
			v = "Y"
		}
		if err := os.WriteFile(uringParam, []byte(v), 0); err != nil {
			return fmt.Errorf("set %s: %w", uringParam, err)
		}
		u.Push("put "+uringParam+" back", func() error { return os.WriteFile(uringParam, bytes.TrimSpace(old), 0) })
	} else if *uring {
		benchkit.Progress("this kernel has no FUSE over io_uring (%v): the FUSE file is served over /dev/fuse", err)
	}
	fl := attach.FUSELoop{Command: []string{bin, "nbd-attach", "--connections", strconv.Itoa(*conns)}, StateDir: filepath.Join(work, "state")}
	target := attach.Target{AttachmentID: "bench-att", Address: l.Addr().String(), Generation: 1, Secret: secret}
	netDev, err := fl.Attach(ctx, target)
	if err != nil {
		return err
	}
	// Which transport serves the FUSE file, as nbd-attach logged it.
	transport := "/dev/fuse"
	if b, err := os.ReadFile(filepath.Join(fl.StateDir, target.AttachmentID, "log")); err == nil && bytes.Contains(b, []byte("FUSE requests over io_uring")) {
		transport = "io_uring"
	}
	benchkit.Progress("the FUSE file is served over %s", transport)
	u.Push("detach the network path", func() error { return fl.Detach(context.Background(), target) })
	localDev, err := loopdev.Attach(ctx, image)
	if err != nil {
		return err
	}
	u.Push("detach the local loop device", func() error { return loopdev.Detach(context.Background(), image) })
	benchkit.Progress("network path %s, local loop %s, image %s", netDev, localDev, image)

	targets := []struct{ name, file string }{{"network", netDev}, {"local loop", localDev}, {"pool file system", image}}
	if *fuse {
		targets = append(targets, struct{ name, file string }{"FUSE file", filepath.Join(fl.StateDir, target.AttachmentID, "mnt", "disk")})
	}
	var run []job
	for _, j := range jobs {
		if strings.Contains(j.summary, *only) {
			run = append(run, j)
		}
	}
	pidb, err := os.ReadFile(filepath.Join(fl.StateDir, target.AttachmentID, "pid"))
	if err != nil {
		return err
	}
	attachPid, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
	if *prof != "" {
		f, err := os.Create(*prof)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		u.Push("stop the CPU profile", func() error { pprof.StopCPUProfile(); return f.Close() })
	}
	res := map[string]map[string]float64{}
	// CPU per I/O: the machine's busy time (the other users of the
	// machine included), and for the network path the processes of the
	// path itself (fio, nbd-attach, this process's NBD server; not the
	// kernel's loop workers).
	cpuMachine := map[string]map[string]time.Duration{}
	cpuPath := map[string]time.Duration{}
	load0 := benchkit.LoadAvg()
	for i, j := range run {
		for k := range targets {
			t := targets[(k+i)%len(targets)] // rotate the order job by job
			m0, a0, s0 := cpuBusy(), processCPU(attachPid), processCPU(0)
			r, err := fio(ctx, j, t.file, *size, *runtime)
			if err != nil {
				return err
			}
			m1, a1, s1 := cpuBusy(), processCPU(attachPid), processCPU(0)
			perIO := func(d time.Duration) time.Duration { return time.Duration(float64(d) / max(r.ios, 1)) }
			benchkit.Progress("%-28s %-16s %8.0f %s  CPU/IO: machine %v, fio %v, nbd-attach %v, server %v", j.summary, t.name, r.value, unit(j),
				perIO(m1-m0), perIO(r.fioCPU), perIO(a1-a0), perIO(s1-s0))
			if res[t.name] == nil {
				res[t.name] = map[string]float64{}
				cpuMachine[t.name] = map[string]time.Duration{}
			}
			res[t.name][j.summary] = r.value
			cpuMachine[t.name][j.summary] = perIO(m1 - m0)
			if t.name == "network" {
				cpuPath[j.summary] = perIO(r.fioCPU + a1 - a0 + s1 - s0)
			}
		}
	}
	var rep benchkit.Report
	rep.Heading("Network block path vs local loop vs pool file system")
	rep.Table([]string{"", ""}, benchkit.Machine([]string{"fio", benchkit.Out("fio", "--version")}))
	rep.Para("Image %d MiB on `%s` (%s), prefilled. fio libaio, direct, %s per job, one run; jobs rotate the order of the targets. "+
		"Network path: blockexport NBD server on 127.0.0.1 in this process → `stowage nbd-attach` (%d NBD connections, FUSE file with FOPEN_DIRECT_IO and ASYNC_DIO served over %s, loop device with direct I/O). "+
		"Load average at start %s, at end %s.", *size, *dir, benchkit.Out("findmnt", "-no", "FSTYPE", "-T", *dir), *runtime, *conns, transport, load0, benchkit.LoadAvg())
	var rows [][]string
	for _, j := range run {
		n, lo, fs := res["network"][j.summary], res["local loop"][j.summary], res["pool file system"][j.summary]
		row := []string{j.summary, fmt.Sprintf("%.0f %s", n, unit(j)), fmt.Sprintf("%.0f", lo), fmt.Sprintf("%.0f", fs),
			"**" + benchkit.Ratio(n, lo) + "**", benchkit.Ratio(n, fs)}
		if *fuse {
			row = append(row, fmt.Sprintf("%.0f", res["FUSE file"][j.summary]))
		}
		rows = append(rows, row)
	}
	header := []string{"pattern", "network path", "local loop", "pool file system", "network / local loop", "network / file system"}
	if *fuse {
		header = append(header, "FUSE file (no loop)")
	}
	rep.Table(header, rows)
	rep.Para("CPU time per I/O (µs): the machine's busy time over the job (2 CPUs; includes whatever else ran), and for the network path " +
		"also the time of its processes alone (fio + nbd-attach + the NBD server; not the kernel's loop workers).")
	rows = nil
	for _, j := range run {
		us := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Microsecond)) }
		rows = append(rows, []string{j.summary, us(cpuMachine["network"][j.summary]), us(cpuPath[j.summary]),
			us(cpuMachine["local loop"][j.summary]), us(cpuMachine["pool file system"][j.summary])})
	}
	rep.Table([]string{"pattern", "network path, machine", "network path, its processes", "local loop, machine", "file system, machine"}, rows)
	fmt.Print(rep.String())
	return nil
}

func unit(j job) string {
	if j.mibs {
		return "MiB/s"
	}
	return "IOPS"
}

// result is one fio job's figure and what it cost.
type result struct {
	value  float64       // IOPS or MiB/s
	ios    float64       // I/Os completed
	fioCPU time.Duration // fio's own user and system time
}

func fio(ctx context.Context, j job, file string, sizeMiB int64, runtime time.Duration) (result, error) {
	cmd := exec.CommandContext(ctx, "fio", "--name=bench", "--filename="+file, "--size="+strconv.FormatInt(sizeMiB, 10)+"m",
		"--rw="+j.rw, "--bs="+j.bs, "--iodepth="+strconv.Itoa(j.qd), "--ioengine=libaio", "--direct=1",
		"--runtime="+strconv.Itoa(int(runtime.Seconds())), "--time_based", "--output-format=json")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return result{}, fmt.Errorf("fio %s on %s: %v: %s", j.summary, file, err, errb.String())
	}
	raw := out.Bytes()
	if i := bytes.IndexByte(raw, '{'); i > 0 {
		raw = raw[i:]
	}
	var o struct {
		Jobs []struct {
			Read, Write struct {
				IOPS     float64 `json:"iops"`
				BWBytes  float64 `json:"bw_bytes"`
				TotalIOs float64 `json:"total_ios"`
			}
			UsrCPU  float64 `json:"usr_cpu"` // percent of the job's run time
			SysCPU  float64 `json:"sys_cpu"`
			Runtime float64 `json:"job_runtime"` // ms
		} `json:"jobs"`
	}
	if err := json.Unmarshal(raw, &o); err != nil || len(o.Jobs) != 1 {
		return result{}, fmt.Errorf("fio %s on %s: unreadable output: %v", j.summary, file, err)
	}
	oj := o.Jobs[0]
	side := oj.Read
	if j.rw == "write" || j.rw == "randwrite" {
		side = oj.Write
	}
	r := result{value: side.IOPS, ios: side.TotalIOs,
		fioCPU: time.Duration((oj.UsrCPU + oj.SysCPU) / 100 * oj.Runtime * float64(time.Millisecond))}
	if j.mibs {
		r.value = side.BWBytes / (1 << 20)
	}
	return r, nil
}

// cpuBusy is the machine's busy CPU time so far (all CPUs, from
// /proc/stat: user, nice, system, irq, softirq; not idle, iowait, or
// steal, which is the hypervisor's; guest time is in user already).
func cpuBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var ticks int64
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseInt(f, 10, 64)
		if i <= 2 || i == 5 || i == 6 {
			ticks += v
		}
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// processCPU is the user and system time of process pid (0: this one).
func processCPU(pid int) time.Duration {
	if pid == 0 {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * time.Second / 100
}
