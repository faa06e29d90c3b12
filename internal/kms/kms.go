// Package kms keeps symmetric keys and does envelope encryption with them:
// data keys are generated per volume, wrapped by a KMS key, and only the
// wrapped form is stored. Key material itself is stored sealed by a master
// key that lives in a file only the server can read.
package kms

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/stowage-io/stowage/internal/store"
)

const (
	bucketKeys    = "kms-keys"
	bucketAliases = "kms-aliases"
	// DefaultAlias is the key `encrypted: "true"` uses when no kmsKeyId is
	// given, as aws/ebs is on AWS.
	DefaultAlias = "alias/stowage/ebs"
	// Key states, named as AWS KMS names them.
	StateEnabled  = "Enabled"
	StateDisabled = "Disabled"
	blobMagic     = "stwk1"
)

var (
	ErrNotFound = errors.New("key not found")
	ErrDisabled = errors.New("key is not enabled")
	ErrInvalid  = errors.New("invalid key request")
	ErrExists   = errors.New("alias already exists")
)

// Key is a KMS key as the store keeps it. Material holds the sealed key
// versions; the newest encrypts, all of them decrypt.
type Key struct {
	ID          string    `json:"id"`
	Aliases     []string  `json:"aliases,omitempty"`
	Description string    `json:"description,omitempty"`
	State       string    `json:"state"`
	Created     time.Time `json:"created"`
	Material    [][]byte  `json:"material"`
}

// Service is the KMS of one Stowage server.
type Service struct {
	store  store.Store
	master cipher.AEAD
}

// Open returns the KMS, creating the master key file (0600) on first use.
func Open(st store.Store, masterKeyFile string) (*Service, error) {
	mk, err := os.ReadFile(masterKeyFile)
	if errors.Is(err, os.ErrNotExist) {
		mk = make([]byte, 32)
		if _, err := rand.Read(mk); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(masterKeyFile), 0o700); err != nil {
			return nil, fmt.Errorf("kms: create directory for master key: %w", err)
		}
		if err := os.WriteFile(masterKeyFile, mk, 0o600); err != nil {
			return nil, fmt.Errorf("kms: write master key %s: %w", masterKeyFile, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("kms: read master key %s: %w", masterKeyFile, err)
	}
	if len(mk) != 32 {
		return nil, fmt.Errorf("kms: master key %s has %d bytes, want 32 (was it truncated?)", masterKeyFile, len(mk))
	}
	aead, err := newAEAD(mk)
	if err != nil {
		return nil, err
	}
	return &Service{store: st, master: aead}, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func seal(aead cipher.AEAD, plaintext, aad []byte) ([]byte, error) {
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plaintext, aad), nil
}

func open(aead cipher.AEAD, sealed, aad []byte) ([]byte, error) {
	if len(sealed) < aead.NonceSize() {
		return nil, errors.New("sealed data too short")
	}
	return aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], aad)
}

func newKeyID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func validAlias(a string) error {
	if !strings.HasPrefix(a, "alias/") || len(a) <= len("alias/") || len(a) > 256 || strings.ContainsAny(a, " \t\n") {
		return fmt.Errorf("%w: alias %q must look like alias/<name>", ErrInvalid, a)
	}
	return nil
}

// CreateKey makes a new enabled key with fresh material and the aliases given.
func (s *Service) CreateKey(ctx context.Context, description string, aliases ...string) (*Key, error) {
	for _, a := range aliases {
		if err := validAlias(a); err != nil {
			return nil, err
		}
	}
	material := make([]byte, 32)
	if _, err := rand.Read(material); err != nil {
		return nil, err
	}
	k := &Key{ID: newKeyID(), Aliases: aliases, Description: description, State: StateEnabled, Created: time.Now().UTC()}
	sealed, err := seal(s.master, material, []byte(k.ID))
	if err != nil {
		return nil, err
	}
	k.Material = [][]byte{sealed}
	err = s.store.Update(ctx, func(tx store.Tx) error {
		for _, a := range aliases {
			if _, err := tx.Get(bucketAliases, a); err == nil {
				return fmt.Errorf("%w: %s", ErrExists, a)
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			if err := tx.Put(bucketAliases, a, []byte(k.ID)); err != nil {
				return err
			}
		}
		return store.PutJSON(tx, bucketKeys, k.ID, k)
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// Resolve finds a key by id, by alias, or by an ARN-like string ending in
// key/<id> or alias/<name>. An empty ref is the default key, created on
// first use.
func (s *Service) Resolve(ctx context.Context, ref string) (*Key, error) {
	if ref == "" {
		k, err := s.Resolve(ctx, DefaultAlias)
		if errors.Is(err, ErrNotFound) {
			k, err = s.CreateKey(ctx, "default key for encrypted volumes", DefaultAlias)
			if errors.Is(err, ErrExists) { // created concurrently
				return s.Resolve(ctx, DefaultAlias)
			}
		}
		return k, err
	}
	if i := strings.LastIndex(ref, ":"); i >= 0 {
		ref = ref[i+1:]
	}
	ref = strings.TrimPrefix(ref, "key/")
	var k Key
	err := s.store.View(ctx, func(tx store.Tx) error {
		id := ref
		if strings.HasPrefix(ref, "alias/") {
			b, err := tx.Get(bucketAliases, ref)
			if err != nil {
				return err
			}
			id = string(b)
		}
		return store.GetJSON(tx, bucketKeys, id, &k)
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, ref)
	}
	if err != nil {
		return nil, err
	}
	return &k, nil
}

// ListKeys returns every key, oldest first.
func (s *Service) ListKeys(ctx context.Context) ([]Key, error) {
	var keys []Key
	err := s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketKeys, "", "", func(_ string, v []byte) error {
			var k Key
			if err := json.Unmarshal(v, &k); err != nil {
				return err
			}
			keys = append(keys, k)
			return nil
		})
	})
	sort.Slice(keys, func(i, j int) bool { return keys[i].Created.Before(keys[j].Created) })
	return keys, err
}

func (s *Service) material(k *Key, version int) ([]byte, error) {
	if version < 0 || version >= len(k.Material) {
		return nil, fmt.Errorf("%w: key %s has no version %d", ErrInvalid, k.ID, version)
	}
	m, err := open(s.master, k.Material[version], []byte(k.ID))
	if err != nil {
		return nil, fmt.Errorf("kms: unseal key %s: %w (is the master key the one this store was made with?)", k.ID, err)
	}
	return m, nil
}

// GenerateDataKey returns a fresh random data key of size bytes, in the
// clear and wrapped by the key ref (empty: the default key).
func (s *Service) GenerateDataKey(ctx context.Context, ref string, size int) (plaintext, wrapped []byte, keyID string, err error) {
	if size < 16 || size > 64 {
		return nil, nil, "", fmt.Errorf("%w: data key size %d is not 16–64 bytes", ErrInvalid, size)
	}
	k, err := s.Resolve(ctx, ref)
	if err != nil {
		return nil, nil, "", err
	}
	if k.State != StateEnabled {
		return nil, nil, "", fmt.Errorf("%w: %s is %s", ErrDisabled, k.ID, k.State)
	}
	plaintext = make([]byte, size)
	if _, err := rand.Read(plaintext); err != nil {
		return nil, nil, "", err
	}
	wrapped, err = s.encrypt(k, plaintext)
	if err != nil {
		return nil, nil, "", err
	}
	return plaintext, wrapped, k.ID, nil
}

// encrypt seals with the newest version. The blob names the key and
// version, so Decrypt needs nothing else.
func (s *Service) encrypt(k *Key, plaintext []byte) ([]byte, error) {
	version := len(k.Material) - 1
	m, err := s.material(k, version)
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(m)
	if err != nil {
		return nil, err
	}
	var hdr bytes.Buffer
	hdr.WriteString(blobMagic)
	hdr.WriteByte(byte(len(k.ID)))
	hdr.WriteString(k.ID)
	binary.Write(&hdr, binary.BigEndian, uint32(version))
	sealed, err := seal(aead, plaintext, hdr.Bytes())
	if err != nil {
		return nil, err
	}
	return append(hdr.Bytes(), sealed...), nil
}

// Decrypt unwraps a blob made by GenerateDataKey; the key must be enabled.
func (s *Service) Decrypt(ctx context.Context, blob []byte) (plaintext []byte, keyID string, err error) {
	if len(blob) < len(blobMagic)+1 || string(blob[:len(blobMagic)]) != blobMagic {
		return nil, "", fmt.Errorf("%w: not a Stowage KMS ciphertext", ErrInvalid)
	}
	n := int(blob[len(blobMagic)])
	off := len(blobMagic) + 1
	if len(blob) < off+n+4 {
		return nil, "", fmt.Errorf("%w: ciphertext truncated", ErrInvalid)
	}
	keyID = string(blob[off : off+n])
	version := int(binary.BigEndian.Uint32(blob[off+n : off+n+4]))
	hdr := blob[:off+n+4]
	k, err := s.Resolve(ctx, keyID)
	if err != nil {
		return nil, keyID, err
	}
	if k.State != StateEnabled {
		return nil, keyID, fmt.Errorf("%w: %s is %s", ErrDisabled, k.ID, k.State)
	}
	m, err := s.material(k, version)
	if err != nil {
		return nil, keyID, err
	}
	aead, err := newAEAD(m)
	if err != nil {
		return nil, keyID, err
	}
	plaintext, err = open(aead, blob[len(hdr):], hdr)
	if err != nil {
		return nil, keyID, fmt.Errorf("%w: ciphertext does not decrypt with key %s", ErrInvalid, keyID)
	}
	return plaintext, keyID, nil
}
