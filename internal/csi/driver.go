// Package csi implements the Stowage block CSI driver (block.csi.stowage.io):
// identity, a controller that calls the Stowage API, and a node plugin that
// attaches volume images as loop devices, formats and mounts them.
package csi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"
)

const (
	// DriverName is the CSI driver name of Stowage block volumes.
	DriverName = "block.csi.stowage.io"
	// TopologyZoneKey is the zone a volume lives in and a node is in.
	TopologyZoneKey = "topology.block.csi.stowage.io/zone"
	// TopologyNodeKey pins a volume to the node whose pool holds it: until the
	// network data path exists, a volume can only be staged there.
	TopologyNodeKey = "topology.block.csi.stowage.io/node"
	// WellKnownZoneKey is accepted in topology requirements, as EBS does.
	WellKnownZoneKey = "topology.kubernetes.io/zone"
)

// Version is set at build time.
var Version = "dev"

// Driver serves the identity service plus a controller and/or a node service.
type Driver struct {
	identity   *IdentityService
	controller *ControllerService
	node       *NodeService
	srv        *grpc.Server

	// Interceptors wrap every CSI call, outermost first, outside the
	// driver's error log; the daemon puts the metrics' timing here.
	Interceptors []grpc.UnaryServerInterceptor
}

// NewDriver composes the services; controller or node may be nil.
func NewDriver(controller *ControllerService, node *NodeService) *Driver {
	return &Driver{identity: &IdentityService{}, controller: controller, node: node}
}

// Serve listens on endpoint (unix:///path or tcp://host:port) and serves
// until ctx ends.
func (d *Driver) Serve(ctx context.Context, endpoint string) error {
	lis, err := Listen(endpoint)
	if err != nil {
		return err
	}
	d.srv = grpc.NewServer(grpc.ChainUnaryInterceptor(append(slices.Clone(d.Interceptors), logErrors)...))
	csi.RegisterIdentityServer(d.srv, d.identity)
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
	klog.InfoS("CSI driver listening", "driver", DriverName, "endpoint", endpoint,
		"controller", d.controller != nil, "node", d.node != nil)
	if err := d.srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve CSI on %s: %w", endpoint, err)
	}
	return nil
}

// Listen opens a unix or tcp listener; a stale unix socket is replaced.
func Listen(endpoint string) (net.Listener, error) {
	scheme, addr, ok := strings.Cut(endpoint, "://")
	if !ok {
		scheme, addr = "unix", endpoint
	}
	switch scheme {
	case "unix":
		if err := os.MkdirAll(filepath.Dir(addr), 0o750); err != nil {
			return nil, fmt.Errorf("create directory for socket %s: %w", addr, err)
		}
		if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket %s: %w", addr, err)
		}
		return net.Listen("unix", addr)
	case "tcp":
		return net.Listen("tcp", addr)
	}
	return nil, fmt.Errorf("endpoint %q: scheme must be unix:// or tcp://", endpoint)
}

func logErrors(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err != nil {
		klog.ErrorS(err, "CSI call failed", "method", info.FullMethod, "code", status.Code(err))
	}
	return resp, err
}

// apiError keeps the gRPC code the Stowage API chose (it already maps
// backend errors) and adds which CSI operation failed.
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

func wrapperInt64(v int64) *wrapperspb.Int64Value { return wrapperspb.Int64(v) }

var supportedAccessModes = map[csi.VolumeCapability_AccessMode_Mode]bool{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:        true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:   true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER: true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:  true,
}

// validateCapabilities accepts what a block volume can do: one node at a
// time, as a file system (ext4, xfs, ext3) or a raw device.
func validateCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return errors.New("volume capabilities are required")
	}
	for _, c := range caps {
		if c.GetAccessMode() == nil {
			return errors.New("a volume capability has no access mode")
		}
		mode := c.GetAccessMode().GetMode()
		if !supportedAccessModes[mode] {
			return fmt.Errorf("access mode %s is not supported: block volumes attach to one node at a time (ReadWriteOnce, ReadWriteOncePod, ReadOnly on one node); use a Stowage file volume for ReadWriteMany", mode)
		}
		switch {
		case c.GetBlock() != nil:
		case c.GetMount() != nil:
			if fs := strings.ToLower(c.GetMount().GetFsType()); fs != "" && !supportedFSTypes[fs] {
				return fmt.Errorf("file system %q is not supported; use one of %s", c.GetMount().GetFsType(), supportedFSTypesText)
			}
		default:
			return errors.New("a volume capability must be block or mount")
		}
	}
	return nil
}

// IdentityService tells the container orchestrator who we are.
type IdentityService struct {
	csi.UnimplementedIdentityServer
}

func (IdentityService) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: DriverName, VendorVersion: Version}, nil
}

func (IdentityService) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	svc := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		svc(csi.PluginCapability_Service_CONTROLLER_SERVICE),
		svc(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}}},
	}}, nil
}

func (IdentityService) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}
