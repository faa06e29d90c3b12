// Package params is the parameter store of Stowage, in the shape of AWS
// Systems Manager Parameter Store: hierarchical names (/app/db/url), types
// String, StringList and SecureString, numbered versions and labels. Every
// value is stored as a KMS envelope; SecureString differs in that reading
// it needs decryption asked for, and it may name its own key.
package params

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stowage-io/stowage/internal/kms"
	"github.com/stowage-io/stowage/internal/store"
)

const (
	bucketParams = "ssm-parameters"

	TypeString       = "String"
	TypeStringList   = "StringList"
	TypeSecureString = "SecureString"

	// DefaultKeyAlias encrypts SecureString parameters that name no key
	// (aws/ssm on AWS), and every other parameter.
	DefaultKeyAlias = "alias/stowage/ssm"

	MaxValueSize      = 4096
	MaxVersions       = 100
	MaxLabels         = 10
	MaxHierarchyDepth = 15
)

var (
	ErrNotFound = errors.New("parameter not found")
	ErrExists   = errors.New("parameter already exists")
	ErrInvalid  = errors.New("invalid parameter request")
	// ErrVersionLimit: the oldest of MaxVersions versions has a label, so
	// no version can be dropped for a new one.
	ErrVersionLimit = errors.New("parameter version limit reached")
)

// Parameter is one parameter as stored, with all its versions.
type Parameter struct {
	Name     string    `json:"name"`
	ARN      string    `json:"arn"`
	Versions []Version `json:"versions"` // oldest first
}

// Version is one value of a parameter.
type Version struct {
	Number      int64         `json:"number"`
	Type        string        `json:"type"`
	Description string        `json:"description,omitempty"`
	KeyID       string        `json:"keyId"`
	Labels      []string      `json:"labels,omitempty"`
	Modified    time.Time     `json:"modified"`
	Value       *kms.Envelope `json:"value"`
}

// Result is a parameter version as a reader sees it. Value is empty for a
// SecureString read without decryption.
type Result struct {
	Name, ARN, Selector string
	Version
	Value string
}

type Options struct {
	Region, Account string
}

// Service keeps the parameters of one Stowage server.
type Service struct {
	store           store.Store
	kms             *kms.Service
	region, account string
	now             func() time.Time
}

func New(st store.Store, k *kms.Service, o Options) *Service {
	if o.Region == "" {
		o.Region = "local"
	}
	if o.Account == "" {
		o.Account = "000000000000"
	}
	return &Service{store: st, kms: k, region: o.Region, account: o.Account, now: time.Now}
}

var (
	nameRE  = regexp.MustCompile(`^[A-Za-z0-9_.\-/]+$`)
	labelRE = regexp.MustCompile(`^[A-Za-z_.\-][A-Za-z0-9_.\-]{0,99}$`)
)

// ValidName checks a parameter name as AWS does: letters, digits and
// _.-/; a name with a / is a path that starts with /, with at most 15
// levels; no part of the name may start with aws or ssm.
func ValidName(name string) error {
	bad := func(why string) error { return fmt.Errorf("%w: parameter name %q %s", ErrInvalid, name, why) }
	if len(name) > 1011 || !nameRE.MatchString(name) {
		return bad("must be 1–1011 characters of letters, digits and _.-/")
	}
	if strings.Contains(name, "/") {
		switch {
		case !strings.HasPrefix(name, "/"):
			return bad("has a / so it must start with / (a fully qualified path)")
		case strings.HasSuffix(name, "/") || strings.Contains(name, "//"):
			return bad("has an empty level")
		case strings.Count(name, "/") > MaxHierarchyDepth:
			return bad(fmt.Sprintf("has more than %d levels", MaxHierarchyDepth))
		}
	}
	first := strings.ToLower(strings.SplitN(strings.TrimPrefix(name, "/"), "/", 2)[0])
	if strings.HasPrefix(first, "aws") || strings.HasPrefix(first, "ssm") {
		return bad("must not start with aws or ssm (reserved)")
	}
	return nil
}

func (s *Service) arn(name string) string {
	return fmt.Sprintf("arn:aws:ssm:%s:%s:parameter/%s", s.region, s.account, strings.TrimPrefix(name, "/"))
}

func encContext(arn string, version int64) map[string]string {
	return map[string]string{"PARAMETER_ARN": arn, "PARAMETER_VERSION": strconv.FormatInt(version, 10)}
}

// nameFromRef accepts a name or an ARN (arn:…:ssm:…:parameter/<name>).
func nameFromRef(ref string) (string, error) {
	if strings.HasPrefix(ref, "arn:") {
		parts := strings.SplitN(ref, ":", 6)
		if len(parts) != 6 || parts[2] != "ssm" || !strings.HasPrefix(parts[5], "parameter/") {
			return "", fmt.Errorf("%w: %q is not a parameter ARN (arn:aws:ssm:<region>:<account>:parameter/<name>)", ErrInvalid, ref)
		}
		n := strings.TrimPrefix(parts[5], "parameter")
		if strings.Count(n, "/") == 1 {
			// arn …:parameter/name is the name "name", …:parameter/a/b is "/a/b".
			n = n[1:]
		}
		return n, nil
	}
	return ref, nil
}

// PutInput is one PutParameter.
type PutInput struct {
	Name, Value, Type, Description, KeyID string
	Overwrite                             bool
}

// Put stores a new version, the first or (with Overwrite) the next. A
// parameter keeps its type unless another is given.
func (s *Service) Put(ctx context.Context, in PutInput) (int64, error) {
	if err := ValidName(in.Name); err != nil {
		return 0, err
	}
	if len(in.Value) == 0 || len(in.Value) > MaxValueSize {
		return 0, fmt.Errorf("%w: parameter %s: value of %d bytes is not 1–%d bytes", ErrInvalid, in.Name, len(in.Value), MaxValueSize)
	}
	var p Parameter
	err := s.store.View(ctx, func(tx store.Tx) error { return store.GetJSON(tx, bucketParams, in.Name, &p) })
	exists := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return 0, err
	}
	if exists && !in.Overwrite {
		return 0, fmt.Errorf("%w: %s (version %d); put it again with overwrite to add a version", ErrExists, in.Name, p.Versions[len(p.Versions)-1].Number)
	}
	typ := in.Type
	if typ == "" {
		typ = TypeString
		if exists {
			typ = p.Versions[len(p.Versions)-1].Type
		}
	}
	switch typ {
	case TypeString, TypeStringList, TypeSecureString:
	default:
		return 0, fmt.Errorf("%w: parameter %s: type %q is not String, StringList or SecureString", ErrInvalid, in.Name, typ)
	}
	keyRef := in.KeyID
	if keyRef != "" && typ != TypeSecureString {
		return 0, fmt.Errorf("%w: parameter %s: only a SecureString names a KMS key", ErrInvalid, in.Name)
	}
	if keyRef == "" {
		if exists && typ == TypeSecureString && p.Versions[len(p.Versions)-1].Type == TypeSecureString {
			keyRef = p.Versions[len(p.Versions)-1].KeyID
		} else {
			k, err := s.kms.EnsureKey(ctx, DefaultKeyAlias, "default key for parameters")
			if err != nil {
				return 0, err
			}
			keyRef = k.ID
		}
	}
	// The version number is settled inside the transaction; a concurrent
	// put in between makes this one retry with the next number.
	for attempt := 0; ; attempt++ {
		next := int64(1)
		if exists {
			next = p.Versions[len(p.Versions)-1].Number + 1
		}
		arn := s.arn(in.Name)
		env, err := s.kms.Seal(ctx, keyRef, []byte(in.Value), encContext(arn, next))
		if err != nil {
			return 0, fmt.Errorf("parameter %s: %w", in.Name, err)
		}
		raced := false
		err = s.store.Update(ctx, func(tx store.Tx) error {
			var cur Parameter
			err := store.GetJSON(tx, bucketParams, in.Name, &cur)
			if errors.Is(err, store.ErrNotFound) {
				cur = Parameter{Name: in.Name, ARN: arn}
			} else if err != nil {
				return err
			} else if !in.Overwrite {
				return fmt.Errorf("%w: %s", ErrExists, in.Name)
			}
			if n := len(cur.Versions); n > 0 && cur.Versions[n-1].Number+1 != next || n == 0 && next != 1 {
				raced = true
				return nil
			}
			if len(cur.Versions) >= MaxVersions {
				if len(cur.Versions[0].Labels) > 0 {
					return fmt.Errorf("%w: parameter %s has %d versions and the oldest (%d) has labels %v; move them first",
						ErrVersionLimit, in.Name, MaxVersions, cur.Versions[0].Number, cur.Versions[0].Labels)
				}
				cur.Versions = cur.Versions[1:]
			}
			cur.Versions = append(cur.Versions, Version{Number: next, Type: typ, Description: in.Description, KeyID: env.KeyID, Modified: s.now().UTC(), Value: env})
			p = cur
			return store.PutJSON(tx, bucketParams, in.Name, &cur)
		})
		if err != nil {
			return 0, err
		}
		if !raced {
			return next, nil
		}
		if attempt > 5 {
			return 0, fmt.Errorf("parameter %s is being written by others; retry", in.Name)
		}
		if err := s.store.View(ctx, func(tx store.Tx) error { return store.GetJSON(tx, bucketParams, in.Name, &p) }); err != nil {
			return 0, err
		}
		exists = true
	}
}

func (s *Service) load(ctx context.Context, name string) (*Parameter, error) {
	var p Parameter
	err := s.store.View(ctx, func(tx store.Tx) error { return store.GetJSON(tx, bucketParams, name, &p) })
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	return &p, nil
}

func (s *Service) result(ctx context.Context, p *Parameter, v *Version, selector string, decrypt bool) (*Result, error) {
	r := &Result{Name: p.Name, ARN: p.ARN, Selector: selector, Version: *v}
	r.Version.Value = nil
	if v.Type == TypeSecureString && !decrypt {
		return r, nil
	}
	b, err := s.kms.Open(ctx, v.Value, encContext(p.ARN, v.Number))
	if err != nil {
		return nil, fmt.Errorf("parameter %s: %w", p.Name, err)
	}
	r.Value = string(b)
	return r, nil
}

// Get reads name, name:<version> or name:<label>.
func (s *Service) Get(ctx context.Context, ref string, decrypt bool) (*Result, error) {
	p, v, selector, err := s.lookup(ctx, ref)
	if err != nil {
		return nil, err
	}
	return s.result(ctx, p, v, selector, decrypt)
}

// GetVersion is Get without the value: which version name, name:<version>
// or name:<label> selects, with nothing decrypted (a version check).
func (s *Service) GetVersion(ctx context.Context, ref string) (*Result, error) {
	p, v, selector, err := s.lookup(ctx, ref)
	if err != nil {
		return nil, err
	}
	r := &Result{Name: p.Name, ARN: p.ARN, Selector: selector, Version: *v}
	r.Version.Value = nil
	return r, nil
}

func (s *Service) lookup(ctx context.Context, ref string) (*Parameter, *Version, string, error) {
	// Names hold no ":"; an ARN has five before the name.
	name, selector := ref, ""
	if n := strings.Count(ref, ":"); n == 1 && !strings.HasPrefix(ref, "arn:") || n == 6 && strings.HasPrefix(ref, "arn:") {
		i := strings.LastIndex(ref, ":")
		name, selector = ref[:i], ref[i:]
	}
	name, err := nameFromRef(name)
	if err != nil {
		return nil, nil, "", err
	}
	if err := ValidName(name); err != nil {
		return nil, nil, "", err
	}
	p, err := s.load(ctx, name)
	if err != nil {
		return nil, nil, "", err
	}
	v := &p.Versions[len(p.Versions)-1]
	if sel := strings.TrimPrefix(selector, ":"); sel != "" {
		v = nil
		n, numErr := strconv.ParseInt(sel, 10, 64)
		for i := range p.Versions {
			if numErr == nil && p.Versions[i].Number == n || numErr != nil && slices.Contains(p.Versions[i].Labels, sel) {
				v = &p.Versions[i]
			}
		}
		if v == nil {
			return nil, nil, "", fmt.Errorf("%w: parameter %s has no version or label %s", ErrNotFound, name, sel)
		}
	}
	return p, v, selector, nil
}

// GetByPath returns the latest version of every parameter under path:
// only its direct children, or with recursive all below it.
func (s *Service) GetByPath(ctx context.Context, path string, recursive, decrypt bool) ([]*Result, error) {
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("%w: path %q must start with /", ErrInvalid, path)
	}
	prefix := strings.TrimSuffix(path, "/") + "/"
	if prefix != "/" {
		if err := ValidName(strings.TrimSuffix(prefix, "/")); err != nil {
			return nil, err
		}
	}
	var found []Parameter
	err := s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketParams, prefix, "", func(k string, b []byte) error {
			if !recursive && strings.Contains(k[len(prefix):], "/") {
				return nil
			}
			var p Parameter
			if err := json.Unmarshal(b, &p); err != nil {
				return err
			}
			found = append(found, p)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	out := make([]*Result, 0, len(found))
	for i := range found {
		r, err := s.result(ctx, &found[i], &found[i].Versions[len(found[i].Versions)-1], "", decrypt)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Delete removes a parameter and all its versions; a missing one is not an
// error (existed is false).
func (s *Service) Delete(ctx context.Context, ref string) (existed bool, err error) {
	name, err := nameFromRef(ref)
	if err != nil {
		return false, err
	}
	if err := ValidName(name); err != nil {
		return false, err
	}
	err = s.store.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.Get(bucketParams, name); errors.Is(err, store.ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		existed = true
		return tx.Delete(bucketParams, name)
	})
	return existed, err
}

// Label moves labels to a version (0: the latest). Labels that break the
// rules are returned, not attached, as AWS does; the rest are.
func (s *Service) Label(ctx context.Context, ref string, version int64, labels []string) (int64, []string, error) {
	name, err := nameFromRef(ref)
	if err != nil {
		return 0, nil, err
	}
	if len(labels) == 0 {
		return 0, nil, fmt.Errorf("%w: parameter %s: give at least one label", ErrInvalid, name)
	}
	var invalid, good []string
	for _, l := range labels {
		low := strings.ToLower(l)
		if !labelRE.MatchString(l) || strings.HasPrefix(low, "aws") || strings.HasPrefix(low, "ssm") {
			invalid = append(invalid, l)
		} else {
			good = append(good, l)
		}
	}
	err = s.store.Update(ctx, func(tx store.Tx) error {
		var p Parameter
		if err := store.GetJSON(tx, bucketParams, name, &p); errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: %s", ErrNotFound, name)
		} else if err != nil {
			return err
		}
		if version == 0 {
			version = p.Versions[len(p.Versions)-1].Number
		}
		idx := slices.IndexFunc(p.Versions, func(v Version) bool { return v.Number == version })
		if idx < 0 {
			return fmt.Errorf("%w: parameter %s has no version %d", ErrNotFound, name, version)
		}
		for i := range p.Versions {
			if i != idx {
				p.Versions[i].Labels = slices.DeleteFunc(p.Versions[i].Labels, func(l string) bool { return slices.Contains(good, l) })
			}
		}
		for _, l := range good {
			if !slices.Contains(p.Versions[idx].Labels, l) {
				p.Versions[idx].Labels = append(p.Versions[idx].Labels, l)
			}
		}
		if n := len(p.Versions[idx].Labels); n > MaxLabels {
			return fmt.Errorf("%w: version %d of parameter %s would have %d labels; at most %d", ErrInvalid, version, name, n, MaxLabels)
		}
		return store.PutJSON(tx, bucketParams, name, &p)
	})
	if err != nil {
		return 0, nil, err
	}
	return version, invalid, nil
}

// History returns every version kept, oldest first.
func (s *Service) History(ctx context.Context, ref string, decrypt bool) ([]*Result, error) {
	name, err := nameFromRef(ref)
	if err != nil {
		return nil, err
	}
	p, err := s.load(ctx, name)
	if err != nil {
		return nil, err
	}
	out := make([]*Result, 0, len(p.Versions))
	for i := range p.Versions {
		r, err := s.result(ctx, p, &p.Versions[i], "", decrypt)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}
