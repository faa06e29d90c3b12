package auth_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/server"
)

// Every method the server registers must have a rule: a new RPC without
// one would be refused to everyone but the administrator.
func TestMethods_EveryRegisteredMethodHasARule(t *testing.T) {
	g := grpc.NewServer()
	(&server.Server{}).Register(g)
	n := 0
	for svc, info := range g.GetServiceInfo() {
		for _, m := range info.Methods {
			n++
			full := "/" + svc + "/" + m.Name
			rule, ok := auth.Methods[full]
			if !ok {
				t.Errorf("%s has no entry in auth.Methods", full)
				continue
			}
			if !strings.Contains(rule.Action, ":") || rule.Resources == nil {
				t.Errorf("%s: rule %q is incomplete", full, rule.Action)
			}
		}
	}
	if n != len(auth.Methods) {
		t.Errorf("%d methods registered, %d rules: a rule names a method that does not exist", n, len(auth.Methods))
	}
}

func TestMethods_ResourceIsTheRequestsObject(t *testing.T) {
	for _, tc := range []struct {
		method string
		req    any
		want   string
	}{
		{pb.SecretService_GetSecretValue_FullMethodName, &pb.GetSecretValueRequest{SecretId: "db-pass"}, "db-pass"},
		{pb.SecretService_RotateSecret_FullMethodName, &pb.RotateSecretRequest{SecretId: "db-pass", Schedule: "rate(1 day)"}, "db-pass"},
		{pb.SecretService_CancelRotateSecret_FullMethodName, &pb.CancelRotateSecretRequest{SecretId: "db-pass"}, "db-pass"},
		{pb.VolumeService_GetVolumeDataKey_FullMethodName, &pb.GetVolumeDataKeyRequest{VolumeId: "vol-1", NodeId: "n"}, "vol-1"},
		{pb.VolumeService_ListVolumes_FullMethodName, &pb.ListVolumesRequest{}, "*"},
		{pb.ParameterService_GetParameters_FullMethodName, &pb.GetParametersRequest{Names: []string{"/a", "/b"}}, "/a,/b"},
		{pb.VolumeService_DescribeVolume_FullMethodName, &pb.DescribeVolumeRequest{}, "*"},
	} {
		got := strings.Join(auth.Methods[tc.method].Resources(tc.req), ",")
		if got != tc.want {
			t.Errorf("%s: resources %q, want %q", tc.method, got, tc.want)
		}
	}
}
