package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// opsFor runs op in n goroutines for d and returns operations per second;
// the first error stops the run.
func opsFor(ctx context.Context, n int, d time.Duration, op func(ctx context.Context, worker int) error) (float64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var count atomic.Int64
	var once sync.Once
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(deadline) {
				if err := op(ctx, w); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return float64(count.Load()) / time.Since(start).Seconds(), nil
}

func benchGetValue(ctx context.Context, s *stowage, work string, rep *report, cfg config) error {
	const name = "bench/getvalue"
	value := strings.Repeat("v", cfg.valueBytes)
	actx := withToken(ctx, s.adminToken)
	if _, err := s.secrets.CreateSecret(actx, &pb.CreateSecretRequest{Name: name, SecretString: &value}); err != nil {
		return fmt.Errorf("create secret %s: %w", name, err)
	}
	file := filepath.Join(work, "getvalue.local")
	if err := os.WriteFile(file, []byte(value), 0o600); err != nil {
		return err
	}
	local := func(context.Context, int) error {
		b, err := os.ReadFile(file)
		if err == nil && len(b) != len(value) {
			err = fmt.Errorf("read %d bytes of %s, want %d", len(b), file, len(value))
		}
		return err
	}
	server := func(context.Context, int) error {
		v, err := s.secrets.GetSecretValue(actx, &pb.GetSecretValueRequest{SecretId: name})
		if err == nil && v.GetSecretString() != value {
			err = fmt.Errorf("GetSecretValue of %s returned other bytes", name)
		}
		return err
	}

	var rows [][]string
	for _, n := range []int{1, 16} {
		var l, sv samples
		for r := range cfg.rounds {
			progress("GetSecretValue: %d caller(s), round %d of %d (%s local, %s server)", n, r+1, cfg.rounds, cfg.opsFor, cfg.opsFor)
			// Alternate which goes first, so a change in the machine's load
			// does not always fall on one side.
			order := []func(context.Context, int) error{local, server}
			if r%2 == 1 {
				order = []func(context.Context, int) error{server, local}
			}
			var got [2]float64
			for i, op := range order {
				v, err := opsFor(ctx, n, cfg.opsFor, op)
				if err != nil {
					return err
				}
				got[i] = v
			}
			if r%2 == 1 {
				got[0], got[1] = got[1], got[0]
			}
			l, sv = append(l, got[0]), append(sv, got[1])
		}
		ml, mv := l.Median(), sv.Median()
		rows = append(rows, []string{fmt.Sprint(n), rate(ml), rate(mv), "**" + ratio(mv, ml) + "**", joinRatios(sv, l)})
	}
	rep.Heading("2. GetSecretValue calls per second")
	rep.Para("One secret of %d bytes read with `SecretService.GetSecretValue` over the server's unix socket with the admin token (the server authenticates the token, "+
		"authorises, reads the version from bbolt, unwraps its data key with the KMS key and decrypts), by 1 and 16 goroutines sharing one gRPC connection, "+
		"against `os.ReadFile` of a local file holding the same bytes by as many goroutines. %d round(s) of %s each side, order swapped every other round; medians.",
		cfg.valueBytes, cfg.rounds, cfg.opsFor)
	rep.Table([]string{"callers", "local file reads/s", "GetSecretValue/s", "**server / local**", "each round"}, rows)
	return nil
}

func joinRatios(a, b []float64) string {
	r := make(samples, len(a))
	for i := range a {
		r[i] = a[i] / b[i]
	}
	return each(r)
}
