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
	"strconv"
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
	fl := attach.FUSELoop{Command: []string{bin, "nbd-attach", "--connections", strconv.Itoa(*conns)}, StateDir: filepath.Join(work, "state")}
	target := attach.Target{AttachmentID: "bench-att", Address: l.Addr().String(), Generation: 1, Secret: secret}
	netDev, err := fl.Attach(ctx, target)
	if err != nil {
		return err
	}
	u.Push("detach the network path", func() error { return fl.Detach(context.Background(), target) })
	localDev, err := loopdev.Attach(ctx, image)
	if err != nil {
		return err
	}
	u.Push("detach the local loop device", func() error { return loopdev.Detach(context.Background(), image) })
	benchkit.Progress("network path %s, local loop %s, image %s", netDev, localDev, image)

	targets := []struct{ name, file string }{{"network", netDev}, {"local loop", localDev}, {"pool file system", image}}
	res := map[string]map[string]float64{}
	load0 := benchkit.LoadAvg()
	for i, j := range jobs {
		for k := range targets {
			t := targets[(k+i)%len(targets)] // rotate the order job by job
			v, err := fio(ctx, j, t.file, *size, *runtime)
			if err != nil {
				return err
			}
			benchkit.Progress("%-28s %-16s %8.0f %s", j.summary, t.name, v, unit(j))
			if res[t.name] == nil {
				res[t.name] = map[string]float64{}
			}
			res[t.name][j.summary] = v
		}
	}
	var rep benchkit.Report
	rep.Heading("Network block path vs local loop vs pool file system")
	rep.Table([]string{"", ""}, benchkit.Machine([]string{"fio", benchkit.Out("fio", "--version")}))
	rep.Para("Image %d MiB on `%s` (%s), prefilled. fio libaio, direct, %s per job, one run; jobs rotate the order of the targets. "+
		"Network path: blockexport NBD server on 127.0.0.1 in this process → `stowage nbd-attach` (%d NBD connections, FUSE file with FOPEN_DIRECT_IO and ASYNC_DIO, loop device with direct I/O). "+
		"Load average at start %s, at end %s.", *size, *dir, benchkit.Out("findmnt", "-no", "FSTYPE", "-T", *dir), *runtime, *conns, load0, benchkit.LoadAvg())
	var rows [][]string
	for _, j := range jobs {
		n, lo, fs := res["network"][j.summary], res["local loop"][j.summary], res["pool file system"][j.summary]
		rows = append(rows, []string{j.summary, fmt.Sprintf("%.0f %s", n, unit(j)), fmt.Sprintf("%.0f", lo), fmt.Sprintf("%.0f", fs),
			"**" + benchkit.Ratio(n, lo) + "**", benchkit.Ratio(n, fs)})
	}
	rep.Table([]string{"pattern", "network path", "local loop", "pool file system", "network / local loop", "network / file system"}, rows)
	fmt.Print(rep.String())
	return nil
}

func unit(j job) string {
	if j.mibs {
		return "MiB/s"
	}
	return "IOPS"
}

func fio(ctx context.Context, j job, file string, sizeMiB int64, runtime time.Duration) (float64, error) {
	cmd := exec.CommandContext(ctx, "fio", "--name=bench", "--filename="+file, "--size="+strconv.FormatInt(sizeMiB, 10)+"m",
		"--rw="+j.rw, "--bs="+j.bs, "--iodepth="+strconv.Itoa(j.qd), "--ioengine=libaio", "--direct=1",
		"--runtime="+strconv.Itoa(int(runtime.Seconds())), "--time_based", "--output-format=json")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("fio %s on %s: %v: %s", j.summary, file, err, errb.String())
	}
	raw := out.Bytes()
	if i := bytes.IndexByte(raw, '{'); i > 0 {
		raw = raw[i:]
	}
	var o struct {
		Jobs []struct {
			Read, Write struct {
				IOPS    float64 `json:"iops"`
				BWBytes float64 `json:"bw_bytes"`
			}
		} `json:"jobs"`
	}
	if err := json.Unmarshal(raw, &o); err != nil || len(o.Jobs) != 1 {
		return 0, fmt.Errorf("fio %s on %s: unreadable output: %v", j.summary, file, err)
	}
	side := o.Jobs[0].Read
	if j.rw == "write" || j.rw == "randwrite" {
		side = o.Jobs[0].Write
	}
	if j.mibs {
		return side.BWBytes / (1 << 20), nil
	}
	return side.IOPS, nil
}
