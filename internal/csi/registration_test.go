package csi

import (
	"context"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	reg "github.com/stowage-io/stowage/api/pluginregistration/v1"
)

func TestServeRegistration_KubeletHandshake_ReportsDriverAndEndpoint(t *testing.T) {
	// Unix socket paths are limited to 108 bytes; t.TempDir() is too long.
	dir, err := os.MkdirTemp("", "reg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	r, done, err := ServeRegistration(ctx, dir, "unix:///var/lib/kubelet/plugins/block.csi.stowage.io/csi.sock")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+RegistrationSocket(dir), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := reg.NewRegistrationClient(conn)
	info, err := c.GetInfo(ctx, &reg.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != "CSIPlugin" || info.Name != DriverName || info.Endpoint != "/var/lib/kubelet/plugins/block.csi.stowage.io/csi.sock" || len(info.SupportedVersions) == 0 {
		t.Fatalf("GetInfo = %+v", info)
	}
	if _, err := c.NotifyRegistrationStatus(ctx, &reg.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if !r.Registered() {
		t.Fatal("Registered() = false after the kubelet reported success")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("registration server did not stop")
	}
	time.Sleep(50 * time.Millisecond)
	if _, err := os.Stat(RegistrationSocket(dir)); !os.IsNotExist(err) {
		t.Fatalf("socket left behind after stop: %v", err)
	}
}
