package crash

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/secrets"
)

// rotationCrashPoints are the crash points of a secret rotation, covered
// by TestServerCrash_DuringRotation_CurrentOldOrNewWhole_NextRotationReplacesPending.
var rotationCrashPoints = []string{secrets.CrashPendingWritten, secrets.CrashCurrentMoved}

func (e *crashEnv) secretsAPI(t *testing.T) pb.SecretServiceClient {
	return pb.NewSecretServiceClient(dialUnix(t, e.apiSocket()))
}

// A rotation writes the new version as AWSPENDING in one transaction and
// moves AWSCURRENT to it in a second. The server is killed after the
// first (AWSCURRENT must still be the old version, whole) and after the
// second (it must be the new one, whole); after a restart the next
// rotation works and leaves no AWSPENDING behind. The webhook case makes
// every value name its version, so that a value of one version under
// another's id would show.
func TestServerCrash_DuringRotation_CurrentOldOrNewWhole_NextRotationReplacesPending(t *testing.T) {
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct{ VersionId string }
		if json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		v := fmt.Sprintf(`{"username":"admin","password":"wh-%s"}`, req.VersionId)
		json.NewEncoder(w).Encode(map[string]string{"secretString": v})
	}))
	defer hook.Close()
	const oldValue = `{"username":"admin","password":"old"}`
	e := newCrashEnv(t)
	i := 0
	for _, point := range rotationCrashPoints {
		for _, mode := range []string{"generator", "webhook"} {
			i++
			t.Run(point+"/"+mode, func(t *testing.T) {
				ce := &crashEnv{dir: filepath.Join(e.dir, fmt.Sprint("rot", i)), poolDir: filepath.Join(e.poolDir, fmt.Sprint("rot", i))}
				if err := os.MkdirAll(ce.dir, 0o700); err != nil {
					t.Fatal(err)
				}
				rotate := &pb.RotateSecretRequest{SecretId: "crash/db"}
				if mode == "webhook" {
					rotate.Webhook = &pb.RotationWebhook{Url: hook.URL, TimeoutSeconds: 5}
				}
				// whole checks that a value is all of one version's value.
				whole := func(t *testing.T, v *pb.SecretValue) {
					t.Helper()
					var obj map[string]string
					if err := json.Unmarshal([]byte(v.GetSecretString()), &obj); err != nil || obj["username"] != "admin" {
						t.Fatalf("AWSCURRENT %s is not a whole value (%d bytes, %v)", v.VersionId, len(v.GetSecretString()), err)
					}
					if mode == "webhook" && v.GetSecretString() != oldValue && obj["password"] != "wh-"+v.VersionId {
						t.Fatalf("AWSCURRENT %s holds the value of another version", v.VersionId)
					}
					if mode == "generator" && v.GetSecretString() != oldValue && len(obj["password"]) != secrets.DefaultPasswordLength {
						t.Fatalf("AWSCURRENT %s has a password of %d characters", v.VersionId, len(obj["password"]))
					}
				}

				armed := ce.startServer(t, point)
				api := ce.secretsAPI(t)
				val := oldValue
				created, err := api.CreateSecret(callCtx(t), &pb.CreateSecretRequest{Name: "crash/db", SecretString: &val})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := api.RotateSecret(callCtx(t), rotate); err == nil {
					t.Fatalf("the rotation succeeded; the server should have died at %s", point)
				}
				armed.waitCrashed(t)

				ce.startServer(t, "")
				api = ce.secretsAPI(t)
				cur, err := api.GetSecretValue(callCtx(t), &pb.GetSecretValueRequest{SecretId: "crash/db"})
				if err != nil {
					t.Fatal(err)
				}
				whole(t, cur)
				d, err := api.DescribeSecret(callCtx(t), &pb.DescribeSecretRequest{SecretId: "crash/db"})
				if err != nil {
					t.Fatal(err)
				}
				stages := map[string]string{}
				for _, v := range d.Versions {
					for _, st := range v.Stages {
						stages[st] = v.VersionId
					}
				}
				switch point {
				case secrets.CrashPendingWritten:
					if cur.VersionId != created.VersionId || cur.GetSecretString() != oldValue {
						t.Fatalf("after a crash before AWSCURRENT moved, AWSCURRENT is %s, want the old %s", cur.VersionId, created.VersionId)
					}
					pending := stages[secrets.StagePending]
					if pending == "" || pending == created.VersionId {
						t.Fatalf("no stale AWSPENDING version after the crash: %v", d.Versions)
					}
					// The stale version is whole too.
					pv, err := api.GetSecretValue(callCtx(t), &pb.GetSecretValueRequest{SecretId: "crash/db", VersionStage: secrets.StagePending})
					if err != nil {
						t.Fatal(err)
					}
					whole(t, pv)
				case secrets.CrashCurrentMoved:
					if cur.VersionId == created.VersionId || stages[secrets.StagePrevious] != created.VersionId || stages[secrets.StagePending] != "" {
						t.Fatalf("after a crash after AWSCURRENT moved: current %s, stages %v; want the new version current, the old previous", cur.VersionId, stages)
					}
				}

				// The next rotation (saved settings) works and replaces a
				// stale AWSPENDING.
				ref, err := api.RotateSecret(callCtx(t), &pb.RotateSecretRequest{SecretId: "crash/db"})
				if err != nil {
					t.Fatalf("rotation after the restart: %v", err)
				}
				cur, err = api.GetSecretValue(callCtx(t), &pb.GetSecretValueRequest{SecretId: "crash/db"})
				if err != nil || cur.VersionId != ref.VersionId {
					t.Fatalf("after the next rotation AWSCURRENT is %s, want %s (%v)", cur.GetVersionId(), ref.VersionId, err)
				}
				whole(t, cur)
				if cur.GetSecretString() == oldValue {
					t.Fatal("the next rotation kept the old value")
				}
				d, err = api.DescribeSecret(callCtx(t), &pb.DescribeSecretRequest{SecretId: "crash/db"})
				if err != nil {
					t.Fatal(err)
				}
				for _, v := range d.Versions {
					if slices.Contains(v.Stages, secrets.StagePending) {
						t.Fatalf("AWSPENDING left on %s after the next rotation: %v", v.VersionId, d.Versions)
					}
				}
				if (mode == "webhook") != (d.RotationWebhook.GetUrl() == hook.URL) {
					t.Fatalf("saved rotation settings after the crash: webhook %v", d.RotationWebhook)
				}
			})
		}
	}
}
