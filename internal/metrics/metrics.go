// Package metrics exposes Stowage's Prometheus metrics: calls to the Stowage
// API and to the CSI drivers with their latency, the server's volumes,
// snapshots and pools as they are at scrape time, and the node plugin's
// state. Each daemon builds one Registry and serves it on its
// --metrics-address; docs/metrics.md lists every metric.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// latencyBuckets are the upstream CSI sidecars' buckets (0.1 s to 600 s),
// so that our histograms and theirs can be compared bucket by bucket, with
// finer ones below 0.1 s, where most API and node calls finish.
var latencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 25, 50, 120, 300, 600}

// Registry holds one process's metrics.
type Registry struct {
	reg         *prometheus.Registry
	apiRequests *prometheus.CounterVec
	apiSeconds  *prometheus.HistogramVec
	csiSeconds  *prometheus.HistogramVec
}

// New returns a Registry with the Go runtime and process metrics and the
// (still empty) call metrics; series appear once calls are observed.
func New() *Registry {
	r := &Registry{
		reg: prometheus.NewRegistry(),
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stowage_api_requests_total",
			Help: "Stowage API requests handled, by gRPC method and status code.",
		}, []string{"method", "code"}),
		apiSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "stowage_api_request_duration_seconds",
			Help:    "Time the Stowage API took to answer a request, by gRPC method and status code.",
			Buckets: latencyBuckets,
		}, []string{"method", "code"}),
		// Named and labelled as the sidecars' csi_sidecar_operations_seconds,
		// measured on the driver's side of the socket.
		csiSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "stowage_csi_operations_seconds",
			Help:    "Time the CSI driver took to answer a CSI call, by driver, method and gRPC status code.",
			Buckets: latencyBuckets,
		}, []string{"driver_name", "method_name", "grpc_status_code"}),
	}
	r.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		r.apiRequests, r.apiSeconds, r.csiSeconds,
	)
	return r
}

// APIInterceptor counts and times every unary call of the Stowage API.
func (r *Registry) APIInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		code := status.Code(err).String()
		r.apiRequests.WithLabelValues(info.FullMethod, code).Inc()
		r.apiSeconds.WithLabelValues(info.FullMethod, code).Observe(time.Since(start).Seconds())
		return resp, err
	}
}

// CSIInterceptor times every unary CSI call of the driver named driverName.
func (r *Registry) CSIInterceptor(driverName string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		r.csiSeconds.WithLabelValues(driverName, info.FullMethod, status.Code(err).String()).Observe(time.Since(start).Seconds())
		return resp, err
	}
}

// WatchInventory reports the volumes, snapshots and pools that inv lists,
// asked at every scrape.
func (r *Registry) WatchInventory(inv Inventory) {
	r.reg.MustRegister(newInventoryCollector(inv))
}

// WatchNodeLimits reports whether the node plugin enforces volumes' IOPS
// and throughput limits, asking enforced at every scrape.
func (r *Registry) WatchNodeLimits(enforced func() bool) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "stowage_node_limits_enforced",
		Help: "1 when the node plugin can apply volumes' IOPS and throughput limits (cgroup blkio or io.max), 0 when volumes are staged without them.",
	}, func() float64 {
		if enforced() {
			return 1
		}
		return 0
	}))
}

// Handler serves the metrics in the Prometheus text format. A collector
// that fails does not hide the others.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      slog.NewLogLogger(slog.Default().Handler(), slog.LevelError),
		Timeout:       30 * time.Second,
	})
}

// Serve listens on addr (host:port) and serves /metrics until ctx ends. It
// returns once it listens, with the address it got (addr may end in :0).
func (r *Registry) Serve(ctx context.Context, addr string) (net.Addr, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", r.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("metrics endpoint stopped", "address", lis.Addr().String(), "err", err)
		}
	}()
	return lis.Addr(), nil
}
