package readiness_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/readiness"
	"github.com/stowage-io/stowage/internal/testutil/apitest"
)

func dial(t *testing.T, addr, token string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(auth.TokenCredentials{Token: token}))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func readyz(t *testing.T, c *readiness.Checker) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	c.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	return rec.Code, rec.Body.String()
}

// A driver with a good token is ready against a real server; with a
// token the server does not know, or with no server at all, it is not,
// and /readyz says which endpoint it tried (and never echoes the token).
func TestChecker_RealServer_GoodTokenReady_BadTokenOrNoServerNot(t *testing.T) {
	api := apitest.StartAuth(t, apitest.Auth{TCP: true})
	tok, _, err := api.Auth.Records.CreateToken(context.Background(), auth.CSIController, "readiness test")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	good := readiness.New(dial(t, api.TCPAddress, tok), "tcp://"+api.TCPAddress, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if code, body := readyz(t, good); code != http.StatusServiceUnavailable || !strings.Contains(body, "not checked yet") {
		t.Errorf("before the first check: %d %q; want 503, not checked yet", code, body)
	}
	if err := good.Check(ctx); err != nil {
		t.Fatalf("a csi-controller token against a running server: %v", err)
	}
	if code, body := readyz(t, good); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/readyz when ready: %d %q", code, body)
	}

	bad := auth.TokenPrefix + "bm90LWEtcmVhbC10b2tlbi1qdXN0LWZvci10aGUtdGVzdA"
	c := readiness.New(dial(t, api.TCPAddress, bad), "tcp://"+api.TCPAddress, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := c.Check(ctx); err == nil || !strings.Contains(err.Error(), "not valid") {
		t.Errorf("a token the server does not know: %v; want not ready, the token not valid", err)
	}
	code, body := readyz(t, c)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "tcp://"+api.TCPAddress) || strings.Contains(body, bad) {
		t.Errorf("/readyz with a bad token: %d %q; want 503 naming the endpoint, without the token", code, body)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := l.Addr().String()
	l.Close()
	c = readiness.New(dial(t, gone, tok), "tcp://"+gone, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := c.Check(ctx); err == nil || !strings.Contains(err.Error(), "tcp://"+gone) || !strings.Contains(err.Error(), "does not answer") {
		t.Errorf("no server: %v; want not ready, naming tcp://%s", err, gone)
	}
	if code, _ := readyz(t, c); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with no server: %d", code)
	}
}

// flaky answers the health check as told.
type flaky struct{ down bool }

func (f *flaky) Invoke(_ context.Context, method string, _, reply any, _ ...grpc.CallOption) error {
	if f.down {
		return errors.New("connection refused")
	}
	reply.(*healthpb.HealthCheckResponse).Status = healthpb.HealthCheckResponse_SERVING
	return nil
}

func (f *flaky) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, errors.New("no streams")
}

// Each change is logged once, with the endpoint: not a line per check.
func TestChecker_LogsEachChangeOnce(t *testing.T) {
	var logs bytes.Buffer
	f := &flaky{down: true}
	c := readiness.New(f, "unix:///run/stowage/api.sock", slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := context.Background()
	for _, down := range []bool{true, true, true, false, false, true} {
		f.down = down
		c.Check(ctx)
	}
	out := logs.String()
	if n := strings.Count(out, "not ready"); n != 2 {
		t.Errorf("%d 'not ready' lines for two outages:\n%s", n, out)
	}
	if n := strings.Count(out, "ready: the Stowage API answers"); n != 1 {
		t.Errorf("%d 'ready' lines for one recovery:\n%s", n, out)
	}
	if !strings.Contains(out, "endpoint=unix:///run/stowage/api.sock") {
		t.Errorf("the log lines do not name the endpoint:\n%s", out)
	}
}

// Serve serves /readyz and /healthz on a real port; /healthz stays 200
// while the server is away (a restart would not bring it back).
func TestChecker_Serve(t *testing.T) {
	f := &flaky{down: true}
	c := readiness.New(f, "tcp://127.0.0.1:1", slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := c.Serve(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) int {
		resp, err := http.Get("http://" + addr.String() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	deadline := time.Now().Add(5 * time.Second)
	for get("/readyz") != http.StatusServiceUnavailable || c.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("/readyz never said not ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while the API is away: %d, want 200", code)
	}
}

// Probe (the exec probe's `stowage readyz`) gives the reason, which names
// the endpoint, while the API is away, and nil once it answers.
func TestProbe_ReasonNamesTheEndpoint(t *testing.T) {
	f := &flaky{down: true}
	c := readiness.New(f, "198.51.100.2:7420", slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := c.Serve(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.Check(ctx)
	err = readiness.Probe(ctx, addr.String())
	if err == nil || !strings.Contains(err.Error(), "not ready") || !strings.Contains(err.Error(), "198.51.100.2:7420") {
		t.Fatalf("Probe while the API is away = %v, want not ready naming 198.51.100.2:7420", err)
	}
	f.down = false
	c.Check(ctx)
	if err := readiness.Probe(ctx, addr.String()); err != nil {
		t.Fatalf("Probe once the API answers = %v, want nil", err)
	}
	if err := readiness.Probe(ctx, "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("Probe of nothing = %v, want an error naming 127.0.0.1:1", err)
	}
}
