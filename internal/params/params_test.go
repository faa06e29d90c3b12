package params

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/store"
	"github.com/stowage-io/stowage/internal/store/boltstore"
)

func newService(t *testing.T) (*Service, *kms.Service, store.Store, string) {
	t.Helper()
	dir := t.TempDir()
	st, err := boltstore.Open(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	k, err := kms.Open(st, filepath.Join(dir, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	return New(st, k, Options{}), k, st, dir
}

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"plain", true},
		{"/app/db/url", true},
		{"/a.b-c_d", true},
		{"app/db", false},
		{"/app/", false},
		{"/app//db", false},
		{"/" + strings.Repeat("a/", 15) + "b", false},
		{"/" + strings.Repeat("a/", 14) + "b", true},
		{"awsThing", false},
		{"/SSM/x", false},
		{"has space", false},
		{"colon:x", false},
		{"", false},
	} {
		if err := ValidName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%t", tc.name, err, tc.ok)
		}
	}
}

func TestPut_VersionsNumbered_OverwriteRequired_TypeKept(t *testing.T) {
	ctx := context.Background()
	s, _, _, _ := newService(t)
	for i, tc := range []struct {
		in      PutInput
		want    int64
		wantErr error
	}{
		{PutInput{Name: "/app/url", Value: "a"}, 1, nil},
		{PutInput{Name: "/app/url", Value: "b"}, 0, ErrExists},
		{PutInput{Name: "/app/url", Value: "b", Overwrite: true}, 2, nil},
		{PutInput{Name: "/app/url", Value: "c", Overwrite: true, Type: "Number"}, 0, ErrInvalid},
		{PutInput{Name: "/app/url", Value: "", Overwrite: true}, 0, ErrInvalid},
		{PutInput{Name: "/app/url", Value: strings.Repeat("x", MaxValueSize+1), Overwrite: true}, 0, ErrInvalid},
		{PutInput{Name: "/app/list", Value: "a,b", Type: TypeStringList, KeyID: "alias/x"}, 0, ErrInvalid},
		{PutInput{Name: "/app/pw", Value: "s", Type: TypeSecureString, KeyID: "alias/none"}, 0, kms.ErrNotFound},
	} {
		got, err := s.Put(ctx, tc.in)
		if tc.wantErr == nil && (err != nil || got != tc.want) || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
			t.Errorf("put %d: %d, %v; want %d, %v", i, got, err, tc.want, tc.wantErr)
		}
	}
	r, err := s.Get(ctx, "/app/url", false)
	if err != nil || r.Value != "b" || r.Number != 2 || r.Type != TypeString || r.ARN != "arn:aws:ssm:local:000000000000:parameter/app/url" {
		t.Fatalf("Get = %+v, %v", r, err)
	}
}

func TestGet_SecureString_OnlyWithDecryption_SelectorsAndARN(t *testing.T) {
	ctx := context.Background()
	s, k, _, _ := newService(t)
	key, _ := k.CreateKey(ctx, "ssm", "alias/app-ssm")
	s.Put(ctx, PutInput{Name: "/app/pw", Value: "one", Type: TypeSecureString, KeyID: "alias/app-ssm"})
	s.Put(ctx, PutInput{Name: "/app/pw", Value: "two", Overwrite: true})
	if _, inv, err := s.Label(ctx, "/app/pw", 1, []string{"stable"}); err != nil || len(inv) != 0 {
		t.Fatal(inv, err)
	}
	for _, tc := range []struct {
		ref     string
		decrypt bool
		want    string
		wantErr error
	}{
		{"/app/pw", true, "two", nil},
		{"/app/pw", false, "", nil},
		{"/app/pw:1", true, "one", nil},
		{"/app/pw:stable", true, "one", nil},
		{"arn:aws:ssm:local:000000000000:parameter/app/pw", true, "two", nil},
		{"arn:aws:ssm:local:000000000000:parameter/app/pw:1", true, "one", nil},
		{"/app/pw:9", true, "", ErrNotFound},
		{"/app/pw:nolabel", true, "", ErrNotFound},
		{"/app/none", true, "", ErrNotFound},
	} {
		r, err := s.Get(ctx, tc.ref, tc.decrypt)
		if tc.wantErr == nil && (err != nil || r.Value != tc.want) || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
			t.Errorf("Get(%q, %t) = %v, %v; want %q, %v", tc.ref, tc.decrypt, r, err, tc.want, tc.wantErr)
		}
	}
	r, _ := s.Get(ctx, "/app/pw", true)
	if r.KeyID != key.ID || r.Type != TypeSecureString {
		t.Fatalf("overwrite without a type or key keeps both: %s %s", r.Type, r.KeyID)
	}
	k.DisableKey(ctx, key.ID)
	if _, err := s.Get(ctx, "/app/pw", true); !errors.Is(err, kms.ErrDisabled) || !strings.Contains(err.Error(), "/app/pw") || !strings.Contains(err.Error(), key.ID) {
		t.Fatalf("Get with a disabled key = %v; want a message naming the parameter and the key", err)
	}
}

func TestGetByPath_DirectChildrenOrRecursive(t *testing.T) {
	ctx := context.Background()
	s, _, _, _ := newService(t)
	for _, n := range []string{"/app/a", "/app/b", "/app/db/url", "/app/db/pw/x", "/apple", "/other/a", "top"} {
		if _, err := s.Put(ctx, PutInput{Name: n, Value: "v"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		path      string
		recursive bool
		want      []string
	}{
		{"/app", false, []string{"/app/a", "/app/b"}},
		{"/app/", false, []string{"/app/a", "/app/b"}},
		{"/app", true, []string{"/app/a", "/app/b", "/app/db/pw/x", "/app/db/url"}},
		{"/app/db", true, []string{"/app/db/pw/x", "/app/db/url"}},
		{"/", false, []string{"/apple"}},
		{"/nothing", true, nil},
	} {
		rs, err := s.GetByPath(ctx, tc.path, tc.recursive, false)
		var got []string
		for _, r := range rs {
			got = append(got, r.Name)
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("GetByPath(%q, recursive=%t) = %v, %v; want %v", tc.path, tc.recursive, got, err, tc.want)
		}
	}
	if _, err := s.GetByPath(ctx, "app", true, false); !errors.Is(err, ErrInvalid) {
		t.Errorf("path without a leading /: %v", err)
	}
}

func TestLabel_MovesBetweenVersions_InvalidLabelsReported(t *testing.T) {
	ctx := context.Background()
	s, _, _, _ := newService(t)
	s.Put(ctx, PutInput{Name: "p", Value: "1"})
	s.Put(ctx, PutInput{Name: "p", Value: "2", Overwrite: true})
	s.Label(ctx, "p", 1, []string{"prod"})
	v, invalid, err := s.Label(ctx, "p", 0, []string{"prod", "1abc", "awsx", "ok-label"})
	if err != nil || v != 2 || !slices.Equal(invalid, []string{"1abc", "awsx"}) {
		t.Fatalf("Label = %d, %v, %v", v, invalid, err)
	}
	h, _ := s.History(ctx, "p", true)
	if len(h) != 2 || len(h[0].Labels) != 0 || !slices.Equal(h[1].Labels, []string{"prod", "ok-label"}) || h[0].Value != "1" {
		t.Fatalf("history after moving the label: %+v", h)
	}
	if _, _, err := s.Label(ctx, "p", 7, []string{"x"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("label a missing version: %v", err)
	}
}

func TestPut_MoreThan100Versions_OldestDropped_UnlessLabelled(t *testing.T) {
	ctx := context.Background()
	s, _, _, _ := newService(t)
	for i := range MaxVersions + 1 {
		if _, err := s.Put(ctx, PutInput{Name: "p", Value: "v", Overwrite: i > 0}); err != nil {
			t.Fatal(err)
		}
	}
	h, _ := s.History(ctx, "p", false)
	if len(h) != MaxVersions || h[0].Number != 2 {
		t.Fatalf("%d versions kept, oldest %d", len(h), h[0].Number)
	}
	s.Label(ctx, "p", 2, []string{"keep"})
	if _, err := s.Put(ctx, PutInput{Name: "p", Value: "v", Overwrite: true}); !errors.Is(err, ErrVersionLimit) {
		t.Fatalf("put over a labelled oldest version: %v, want ErrVersionLimit", err)
	}
}

func TestDelete_MissingSucceeds(t *testing.T) {
	ctx := context.Background()
	s, _, _, _ := newService(t)
	s.Put(ctx, PutInput{Name: "/x", Value: "v"})
	if existed, err := s.Delete(ctx, "/x"); err != nil || !existed {
		t.Fatal(existed, err)
	}
	if existed, err := s.Delete(ctx, "/x"); err != nil || existed {
		t.Fatal(existed, err)
	}
	if _, err := s.Get(ctx, "/x", false); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
}

func TestStoreFile_HoldsNoPlaintextValue(t *testing.T) {
	ctx := context.Background()
	s, _, st, dir := newService(t)
	const marker = "PARAM-PLAINTEXT-91c2"
	s.Put(ctx, PutInput{Name: "/app/plain", Value: marker})
	s.Put(ctx, PutInput{Name: "/app/secure", Value: marker + "-s", Type: TypeSecureString})
	st.Close()
	b, _ := os.ReadFile(filepath.Join(dir, "metadata.db"))
	if bytes.Contains(b, []byte(marker)) {
		t.Fatal("the store file holds a parameter value in the clear")
	}
	if !bytes.Contains(b, []byte("/app/secure")) {
		t.Fatal("the store file does not hold the parameter's name: is this the right file?")
	}
}
