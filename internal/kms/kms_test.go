package kms

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stowage-io/stowage/internal/store/boltstore"
)

func newService(t *testing.T, dir string) *Service {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s, err := Open(st, filepath.Join(dir, "kms", "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestGenerateDataKey_DefaultKey_RoundTripsAndWrappedDiffers(t *testing.T) {
	ctx := context.Background()
	s := newService(t, t.TempDir())
	plain, wrapped, keyID, err := s.GenerateDataKey(ctx, "", 64, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(plain) != 64 || bytes.Contains(wrapped, plain) {
		t.Fatalf("data key of %d bytes; wrapped form contains it: %t", len(plain), bytes.Contains(wrapped, plain))
	}
	def, err := s.Resolve(ctx, DefaultAlias)
	if err != nil || def.ID != keyID {
		t.Fatalf("default alias resolves to %v, %v; want the key that wrapped (%s)", def, err, keyID)
	}
	got, gotID, err := s.Decrypt(ctx, wrapped, nil)
	if err != nil || !bytes.Equal(got, plain) || gotID != keyID {
		t.Fatalf("Decrypt = %x, %s, %v", got, gotID, err)
	}
}

func TestDecrypt_TamperedOrForeignBlob_Invalid(t *testing.T) {
	ctx := context.Background()
	s := newService(t, t.TempDir())
	_, wrapped, _, err := s.GenerateDataKey(ctx, "", 32, nil)
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(wrapped)
	tampered[len(tampered)-1] ^= 1
	for name, blob := range map[string][]byte{"tampered": tampered, "garbage": []byte("hello"), "empty": nil} {
		if _, _, err := s.Decrypt(ctx, blob, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Decrypt = %v, want ErrInvalid", name, err)
		}
	}
}

func TestResolve_ByIDAliasAndARN(t *testing.T) {
	ctx := context.Background()
	s := newService(t, t.TempDir())
	k, err := s.CreateKey(ctx, "app key", "alias/app")
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{k.ID, "alias/app", "arn:aws:kms:zone-a:000000000000:key/" + k.ID, "arn:aws:kms:zone-a:000000000000:alias/app"} {
		got, err := s.Resolve(ctx, ref)
		if err != nil || got.ID != k.ID {
			t.Errorf("Resolve(%q) = %v, %v; want %s", ref, got, err, k.ID)
		}
	}
	if _, err := s.Resolve(ctx, "alias/missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Resolve of a missing alias = %v, want ErrNotFound", err)
	}
	if _, err := s.CreateKey(ctx, "dup", "alias/app"); !errors.Is(err, ErrExists) {
		t.Errorf("CreateKey with a taken alias = %v, want ErrExists", err)
	}
	if _, err := s.CreateKey(ctx, "bad", "app"); !errors.Is(err, ErrInvalid) {
		t.Errorf("CreateKey with alias without prefix = %v, want ErrInvalid", err)
	}
}

func TestOpen_Reopen_SameMasterKeyDecryptsOldBlobs(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := boltstore.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(st, filepath.Join(dir, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	plain, wrapped, _, err := s.GenerateDataKey(ctx, "", 64, nil)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if fi, err := os.Stat(filepath.Join(dir, "master.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("master key file mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	st2, err := boltstore.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	s2, err := Open(st2, filepath.Join(dir, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := s2.Decrypt(ctx, wrapped, nil)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("after reopen Decrypt = %v; want the same data key", err)
	}
}

func TestGenerateDataKey_BadSize_Invalid(t *testing.T) {
	s := newService(t, t.TempDir())
	if _, _, _, err := s.GenerateDataKey(context.Background(), "", 8, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("size 8: %v, want ErrInvalid", err)
	}
}
