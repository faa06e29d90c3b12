package cli

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// poolServer answers ListPools with its name, or UNAVAILABLE as a standby.
type poolServer struct {
	pb.UnimplementedPoolServiceServer
	name    string
	standby bool
}

func (p *poolServer) ListPools(context.Context, *pb.ListPoolsRequest) (*pb.ListPoolsResponse, error) {
	if p.standby {
		return nil, status.Error(codes.Unavailable, "this Stowage server is a standby")
	}
	return &pb.ListPoolsResponse{Pools: []*pb.Pool{{Name: p.name}}}, nil
}

func servePools(t *testing.T, network, addr string, p *poolServer) string {
	t.Helper()
	lis, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	pb.RegisterPoolServiceServer(g, p)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	if network == "unix" {
		return "unix://" + addr
	}
	return lis.Addr().String()
}

func TestDial_SeveralEndpoints_CallsGoToTheOneServing(t *testing.T) {
	dir, err := os.MkdirTemp("", "stwdial")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := closed.Addr().String()
	closed.Close()
	standbyTCP := servePools(t, "tcp", "127.0.0.1:0", &poolServer{name: "standby", standby: true})
	leaderUnix := servePools(t, "unix", filepath.Join(dir, "leader.sock"), &poolServer{name: "leader"})
	leaderTCP := servePools(t, "tcp", "127.0.0.1:0", &poolServer{name: "leader-tcp"})
	standbyUnix := servePools(t, "unix", filepath.Join(dir, "standby.sock"), &poolServer{name: "standby", standby: true})
	for _, tc := range []struct {
		name, endpoints, want string
	}{
		{"standby tcp then leader unix", standbyTCP + "," + leaderUnix, "leader"},
		{"dead, standby unix, leader tcp", deadAddr + ", " + standbyUnix + ",tcp://" + leaderTCP, "leader-tcp"},
		{"one endpoint", leaderUnix, "leader"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := dial(tc.endpoints, "")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			for range 3 { // the second and third go straight to the server that served
				resp, err := pb.NewPoolServiceClient(conn).ListPools(t.Context(), &pb.ListPoolsRequest{})
				if err != nil {
					t.Fatalf("ListPools through %s: %v", tc.endpoints, err)
				}
				if got := resp.Pools[0].Name; got != tc.want {
					t.Fatalf("served by %s, want %s", got, tc.want)
				}
			}
		})
	}
}

func TestDial_NoEndpointServes_UnavailableNamingEach(t *testing.T) {
	standby := servePools(t, "tcp", "127.0.0.1:0", &poolServer{name: "standby", standby: true})
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := closed.Addr().String()
	closed.Close()
	conn, err := dial(standby+","+dead, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	_, err = pb.NewPoolServiceClient(conn).ListPools(ctx, &pb.ListPoolsRequest{})
	if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Unavailable {
		t.Fatalf("ListPools = %v, want UNAVAILABLE or DEADLINE_EXCEEDED", err)
	}
	for _, want := range []string{standby, dead, "standby"} {
		if !strings.Contains(status.Convert(err).Message(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestListenURL_HostPortIsTCP(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:7420":         "tcp://127.0.0.1:7420",
		"[::1]:7420":             "tcp://[::1]:7420",
		"tcp://127.0.0.1:7420":   "tcp://127.0.0.1:7420",
		"unix:///run/api.sock":   "unix:///run/api.sock",
		"/run/stowage/api.sock":  "/run/stowage/api.sock",
		"relative/dir:name.sock": "relative/dir:name.sock",
	} {
		if got := listenURL(in); got != want {
			t.Errorf("listenURL(%q) = %q, want %q", in, got, want)
		}
	}
}
