// Package secrets is the Secrets Manager model of Stowage: named secrets
// whose values have versions with staging labels (AWSCURRENT, AWSPREVIOUS,
// custom), a recovery window on delete, and rotation (on demand or on a
// schedule) by a built-in password generator or a webhook. Values are stored only as KMS envelopes (a data key
// per version, wrapped by a KMS key, bound to the secret's ARN and the
// version id); every change is one store transaction.
package secrets

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/store"
)

const (
	bucketSecrets = "sm-secrets"
	bucketValues  = "sm-secret-values"

	StageCurrent  = "AWSCURRENT"
	StagePrevious = "AWSPREVIOUS"
	StagePending  = "AWSPENDING"

	// DefaultKeyAlias encrypts secrets that name no key, as
	// aws/secretsmanager does on AWS; it is made on first use.
	DefaultKeyAlias = "alias/stowage/secretsmanager"

	MaxValueSize        = 65536
	MinRecoveryDays     = 7
	MaxRecoveryDays     = 30
	DefaultRecoveryDays = 30
	// MaxVersions is how many versions a secret keeps; the oldest versions
	// without a stage go first.
	MaxVersions = 100
	// DefaultPasswordLength is the generator's default.
	DefaultPasswordLength = 32
)

var (
	ErrNotFound = errors.New("secret not found")
	ErrExists   = errors.New("secret already exists")
	ErrInvalid  = errors.New("invalid secret request")
	// ErrDeleted is returned for a secret scheduled for deletion: restore it
	// first.
	ErrDeleted = errors.New("secret is scheduled for deletion")
	// ErrRotation is a rotation whose new value could not be had (a
	// webhook that failed or answered badly).
	ErrRotation = errors.New("rotation failed")
)

// Secret is a secret's metadata as stored; values are stored apart.
type Secret struct {
	ARN          string            `json:"arn"`
	Name         string            `json:"name"`
	Description  string            `json:"description,omitempty"`
	KMSKeyID     string            `json:"kmsKeyId"`
	Tags         map[string]string `json:"tags,omitempty"`
	Created      time.Time         `json:"created"`
	LastChanged  time.Time         `json:"lastChanged"`
	DeletionDate time.Time         `json:"deletionDate,omitzero"`
	LastRotated  time.Time         `json:"lastRotated,omitzero"`
	// Rotation is the generator of the last rotation; Webhook, when set,
	// is the custom rotation used instead.
	Rotation *Generator `json:"rotation,omitempty"`
	Webhook  *Webhook   `json:"webhook,omitempty"`
	// Scheduled rotation: RotationSchedule is `rate(…)`, NextRotation when
	// the server rotates next (or retries after a failure).
	RotationEnabled  bool      `json:"rotationEnabled,omitempty"`
	RotationSchedule string    `json:"rotationSchedule,omitempty"`
	NextRotation     time.Time `json:"nextRotation,omitzero"`
	// Why the last scheduled rotation failed (never a value), cleared by
	// the next rotation that succeeds; RotationFailures counts failures in
	// a row, for the retry backoff.
	LastRotationError     string    `json:"lastRotationError,omitempty"`
	LastRotationErrorTime time.Time `json:"lastRotationErrorTime,omitzero"`
	RotationFailures      int       `json:"rotationFailures,omitempty"`
	// Versions, newest first.
	Versions []Version `json:"versions,omitempty"`
}

// Version is one version of a secret's value.
type Version struct {
	ID      string    `json:"id"`
	Stages  []string  `json:"stages,omitempty"`
	Created time.Time `json:"created"`
	Binary  bool      `json:"binary,omitempty"`
}

// Value is a secret value in the clear: exactly one of String and Binary
// is set.
type Value struct {
	String *string
	Binary []byte
}

func (v Value) bytes() []byte {
	if v.String != nil {
		return []byte(*v.String)
	}
	return v.Binary
}

func (v Value) set() bool { return v.String != nil || v.Binary != nil }

// StringValue is a Value holding s.
func StringValue(s string) Value { return Value{String: &s} }

// Generator is the built-in rotation: a random password put into one key
// of a JSON object value, or as the whole value.
type Generator struct {
	JSONKey            string `json:"jsonKey,omitempty"`
	WholeValue         bool   `json:"wholeValue,omitempty"`
	Length             int    `json:"length,omitempty"`
	ExcludePunctuation bool   `json:"excludePunctuation,omitempty"`
}

// Options configure the ARNs a Service makes.
type Options struct {
	Region  string // default "local"
	Account string // default "000000000000"
	// Now is the clock of versions, deletion and rotation dates; default
	// time.Now.
	Now func() time.Time
}

// Service keeps the secrets of one Stowage server.
type Service struct {
	store           store.Store
	kms             *kms.Service
	region, account string
	now             func() time.Time
	webhookClient   *http.Client
	// afterPending runs between the two transactions of a rotation; tests
	// use it to stop there as a crash would.
	afterPending func() error
}

// New returns the secrets service over st, encrypting with k.
func New(st store.Store, k *kms.Service, o Options) *Service {
	if o.Region == "" {
		o.Region = "local"
	}
	if o.Account == "" {
		o.Account = "000000000000"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Service{store: st, kms: k, region: o.Region, account: o.Account, now: o.Now, webhookClient: newWebhookClient()}
}

var (
	nameRE  = regexp.MustCompile(`^[A-Za-z0-9/_+=.@-]{1,512}$`)
	stageRE = regexp.MustCompile(`^[A-Za-z0-9/_+=.@-]{1,256}$`)
)

func validName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: secret name %q must be 1–512 characters of letters, digits and /_+=.@-", ErrInvalid, name)
	}
	return nil
}

func validToken(token string) error {
	if token != "" && (len(token) < 32 || len(token) > 64) {
		return fmt.Errorf("%w: client request token (version id) must be 32–64 characters, not %d", ErrInvalid, len(token))
	}
	return nil
}

func validValue(name string, v Value) error {
	if v.String != nil && v.Binary != nil {
		return fmt.Errorf("%w: secret %s: give a string or a binary value, not both", ErrInvalid, name)
	}
	if n := len(v.bytes()); n > MaxValueSize {
		return fmt.Errorf("%w: secret %s: value of %d bytes is larger than %d bytes", ErrInvalid, name, n, MaxValueSize)
	}
	return nil
}

// newVersionID is a random UUID, as AWS version ids are.
func newVersionID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

const suffixChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

func randomString(n int, chars string) string {
	out := make([]byte, n)
	for i := range out {
		j, err := rand.Int(rand.Reader, big.NewInt(int64(len(chars))))
		if err != nil {
			panic(err)
		}
		out[i] = chars[j.Int64()]
	}
	return string(out)
}

func (s *Service) newARN(name string) string {
	return fmt.Sprintf("arn:aws:secretsmanager:%s:%s:secret:%s-%s", s.region, s.account, name, randomString(6, suffixChars))
}

// nameFromRef takes a name, a full ARN (…:secret:<name>-<6 characters>)
// or a partial ARN without the suffix. Region and account of an ARN are not
// checked: one server is one region.
func nameFromRef(ref string) (name, arnResource string, err error) {
	if !strings.HasPrefix(ref, "arn:") {
		return ref, "", validName(ref)
	}
	parts := strings.SplitN(ref, ":", 7)
	if len(parts) != 7 || parts[2] != "secretsmanager" || parts[5] != "secret" || parts[6] == "" {
		return "", "", fmt.Errorf("%w: %q is not a secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>-<6 characters>)", ErrInvalid, ref)
	}
	return parts[6], parts[6], nil
}

func valueKey(name, versionID string) string { return name + "|" + versionID }

func encContext(arn, versionID string) map[string]string {
	return map[string]string{"SecretARN": arn, "SecretVersionId": versionID}
}

// lookup reads the secret ref names inside tx. A full ARN must match the
// secret's suffix; a partial one is taken as a name.
func lookup(tx store.Tx, ref string) (*Secret, error) {
	name, res, err := nameFromRef(ref)
	if err != nil {
		return nil, err
	}
	var sec Secret
	if res != "" {
		if i := len(res) - 7; i > 0 && res[i] == '-' {
			err := store.GetJSON(tx, bucketSecrets, res[:i], &sec)
			if err == nil && strings.HasSuffix(sec.ARN, ":secret:"+res) {
				return &sec, nil
			} else if err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, err
			}
		}
	}
	err = store.GetJSON(tx, bucketSecrets, name, &sec)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, ref)
	}
	if err != nil {
		return nil, err
	}
	return &sec, nil
}

func (s *Service) due(sec *Secret) bool {
	return !sec.DeletionDate.IsZero() && !s.now().Before(sec.DeletionDate)
}

// get reads a secret, deleting it for good when its recovery window is
// over.
func (s *Service) get(ctx context.Context, ref string) (*Secret, error) {
	var sec *Secret
	err := s.store.View(ctx, func(tx store.Tx) (err error) {
		sec, err = lookup(tx, ref)
		return err
	})
	if err != nil {
		return nil, err
	}
	if s.due(sec) {
		if err := s.store.Update(ctx, func(tx store.Tx) error { return purge(tx, sec) }); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %s (deleted on %s)", ErrNotFound, ref, sec.DeletionDate.Format(time.RFC3339))
	}
	return sec, nil
}

func purge(tx store.Tx, sec *Secret) error {
	for _, v := range sec.Versions {
		if err := tx.Delete(bucketValues, valueKey(sec.Name, v.ID)); err != nil {
			return err
		}
	}
	return tx.Delete(bucketSecrets, sec.Name)
}

func notDeleted(sec *Secret) error {
	if !sec.DeletionDate.IsZero() {
		return fmt.Errorf("%w: secret %s is scheduled for deletion on %s; `stowage secret restore %s` first",
			ErrDeleted, sec.Name, sec.DeletionDate.Format(time.RFC3339), sec.Name)
	}
	return nil
}

// update re-reads the secret in a read-write transaction and saves what fn
// made of it.
func (s *Service) update(ctx context.Context, ref string, fn func(tx store.Tx, sec *Secret) error) (*Secret, error) {
	var sec *Secret
	err := s.store.Update(ctx, func(tx store.Tx) (err error) {
		if sec, err = lookup(tx, ref); err != nil {
			return err
		}
		if err := fn(tx, sec); err != nil {
			return err
		}
		return store.PutJSON(tx, bucketSecrets, sec.Name, sec)
	})
	if err != nil {
		return nil, err
	}
	return sec, nil
}

func (sec *Secret) version(id string) *Version {
	for i := range sec.Versions {
		if sec.Versions[i].ID == id {
			return &sec.Versions[i]
		}
	}
	return nil
}

func (sec *Secret) stageHolder(stage string) *Version {
	for i := range sec.Versions {
		if slices.Contains(sec.Versions[i].Stages, stage) {
			return &sec.Versions[i]
		}
	}
	return nil
}

// moveStage attaches stage to version to, taking it from any other
// version. Moving AWSCURRENT makes the version that had it AWSPREVIOUS.
func (sec *Secret) moveStage(stage, to string) {
	old := sec.stageHolder(stage)
	if old != nil && old.ID == to {
		return
	}
	if old != nil {
		old.Stages = slices.DeleteFunc(old.Stages, func(s string) bool { return s == stage })
	}
	if stage == StageCurrent && old != nil {
		sec.moveStage(StagePrevious, old.ID)
	}
	v := sec.version(to)
	v.Stages = append(v.Stages, stage)
}

func (sec *Secret) removeStage(stage, from string) {
	if v := sec.version(from); v != nil {
		v.Stages = slices.DeleteFunc(v.Stages, func(s string) bool { return s == stage })
	}
}

// addVersion stores a sealed value as a new version with stages and drops
// the oldest versions without a stage beyond MaxVersions.
func (s *Service) addVersion(tx store.Tx, sec *Secret, id string, env *kms.Envelope, binary bool, stages []string) error {
	if err := store.PutJSON(tx, bucketValues, valueKey(sec.Name, id), env); err != nil {
		return err
	}
	now := s.now().UTC()
	sec.Versions = append([]Version{{ID: id, Created: now, Binary: binary}}, sec.Versions...)
	for _, st := range stages {
		sec.moveStage(st, id)
	}
	sec.LastChanged = now
	for i := len(sec.Versions) - 1; i >= 0 && len(sec.Versions) > MaxVersions; i-- {
		if len(sec.Versions[i].Stages) == 0 {
			if err := tx.Delete(bucketValues, valueKey(sec.Name, sec.Versions[i].ID)); err != nil {
				return err
			}
			sec.Versions = slices.Delete(sec.Versions, i, i+1)
		}
	}
	return nil
}

// CreateInput is what a new secret is made of.
type CreateInput struct {
	Name, Description, KMSKeyID string
	Value                       Value // optional
	Tags                        map[string]string
	// ClientRequestToken is the first version's id; with it a repeated
	// create returns the existing secret.
	ClientRequestToken string
}

// Create makes a secret, with a first AWSCURRENT version if a value is
// given. It returns the secret and the new version's id.
func (s *Service) Create(ctx context.Context, in CreateInput) (*Secret, string, error) {
	if err := validName(in.Name); err != nil {
		return nil, "", err
	}
	if err := validValue(in.Name, in.Value); err != nil {
		return nil, "", err
	}
	if err := validToken(in.ClientRequestToken); err != nil {
		return nil, "", err
	}
	if existing, err := s.get(ctx, in.Name); err == nil {
		return s.createAgain(ctx, existing, in)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, "", err
	}
	keyRef := in.KMSKeyID
	if keyRef == "" {
		keyRef = DefaultKeyAlias
		if _, err := s.kms.EnsureKey(ctx, DefaultKeyAlias, "default key for secrets"); err != nil {
			return nil, "", err
		}
	}
	key, err := s.kms.Resolve(ctx, keyRef)
	if err != nil {
		return nil, "", err
	}
	now := s.now().UTC()
	sec := &Secret{ARN: s.newARN(in.Name), Name: in.Name, Description: in.Description, KMSKeyID: key.ID, Tags: in.Tags, Created: now, LastChanged: now}
	versionID := ""
	var env *kms.Envelope
	if in.Value.set() {
		versionID = in.ClientRequestToken
		if versionID == "" {
			versionID = newVersionID()
		}
		if env, err = s.kms.Seal(ctx, key.ID, in.Value.bytes(), encContext(sec.ARN, versionID)); err != nil {
			return nil, "", err
		}
	}
	err = s.store.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.Get(bucketSecrets, in.Name); err == nil {
			return fmt.Errorf("%w: %s", ErrExists, in.Name)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if env != nil {
			if err := s.addVersion(tx, sec, versionID, env, in.Value.Binary != nil, []string{StageCurrent}); err != nil {
				return err
			}
		}
		return store.PutJSON(tx, bucketSecrets, sec.Name, sec)
	})
	if errors.Is(err, ErrExists) { // created concurrently
		if existing, gerr := s.get(ctx, in.Name); gerr == nil {
			return s.createAgain(ctx, existing, in)
		}
	}
	if err != nil {
		return nil, "", err
	}
	return sec, versionID, nil
}

// createAgain answers a create of a name that exists: the same request
// again (same token and value) returns it, anything else is ErrExists.
func (s *Service) createAgain(ctx context.Context, sec *Secret, in CreateInput) (*Secret, string, error) {
	if !sec.DeletionDate.IsZero() {
		return nil, "", fmt.Errorf("%w: secret %s is scheduled for deletion; restore it or wait until %s",
			ErrExists, sec.Name, sec.DeletionDate.Format(time.RFC3339))
	}
	if in.ClientRequestToken != "" && sec.version(in.ClientRequestToken) != nil {
		if same, err := s.sameValue(ctx, sec, in.ClientRequestToken, in.Value); err != nil {
			return nil, "", err
		} else if same {
			return sec, in.ClientRequestToken, nil
		}
	}
	return nil, "", fmt.Errorf("%w: %s (%s)", ErrExists, sec.Name, sec.ARN)
}

func (s *Service) sameValue(ctx context.Context, sec *Secret, versionID string, v Value) (bool, error) {
	got, err := s.open(ctx, sec, sec.version(versionID))
	if err != nil {
		return false, err
	}
	return (got.String != nil) == (v.String != nil) && bytes.Equal(got.bytes(), v.bytes()), nil
}

func (s *Service) open(ctx context.Context, sec *Secret, v *Version) (Value, error) {
	var env kms.Envelope
	err := s.store.View(ctx, func(tx store.Tx) error { return store.GetJSON(tx, bucketValues, valueKey(sec.Name, v.ID), &env) })
	if err != nil {
		return Value{}, fmt.Errorf("secret %s version %s: %w", sec.Name, v.ID, err)
	}
	b, err := s.kms.Open(ctx, &env, encContext(sec.ARN, v.ID))
	if err != nil {
		return Value{}, fmt.Errorf("secret %s: %w", sec.Name, err)
	}
	if v.Binary {
		return Value{Binary: b}, nil
	}
	return StringValue(string(b)), nil
}

func validStages(stages []string) error {
	if len(stages) > 20 {
		return fmt.Errorf("%w: at most 20 stages per version, not %d", ErrInvalid, len(stages))
	}
	for _, st := range stages {
		if !stageRE.MatchString(st) {
			return fmt.Errorf("%w: stage %q must be 1–256 characters of letters, digits and /_+=.@-", ErrInvalid, st)
		}
	}
	return nil
}

// PutValue adds a version with the stages given (default AWSCURRENT). The
// same token and value again return the existing version.
func (s *Service) PutValue(ctx context.Context, ref string, v Value, token string, stages []string) (*Secret, string, error) {
	if !v.set() {
		return nil, "", fmt.Errorf("%w: secret %s: a value is required", ErrInvalid, ref)
	}
	if err := validValue(ref, v); err != nil {
		return nil, "", err
	}
	if err := validToken(token); err != nil {
		return nil, "", err
	}
	if len(stages) == 0 {
		stages = []string{StageCurrent}
	}
	if err := validStages(stages); err != nil {
		return nil, "", err
	}
	sec, err := s.get(ctx, ref)
	if err != nil {
		return nil, "", err
	}
	if err := notDeleted(sec); err != nil {
		return nil, "", err
	}
	if token != "" && sec.version(token) != nil {
		same, err := s.sameValue(ctx, sec, token, v)
		if err != nil {
			return nil, "", err
		}
		if !same {
			return nil, "", fmt.Errorf("%w: version %s of secret %s exists with another value", ErrExists, token, sec.Name)
		}
		return sec, token, nil
	}
	if token == "" {
		token = newVersionID()
	}
	env, err := s.kms.Seal(ctx, sec.KMSKeyID, v.bytes(), encContext(sec.ARN, token))
	if err != nil {
		return nil, "", fmt.Errorf("secret %s: %w", sec.Name, err)
	}
	sec, err = s.update(ctx, sec.ARN, func(tx store.Tx, sec *Secret) error {
		if err := notDeleted(sec); err != nil {
			return err
		}
		if sec.version(token) != nil {
			return fmt.Errorf("%w: version %s of secret %s was written meanwhile", ErrExists, token, sec.Name)
		}
		return s.addVersion(tx, sec, token, env, v.Binary != nil, stages)
	})
	if err != nil {
		return nil, "", err
	}
	return sec, token, nil
}

// GetValue returns a version's value: the one with versionID, else the one
// with stage (default AWSCURRENT). With both, the version must have the
// stage.
func (s *Service) GetValue(ctx context.Context, ref, versionID, stage string) (*Secret, *Version, Value, error) {
	sec, v, err := s.ResolveVersion(ctx, ref, versionID, stage)
	if err != nil {
		return nil, nil, Value{}, err
	}
	val, err := s.open(ctx, sec, v)
	if err != nil {
		return nil, nil, Value{}, err
	}
	return sec, v, val, nil
}

// ResolveVersion finds the version GetValue would read (by versionID, by
// stage, AWSCURRENT by default) without decrypting it: a version check.
func (s *Service) ResolveVersion(ctx context.Context, ref, versionID, stage string) (*Secret, *Version, error) {
	sec, err := s.get(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	if err := notDeleted(sec); err != nil {
		return nil, nil, err
	}
	var v *Version
	switch {
	case versionID != "":
		if v = sec.version(versionID); v == nil {
			return nil, nil, fmt.Errorf("%w: secret %s has no version %s", ErrNotFound, sec.Name, versionID)
		}
		if stage != "" && !slices.Contains(v.Stages, stage) {
			return nil, nil, fmt.Errorf("%w: version %s of secret %s does not have stage %s", ErrInvalid, versionID, sec.Name, stage)
		}
	default:
		if stage == "" {
			stage = StageCurrent
		}
		if v = sec.stageHolder(stage); v == nil {
			return nil, nil, fmt.Errorf("%w: secret %s has no version with stage %s", ErrNotFound, sec.Name, stage)
		}
	}
	return sec, v, nil
}

// OpenVersion decrypts a version found by ResolveVersion.
func (s *Service) OpenVersion(ctx context.Context, sec *Secret, v *Version) (Value, error) {
	return s.open(ctx, sec, v)
}

// Describe returns a secret's metadata, also while it is scheduled for
// deletion.
func (s *Service) Describe(ctx context.Context, ref string) (*Secret, error) { return s.get(ctx, ref) }

// List returns secrets by name, leaving out those scheduled for deletion
// unless asked.
func (s *Service) List(ctx context.Context, prefix string, includeDeleted bool) ([]Secret, error) {
	var out, due []Secret
	err := s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketSecrets, prefix, "", func(_ string, b []byte) error {
			var sec Secret
			if err := json.Unmarshal(b, &sec); err != nil {
				return err
			}
			switch {
			case s.due(&sec):
				due = append(due, sec)
			case sec.DeletionDate.IsZero() || includeDeleted:
				out = append(out, sec)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	for i := range due {
		if err := s.store.Update(ctx, func(tx store.Tx) error { return purge(tx, &due[i]) }); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Delete schedules a secret for deletion after a recovery window of 7–30
// days (0: 30), or deletes it now when force is set. A missing secret is
// not an error: it returns nil.
func (s *Service) Delete(ctx context.Context, ref string, days int, force bool) (*Secret, error) {
	if force && days != 0 {
		return nil, fmt.Errorf("%w: give a recovery window or force deletion without recovery, not both", ErrInvalid)
	}
	if days == 0 {
		days = DefaultRecoveryDays
	}
	if days < MinRecoveryDays || days > MaxRecoveryDays {
		return nil, fmt.Errorf("%w: recovery window of %d days is not %d–%d days", ErrInvalid, days, MinRecoveryDays, MaxRecoveryDays)
	}
	sec, err := s.get(ctx, ref)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if force {
		err := s.store.Update(ctx, func(tx store.Tx) error {
			sec, err := lookup(tx, sec.ARN)
			if errors.Is(err, ErrNotFound) {
				return nil
			} else if err != nil {
				return err
			}
			return purge(tx, sec)
		})
		if err != nil {
			return nil, err
		}
		sec.DeletionDate = s.now().UTC()
		return sec, nil
	}
	return s.update(ctx, sec.ARN, func(_ store.Tx, sec *Secret) error {
		if sec.DeletionDate.IsZero() {
			sec.DeletionDate = s.now().UTC().Add(time.Duration(days) * 24 * time.Hour)
		}
		return nil
	})
}

// Restore cancels a scheduled deletion.
func (s *Service) Restore(ctx context.Context, ref string) (*Secret, error) {
	if _, err := s.get(ctx, ref); err != nil {
		return nil, err
	}
	return s.update(ctx, ref, func(_ store.Tx, sec *Secret) error {
		sec.DeletionDate = time.Time{}
		return nil
	})
}

// UpdateStage moves stage to version moveTo (from removeFrom, which must be
// the version that has it now), or with no moveTo removes it from
// removeFrom. AWSCURRENT can only be moved, and moving it makes its
// previous holder AWSPREVIOUS.
func (s *Service) UpdateStage(ctx context.Context, ref, stage, moveTo, removeFrom string) (*Secret, error) {
	if err := validStages([]string{stage}); err != nil {
		return nil, err
	}
	if moveTo == "" && removeFrom == "" {
		return nil, fmt.Errorf("%w: give a version to move stage %s to, or one to remove it from", ErrInvalid, stage)
	}
	if _, err := s.get(ctx, ref); err != nil {
		return nil, err
	}
	return s.update(ctx, ref, func(_ store.Tx, sec *Secret) error {
		if err := notDeleted(sec); err != nil {
			return err
		}
		holder := sec.stageHolder(stage)
		for _, id := range []string{moveTo, removeFrom} {
			if id != "" && sec.version(id) == nil {
				return fmt.Errorf("%w: secret %s has no version %s", ErrNotFound, sec.Name, id)
			}
		}
		if removeFrom != "" && (holder == nil || holder.ID != removeFrom) {
			return fmt.Errorf("%w: stage %s of secret %s is not on version %s", ErrInvalid, stage, sec.Name, removeFrom)
		}
		if moveTo == "" {
			if stage == StageCurrent {
				return fmt.Errorf("%w: secret %s must keep a version with stage %s: move it to another version instead", ErrInvalid, sec.Name, StageCurrent)
			}
			sec.removeStage(stage, removeFrom)
			sec.LastChanged = s.now().UTC()
			return nil
		}
		if holder != nil && holder.ID != moveTo && removeFrom == "" {
			return fmt.Errorf("%w: stage %s of secret %s is on version %s: name it as the version to remove the stage from", ErrInvalid, stage, sec.Name, holder.ID)
		}
		sec.moveStage(stage, moveTo)
		sec.LastChanged = s.now().UTC()
		return nil
	})
}

// Tag adds or replaces tags and removes the keys in remove.
func (s *Service) Tag(ctx context.Context, ref string, add map[string]string, remove []string) (*Secret, error) {
	for k, v := range add {
		if k == "" || len(k) > 128 || len(v) > 256 {
			return nil, fmt.Errorf("%w: tag %q: keys are 1–128 characters, values at most 256", ErrInvalid, k)
		}
	}
	if _, err := s.get(ctx, ref); err != nil {
		return nil, err
	}
	return s.update(ctx, ref, func(_ store.Tx, sec *Secret) error {
		if sec.Tags == nil {
			sec.Tags = map[string]string{}
		}
		for k, v := range add {
			sec.Tags[k] = v
		}
		for _, k := range remove {
			delete(sec.Tags, k)
		}
		if len(sec.Tags) > 50 {
			return fmt.Errorf("%w: secret %s would have %d tags; at most 50", ErrInvalid, sec.Name, len(sec.Tags))
		}
		return nil
	})
}

// StagesByVersion lists the versions that have stages, newest first, as
// DescribeSecret's VersionIdsToStages does.
func (sec *Secret) StagesByVersion() []Version {
	var out []Version
	for _, v := range sec.Versions {
		if len(v.Stages) > 0 {
			v.Stages = slices.Clone(v.Stages)
			sort.Strings(v.Stages)
			out = append(out, v)
		}
	}
	return out
}
