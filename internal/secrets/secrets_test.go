package secrets

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/store"
	"github.com/stowage-io/stowage/internal/store/boltstore"
)

type env struct {
	dir   string
	store store.Store
	kms   *kms.Service
	sm    *Service
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{dir: dir}
	e.open(t)
	return e
}

// open (re)opens the store, the KMS and the service over dir, as a server
// start does.
func (e *env) open(t *testing.T) {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(e.dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	k, err := kms.Open(st, filepath.Join(e.dir, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	e.store, e.kms, e.sm = st, k, New(st, k, Options{})
}

func mustCreate(t *testing.T, s *Service, name, value string) *Secret {
	t.Helper()
	sec, _, err := s.Create(context.Background(), CreateInput{Name: name, Value: StringValue(value)})
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

func current(t *testing.T, s *Service, ref string) (string, string) {
	t.Helper()
	_, v, val, err := s.GetValue(context.Background(), ref, "", "")
	if err != nil {
		t.Fatalf("GetValue(%s): %v", ref, err)
	}
	return v.ID, *val.String
}

func TestCreate_ARNShape_AndResolvesByNameFullAndPartialARN(t *testing.T) {
	e := newEnv(t)
	sec := mustCreate(t, e.sm, "prod/db-creds", `{"username":"admin"}`)
	if !regexp.MustCompile(`^arn:aws:secretsmanager:local:000000000000:secret:prod/db-creds-[A-Za-z0-9]{6}$`).MatchString(sec.ARN) {
		t.Fatalf("ARN %s is not arn:aws:secretsmanager:<region>:<account>:secret:<name>-<6 characters>", sec.ARN)
	}
	otherRegion := strings.Replace(sec.ARN, ":local:", ":us-west-2:", 1)
	for _, tc := range []struct {
		name, ref string
		want      error
	}{
		{"name", "prod/db-creds", nil},
		{"full ARN", sec.ARN, nil},
		{"full ARN of another region (one server is one region)", otherRegion, nil},
		{"partial ARN without the suffix", "arn:aws:secretsmanager:local:000000000000:secret:prod/db-creds", nil},
		{"full ARN with a wrong suffix", sec.ARN[:len(sec.ARN)-6] + "zzzzzz", ErrNotFound},
		{"missing name", "prod/none", ErrNotFound},
		{"ARN of another service", "arn:aws:ssm:local:000000000000:parameter/x", ErrInvalid},
		{"bad name", "white space", ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.sm.Describe(context.Background(), tc.ref)
			if tc.want == nil && (err != nil || got.ARN != sec.ARN) || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Describe(%q) = %v, %v; want %v", tc.ref, got, err, tc.want)
			}
		})
	}
}

func TestCreate_SameTokenAndValue_Idempotent_OtherwiseAlreadyExists(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	tok := strings.Repeat("a", 32)
	in := CreateInput{Name: "app", Value: StringValue("v1"), ClientRequestToken: tok}
	first, v1, err := e.sm.Create(ctx, in)
	if err != nil || v1 != tok {
		t.Fatalf("Create = %s, %v", v1, err)
	}
	for _, tc := range []struct {
		name string
		in   CreateInput
		want error
	}{
		{"same token and value", in, nil},
		{"same token, other value", CreateInput{Name: "app", Value: StringValue("v2"), ClientRequestToken: tok}, ErrExists},
		{"no token", CreateInput{Name: "app", Value: StringValue("v1")}, ErrExists},
		{"string and binary", CreateInput{Name: "b", Value: Value{String: new(string), Binary: []byte("x")}}, ErrInvalid},
		{"too large", CreateInput{Name: "c", Value: StringValue(strings.Repeat("x", MaxValueSize+1))}, ErrInvalid},
		{"short token", CreateInput{Name: "d", Value: StringValue("x"), ClientRequestToken: "abc"}, ErrInvalid},
		{"missing key", CreateInput{Name: "e", Value: StringValue("x"), KMSKeyID: "alias/none"}, kms.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := e.sm.Create(ctx, tc.in)
			if tc.want == nil && (err != nil || got.ARN != first.ARN) || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Create = %v, %v; want %v", got, err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "v2") {
				t.Fatalf("error %q shows the value", err)
			}
		})
	}
}

func TestPutValue_NewCurrent_OldBecomesPrevious_CustomStagesKept(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	mustCreate(t, e.sm, "app", "v1")
	v1, _ := current(t, e.sm, "app")
	_, v2, err := e.sm.PutValue(ctx, "app", StringValue("v2"), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, v3, err := e.sm.PutValue(ctx, "app", StringValue("v3"), "", []string{"canary"})
	if err != nil {
		t.Fatal(err)
	}
	sec, _ := e.sm.Describe(ctx, "app")
	want := map[string][]string{v1: {StagePrevious}, v2: {StageCurrent}, v3: {"canary"}}
	for id, stages := range want {
		if got := sec.version(id).Stages; !slices.Equal(got, stages) {
			t.Errorf("version %s stages %v, want %v", id, got, stages)
		}
	}
	for _, tc := range []struct {
		name, version, stage, want string
		err                        error
	}{
		{"default is AWSCURRENT", "", "", "v2", nil},
		{"AWSPREVIOUS", "", StagePrevious, "v1", nil},
		{"custom stage", "", "canary", "v3", nil},
		{"by version id", v1, "", "v1", nil},
		{"version with its stage", v2, StageCurrent, "v2", nil},
		{"version without that stage", v1, StageCurrent, "", ErrInvalid},
		{"missing stage", "", "nope", "", ErrNotFound},
		{"missing version", "00000000-0000-4000-8000-000000000000", "", "", ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, val, err := e.sm.GetValue(ctx, "app", tc.version, tc.stage)
			if tc.err == nil && (err != nil || *val.String != tc.want) || tc.err != nil && !errors.Is(err, tc.err) {
				t.Fatalf("GetValue = %v, %v; want %q, %v", val.String, err, tc.want, tc.err)
			}
		})
	}
	tok := strings.Repeat("b", 40)
	if _, _, err := e.sm.PutValue(ctx, "app", StringValue("v4"), tok, nil); err != nil {
		t.Fatal(err)
	}
	if _, got, err := e.sm.PutValue(ctx, "app", StringValue("v4"), tok, nil); err != nil || got != tok {
		t.Fatalf("same token and value again = %s, %v; want the same version", got, err)
	}
	if _, _, err := e.sm.PutValue(ctx, "app", StringValue("v5"), tok, nil); !errors.Is(err, ErrExists) {
		t.Fatalf("same token, other value = %v, want ErrExists", err)
	}
}

func TestBinaryValue_RoundTrips(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	bin := []byte{0, 1, 2, 0xff}
	if _, _, err := e.sm.Create(ctx, CreateInput{Name: "bin", Value: Value{Binary: bin}}); err != nil {
		t.Fatal(err)
	}
	_, v, val, err := e.sm.GetValue(ctx, "bin", "", "")
	if err != nil || val.String != nil || !bytes.Equal(val.Binary, bin) || !v.Binary {
		t.Fatalf("GetValue = %+v, %v", val, err)
	}
}

func TestUpdateStage(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name                      string
		stage, moveTo, removeFrom string // "1", "2", "3": the versions, oldest first
		want                      error
		wantCurrent               string
		wantPrevious              string
	}{
		{"move AWSCURRENT back, naming its holder", StageCurrent, "1", "3", nil, "1", "3"},
		{"move AWSCURRENT without naming its holder", StageCurrent, "1", "", ErrInvalid, "3", "2"},
		{"move AWSCURRENT naming the wrong holder", StageCurrent, "1", "2", ErrInvalid, "3", "2"},
		{"remove AWSCURRENT", StageCurrent, "", "3", ErrInvalid, "3", "2"},
		{"add a custom stage", "blue", "1", "", nil, "3", "2"},
		{"remove AWSPREVIOUS", StagePrevious, "", "2", nil, "3", ""},
		{"to a missing version", "blue", "x", "", ErrNotFound, "3", "2"},
		{"nothing to do", "blue", "", "", ErrInvalid, "3", "2"},
		{"AWSCURRENT onto the version that has it", StageCurrent, "3", "3", nil, "3", "2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			mustCreate(t, e.sm, "s", "v1")
			ids := map[string]string{"": ""}
			ids["1"], _ = current(t, e.sm, "s")
			_, ids["2"], _ = e.sm.PutValue(ctx, "s", StringValue("v2"), "", nil)
			_, ids["3"], _ = e.sm.PutValue(ctx, "s", StringValue("v3"), "", nil)
			id := func(k string) string {
				if v, ok := ids[k]; ok {
					return v
				}
				return k
			}
			_, err := e.sm.UpdateStage(ctx, "s", tc.stage, id(tc.moveTo), id(tc.removeFrom))
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("UpdateStage = %v, want %v", err, tc.want)
			}
			sec, _ := e.sm.Describe(ctx, "s")
			if c := sec.stageHolder(StageCurrent); c == nil || c.ID != ids[tc.wantCurrent] {
				t.Errorf("AWSCURRENT on %v, want version %s", c, tc.wantCurrent)
			}
			p := sec.stageHolder(StagePrevious)
			if tc.wantPrevious == "" && p != nil || tc.wantPrevious != "" && (p == nil || p.ID != ids[tc.wantPrevious]) {
				t.Errorf("AWSPREVIOUS on %v, want version %q", p, tc.wantPrevious)
			}
		})
	}
}

func TestDelete_RecoveryWindow_RestoreAndPurge(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	now := time.Now()
	e.sm.now = func() time.Time { return now }
	mustCreate(t, e.sm, "app", "v1")
	for _, days := range []int{6, 31, -1} {
		if _, err := e.sm.Delete(ctx, "app", days, false); !errors.Is(err, ErrInvalid) {
			t.Errorf("recovery window of %d days: %v, want ErrInvalid", days, err)
		}
	}
	if _, err := e.sm.Delete(ctx, "app", 7, true); !errors.Is(err, ErrInvalid) {
		t.Errorf("window and force together: %v, want ErrInvalid", err)
	}
	sec, err := e.sm.Delete(ctx, "app", 7, false)
	if err != nil || !sec.DeletionDate.Equal(now.UTC().AddDate(0, 0, 7)) {
		t.Fatalf("Delete = %v, %v", sec, err)
	}
	if _, _, _, err := e.sm.GetValue(ctx, "app", "", ""); !errors.Is(err, ErrDeleted) || !strings.Contains(err.Error(), "restore") {
		t.Fatalf("GetValue while scheduled for deletion = %v, want ErrDeleted saying restore", err)
	}
	if _, _, err := e.sm.Create(ctx, CreateInput{Name: "app", Value: StringValue("x")}); !errors.Is(err, ErrExists) {
		t.Fatalf("Create of a name scheduled for deletion = %v, want ErrExists", err)
	}
	if l, _ := e.sm.List(ctx, "", false); len(l) != 0 {
		t.Fatalf("List leaves out deleted secrets: %d", len(l))
	}
	if l, _ := e.sm.List(ctx, "", true); len(l) != 1 {
		t.Fatalf("List with deleted secrets: %d", len(l))
	}
	if _, err := e.sm.Restore(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if _, v := current(t, e.sm, "app"); v != "v1" {
		t.Fatalf("after restore: %q", v)
	}
	if _, err := e.sm.Delete(ctx, "app", 7, false); err != nil {
		t.Fatal(err)
	}
	now = now.AddDate(0, 0, 7)
	if _, err := e.sm.Describe(ctx, "app"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after the window: %v, want ErrNotFound", err)
	}
	if _, _, err := e.sm.Create(ctx, CreateInput{Name: "app", Value: StringValue("new")}); err != nil {
		t.Fatalf("the name is free after the window: %v", err)
	}
	if sec, err := e.sm.Delete(ctx, "app", 0, true); err != nil || sec == nil {
		t.Fatalf("forced delete = %v, %v", sec, err)
	}
	if sec, err := e.sm.Delete(ctx, "app", 0, false); err != nil || sec != nil {
		t.Fatalf("delete of a missing secret = %v, %v; want success with nothing", sec, err)
	}
	var values int
	e.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketValues, "", "", func(string, []byte) error { values++; return nil })
	})
	if values != 0 {
		t.Fatalf("%d value records left after deletion", values)
	}
}

func TestRotate_JSONKeyGetsNewPassword_OtherKeysKept_OldIsPrevious(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	mustCreate(t, e.sm, "db", `{"username":"admin","password":"old"}`)
	oldID, _ := current(t, e.sm, "db")
	sec, newID, err := e.sm.Rotate(ctx, "db", RotateInput{Generator: &Generator{Length: 20, ExcludePunctuation: true}})
	if err != nil {
		t.Fatal(err)
	}
	gotID, val := current(t, e.sm, "db")
	var obj map[string]string
	json.Unmarshal([]byte(val), &obj)
	if gotID != newID || obj["username"] != "admin" || !regexp.MustCompile(`^[A-Za-z0-9]{20}$`).MatchString(obj["password"]) {
		t.Fatalf("after rotation: version %s, password of %d characters, username %q", gotID, len(obj["password"]), obj["username"])
	}
	if p := sec.stageHolder(StagePrevious); p == nil || p.ID != oldID || sec.stageHolder(StagePending) != nil {
		t.Fatalf("stages after rotation: %+v", sec.Versions)
	}
	// The next rotation reuses the settings.
	if _, _, err := e.sm.Rotate(ctx, "db", RotateInput{}); err != nil {
		t.Fatal(err)
	}
	_, val = current(t, e.sm, "db")
	json.Unmarshal([]byte(val), &obj)
	if len(obj["password"]) != 20 {
		t.Fatalf("second rotation did not keep the length: %d", len(obj["password"]))
	}

	mustCreate(t, e.sm, "plain", "not json: hunter2")
	_, _, err = e.sm.Rotate(ctx, "plain", RotateInput{})
	if !errors.Is(err, ErrInvalid) || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("rotating a non-JSON value into a key = %v; want ErrInvalid without the value", err)
	}
	if _, _, err := e.sm.Rotate(ctx, "plain", RotateInput{Generator: &Generator{WholeValue: true, Length: 12}}); err != nil {
		t.Fatal(err)
	}
	if _, v := current(t, e.sm, "plain"); len(v) != 12 {
		t.Fatalf("whole-value rotation gave %d characters", len(v))
	}
}

// crashStore fails one Update after its function ran, so that bbolt rolls
// it back, as a crash before the commit would.
type crashStore struct {
	store.Store
	failAt, n int
}

var errCrash = errors.New("crash")

func (c *crashStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	c.n++
	if c.n != c.failAt {
		return c.Store.Update(ctx, fn)
	}
	return c.Store.Update(ctx, func(tx store.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return errCrash
	})
}

func TestRotate_CrashAtAnyStep_OldOrNewIsCurrent_NeverHalf(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name        string
		crash       func(e *env) // sets up the crash
		wantRotated bool
	}{
		{"crash before the pending version commits", func(e *env) { e.sm.store = &crashStore{Store: e.store, failAt: 1} }, false},
		{"crash between pending and current", func(e *env) { e.sm.afterPending = func() error { return errCrash } }, false},
		{"crash before AWSCURRENT moves commits", func(e *env) { e.sm.store = &crashStore{Store: e.store, failAt: 2} }, false},
		{"no crash", func(*env) {}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			mustCreate(t, e.sm, "db", `{"password":"old"}`)
			oldID, _ := current(t, e.sm, "db")
			tc.crash(e)
			_, newID, err := e.sm.Rotate(ctx, "db", RotateInput{})
			if tc.wantRotated != (err == nil) {
				t.Fatalf("Rotate = %v", err)
			}
			// The server restarts on the same files.
			e.store.Close()
			e.open(t)
			id, val := current(t, e.sm, "db")
			if tc.wantRotated && id != newID || !tc.wantRotated && (id != oldID || val != `{"password":"old"}`) {
				t.Fatalf("after the crash AWSCURRENT is %s, want %s (rotated %t)", id, map[bool]string{true: newID, false: oldID}[tc.wantRotated], tc.wantRotated)
			}
			// And a rotation after the crash works.
			if _, _, err := e.sm.Rotate(ctx, "db", RotateInput{}); err != nil {
				t.Fatal(err)
			}
			sec, _ := e.sm.Describe(ctx, "db")
			if sec.stageHolder(StagePending) != nil {
				t.Fatalf("stale AWSPENDING left after the next rotation: %+v", sec.Versions)
			}
		})
	}
}

func TestStoreFile_HoldsNoPlaintextValue(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	const marker = "PLAINTEXT-MARKER-7d3f9a"
	mustCreate(t, e.sm, "s1", `{"password":"`+marker+`"}`)
	if _, _, err := e.sm.PutValue(ctx, "s1", StringValue(marker+"-2"), "", []string{"custom"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.sm.Create(ctx, CreateInput{Name: "bin", Value: Value{Binary: []byte(marker)}}); err != nil {
		t.Fatal(err)
	}
	_, rotated, _ := e.sm.Rotate(ctx, "s1", RotateInput{})
	_, _, val, _ := e.sm.GetValue(ctx, "s1", rotated, "")
	var obj map[string]string
	json.Unmarshal([]byte(*val.String), &obj)
	e.store.Close()
	b, err := os.ReadFile(filepath.Join(e.dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{marker, obj["password"]} {
		if bytes.Contains(b, []byte(s)) {
			t.Fatalf("the store file holds a secret value in the clear")
		}
	}
	if !bytes.Contains(b, []byte("s1")) {
		t.Fatal("the store file does not hold the secret's name: is this the right file?")
	}
}

func TestGetValue_KeyDisabled_FailsNamingSecretAndKey(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	k, _ := e.kms.CreateKey(ctx, "app", "alias/app")
	if _, _, err := e.sm.Create(ctx, CreateInput{Name: "app", KMSKeyID: "alias/app", Value: StringValue("v")}); err != nil {
		t.Fatal(err)
	}
	e.kms.DisableKey(ctx, k.ID)
	_, _, _, err := e.sm.GetValue(ctx, "app", "", "")
	if !errors.Is(err, kms.ErrDisabled) || !strings.Contains(err.Error(), "secret app") || !strings.Contains(err.Error(), k.ID) || !strings.Contains(err.Error(), "disabled") {
		t.Fatalf("GetValue with a disabled key = %v; want a message naming the secret, the key and its state", err)
	}
}

func TestTag_AddReplaceRemove(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	mustCreate(t, e.sm, "app", "v")
	e.sm.Tag(ctx, "app", map[string]string{"team": "a", "env": "dev"}, nil)
	sec, err := e.sm.Tag(ctx, "app", map[string]string{"env": "prod"}, []string{"team"})
	if err != nil || len(sec.Tags) != 1 || sec.Tags["env"] != "prod" {
		t.Fatalf("tags = %v, %v", sec.Tags, err)
	}
	if _, err := e.sm.Tag(ctx, "app", map[string]string{"": "x"}, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty tag key: %v", err)
	}
}
