package nbd

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkClient_RandomRead4KiB measures the NBD client and server alone
// (loopback TCP, an image in the page cache, no FUSE) at the depth the
// network block path's loop device sends: 32 reads in flight on 4
// connections. It reports IOPS and the process's CPU time per read.
func BenchmarkClient_RandomRead4KiB(b *testing.B) {
	for _, depth := range []int{1, 32} {
		b.Run(fmt.Sprintf("QD%d", depth), func(b *testing.B) {
			benchmarkIO(b, depth, func(c *Client, buf []byte, off int64) error {
				_, err := c.ReadAt(buf, off)
				return err
			})
		})
	}
}

// BenchmarkClient_RandomWrite4KiB is the same for writes.
func BenchmarkClient_RandomWrite4KiB(b *testing.B) {
	benchmarkIO(b, 32, func(c *Client, buf []byte, off int64) error {
		_, err := c.WriteAt(buf, off)
		return err
	})
}

func benchmarkIO(b *testing.B, depth int, op func(*Client, []byte, int64) error) {
	ts := startServer(b, "127.0.0.1:0", filepath.Join(b.TempDir(), "img"), false)
	c, err := Dial(context.Background(), ClientOptions{Addr: ts.addr, Export: "vol", Connections: 4})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var next sync.WaitGroup
	ops := make(chan struct{}, depth)
	frames0, writes0 := batchFrames.Load(), batchWrites.Load()
	cpu0 := cpuTime()
	start := time.Now()
	b.ResetTimer()
	for range depth {
		next.Add(1)
		go func() {
			defer next.Done()
			buf := make([]byte, 4096)
			for range ops {
				if err := op(c, buf, rand.Int64N(testSize/4096)*4096); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	for range b.N {
		ops <- struct{}{}
	}
	close(ops)
	next.Wait()
	el := time.Since(start)
	b.ReportMetric(float64(b.N)/el.Seconds(), "IOPS")
	b.ReportMetric(float64(batchFrames.Load()-frames0)/float64(max(1, batchWrites.Load()-writes0)), "frames/write")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e3, "cpu-µs/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
