package cli

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// A server given several --listen addresses answers on each of them (the
// local cluster's server: its unix socket for the host's processes, a TCP
// address for the drivers' pods).
func TestRunServer_SeveralListenAddresses_AnswersOnEach(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runServer(ctx, serverOptions{dataDir: dir, listen: "unix://" + a, alsoListen: []string{"unix://" + b}, zone: "zone-a", node: "node-a",
			pools: []string{"name=p,dir=" + filepath.Join(dir, "pool")}})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("runServer: %v", err)
		}
	}()
	for _, sock := range []string{a, b} {
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
		resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		ccancel()
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health check on %s: %v %v, want SERVING", sock, resp, err)
		}
	}
}
