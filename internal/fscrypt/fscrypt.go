// Package fscrypt encrypts a volume's files at rest with the kernel's
// file-system encryption (ext4, v2 policies, AES-256-XTS contents and
// AES-256-CTS names), using the volume's data key from the KMS. It is how
// Stowage encrypts volumes on nodes that have no device-mapper (dm-crypt).
package fscrypt

import (
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/internal/block"
)

// KeySize is the data-key size fscrypt's AES-256-XTS needs for v2 policies:
// the volume model's data key.
const KeySize = block.DataKeySize

// ErrNotEncrypted means a non-empty directory has no encryption policy, so
// it cannot be made encrypted in place.
var ErrNotEncrypted = errors.New("directory has files and is not encrypted")

// Identifier names a key in a file system's keyring.
type Identifier [unix.FSCRYPT_KEY_IDENTIFIER_SIZE]byte

// AddKey gives the file system mounted at mnt the key, so files under
// directories encrypted with it can be read. It returns the key's
// identifier, which the kernel derives from the key itself. Adding the same
// key again is harmless.
func AddKey(mnt string, key []byte) (Identifier, error) {
	var id Identifier
	if len(key) != KeySize {
		return id, fmt.Errorf("fscrypt: key has %d bytes, want %d", len(key), KeySize)
	}
	f, err := os.Open(mnt)
	if err != nil {
		return id, fmt.Errorf("fscrypt: %w", err)
	}
	defer f.Close()
	// struct fscrypt_add_key_arg is followed by the raw key bytes.
	buf := make([]byte, unsafe.Sizeof(unix.FscryptAddKeyArg{})+KeySize)
	arg := (*unix.FscryptAddKeyArg)(unsafe.Pointer(&buf[0]))
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	arg.Raw_size = KeySize
	copy(buf[unsafe.Sizeof(unix.FscryptAddKeyArg{}):], key)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_ADD_ENCRYPTION_KEY, uintptr(unsafe.Pointer(&buf[0])))
	clear(buf[unsafe.Sizeof(unix.FscryptAddKeyArg{}):])
	if errno != 0 {
		if errno == unix.ENOTTY || errno == unix.EOPNOTSUPP {
			return id, fmt.Errorf("fscrypt: the file system at %s does not support encryption (ext4 made with -O encrypt is needed): %w", mnt, errno)
		}
		return id, fmt.Errorf("fscrypt: add key to %s: %w", mnt, errno)
	}
	copy(id[:], arg.Key_spec.U[:len(id)])
	return id, nil
}

// RemoveKey takes the key out of the file system's keyring; files opened
// with it stay readable until closed.
func RemoveKey(mnt string, id Identifier) error {
	f, err := os.Open(mnt)
	if err != nil {
		return fmt.Errorf("fscrypt: %w", err)
	}
	defer f.Close()
	var arg unix.FscryptRemoveKeyArg
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	copy(arg.Key_spec.U[:], id[:])
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_REMOVE_ENCRYPTION_KEY, uintptr(unsafe.Pointer(&arg)))
	if errno != 0 && errno != unix.ENOKEY {
		return fmt.Errorf("fscrypt: remove key from %s: %w", mnt, errno)
	}
	return nil
}

// EnsureDir makes dir an encrypted directory under key id: it creates it if
// missing and sets the policy while it is empty; if it is already
// encrypted, the policy must name the same key.
func EnsureDir(dir string, id Identifier) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("fscrypt: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fscrypt: %w", err)
	}
	defer f.Close()
	cur, encrypted, err := policyOf(f)
	if err != nil {
		return fmt.Errorf("fscrypt: read policy of %s: %w", dir, err)
	}
	if encrypted {
		if cur != id {
			return fmt.Errorf("fscrypt: %s is encrypted with another key (%x), not %x", dir, cur, id)
		}
		return nil
	}
	names, err := f.Readdirnames(1)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("fscrypt: read %s: %w", dir, err)
	}
	if len(names) > 0 {
		return fmt.Errorf("fscrypt: %s: %w", dir, ErrNotEncrypted)
	}
	policy := unix.FscryptPolicyV2{
		Version:                   unix.FSCRYPT_POLICY_V2,
		Contents_encryption_mode:  unix.FSCRYPT_MODE_AES_256_XTS,
		Filenames_encryption_mode: unix.FSCRYPT_MODE_AES_256_CTS,
		Flags:                     unix.FSCRYPT_POLICY_FLAGS_PAD_32,
		Master_key_identifier:     id,
	}
	// The ioctl number encodes the v1 size; the kernel reads the version
	// byte first and then the whole v2 structure.
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_SET_ENCRYPTION_POLICY, uintptr(unsafe.Pointer(&policy)))
	if errno != 0 {
		return fmt.Errorf("fscrypt: set policy on %s: %w", dir, errno)
	}
	return nil
}

// Encrypted reports whether dir has an encryption policy and with which key.
func Encrypted(dir string) (Identifier, bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return Identifier{}, false, err
	}
	defer f.Close()
	return policyOf(f)
}

func policyOf(f *os.File) (Identifier, bool, error) {
	var arg unix.FscryptGetPolicyExArg
	arg.Size = uint64(len(arg.Policy))
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, uintptr(unsafe.Pointer(&arg)))
	switch errno {
	case 0:
	case unix.ENODATA:
		return Identifier{}, false, nil
	default:
		return Identifier{}, false, errno
	}
	if arg.Policy[0] != unix.FSCRYPT_POLICY_V2 {
		return Identifier{}, true, fmt.Errorf("policy version %d is not supported", arg.Policy[0])
	}
	p := (*unix.FscryptPolicyV2)(unsafe.Pointer(&arg.Policy[0]))
	return p.Master_key_identifier, true, nil
}
