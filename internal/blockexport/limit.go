package blockexport

import (
	"context"
	"sync"
	"time"
)

// Limits are an export's provisioned performance; zero means unlimited.
type Limits struct {
	IOPS           int64
	BytesPerSecond int64
}

// opSize is the largest I/O that counts as one operation, as EBS counts
// SSD volumes' I/O: a 1 MiB request is 4 operations.
const opSize = 256 << 10

// ops is how many operations a request of n bytes counts as.
func ops(n uint32) float64 {
	if n <= opSize {
		return 1
	}
	return float64((n + opSize - 1) / opSize)
}

// bucket is a token bucket that lets a request go into debt: a request
// larger than the burst still passes, and the ones after it wait until
// the debt is paid, so the long-run rate is exact.
type bucket struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

// newBucket is nil (no limit) for rate <= 0. The burst is a tenth of a
// second's worth (at least minBurst): short enough that a measured
// second stays within a few percent of the limit.
func newBucket(rate int64, minBurst float64) *bucket {
	if rate <= 0 {
		return nil
	}
	burst := max(float64(rate)/10, minBurst)
	return &bucket{rate: float64(rate), burst: burst, tokens: burst, last: time.Now()}
}

// wait takes n tokens, sleeping until they are paid for; it gives up when
// ctx ends or gone is closed.
func (b *bucket) wait(ctx context.Context, gone <-chan struct{}, n float64) error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	b.tokens -= n
	var d time.Duration
	if b.tokens < 0 {
		d = time.Duration(-b.tokens / b.rate * float64(time.Second))
	}
	b.mu.Unlock()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-gone:
		return context.Canceled
	}
}
