package server

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// A secret or SecureString parameter whose KMS key is disabled or pending
// deletion cannot be read, by any of the three reads, with
// FAILED_PRECONDITION naming the key and its state; once the key is
// enabled again they read as before.
func TestReads_KeyDisabledOrPendingDeletion_FailedPreconditionNamingKeyAndState_ReenableReadable(t *testing.T) {
	e := newEnv(t, envOptions{withKMS: true})
	ctx := testCtx(t)
	key, err := e.srv.CreateKey(ctx, &pb.CreateKeyRequest{Aliases: []string{"alias/app"}})
	if err != nil {
		t.Fatal(err)
	}
	v := "secret-value"
	if _, err := e.srv.CreateSecret(ctx, &pb.CreateSecretRequest{Name: "app/db", KmsKeyId: "alias/app", SecretString: &v}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.srv.PutParameter(ctx, &pb.PutParameterRequest{Name: "/app/pw", Value: "param-value", Type: "SecureString", KeyId: key.Id}); err != nil {
		t.Fatal(err)
	}
	batch := &pb.BatchGetValuesRequest{Refs: []*pb.ValueRef{{Type: "secretsmanager", Id: "app/db"}, {Type: "ssmparameter", Id: "/app/pw"}}}

	// reads returns the error of each read (nil when it worked), by name.
	reads := func(t *testing.T) map[string]error {
		t.Helper()
		out := map[string]error{}
		sv, err := e.srv.GetSecretValue(ctx, &pb.GetSecretValueRequest{SecretId: "app/db"})
		if err == nil && sv.GetSecretString() != v {
			t.Fatalf("GetSecretValue = %q", sv.GetSecretString())
		}
		out["GetSecretValue"] = err
		pv, err := e.srv.GetParameter(ctx, &pb.GetParameterRequest{Name: "/app/pw", WithDecryption: true})
		if err == nil && pv.GetValue() != "param-value" {
			t.Fatalf("GetParameter = %q", pv.GetValue())
		}
		out["GetParameter"] = err
		resp, err := e.srv.BatchGetValues(ctx, batch)
		if err != nil {
			t.Fatal(err)
		}
		for i, bv := range resp.Values {
			name := "BatchGetValues " + batch.Refs[i].Id
			if bv.ErrorCode != 0 {
				out[name] = status.Error(codes.Code(bv.ErrorCode), bv.ErrorMessage)
			} else {
				out[name] = nil
				if want := map[int]string{0: v, 1: "param-value"}[i]; string(bv.Value) != want {
					t.Fatalf("%s = %q", name, bv.Value)
				}
			}
		}
		return out
	}
	wantAll := func(t *testing.T, state string) {
		t.Helper()
		for name, err := range reads(t) {
			if state == "" {
				if err != nil {
					t.Errorf("%s with the key enabled: %v", name, err)
				}
				continue
			}
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), key.Id) || !strings.Contains(err.Error(), state) {
				t.Errorf("%s with the key %s: %v; want FailedPrecondition naming key %s and %q", name, state, err, key.Id, state)
			}
			if err != nil && (strings.Contains(err.Error(), v) || strings.Contains(err.Error(), "param-value")) {
				t.Errorf("%s: the error holds the value", name)
			}
		}
	}
	wantAll(t, "")
	if _, err := e.srv.DisableKey(ctx, &pb.KeyRequest{KeyId: key.Id}); err != nil {
		t.Fatal(err)
	}
	wantAll(t, "is disabled")
	if _, err := e.srv.EnableKey(ctx, &pb.KeyRequest{KeyId: "alias/app"}); err != nil {
		t.Fatal(err)
	}
	wantAll(t, "")
	if _, err := e.srv.ScheduleKeyDeletion(ctx, &pb.ScheduleKeyDeletionRequest{KeyId: key.Id, PendingWindowInDays: 7}); err != nil {
		t.Fatal(err)
	}
	wantAll(t, "is pending deletion")
	if _, err := e.srv.CancelKeyDeletion(ctx, &pb.KeyRequest{KeyId: key.Id}); err != nil {
		t.Fatal(err)
	}
	wantAll(t, "is disabled") // cancel-deletion leaves it Disabled, as on AWS
	if _, err := e.srv.EnableKey(ctx, &pb.KeyRequest{KeyId: key.Id}); err != nil {
		t.Fatal(err)
	}
	wantAll(t, "")
}
