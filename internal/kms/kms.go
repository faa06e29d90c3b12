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
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
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
	StateEnabled         = "Enabled"
	StateDisabled        = "Disabled"
	StatePendingDeletion = "PendingDeletion"
	blobMagic            = "stwk1"
	// The pending window of ScheduleKeyDeletion, in days, as on AWS.
	MinPendingDays     = 7
	MaxPendingDays     = 30
	DefaultPendingDays = 30
	// MaxPlaintext is the most Encrypt takes, as on AWS: bigger data is
	// encrypted with a data key (envelope encryption).
	MaxPlaintext = 4096
)

var (
	ErrNotFound = errors.New("key not found")
	// ErrDisabled is what a key that is not Enabled (Disabled or
	// PendingDeletion) returns, wrapped in a *StateError that names the key
	// and its state.
	ErrDisabled = errors.New("key is not enabled")
	ErrInvalid  = errors.New("invalid key request")
	ErrExists   = errors.New("alias already exists")
)

// StateError says that a key cannot do what was asked in the state it is
// in. errors.Is(err, ErrDisabled) is true for it.
type StateError struct {
	KeyID        string
	State        string
	DeletionDate time.Time
	// Op is what was refused, in words ("encrypt", "enable").
	Op string
}

func (e *StateError) Error() string {
	switch e.State {
	case StatePendingDeletion:
		return fmt.Sprintf("KMS key %s is pending deletion (to be deleted on %s), so it cannot %s; `stowage key cancel-deletion %s` keeps it",
			e.KeyID, e.DeletionDate.Format(time.RFC3339), e.Op, e.KeyID)
	case StateDisabled:
		return fmt.Sprintf("KMS key %s is disabled, so it cannot %s; `stowage key enable %s` turns it back on", e.KeyID, e.Op, e.KeyID)
	}
	return fmt.Sprintf("KMS key %s is %s, so it cannot %s", e.KeyID, e.State, e.Op)
}

func (e *StateError) Unwrap() error { return ErrDisabled }

// Key is a KMS key as the store keeps it. Material holds the sealed key
// versions; the newest encrypts, all of them decrypt.
type Key struct {
	ID          string    `json:"id"`
	Aliases     []string  `json:"aliases,omitempty"`
	Description string    `json:"description,omitempty"`
	State       string    `json:"state"`
	Created     time.Time `json:"created"`
	Material    [][]byte  `json:"material"`
	// VersionCreated[i] is when version i was made; keys from before
	// rotation existed have none.
	VersionCreated []time.Time `json:"versionCreated,omitempty"`
	// DeletionDate is set while the key is PendingDeletion.
	DeletionDate time.Time `json:"deletionDate,omitzero"`
}

// CurrentVersion is the version that encrypts.
func (k *Key) CurrentVersion() int { return len(k.Material) - 1 }

// VersionID names one version of a key: <key id>/<version>. The KMS v2
// plugin reports it as its key id, so that a rotation is seen.
func (k *Key) VersionID() string { return fmt.Sprintf("%s/%d", k.ID, k.CurrentVersion()) }

func (k *Key) usable(op string) error {
	if k.State != StateEnabled {
		return &StateError{KeyID: k.ID, State: k.State, DeletionDate: k.DeletionDate, Op: op}
	}
	return nil
}

// Service is the KMS of one Stowage server.
type Service struct {
	store  store.Store
	master cipher.AEAD
	now    func() time.Time
}

// Open returns the KMS. The root of trust is a 32-byte master key in
// masterKeyFile, made at first start with mode 0600; it seals every key's
// material. A master key file that others can read is refused.
func Open(st store.Store, masterKeyFile string) (*Service, error) {
	mk, err := readOrCreateMasterKey(masterKeyFile)
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(mk)
	if err != nil {
		return nil, err
	}
	return &Service{store: st, master: aead, now: time.Now}, nil
}

func readOrCreateMasterKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := createMasterKey(path); err != nil {
			return nil, err
		}
		f, err = os.Open(path)
	}
	if err != nil {
		return nil, fmt.Errorf("kms: read master key %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("kms: read master key %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("kms: master key %s has mode %04o: only its owner may read it (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	mk, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		return nil, fmt.Errorf("kms: read master key %s: %w", path, err)
	}
	if len(mk) != 32 {
		return nil, fmt.Errorf("kms: master key %s has %d bytes, want 32 (was it truncated?)", path, len(mk))
	}
	return mk, nil
}

// createMasterKey writes a new master key so that a crash never leaves a
// short file and two servers starting at once agree on one key: a synced
// temporary file is linked into place, which fails if one is there.
func createMasterKey(path string) error {
	mk := make([]byte, 32)
	if _, err := rand.Read(mk); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("kms: create directory for master key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".master-key-*")
	if err != nil {
		return fmt.Errorf("kms: write master key %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err == nil {
		if _, err = tmp.Write(mk); err == nil {
			err = tmp.Sync()
		}
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("kms: write master key %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("kms: write master key %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
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
	now := s.now().UTC()
	k := &Key{ID: newKeyID(), Aliases: aliases, Description: description, State: StateEnabled, Created: now}
	if err := s.addVersion(k, now); err != nil {
		return nil, err
	}
	err := s.store.Update(ctx, func(tx store.Tx) error {
		for _, a := range aliases {
			if err := putAlias(tx, a, k.ID); err != nil {
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

// addVersion seals fresh material as k's new current version.
func (s *Service) addVersion(k *Key, now time.Time) error {
	material := make([]byte, 32)
	if _, err := rand.Read(material); err != nil {
		return err
	}
	// Version 0 is sealed with the key id alone, as before versions had
	// dates; later versions name their number too.
	aad := []byte(k.ID)
	if v := len(k.Material); v > 0 {
		aad = fmt.Appendf(aad, "/%d", v)
	}
	sealed, err := seal(s.master, material, aad)
	if err != nil {
		return err
	}
	for len(k.VersionCreated) < len(k.Material) {
		k.VersionCreated = append(k.VersionCreated, k.Created)
	}
	k.Material = append(k.Material, sealed)
	k.VersionCreated = append(k.VersionCreated, now)
	return nil
}

func putAlias(tx store.Tx, alias, keyID string) error {
	if _, err := tx.Get(bucketAliases, alias); err == nil {
		return fmt.Errorf("%w: %s", ErrExists, alias)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return tx.Put(bucketAliases, alias, []byte(keyID))
}

// EnsureKey resolves alias, creating a key with it on first use (the
// default keys of volumes, secrets and parameters).
func (s *Service) EnsureKey(ctx context.Context, alias, description string) (*Key, error) {
	k, err := s.Resolve(ctx, alias)
	if errors.Is(err, ErrNotFound) {
		k, err = s.CreateKey(ctx, description, alias)
		if errors.Is(err, ErrExists) { // created concurrently
			return s.Resolve(ctx, alias)
		}
	}
	return k, err
}

// Resolve finds a key by id, by alias, or by an ARN-like string ending in
// key/<id> or alias/<name>. An empty ref is the default key, created on
// first use. A key whose deletion date has passed is deleted here, and is
// not found.
func (s *Service) Resolve(ctx context.Context, ref string) (*Key, error) {
	if ref == "" {
		return s.EnsureKey(ctx, DefaultAlias, "default key for encrypted volumes")
	}
	if i := strings.LastIndex(ref, ":"); i >= 0 {
		ref = ref[i+1:]
	}
	ref = strings.TrimPrefix(ref, "key/")
	var k Key
	err := s.store.View(ctx, func(tx store.Tx) error {
		id, err := resolveID(tx, ref)
		if err != nil {
			return err
		}
		return store.GetJSON(tx, bucketKeys, id, &k)
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, ref)
	}
	if err != nil {
		return nil, err
	}
	if s.due(&k) {
		if err := s.purge(ctx, k.ID); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %s (deleted on %s)", ErrNotFound, ref, k.DeletionDate.Format(time.RFC3339))
	}
	return &k, nil
}

func resolveID(tx store.Tx, ref string) (string, error) {
	if !strings.HasPrefix(ref, "alias/") {
		return ref, nil
	}
	b, err := tx.Get(bucketAliases, ref)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

func (s *Service) due(k *Key) bool {
	return k.State == StatePendingDeletion && !k.DeletionDate.IsZero() && !s.now().Before(k.DeletionDate)
}

// purge deletes a key whose pending window is over, and its aliases.
func (s *Service) purge(ctx context.Context, id string) error {
	return s.store.Update(ctx, func(tx store.Tx) error {
		var k Key
		if err := store.GetJSON(tx, bucketKeys, id, &k); errors.Is(err, store.ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if !s.due(&k) {
			return nil
		}
		for _, a := range k.Aliases {
			if b, err := tx.Get(bucketAliases, a); err == nil && string(b) == id {
				if err := tx.Delete(bucketAliases, a); err != nil {
					return err
				}
			}
		}
		return tx.Delete(bucketKeys, id)
	})
}

// ListKeys returns every key, oldest first. Keys whose deletion date has
// passed are deleted and left out.
func (s *Service) ListKeys(ctx context.Context) ([]Key, error) {
	var keys, due []Key
	err := s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketKeys, "", "", func(_ string, v []byte) error {
			var k Key
			if err := json.Unmarshal(v, &k); err != nil {
				return err
			}
			if s.due(&k) {
				due = append(due, k)
			} else {
				keys = append(keys, k)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	for _, k := range due {
		if err := s.purge(ctx, k.ID); err != nil {
			return nil, err
		}
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Created.Before(keys[j].Created) })
	return keys, nil
}

// change resolves ref and applies fn to the key in one transaction.
func (s *Service) change(ctx context.Context, ref string, fn func(tx store.Tx, k *Key) error) (*Key, error) {
	k0, err := s.Resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	var k Key
	err = s.store.Update(ctx, func(tx store.Tx) error {
		if err := store.GetJSON(tx, bucketKeys, k0.ID, &k); err != nil {
			return err
		}
		if err := fn(tx, &k); err != nil {
			return err
		}
		return store.PutJSON(tx, bucketKeys, k.ID, &k)
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, ref)
	}
	if err != nil {
		return nil, err
	}
	return &k, nil
}

// EnableKey makes a disabled key usable again. A key pending deletion must
// have its deletion cancelled first.
func (s *Service) EnableKey(ctx context.Context, ref string) (*Key, error) {
	return s.change(ctx, ref, func(_ store.Tx, k *Key) error {
		if k.State == StatePendingDeletion {
			return &StateError{KeyID: k.ID, State: k.State, DeletionDate: k.DeletionDate, Op: "be enabled"}
		}
		k.State = StateEnabled
		return nil
	})
}

// DisableKey stops a key from encrypting and decrypting; nothing it
// protects can be read until it is enabled again.
func (s *Service) DisableKey(ctx context.Context, ref string) (*Key, error) {
	return s.change(ctx, ref, func(_ store.Tx, k *Key) error {
		if k.State == StatePendingDeletion {
			return &StateError{KeyID: k.ID, State: k.State, DeletionDate: k.DeletionDate, Op: "be disabled"}
		}
		k.State = StateDisabled
		return nil
	})
}

// ScheduleKeyDeletion puts a key into PendingDeletion for days days (0:
// the default of 30; otherwise 7–30). It is refused meanwhile, and deleted
// for good after.
func (s *Service) ScheduleKeyDeletion(ctx context.Context, ref string, days int) (*Key, error) {
	if days == 0 {
		days = DefaultPendingDays
	}
	if days < MinPendingDays || days > MaxPendingDays {
		return nil, fmt.Errorf("%w: pending window of %d days is not %d–%d days", ErrInvalid, days, MinPendingDays, MaxPendingDays)
	}
	return s.change(ctx, ref, func(_ store.Tx, k *Key) error {
		if k.State == StatePendingDeletion {
			return &StateError{KeyID: k.ID, State: k.State, DeletionDate: k.DeletionDate, Op: "be scheduled for deletion again"}
		}
		k.State = StatePendingDeletion
		k.DeletionDate = s.now().UTC().Add(time.Duration(days) * 24 * time.Hour)
		return nil
	})
}

// CancelKeyDeletion takes a key out of PendingDeletion; like AWS, it is
// then Disabled until enabled.
func (s *Service) CancelKeyDeletion(ctx context.Context, ref string) (*Key, error) {
	return s.change(ctx, ref, func(_ store.Tx, k *Key) error {
		if k.State != StatePendingDeletion {
			return fmt.Errorf("%w: KMS key %s is %s, not pending deletion", ErrInvalid, k.ID, k.State)
		}
		k.State = StateDisabled
		k.DeletionDate = time.Time{}
		return nil
	})
}

// RotateKey adds a new version that encrypts from now on; every older
// version still decrypts what it encrypted.
func (s *Service) RotateKey(ctx context.Context, ref string) (*Key, error) {
	return s.change(ctx, ref, func(_ store.Tx, k *Key) error {
		if err := k.usable("be rotated"); err != nil {
			return err
		}
		return s.addVersion(k, s.now().UTC())
	})
}

// CreateAlias points a new alias at a key.
func (s *Service) CreateAlias(ctx context.Context, alias, ref string) (*Key, error) {
	if err := validAlias(alias); err != nil {
		return nil, err
	}
	return s.change(ctx, ref, func(tx store.Tx, k *Key) error {
		if err := putAlias(tx, alias, k.ID); err != nil {
			return err
		}
		k.Aliases = append(k.Aliases, alias)
		return nil
	})
}

// DeleteAlias removes an alias; the key stays. A missing alias is not an
// error.
func (s *Service) DeleteAlias(ctx context.Context, alias string) error {
	if err := validAlias(alias); err != nil {
		return err
	}
	return s.store.Update(ctx, func(tx store.Tx) error {
		b, err := tx.Get(bucketAliases, alias)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		var k Key
		if err := store.GetJSON(tx, bucketKeys, string(b), &k); err == nil {
			k.Aliases = slices.DeleteFunc(k.Aliases, func(a string) bool { return a == alias })
			if err := store.PutJSON(tx, bucketKeys, k.ID, &k); err != nil {
				return err
			}
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		return tx.Delete(bucketAliases, alias)
	})
}

func (s *Service) material(k *Key, version int) ([]byte, error) {
	if version < 0 || version >= len(k.Material) {
		return nil, fmt.Errorf("%w: key %s has no version %d", ErrInvalid, k.ID, version)
	}
	aad := []byte(k.ID)
	if version > 0 {
		aad = fmt.Appendf(aad, "/%d", version)
	}
	m, err := open(s.master, k.Material[version], aad)
	if err != nil {
		return nil, fmt.Errorf("kms: unseal key %s: %w (is the master key the one this store was made with?)", k.ID, err)
	}
	return m, nil
}

// GenerateDataKey returns a fresh random data key of size bytes, in the
// clear and wrapped by the key ref (empty: the default key). The same
// encryption context must be given to Decrypt the wrapped key.
func (s *Service) GenerateDataKey(ctx context.Context, ref string, size int, encCtx map[string]string) (plaintext, wrapped []byte, keyID string, err error) {
	if size < 16 || size > 64 {
		return nil, nil, "", fmt.Errorf("%w: data key size %d is not 16–64 bytes", ErrInvalid, size)
	}
	k, err := s.Resolve(ctx, ref)
	if err != nil {
		return nil, nil, "", err
	}
	if err := k.usable("generate a data key"); err != nil {
		return nil, nil, "", err
	}
	plaintext = make([]byte, size)
	if _, err := rand.Read(plaintext); err != nil {
		return nil, nil, "", err
	}
	wrapped, err = s.encrypt(k, plaintext, encCtx)
	if err != nil {
		return nil, nil, "", err
	}
	return plaintext, wrapped, k.ID, nil
}

// Encrypt encrypts up to MaxPlaintext bytes with the key ref's current
// version, bound to the encryption context.
func (s *Service) Encrypt(ctx context.Context, ref string, plaintext []byte, encCtx map[string]string) (blob []byte, keyID string, err error) {
	if len(plaintext) == 0 || len(plaintext) > MaxPlaintext {
		return nil, "", fmt.Errorf("%w: plaintext of %d bytes is not 1–%d bytes (encrypt more with a data key)", ErrInvalid, len(plaintext), MaxPlaintext)
	}
	k, err := s.Resolve(ctx, ref)
	if err != nil {
		return nil, "", err
	}
	if err := k.usable("encrypt"); err != nil {
		return nil, "", err
	}
	blob, err = s.encrypt(k, plaintext, encCtx)
	return blob, k.ID, err
}

// encrypt seals with the newest version. The blob names the key and
// version, so Decrypt needs nothing else but the encryption context, which
// is authenticated and not stored.
func (s *Service) encrypt(k *Key, plaintext []byte, encCtx map[string]string) ([]byte, error) {
	version := k.CurrentVersion()
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
	sealed, err := seal(aead, plaintext, contextAAD(hdr.Bytes(), encCtx))
	if err != nil {
		return nil, err
	}
	return append(hdr.Bytes(), sealed...), nil
}

// contextAAD appends the encryption context to the header, sorted and
// length-prefixed. An empty context adds nothing, so blobs made before
// contexts existed (volume data keys) decrypt as they did.
func contextAAD(hdr []byte, encCtx map[string]string) []byte {
	aad := bytes.Clone(hdr)
	for _, k := range slices.Sorted(maps.Keys(encCtx)) {
		aad = binary.AppendUvarint(aad, uint64(len(k)))
		aad = append(aad, k...)
		aad = binary.AppendUvarint(aad, uint64(len(encCtx[k])))
		aad = append(aad, encCtx[k]...)
	}
	return aad
}

// BlobKey returns the key id and version a ciphertext names.
func BlobKey(blob []byte) (keyID string, version int, err error) {
	if len(blob) < len(blobMagic)+1 || string(blob[:len(blobMagic)]) != blobMagic {
		return "", 0, fmt.Errorf("%w: not a Stowage KMS ciphertext", ErrInvalid)
	}
	n := int(blob[len(blobMagic)])
	off := len(blobMagic) + 1
	if len(blob) < off+n+4 {
		return "", 0, fmt.Errorf("%w: ciphertext truncated", ErrInvalid)
	}
	return string(blob[off : off+n]), int(binary.BigEndian.Uint32(blob[off+n : off+n+4])), nil
}

// Decrypt unwraps a blob made by Encrypt or GenerateDataKey with the same
// encryption context; the key must be enabled.
func (s *Service) Decrypt(ctx context.Context, blob []byte, encCtx map[string]string) (plaintext []byte, keyID string, err error) {
	keyID, version, err := BlobKey(blob)
	if err != nil {
		return nil, "", err
	}
	hdr := blob[:len(blobMagic)+1+len(keyID)+4]
	k, err := s.Resolve(ctx, keyID)
	if err != nil {
		return nil, keyID, err
	}
	if err := k.usable("decrypt"); err != nil {
		return nil, keyID, err
	}
	m, err := s.material(k, version)
	if err != nil {
		return nil, keyID, err
	}
	aead, err := newAEAD(m)
	if err != nil {
		return nil, keyID, err
	}
	plaintext, err = open(aead, blob[len(hdr):], contextAAD(hdr, encCtx))
	if err != nil {
		return nil, keyID, fmt.Errorf("%w: ciphertext does not decrypt with key %s version %d and the encryption context given", ErrInvalid, keyID, version)
	}
	return plaintext, keyID, nil
}

// SealInternal seals data the server keeps for itself, not under a
// customer's key: no key state, policy or rotation applies, so disabling a
// KMS key cannot lock the server out of its own records. It is sealed by
// the master key; purpose and aad are bound to it (OpenInternal must be
// given the same) and keep it apart from key material, whose binding is a
// key id.
func (s *Service) SealInternal(purpose string, plaintext, aad []byte) ([]byte, error) {
	return seal(s.master, plaintext, internalAAD(purpose, aad))
}

// OpenInternal opens what SealInternal sealed with the same purpose and aad.
func (s *Service) OpenInternal(purpose string, sealed, aad []byte) ([]byte, error) {
	return open(s.master, sealed, internalAAD(purpose, aad))
}

func internalAAD(purpose string, aad []byte) []byte {
	return append([]byte("stowage-internal\x00"+purpose+"\x00"), aad...)
}
