package server

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/testutil/logbuf"
)

// rotationWebhook is an httptest server on loopback that answers with the
// status in code (200: a value made of the version id).
func rotationWebhook(t *testing.T, code *atomic.Int32) (*httptest.Server, *atomic.Int32) {
	calls := &atomic.Int32{}
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		b, _ := io.ReadAll(r.Body)
		var req struct{ SecretArn, Name, VersionId, CurrentVersionId string }
		if err := json.Unmarshal(b, &req); err != nil || req.VersionId == "" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		if c := int(code.Load()); c != http.StatusOK {
			http.Error(w, "down", c)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"secretString": "from-webhook-" + req.VersionId})
	}))
	t.Cleanup(ws.Close)
	return ws, calls
}

// withWebhookSecret starts a server with secret db (value "v0", version
// returned) and a webhook answering with HTTP status code.
func withWebhookSecret(t *testing.T, status int) (e *testEnv, v0 string, ws *httptest.Server, code, calls *atomic.Int32) {
	e = newEnv(t, envOptions{withKMS: true})
	v := "v0"
	ref, err := e.srv.CreateSecret(testCtx(t), &pb.CreateSecretRequest{Name: "db", SecretString: &v})
	if err != nil {
		t.Fatal(err)
	}
	code = &atomic.Int32{}
	code.Store(int32(status))
	ws, calls = rotationWebhook(t, code)
	return e, ref.VersionId, ws, code, calls
}

func TestRotateSecret_ScheduleAndWebhook_DescribeShowsThem_CancelTurnsOff(t *testing.T) {
	e, _, ws, _, _ := withWebhookSecret(t, http.StatusOK)
	ctx := testCtx(t)
	before := time.Now()
	ref, err := e.srv.RotateSecret(ctx, &pb.RotateSecretRequest{SecretId: "db", Schedule: "rate(1 day)", Webhook: &pb.RotationWebhook{Url: ws.URL, TimeoutSeconds: 5}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.srv.GetSecretValue(ctx, &pb.GetSecretValueRequest{SecretId: "db"})
	if err != nil || got.GetSecretString() != "from-webhook-"+ref.VersionId {
		t.Fatalf("value after the webhook rotation: %q, %v", got.GetSecretString(), err)
	}
	d, err := e.srv.DescribeSecret(ctx, &pb.DescribeSecretRequest{SecretId: "db"})
	if err != nil {
		t.Fatal(err)
	}
	next := d.NextRotationTime.AsTime()
	if !d.RotationEnabled || d.RotationSchedule != "rate(1 day)" || d.LastRotatedTime == nil ||
		next.Before(before.Add(24*time.Hour)) || next.After(time.Now().Add(24*time.Hour)) ||
		d.RotationWebhook.GetUrl() != ws.URL || d.RotationWebhook.GetTimeoutSeconds() != 5 || d.Rotation != nil || d.LastRotationError != "" {
		t.Fatalf("describe after scheduling: %v", d)
	}
	d, err = e.srv.CancelRotateSecret(ctx, &pb.CancelRotateSecretRequest{SecretId: "db"})
	if err != nil || d.RotationEnabled || d.NextRotationTime != nil || d.RotationSchedule != "" || d.RotationWebhook.GetUrl() != ws.URL {
		t.Fatalf("after cancel: %v, %v", d, err)
	}
	no := false
	for _, req := range []*pb.RotateSecretRequest{
		{SecretId: "db", RotateImmediately: &no},
		{SecretId: "db", Schedule: "every day"},
		{SecretId: "db", Webhook: &pb.RotationWebhook{Url: "file:///etc/passwd"}},
		{SecretId: "db", Webhook: &pb.RotationWebhook{Url: ws.URL}, Generator: &pb.PasswordGenerator{}},
	} {
		if _, err := e.srv.RotateSecret(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("RotateSecret(%v) = %v, want InvalidArgument", req, err)
		}
	}
	if _, err := e.srv.CancelRotateSecret(ctx, &pb.CancelRotateSecretRequest{SecretId: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("CancelRotateSecret of a missing secret = %v, want NotFound", err)
	}
}

func TestRotateSecret_WebhookDown_FailedPreconditionNamingSecretURLStatus(t *testing.T) {
	e, _, ws, _, _ := withWebhookSecret(t, http.StatusBadGateway)
	ctx := testCtx(t)
	_, err := e.srv.RotateSecret(ctx, &pb.RotateSecretRequest{SecretId: "db", Webhook: &pb.RotationWebhook{Url: ws.URL}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "secret db") ||
		!strings.Contains(err.Error(), ws.URL) || !strings.Contains(err.Error(), "HTTP 502") {
		t.Fatalf("RotateSecret with a failing webhook = %v", err)
	}
}

func TestScheduledRotation_Loop_RotatesDue_FailureRecordedLoggedRetried(t *testing.T) {
	e, firstVersion, ws, code, calls := withWebhookSecret(t, http.StatusServiceUnavailable)
	ctx := testCtx(t)
	logs := &logbuf.Buffer{}
	e.srv.log = slog.New(slog.NewTextHandler(logs, nil))
	var offset atomic.Int64 // how far the server's clock is ahead
	e.srv.now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	no := false
	if _, err := e.srv.RotateSecret(ctx, &pb.RotateSecretRequest{SecretId: "db", Schedule: "rate(1 minute)", RotateImmediately: &no,
		Webhook: &pb.RotationWebhook{Url: ws.URL}}); err != nil {
		t.Fatal(err)
	}
	// A second secret with the generator, scheduled too.
	pw := `{"password":"old"}`
	if _, err := e.srv.CreateSecret(ctx, &pb.CreateSecretRequest{Name: "gen", SecretString: &pw}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.srv.RotateSecret(ctx, &pb.RotateSecretRequest{SecretId: "gen", Schedule: "rate(1 minute)", RotateImmediately: &no}); err != nil {
		t.Fatal(err)
	}
	stop := e.srv.StartRotations(ctx, 20*time.Millisecond)
	defer stop()
	time.Sleep(100 * time.Millisecond)
	if calls.Load() != 0 {
		t.Fatal("the loop rotated before the schedule was due")
	}
	offset.Store(int64(2 * time.Minute))
	waitFor(t, "the failure recorded on the secret", func() bool {
		d, err := e.srv.DescribeSecret(ctx, &pb.DescribeSecretRequest{SecretId: "db"})
		return err == nil && d.LastRotationError != ""
	})
	d, _ := e.srv.DescribeSecret(ctx, &pb.DescribeSecretRequest{SecretId: "db"})
	if !strings.Contains(d.LastRotationError, "secret db") || !strings.Contains(d.LastRotationError, ws.URL) ||
		!strings.Contains(d.LastRotationError, "HTTP 503") || d.LastRotationErrorTime == nil || strings.Contains(d.LastRotationError, "down") {
		t.Fatalf("recorded error %q", d.LastRotationError)
	}
	// Retried after the backoff (10 s), not at every tick.
	retryAt := d.NextRotationTime.AsTime()
	if delay := retryAt.Sub(d.LastRotationErrorTime.AsTime()); delay != 10*time.Second {
		t.Fatalf("retry %v after the failure, want 10s", delay)
	}
	n := calls.Load()
	time.Sleep(100 * time.Millisecond)
	if calls.Load() != n {
		t.Fatalf("the webhook was called %d more times before the backoff was over", calls.Load()-n)
	}
	if cur, _ := e.srv.GetSecretValue(ctx, &pb.GetSecretValueRequest{SecretId: "db"}); cur.GetVersionId() != firstVersion {
		t.Fatalf("a failed rotation changed AWSCURRENT to %s", cur.GetVersionId())
	}
	if !strings.Contains(logs.String(), "scheduled rotation failed") || !strings.Contains(logs.String(), "secret=db") {
		t.Fatalf("the failure was not logged by name:\n%s", logs)
	}
	// The generator secret was rotated meanwhile.
	g, err := e.srv.DescribeSecret(ctx, &pb.DescribeSecretRequest{SecretId: "gen"})
	if err != nil || g.LastRotatedTime == nil || g.LastRotationError != "" {
		t.Fatalf("generator secret after its due time: %v, %v", g, err)
	}

	code.Store(http.StatusOK)
	offset.Store(int64(2*time.Minute + 11*time.Second))
	waitFor(t, "the retried rotation", func() bool {
		d, err := e.srv.DescribeSecret(ctx, &pb.DescribeSecretRequest{SecretId: "db"})
		return err == nil && d.LastRotatedTime != nil && d.LastRotationError == ""
	})
	cur, err := e.srv.GetSecretValue(ctx, &pb.GetSecretValueRequest{SecretId: "db"})
	if err != nil || cur.GetSecretString() != "from-webhook-"+cur.VersionId || cur.VersionId == firstVersion {
		t.Fatalf("after the retry AWSCURRENT is %s = %q, %v", cur.GetVersionId(), cur.GetSecretString(), err)
	}
	d, _ = e.srv.DescribeSecret(ctx, &pb.DescribeSecretRequest{SecretId: "db"})
	for _, v := range d.Versions {
		if v.VersionId != cur.VersionId && v.VersionId != firstVersion || len(v.Stages) != 1 {
			t.Fatalf("versions after the retry: %v (want the new AWSCURRENT and the old AWSPREVIOUS only)", d.Versions)
		}
	}
	if strings.Contains(logs.String(), "from-webhook-") {
		t.Fatal("a value was logged")
	}
	stop()
	n = calls.Load()
	offset.Store(int64(time.Hour))
	time.Sleep(100 * time.Millisecond)
	if calls.Load() != n {
		t.Fatal("rotations went on after stop")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
