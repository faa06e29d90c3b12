package fscrypt

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/internal/testutil/loopfs"
)

// encryptableExt4 mounts an ext4 made with the encrypt feature.
func encryptableExt4(t *testing.T) (mnt, dev string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root for loop devices and mounts")
	}
	mnt = loopfs.New(t, "ext4", 256<<20)
	src, err := exec.Command("findmnt", "-n", "-o", "SOURCE", mnt).Output()
	if err != nil {
		t.Fatal(err)
	}
	dev = string(bytes.TrimSpace(src))
	if out, err := exec.Command("tune2fs", "-O", "encrypt", dev).CombinedOutput(); err != nil {
		t.Fatalf("tune2fs -O encrypt: %v: %s", err, out)
	}
	return mnt, dev
}

func newKey(t *testing.T) []byte {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestEnsureDir_WithKey_FilesReadableAndCiphertextOnDisk(t *testing.T) {
	mnt, dev := encryptableExt4(t)
	key := newKey(t)
	id, err := AddKey(mnt, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mnt, "data")
	if err := EnsureDir(dir, id); err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte("stowage-plaintext-marker "), 4096)
	if err := os.WriteFile(filepath.Join(dir, "secret.txt"), secret, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "secret.txt")); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("read back with key = %v", err)
	}
	if err := EnsureDir(dir, id); err != nil {
		t.Fatalf("EnsureDir again with the same key = %v, want nil", err)
	}
	unix.Sync()
	raw, err := os.ReadFile(dev)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("stowage-plaintext-marker")) {
		t.Fatal("the plaintext is on the device: the file was not encrypted")
	}

	if err := RemoveKey(mnt, id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(dir, "secret.txt")); err == nil {
		t.Fatal("file readable by its name after the key was removed")
	}
	got, enc, err := Encrypted(dir)
	if err != nil || !enc || got != id {
		t.Fatalf("Encrypted = %x, %t, %v; want the key's identifier", got, enc, err)
	}
}

func TestEnsureDir_OtherKeyOrPlainFiles_Refused(t *testing.T) {
	mnt, _ := encryptableExt4(t)
	id1, err := AddKey(mnt, newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	id2, err := AddKey(mnt, newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mnt, "data")
	if err := EnsureDir(dir, id1); err != nil {
		t.Fatal(err)
	}
	if err := EnsureDir(dir, id2); err == nil {
		t.Fatal("EnsureDir with another key succeeded")
	}
	plain := filepath.Join(mnt, "plain")
	if err := os.MkdirAll(filepath.Join(plain, "f"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := EnsureDir(plain, id1); !errors.Is(err, ErrNotEncrypted) {
		t.Fatalf("EnsureDir on a non-empty plain dir = %v, want ErrNotEncrypted", err)
	}
}

func TestAddKey_WrongSize_Refused(t *testing.T) {
	if _, err := AddKey(t.TempDir(), make([]byte, 16)); err == nil {
		t.Fatal("16-byte key accepted")
	}
}
