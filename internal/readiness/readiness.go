// Package readiness tells whether a driver can reach the Stowage API: it
// asks the server's gRPC health check with the driver's own credentials
// every few seconds, logs each change with the endpoint it tried, and
// serves /readyz (and /healthz) over HTTP for a pod's probes.
package readiness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Checker is the last answer of the Stowage API's health check.
type Checker struct {
	conn     grpc.ClientConnInterface
	endpoint string
	every    time.Duration
	timeout  time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	err     error // nil: ready
	checked bool
}

// New checks the API behind conn, which was dialled at endpoint (the name
// the errors and log lines give), every 5 s.
func New(conn grpc.ClientConnInterface, endpoint string, log *slog.Logger) *Checker {
	if log == nil {
		log = slog.Default()
	}
	return &Checker{conn: conn, endpoint: endpoint, every: 5 * time.Second, timeout: 3 * time.Second, log: log}
}

// Check asks once, records and returns the answer.
func (c *Checker) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(c.conn).Check(ctx, &healthpb.HealthCheckRequest{})
	switch {
	case err != nil:
		err = fmt.Errorf("the Stowage API at %s does not answer its health check: %s", c.endpoint, status.Convert(err).Message())
	case resp.GetStatus() != healthpb.HealthCheckResponse_SERVING:
		err = fmt.Errorf("the Stowage API at %s is %s", c.endpoint, resp.GetStatus())
	}
	c.mu.Lock()
	was, first := c.err, !c.checked
	c.err, c.checked = err, true
	c.mu.Unlock()
	switch {
	case err != nil && (first || was == nil):
		c.log.Warn("not ready: the Stowage API is unreachable", "endpoint", c.endpoint, "err", err)
	case err == nil && (first || was != nil):
		c.log.Info("ready: the Stowage API answers", "endpoint", c.endpoint)
	}
	return err
}

// Err is the last answer: nil when ready; before the first check, an
// error saying so.
func (c *Checker) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.checked {
		return fmt.Errorf("the Stowage API at %s: not checked yet", c.endpoint)
	}
	return c.err
}

// Run checks until ctx ends.
func (c *Checker) Run(ctx context.Context) {
	t := time.NewTicker(c.every)
	defer t.Stop()
	for {
		c.Check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Handler serves /readyz (200 "ok", or 503 with the reason) and /healthz
// (200 while the process serves: liveness must not restart a driver
// because the server is away, which would not bring it back).
func (c *Checker) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := c.Err(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	return mux
}

// Serve checks the API in the background and serves Handler on addr
// (host:port; port 0 picks one) until ctx ends. It returns the address.
func (c *Checker) Serve(ctx context.Context, addr string) (net.Addr, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("readiness: listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: c.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go c.Run(ctx)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.log.Error("readiness endpoint stopped", "addr", l.Addr().String(), "err", err)
		}
	}()
	return l.Addr(), nil
}

// Probe asks the /readyz of a Checker served at addr (host:port), as a
// kubelet's exec probe does through `stowage readyz`: nil when ready,
// else an error with the reason the endpoint gave, which the kubelet puts
// in the pod's Unhealthy event.
func Probe(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("the readiness endpoint %s does not answer: %w", addr, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("not ready: %s", strings.TrimSpace(string(body)))
	}
	return nil
}
