// Package filecsi is the Stowage file CSI driver (file.csi.stowage.io):
// each volume is an access point in a Stowage file system, made with the
// EFS CSI driver's StorageClass parameters (the controller), and mounted
// into pods over NFS, by the kernel's client or Stowage's FUSE client (the
// node).
package filecsi

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"

	blockcsi "github.com/stowage-io/stowage/internal/csi"
)

// DriverName is the CSI driver name of Stowage file volumes.
const DriverName = "file.csi.stowage.io"

// Driver serves the identity service, the controller and the node, each
// when given.
type Driver struct {
	controller *ControllerService
	node       *NodeService
	srv        *grpc.Server
	// Interceptors wrap every CSI call, outermost first.
	Interceptors []grpc.UnaryServerInterceptor
}

// NewDriver returns a driver serving controller and node (either may be nil).
func NewDriver(controller *ControllerService, node *NodeService) *Driver {
	return &Driver{controller: controller, node: node}
}

// Serve listens on endpoint (unix:///path or tcp://host:port) and serves
// until ctx ends.
func (d *Driver) Serve(ctx context.Context, endpoint string) error {
	lis, err := blockcsi.Listen(endpoint)
	if err != nil {
		return err
	}
	d.srv = grpc.NewServer(grpc.ChainUnaryInterceptor(append(slices.Clone(d.Interceptors), logErrors)...))
	csi.RegisterIdentityServer(d.srv, IdentityService{})
	if d.controller != nil {
		csi.RegisterControllerServer(d.srv, d.controller)
	}
	if d.node != nil {
		csi.RegisterNodeServer(d.srv, d.node)
	}
	go func() {
		<-ctx.Done()
		d.srv.GracefulStop()
	}()
	klog.InfoS("CSI driver listening", "driver", DriverName, "endpoint", endpoint, "controller", d.controller != nil, "node", d.node != nil)
	if err := d.srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve CSI on %s: %w", endpoint, err)
	}
	return nil
}

func logErrors(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err != nil {
		klog.ErrorS(err, "CSI call failed", "driver", DriverName, "method", info.FullMethod, "code", status.Code(err))
	}
	return resp, err
}

// IdentityService tells the container orchestrator who we are.
type IdentityService struct {
	csi.UnimplementedIdentityServer
}

func (IdentityService) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: DriverName, VendorVersion: blockcsi.Version}, nil
}

func (IdentityService) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}},
		{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS}}},
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}}},
	}}, nil
}

func (IdentityService) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// apiError keeps the gRPC code the Stowage API chose and adds which CSI
// operation failed.
func apiError(err error, format string, args ...any) error {
	st, ok := status.FromError(err)
	if !ok {
		return status.Errorf(codes.Internal, "%s: %v", fmt.Sprintf(format, args...), err)
	}
	code := st.Code()
	if code == codes.Unavailable || code == codes.DeadlineExceeded {
		return status.Errorf(code, "%s: the Stowage API is not reachable: %s", fmt.Sprintf(format, args...), st.Message())
	}
	return status.Errorf(code, "%s: %s", fmt.Sprintf(format, args...), st.Message())
}
