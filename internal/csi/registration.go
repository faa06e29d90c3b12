package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"

	reg "github.com/stowage-io/stowage/api/pluginregistration/v1"
)

// Registrar answers the kubelet's plugin watcher, which finds the socket in
// its plugins_registry directory and asks who we are and where our CSI socket
// is. It replaces node-driver-registrar.
type Registrar struct {
	reg.UnimplementedRegistrationServer
	driver      string
	csiEndpoint string
	registered  atomic.Bool
}

// RegistrationSocket is where the kubelet looks for the block driver's
// registration socket.
func RegistrationSocket(dir string) string { return RegistrationSocketFor(DriverName, dir) }

// RegistrationSocketFor is where the kubelet looks for driver's
// registration socket.
func RegistrationSocketFor(driver, dir string) string {
	return filepath.Join(dir, driver+"-reg.sock")
}

// ServeRegistration serves the block driver's registration (ServeRegistrationFor).
func ServeRegistration(ctx context.Context, dir, csiEndpoint string) (*Registrar, <-chan error, error) {
	return ServeRegistrationFor(ctx, DriverName, dir, csiEndpoint)
}

// ServeRegistrationFor serves driver's registration socket in dir (the
// kubelet's plugins_registry) for the CSI socket csiEndpoint, until ctx
// ends, and removes the socket then so the kubelet unregisters the driver.
func ServeRegistrationFor(ctx context.Context, driver, dir, csiEndpoint string) (*Registrar, <-chan error, error) {
	r := &Registrar{driver: driver, csiEndpoint: strings.TrimPrefix(csiEndpoint, "unix://")}
	sock := RegistrationSocketFor(driver, dir)
	lis, err := Listen("unix://" + sock)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on kubelet registration socket %s: %w", sock, err)
	}
	g := grpc.NewServer()
	reg.RegisterRegistrationServer(g, r)
	done := make(chan error, 1)
	go func() {
		err := g.Serve(lis)
		if errors.Is(err, grpc.ErrServerStopped) {
			err = nil
		}
		done <- err
	}()
	go func() {
		<-ctx.Done()
		g.Stop()
		os.Remove(sock)
	}()
	klog.InfoS("serving kubelet plugin registration", "socket", sock, "csiEndpoint", r.csiEndpoint)
	return r, done, nil
}

// Registered reports whether the kubelet said it registered the driver.
func (r *Registrar) Registered() bool { return r.registered.Load() }

func (r *Registrar) GetInfo(context.Context, *reg.InfoRequest) (*reg.PluginInfo, error) {
	return &reg.PluginInfo{Type: "CSIPlugin", Name: r.driver, Endpoint: r.csiEndpoint, SupportedVersions: []string{"1.0.0"}}, nil
}

func (r *Registrar) NotifyRegistrationStatus(_ context.Context, s *reg.RegistrationStatus) (*reg.RegistrationStatusResponse, error) {
	r.registered.Store(s.PluginRegistered)
	if s.PluginRegistered {
		klog.InfoS("kubelet registered the driver", "driver", r.driver)
	} else {
		klog.ErrorS(errors.New(s.Error), "kubelet refused to register the driver", "driver", r.driver)
	}
	return &reg.RegistrationStatusResponse{}, nil
}
