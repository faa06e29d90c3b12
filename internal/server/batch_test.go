package server

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

func TestBatchGetValues_SecretsAndParameters_PerRefErrors_OnlyIfChanged(t *testing.T) {
	e := newEnv(t, envOptions{withKMS: true})
	ctx := testCtx(t)
	v := "one"
	ref, err := e.srv.CreateSecret(ctx, &pb.CreateSecretRequest{Name: "s", SecretString: &v})
	if err != nil {
		t.Fatal(err)
	}
	for i, val := range []string{"p1", "p2"} {
		if _, err := e.srv.PutParameter(ctx, &pb.PutParameterRequest{Name: "/p", Value: val, Overwrite: i > 0}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.srv.LabelParameterVersion(ctx, &pb.LabelParameterVersionRequest{Name: "/p", ParameterVersion: 1, Labels: []string{"old"}}); err != nil {
		t.Fatal(err)
	}
	refs := []*pb.ValueRef{
		{Type: "secretsmanager", Id: ref.Arn},
		{Type: "ssmparameter", Id: "/p"},
		{Type: "ssmparameter", Id: "/p", Version: "1"},
		{Type: "ssmparameter", Id: "/p", Label: "old"},
		{Type: "secretsmanager", Id: "gone"},
		{Type: "vault", Id: "x"},
	}
	resp, err := e.srv.BatchGetValues(ctx, &pb.BatchGetValuesRequest{Refs: refs})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ version, value string }{{ref.VersionId, "one"}, {"2", "p2"}, {"1", "p1"}, {"1", "p1"}}
	for i, w := range want {
		got := resp.Values[i]
		if got.ErrorCode != 0 || got.Version != w.version || string(got.Value) != w.value {
			t.Errorf("ref %d: version %q value %q error %q; want %q %q", i, got.Version, got.Value, got.ErrorMessage, w.version, w.value)
		}
	}
	if g := resp.Values[4]; codes.Code(g.ErrorCode) != codes.NotFound || !strings.Contains(g.ErrorMessage, "gone") {
		t.Errorf("missing secret: %d %q", g.ErrorCode, g.ErrorMessage)
	}
	if g := resp.Values[5]; codes.Code(g.ErrorCode) != codes.InvalidArgument || !strings.Contains(g.ErrorMessage, "vault") {
		t.Errorf("bad type: %d %q", g.ErrorCode, g.ErrorMessage)
	}

	// Every version known: no values.
	known := []*pb.ValueRef{{Type: "secretsmanager", Id: "s", KnownVersion: ref.VersionId}, {Type: "ssmparameter", Id: "/p", KnownVersion: "2"},
		{Type: "secretsmanager", Id: "gone"}}
	resp, err = e.srv.BatchGetValues(ctx, &pb.BatchGetValuesRequest{Refs: known, OnlyIfChanged: true})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Unchanged || len(resp.Values[0].Value) != 0 || len(resp.Values[1].Value) != 0 || resp.Values[1].Version != "2" {
		t.Fatalf("all known: unchanged %v, values %q %q", resp.Unchanged, resp.Values[0].Value, resp.Values[1].Value)
	}
	// One stale: every value.
	known[1].KnownVersion = "1"
	resp, err = e.srv.BatchGetValues(ctx, &pb.BatchGetValuesRequest{Refs: known, OnlyIfChanged: true})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Unchanged || string(resp.Values[0].Value) != "one" || string(resp.Values[1].Value) != "p2" {
		t.Fatalf("one stale: unchanged %v, values %q %q", resp.Unchanged, resp.Values[0].Value, resp.Values[1].Value)
	}

	_, err = e.srv.BatchGetValues(ctx, &pb.BatchGetValuesRequest{Refs: make([]*pb.ValueRef, MaxBatchRefs+1)})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("%d refs: %v, want InvalidArgument", MaxBatchRefs+1, err)
	}
}
