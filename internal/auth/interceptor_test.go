package auth_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/testutil/apitest"
	"github.com/stowage-io/stowage/internal/testutil/logbuf"
)

const podToken = "eyJhbGciOiJSUzI1NiJ9.pod-web.sig"

type env struct {
	api    *apitest.API
	log    *logbuf.Buffer
	admin  *grpc.ClientConn
	tokens []string // every token handed out, for the log check
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the administrator is root over the unix socket: run as root")
	}
}

func start(t *testing.T) *env {
	t.Helper()
	requireRoot(t)
	e := &env{log: &logbuf.Buffer{}}
	e.api = apitest.StartAuth(t, apitest.Auth{TCP: true, Log: e.log,
		Verifier: auth.FakeVerifier{podToken: "system:serviceaccount:shop:web"}})
	e.admin = apitest.Dial(t, e.api.Endpoint)
	e.tokens = append(e.tokens, podToken)
	return e
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// token issues a token for principal (as the administrator).
func (e *env) token(t *testing.T, principal string) string {
	t.Helper()
	resp, err := pb.NewPolicyServiceClient(e.admin).CreateToken(ctx(t), &pb.CreateTokenRequest{Principal: principal})
	if err != nil {
		t.Fatalf("CreateToken %s: %v", principal, err)
	}
	if !strings.HasPrefix(resp.Secret, auth.TokenPrefix) || resp.Token.Id == "" {
		t.Fatalf("CreateToken: token %q... id %q", resp.Secret[:4], resp.Token.Id)
	}
	e.tokens = append(e.tokens, resp.Secret)
	return resp.Secret
}

// dial connects with a token (over TCP when tcp is set).
func (e *env) dial(t *testing.T, token string, tcp bool) *grpc.ClientConn {
	t.Helper()
	target := e.api.Endpoint
	if tcp {
		target = e.api.TCPAddress
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(auth.TokenCredentials{Token: token}))
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// noTokenIn fails when any token handed out is in s.
func (e *env) noTokenIn(t *testing.T, what, s string) {
	t.Helper()
	for _, tok := range e.tokens {
		if strings.Contains(s, tok) {
			t.Errorf("%s contains a token", what)
		}
	}
}

func wantCode(t *testing.T, err error, code codes.Code, contains ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want %v", err, code)
	}
	for _, c := range contains {
		if !strings.Contains(status.Convert(err).Message(), c) {
			t.Errorf("message %q does not name %q", status.Convert(err).Message(), c)
		}
	}
}

func TestInterceptor_NoCredentialsOverTCP_Unauthenticated(t *testing.T) {
	e := start(t)
	_, err := pb.NewVolumeServiceClient(e.dial(t, "", true)).ListVolumes(ctx(t), &pb.ListVolumesRequest{})
	wantCode(t, err, codes.Unauthenticated, "authorization: Bearer", "--token-file")
}

func TestInterceptor_BadToken_Unauthenticated(t *testing.T) {
	e := start(t)
	bad := auth.TokenPrefix + "bm90LWEtcmVhbC10b2tlbi1qdXN0LWZvci10aGUtdGVzdA"
	e.tokens = append(e.tokens, bad)
	for _, tcp := range []bool{true, false} {
		_, err := pb.NewVolumeServiceClient(e.dial(t, bad, tcp)).ListVolumes(ctx(t), &pb.ListVolumesRequest{})
		wantCode(t, err, codes.Unauthenticated, "not valid")
		e.noTokenIn(t, "the error", err.Error())
	}
	// A service-account token that the verifier does not know.
	_, err := pb.NewVolumeServiceClient(e.dial(t, "eyJ.unknown.sig", true)).ListVolumes(ctx(t), &pb.ListVolumesRequest{})
	wantCode(t, err, codes.Unauthenticated)
	if strings.Contains(err.Error(), "eyJ.unknown.sig") {
		t.Errorf("the error echoes the token: %v", err)
	}
}

func TestInterceptor_RevokedToken_Unauthenticated(t *testing.T) {
	e := start(t)
	tok := e.token(t, auth.CSIController)
	vols := pb.NewVolumeServiceClient(e.dial(t, tok, true))
	if _, err := vols.ListVolumes(ctx(t), &pb.ListVolumesRequest{}); err != nil {
		t.Fatalf("ListVolumes with the controller's token: %v", err)
	}
	pol := pb.NewPolicyServiceClient(e.admin)
	list, err := pol.ListTokens(ctx(t), &pb.ListTokensRequest{Principal: auth.CSIController})
	if err != nil || len(list.Tokens) != 1 {
		t.Fatalf("ListTokens: %v %v", list, err)
	}
	if _, err := pol.RevokeToken(ctx(t), &pb.RevokeTokenRequest{Id: list.Tokens[0].Id}); err != nil {
		t.Fatal(err)
	}
	_, err = vols.ListVolumes(ctx(t), &pb.ListVolumesRequest{})
	wantCode(t, err, codes.Unauthenticated)
}

func TestInterceptor_ControllerReadsSecret_PermissionDenied(t *testing.T) {
	e := start(t)
	if _, err := pb.NewSecretServiceClient(e.admin).CreateSecret(ctx(t), &pb.CreateSecretRequest{Name: "db-pass", SecretString: ptr("p@ssw0rd")}); err != nil {
		t.Fatal(err)
	}
	ctrl := e.dial(t, e.token(t, auth.CSIController), true)
	_, err := pb.NewSecretServiceClient(ctrl).GetSecretValue(ctx(t), &pb.GetSecretValueRequest{SecretId: "db-pass"})
	wantCode(t, err, codes.PermissionDenied, "stowage:csi-controller", "secretsmanager:GetSecretValue", "db-pass")
	// Even with a policy that allows it: the built-in deny wins.
	pol := pb.NewPolicyServiceClient(e.admin)
	if _, err := pol.CreatePolicy(ctx(t), &pb.CreatePolicyRequest{Name: "all-secrets",
		Document: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:*","Resource":"*"}]}`}); err != nil {
		t.Fatal(err)
	}
	if _, err := pol.AttachPolicy(ctx(t), &pb.AttachPolicyRequest{Name: "all-secrets", Principal: auth.CSIController}); err != nil {
		t.Fatal(err)
	}
	_, err = pb.NewSecretServiceClient(ctrl).GetSecretValue(ctx(t), &pb.GetSecretValueRequest{SecretId: "db-pass"})
	wantCode(t, err, codes.PermissionDenied, "a policy denies it")
	// What it is for, it may do.
	if _, err := pb.NewVolumeServiceClient(ctrl).CreateVolume(ctx(t), &pb.CreateVolumeRequest{Name: "pvc-1", SizeGib: 1}); err != nil {
		t.Errorf("CreateVolume as the controller: %v", err)
	}
	// And not manage policies.
	_, err = pb.NewPolicyServiceClient(ctrl).DetachPolicy(ctx(t), &pb.DetachPolicyRequest{Name: "all-secrets", Principal: auth.CSIController})
	wantCode(t, err, codes.PermissionDenied, "auth:DetachPolicy")
	e.noTokenIn(t, "the server's log", e.log.String())
}

func ptr[T any](v T) *T { return &v }

func TestInterceptor_NodeDataKey_OnlyForVolumesAttachedToItsNode(t *testing.T) {
	e := start(t)
	nodeAConn := e.dial(t, e.token(t, "stowage:csi-node:node-a"), true)
	// The node plugin registers its node itself.
	if _, err := pb.NewNodeServiceClient(nodeAConn).RegisterNode(ctx(t), &pb.RegisterNodeRequest{Id: "node-a", Zone: "zone-a", MaxVolumes: 10}); err != nil {
		t.Fatal(err)
	}
	_, err := pb.NewNodeServiceClient(nodeAConn).RegisterNode(ctx(t), &pb.RegisterNodeRequest{Id: "node-b", Zone: "zone-a", MaxVolumes: 10})
	wantCode(t, err, codes.PermissionDenied, "its own node")
	vols := pb.NewVolumeServiceClient(e.admin)
	v, err := vols.CreateVolume(ctx(t), &pb.CreateVolumeRequest{Name: "enc", SizeGib: 1, Encrypted: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vols.AttachVolume(ctx(t), &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	nodeA := pb.NewVolumeServiceClient(nodeAConn)
	nodeB := pb.NewVolumeServiceClient(e.dial(t, e.token(t, "stowage:csi-node:node-b"), true))

	k, err := nodeA.GetVolumeDataKey(ctx(t), &pb.GetVolumeDataKeyRequest{VolumeId: v.Id, NodeId: "node-a"})
	if err != nil || len(k.Key) == 0 {
		t.Fatalf("node-a's own attached volume: %v", err)
	}
	// node-b asks for itself: not attached there.
	_, err = nodeB.GetVolumeDataKey(ctx(t), &pb.GetVolumeDataKeyRequest{VolumeId: v.Id, NodeId: "node-b"})
	wantCode(t, err, codes.PermissionDenied, v.Id, "node-b")
	// node-b claims to be node-a: its proven identity decides.
	_, err = nodeB.GetVolumeDataKey(ctx(t), &pb.GetVolumeDataKeyRequest{VolumeId: v.Id, NodeId: "node-a"})
	wantCode(t, err, codes.PermissionDenied, "stowage:csi-node:node-b", v.Id)
	// The controller manages volumes but gets no keys.
	ctrl := pb.NewVolumeServiceClient(e.dial(t, e.token(t, auth.CSIController), true))
	_, err = ctrl.GetVolumeDataKey(ctx(t), &pb.GetVolumeDataKeyRequest{VolumeId: v.Id, NodeId: "node-a"})
	wantCode(t, err, codes.PermissionDenied, "kms:GetVolumeDataKey")
	// A node may not delete volumes.
	_, err = nodeA.DeleteVolume(ctx(t), &pb.DeleteVolumeRequest{VolumeId: v.Id})
	wantCode(t, err, codes.PermissionDenied, "volume:DeleteVolume", v.Id)
	e.noTokenIn(t, "the server's log", e.log.String())
}

func TestInterceptor_AdminOverUnixSocketAsRoot_Allowed(t *testing.T) {
	e := start(t)
	if _, err := pb.NewSecretServiceClient(e.admin).CreateSecret(ctx(t), &pb.CreateSecretRequest{Name: "s", SecretString: ptr("v")}); err != nil {
		t.Fatal(err)
	}
	if _, err := pb.NewSecretServiceClient(e.admin).GetSecretValue(ctx(t), &pb.GetSecretValueRequest{SecretId: "s"}); err != nil {
		t.Errorf("the administrator reads a secret: %v", err)
	}
	if _, err := pb.NewPolicyServiceClient(e.admin).ListPolicies(ctx(t), &pb.ListPoliciesRequest{}); err != nil {
		t.Errorf("the administrator lists policies: %v", err)
	}
	// An admin token works over TCP too.
	adm := e.dial(t, e.token(t, auth.AdminName), true)
	if _, err := pb.NewSecretServiceClient(adm).GetSecretValue(ctx(t), &pb.GetSecretValueRequest{SecretId: "s"}); err != nil {
		t.Errorf("admin token over TCP: %v", err)
	}
}

func TestBatchGetValues_ProviderForPod_PolicyOfTheServiceAccount(t *testing.T) {
	e := start(t)
	sec := pb.NewSecretServiceClient(e.admin)
	for name, v := range map[string]string{"db-pass": "p@ssw0rd", "web-key": "k3y"} {
		if _, err := sec.CreateSecret(ctx(t), &pb.CreateSecretRequest{Name: name, SecretString: ptr(v)}); err != nil {
			t.Fatal(err)
		}
	}
	pol := pb.NewPolicyServiceClient(e.admin)
	if _, err := pol.CreatePolicy(ctx(t), &pb.CreatePolicyRequest{Name: "shop-db",
		Document: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:GetSecretValue","Resource":"db-*"}]}`}); err != nil {
		t.Fatal(err)
	}
	if _, err := pol.AttachPolicy(ctx(t), &pb.AttachPolicyRequest{Name: "shop-db", Principal: "system:serviceaccount:shop:web"}); err != nil {
		t.Fatal(err)
	}
	provider := pb.NewSecretServiceClient(e.dial(t, e.token(t, auth.SecretsProvider), false))
	refs := []*pb.ValueRef{{Type: "secretsmanager", Id: "db-pass"}, {Type: "secretsmanager", Id: "web-key"}, {Type: "secretsmanager", Id: "db-missing"}, {Type: "secretsmanager", Id: "nope"}}

	// Without a pod token the provider reads nothing.
	_, err := provider.BatchGetValues(ctx(t), &pb.BatchGetValuesRequest{Refs: refs})
	wantCode(t, err, codes.PermissionDenied, auth.PodTokenMetadata)

	pctx := metadata.AppendToOutgoingContext(ctx(t), auth.PodTokenMetadata, podToken)
	resp, err := provider.BatchGetValues(pctx, &pb.BatchGetValuesRequest{Refs: refs})
	if err != nil {
		t.Fatal(err)
	}
	want := []codes.Code{codes.OK, codes.PermissionDenied, codes.NotFound, codes.PermissionDenied}
	for i, v := range resp.Values {
		if codes.Code(v.ErrorCode) != want[i] {
			t.Errorf("ref %s: code %v (%s), want %v", refs[i].Id, codes.Code(v.ErrorCode), v.ErrorMessage, want[i])
		}
	}
	if string(resp.Values[0].Value) != "p@ssw0rd" || len(resp.Values[1].Value) != 0 {
		t.Errorf("values: %q %q", resp.Values[0].Value, resp.Values[1].Value)
	}
	if !strings.Contains(resp.Values[1].ErrorMessage, "system:serviceaccount:shop:web may not secretsmanager:GetSecretValue on web-key") {
		t.Errorf("denied ref's message: %s", resp.Values[1].ErrorMessage)
	}

	// An unknown pod token: Unauthenticated.
	bctx := metadata.AppendToOutgoingContext(ctx(t), auth.PodTokenMetadata, "eyJ.other-pod.sig")
	_, err = provider.BatchGetValues(bctx, &pb.BatchGetValuesRequest{Refs: refs})
	wantCode(t, err, codes.Unauthenticated)

	// The controller cannot use the batch at all.
	ctrl := pb.NewSecretServiceClient(e.dial(t, e.token(t, auth.CSIController), true))
	_, err = ctrl.BatchGetValues(pctx, &pb.BatchGetValuesRequest{Refs: refs})
	wantCode(t, err, codes.PermissionDenied, "secretsmanager:BatchGetValues")

	logs := e.log.String()
	e.noTokenIn(t, "the server's log", logs)
	if strings.Contains(logs, "p@ssw0rd") {
		t.Error("the server's log holds a secret value")
	}
	if !strings.Contains(logs, "call denied") {
		t.Error("denied calls are not logged")
	}
}

func TestPolicyService_Lifecycle(t *testing.T) {
	e := start(t)
	pol := pb.NewPolicyServiceClient(e.admin)
	doc := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ssm:GetParameter","Resource":"/shop/*"}]}`
	if _, err := pol.CreatePolicy(ctx(t), &pb.CreatePolicyRequest{Name: "p", Document: doc}); err != nil {
		t.Fatal(err)
	}
	_, err := pol.CreatePolicy(ctx(t), &pb.CreatePolicyRequest{Name: "p", Document: doc})
	wantCode(t, err, codes.AlreadyExists)
	_, err = pol.CreatePolicy(ctx(t), &pb.CreatePolicyRequest{Name: "bad", Document: `{"Version":"2012-10-17"}`})
	wantCode(t, err, codes.InvalidArgument, "Statement")
	if _, err := pol.AttachPolicy(ctx(t), &pb.AttachPolicyRequest{Name: "p", Principal: "system:serviceaccount:shop:web"}); err != nil {
		t.Fatal(err)
	}
	_, err = pol.AttachPolicy(ctx(t), &pb.AttachPolicyRequest{Name: "p", Principal: "system:serviceaccount:shop"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = pol.DeletePolicy(ctx(t), &pb.DeletePolicyRequest{Name: "p"})
	wantCode(t, err, codes.FailedPrecondition, "system:serviceaccount:shop:web")
	list, err := pol.ListPolicies(ctx(t), &pb.ListPoliciesRequest{Principal: "system:serviceaccount:shop:web"})
	if err != nil || len(list.Policies) != 1 {
		t.Fatalf("ListPolicies: %v %v", list, err)
	}
	if _, err := pol.DetachPolicy(ctx(t), &pb.DetachPolicyRequest{Name: "p", Principal: "system:serviceaccount:shop:web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pol.DeletePolicy(ctx(t), &pb.DeletePolicyRequest{Name: "p"}); err != nil {
		t.Fatal(err)
	}
	_, err = pol.GetPolicy(ctx(t), &pb.GetPolicyRequest{Name: "p"})
	wantCode(t, err, codes.NotFound)
	// A service account calling the API with its own token.
	if _, err := pb.NewParameterServiceClient(e.admin).PutParameter(ctx(t), &pb.PutParameterRequest{Name: "/shop/a", Value: "1", Type: "String"}); err != nil {
		t.Fatal(err)
	}
	sa := pb.NewParameterServiceClient(e.dial(t, podToken, true))
	_, err = sa.GetParameter(ctx(t), &pb.GetParameterRequest{Name: "/shop/a"})
	wantCode(t, err, codes.PermissionDenied, "system:serviceaccount:shop:web", "ssm:GetParameter", "/shop/a")
}
