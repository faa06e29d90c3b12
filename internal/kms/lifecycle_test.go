package kms

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stowage-io/stowage/internal/store"
	"github.com/stowage-io/stowage/internal/store/boltstore"
)

func TestEncryptDecrypt_EncryptionContext_MustMatchExactly(t *testing.T) {
	ctx := context.Background()
	s := newService(t, t.TempDir())
	k, err := s.CreateKey(ctx, "app", "alias/app")
	if err != nil {
		t.Fatal(err)
	}
	sealedWith := map[string]string{"app": "billing", "env": "prod"}
	blob, keyID, err := s.Encrypt(ctx, "alias/app", []byte("hello"), sealedWith)
	if err != nil || keyID != k.ID {
		t.Fatalf("Encrypt = %s, %v", keyID, err)
	}
	for _, tc := range []struct {
		name   string
		encCtx map[string]string
		ok     bool
	}{
		{"same context", map[string]string{"env": "prod", "app": "billing"}, true},
		{"other value", map[string]string{"app": "billing", "env": "dev"}, false},
		{"key missing", map[string]string{"app": "billing"}, false},
		{"extra key", map[string]string{"app": "billing", "env": "prod", "x": ""}, false},
		{"no context", nil, false},
		{"keys and values shifted", map[string]string{"app": "billingenv", "": "prod"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := s.Decrypt(ctx, blob, tc.encCtx)
			if tc.ok && (err != nil || string(got) != "hello") {
				t.Fatalf("Decrypt = %q, %v; want hello", got, err)
			}
			if !tc.ok {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), k.ID) {
					t.Fatalf("Decrypt = %v; want ErrInvalid naming key %s", err, k.ID)
				}
			}
		})
	}
}

func TestEncrypt_PlaintextSize_LimitedLikeAWS(t *testing.T) {
	ctx := context.Background()
	s := newService(t, t.TempDir())
	for _, tc := range []struct {
		size int
		ok   bool
	}{{0, false}, {1, true}, {MaxPlaintext, true}, {MaxPlaintext + 1, false}} {
		_, _, err := s.Encrypt(ctx, "", make([]byte, tc.size), nil)
		if (err == nil) != tc.ok {
			t.Errorf("Encrypt of %d bytes = %v, want ok=%t", tc.size, err, tc.ok)
		}
	}
}

func TestRotateKey_OldVersionsStillDecrypt_NewCiphertextNamesNewVersion(t *testing.T) {
	ctx := context.Background()
	s := newService(t, t.TempDir())
	k, err := s.CreateKey(ctx, "rotating")
	if err != nil {
		t.Fatal(err)
	}
	var blobs [][]byte
	for i := range 3 {
		b, _, err := s.Encrypt(ctx, k.ID, []byte{byte(i)}, map[string]string{"n": "x"})
		if err != nil {
			t.Fatal(err)
		}
		if id, v, _ := BlobKey(b); id != k.ID || v != i {
			t.Fatalf("ciphertext %d names %s version %d; want %s version %d", i, id, v, k.ID, i)
		}
		blobs = append(blobs, b)
		if k, err = s.RotateKey(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
	}
	if k.CurrentVersion() != 3 || k.VersionID() != k.ID+"/3" || len(k.VersionCreated) != 4 {
		t.Fatalf("after 3 rotations: version %d (%s), %d version dates", k.CurrentVersion(), k.VersionID(), len(k.VersionCreated))
	}
	for i, b := range blobs {
		got, _, err := s.Decrypt(ctx, b, map[string]string{"n": "x"})
		if err != nil || !bytes.Equal(got, []byte{byte(i)}) {
			t.Errorf("version %d ciphertext after rotation: %x, %v", i, got, err)
		}
	}
}

func TestKeyState_DisabledOrPendingDeletion_RefusedNamingKeyAndState(t *testing.T) {
	ctx := context.Background()
	s := newService(t, t.TempDir())
	for _, state := range []struct {
		name, want string
		apply      func(ref string) (*Key, error)
	}{
		{"disabled", "is disabled", func(ref string) (*Key, error) { return s.DisableKey(ctx, ref) }},
		{"pending deletion", "is pending deletion", func(ref string) (*Key, error) { return s.ScheduleKeyDeletion(ctx, ref, 7) }},
	} {
		k, err := s.CreateKey(ctx, state.name)
		if err != nil {
			t.Fatal(err)
		}
		blob, _, err := s.Encrypt(ctx, k.ID, []byte("x"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := state.apply(k.ID); err != nil {
			t.Fatal(err)
		}
		for _, op := range []struct {
			name string
			call func() error
		}{
			{"encrypt", func() error { _, _, err := s.Encrypt(ctx, k.ID, []byte("x"), nil); return err }},
			{"decrypt", func() error { _, _, err := s.Decrypt(ctx, blob, nil); return err }},
			{"generate data key", func() error { _, _, _, err := s.GenerateDataKey(ctx, k.ID, 32, nil); return err }},
			{"rotate", func() error { _, err := s.RotateKey(ctx, k.ID); return err }},
			{"seal", func() error { _, err := s.Seal(ctx, k.ID, []byte("x"), nil); return err }},
		} {
			t.Run(state.name+"/"+op.name, func(t *testing.T) {
				err := op.call()
				var se *StateError
				if !errors.Is(err, ErrDisabled) || !errors.As(err, &se) {
					t.Fatalf("%s = %v; want a *StateError", op.name, err)
				}
				if !strings.Contains(err.Error(), k.ID) || !strings.Contains(err.Error(), state.want) {
					t.Fatalf("message %q does not name key %s and say %q", err, k.ID, state.want)
				}
			})
		}
	}
}

func TestScheduleKeyDeletion_PendingWindow_7To30Days(t *testing.T) {
	ctx := context.Background()
	s := newService(t, t.TempDir())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	for _, tc := range []struct {
		days, wantDays int
		ok             bool
	}{{0, 30, true}, {7, 7, true}, {30, 30, true}, {6, 0, false}, {31, 0, false}, {-1, 0, false}} {
		k, err := s.CreateKey(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.ScheduleKeyDeletion(ctx, k.ID, tc.days)
		if !tc.ok {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("%d days: %v, want ErrInvalid", tc.days, err)
			}
			continue
		}
		if err != nil || got.State != StatePendingDeletion || !got.DeletionDate.Equal(now.AddDate(0, 0, tc.wantDays)) {
			t.Errorf("%d days: %+v, %v; want PendingDeletion until %s", tc.days, got, err, now.AddDate(0, 0, tc.wantDays))
		}
	}
}

func TestStateTransitions(t *testing.T) {
	ctx := context.Background()
	s := newService(t, t.TempDir())
	for _, tc := range []struct {
		name      string
		steps     []string
		wantState string
		wantErr   error
	}{
		{"disable then enable", []string{"disable", "enable"}, StateEnabled, nil},
		{"cancel deletion leaves the key disabled", []string{"schedule", "cancel"}, StateDisabled, nil},
		{"enable a key pending deletion is refused", []string{"schedule", "enable"}, StatePendingDeletion, ErrDisabled},
		{"disable a key pending deletion is refused", []string{"schedule", "disable"}, StatePendingDeletion, ErrDisabled},
		{"schedule twice is refused", []string{"schedule", "schedule"}, StatePendingDeletion, ErrDisabled},
		{"cancel on an enabled key is invalid", []string{"cancel"}, StateEnabled, ErrInvalid},
		{"a disabled key can be scheduled", []string{"disable", "schedule"}, StatePendingDeletion, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := s.CreateKey(ctx, tc.name)
			if err != nil {
				t.Fatal(err)
			}
			for i, step := range tc.steps {
				switch step {
				case "disable":
					_, err = s.DisableKey(ctx, k.ID)
				case "enable":
					_, err = s.EnableKey(ctx, k.ID)
				case "schedule":
					_, err = s.ScheduleKeyDeletion(ctx, k.ID, 7)
				case "cancel":
					_, err = s.CancelKeyDeletion(ctx, k.ID)
				}
				if i < len(tc.steps)-1 && err != nil {
					t.Fatalf("%s: %v", step, err)
				}
			}
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("last step = %v, want %v", err, tc.wantErr)
			}
			got, err := s.Resolve(ctx, k.ID)
			if err != nil || got.State != tc.wantState {
				t.Fatalf("state = %v, %v; want %s", got, err, tc.wantState)
			}
		})
	}
}

func TestScheduledDeletion_AfterWindow_KeyAndAliasesAreGone(t *testing.T) {
	ctx := context.Background()
	s := newService(t, t.TempDir())
	now := time.Now()
	s.now = func() time.Time { return now }
	k, err := s.CreateKey(ctx, "doomed", "alias/doomed")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ScheduleKeyDeletion(ctx, "alias/doomed", 7); err != nil {
		t.Fatal(err)
	}
	now = now.AddDate(0, 0, 6)
	if _, err := s.Resolve(ctx, k.ID); err != nil {
		t.Fatalf("day 6: %v; the key must still exist", err)
	}
	now = now.AddDate(0, 0, 1)
	if _, err := s.Resolve(ctx, k.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("day 7: Resolve = %v, want ErrNotFound", err)
	}
	if keys, err := s.ListKeys(ctx); err != nil || len(keys) != 0 {
		t.Fatalf("ListKeys = %v, %v; want none", keys, err)
	}
	if _, err := s.CreateKey(ctx, "reuse", "alias/doomed"); err != nil {
		t.Fatalf("the deleted key's alias is free again: %v", err)
	}
}

func TestAliases_CreateAndDelete(t *testing.T) {
	ctx := context.Background()
	s := newService(t, t.TempDir())
	a, _ := s.CreateKey(ctx, "a", "alias/a")
	b, _ := s.CreateKey(ctx, "b")
	for _, tc := range []struct {
		name, alias, ref string
		want             error
	}{
		{"new alias", "alias/b", b.ID, nil},
		{"second alias on the same key", "alias/b2", b.ID, nil},
		{"taken alias", "alias/a", b.ID, ErrExists},
		{"alias without prefix", "b3", b.ID, ErrInvalid},
		{"missing key", "alias/c", "alias/none", ErrNotFound},
	} {
		_, err := s.CreateAlias(ctx, tc.alias, tc.ref)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: CreateAlias = %v, want %v", tc.name, err, tc.want)
		}
	}
	if got, err := s.Resolve(ctx, "alias/b2"); err != nil || got.ID != b.ID || len(got.Aliases) != 2 {
		t.Fatalf("alias/b2 = %+v, %v", got, err)
	}
	if err := s.DeleteAlias(ctx, "alias/a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAlias(ctx, "alias/a"); err != nil {
		t.Fatalf("deleting a missing alias: %v, want success", err)
	}
	if _, err := s.Resolve(ctx, "alias/a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted alias resolves: %v", err)
	}
	if got, err := s.Resolve(ctx, a.ID); err != nil || len(got.Aliases) != 0 {
		t.Fatalf("key after its alias went: %+v, %v", got, err)
	}
}

func TestOpen_MasterKeyReadableByOthers_Refused(t *testing.T) {
	dir := t.TempDir()
	st, err := boltstore.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	mk := filepath.Join(dir, "master.key")
	if _, err := Open(st, mk); err != nil {
		t.Fatal(err)
	}
	os.Chmod(mk, 0o644)
	if _, err := Open(st, mk); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Open with a 0644 master key = %v, want a refusal that says chmod 600", err)
	}
	os.Chmod(mk, 0o600)
	os.WriteFile(mk, []byte("short"), 0o600)
	if _, err := Open(st, mk); err == nil || !strings.Contains(err.Error(), "5 bytes") {
		t.Fatalf("Open with a truncated master key = %v", err)
	}
}

// The fixture is a default key and a volume data key made by the KMS as it
// was before key versions, rotation and encryption contexts.
func TestDecrypt_VolumeDataKeyMadeBeforeVersions_StillDecrypts(t *testing.T) {
	const (
		master  = "f+n1S8KmvtBKzxpOCT+L1TSdlruswBcE1scqOIltkDc="
		record  = `{"id":"86f473d1-95c1-90a3-6e1a-5700e291e896","aliases":["alias/stowage/ebs"],"description":"default key for encrypted volumes","state":"Enabled","created":"2026-12-01T10:27:25.948624784Z","material":["Ee4ztMSo0XpCiGNJsqKVnlr9cbMU3VNpc9fsZIYL7wpXv5Mc1grufLv2oKwleLo1O0vP/CLSzFqX32ow"]}`
		id      = "86f473d1-95c1-90a3-6e1a-5700e291e896"
		plain   = "43winSDUQQGPRlv2jSt3LZJqw2Y0tkE6baViLxu8HQ7mZtnZJg7OmCJQFenLRvvdQnwVsqriZN7/EB7ejajXug=="
		wrapped = "c3R3azEkODZmNDczZDEtOTVjMS05MGEzLTZlMWEtNTcwMGUyOTFlODk2AAAAAOt/MlGTK8cOC6eElFqRNOwwi7O0Kt4gRSYS1KwtzSsAuDT3XeReVOiflrQ8Qv5KRkt/f02kOaVK+oTHUpzxDQOzhx29vH2THAnQrDKGbLz2+iFboZQAgmUZlrTF"
	)
	ctx := context.Background()
	dir := t.TempDir()
	mk, _ := base64.StdEncoding.DecodeString(master)
	if err := os.WriteFile(filepath.Join(dir, "master.key"), mk, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := boltstore.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Update(ctx, func(tx store.Tx) error {
		tx.Put(bucketAliases, DefaultAlias, []byte(id))
		return tx.Put(bucketKeys, id, []byte(record))
	})
	s, err := Open(st, filepath.Join(dir, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := base64.StdEncoding.DecodeString(wrapped)
	want, _ := base64.StdEncoding.DecodeString(plain)
	got, keyID, err := s.Decrypt(ctx, blob, nil)
	if err != nil || !bytes.Equal(got, want) || keyID != id {
		t.Fatalf("old data key: %v (key %s)", err, keyID)
	}
	// And the old key rotates, its old version still decrypting.
	if _, err := s.RotateKey(ctx, DefaultAlias); err != nil {
		t.Fatal(err)
	}
	if got, _, err := s.Decrypt(ctx, blob, nil); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("old data key after rotation: %v", err)
	}
}

func TestSealOpen_EnvelopeHoldsNoPlaintext_AndNeedsTheContext(t *testing.T) {
	ctx := context.Background()
	s := newService(t, t.TempDir())
	secret := []byte("correct horse battery staple, a long one")
	env, err := s.Seal(ctx, "", secret, map[string]string{"SecretARN": "a"})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(env.Ciphertext, secret) || bytes.Contains(env.DataKey, secret) {
		t.Fatal("envelope holds the plaintext")
	}
	if got, err := s.Open(ctx, env, map[string]string{"SecretARN": "a"}); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := s.Open(ctx, env, map[string]string{"SecretARN": "b"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Open with another context = %v, want ErrInvalid", err)
	}
}
