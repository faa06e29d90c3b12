package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/stowage-io/stowage/internal/store"
)

// TokenPrefix starts every Stowage API token, so that a token found in a
// file or a leak is recognisable (and never mistaken for a Kubernetes
// service-account token, a JWT).
const TokenPrefix = "stw_"

const (
	bucketTokens      = "auth-tokens"
	bucketPolicies    = "auth-policies"
	bucketAttachments = "auth-attachments"
)

// Errors the API maps to gRPC codes.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	ErrInUse         = errors.New("in use")
)

// TokenRecord is what is stored for a token: its hash, never the token.
type TokenRecord struct {
	ID          string    `json:"id"`
	Hash        string    `json:"hash"`
	Principal   string    `json:"principal"`
	Description string    `json:"description,omitempty"`
	Created     time.Time `json:"created"`
}

// PolicyRecord is a stored policy and the principals it is attached to.
type PolicyRecord struct {
	Name       string    `json:"name"`
	Document   string    `json:"document"`
	Principals []string  `json:"principals,omitempty"`
	Created    time.Time `json:"created"`
}

// HashToken is the SHA-256 of a token, hex: what the store keys tokens by.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// Records keeps tokens and policies in the metadata store.
type Records struct{ Store store.Store }

// CreateToken makes a token for principal and returns it with its record.
// The token is returned here only.
func (r Records) CreateToken(ctx context.Context, principal, description string) (string, TokenRecord, error) {
	if _, err := ParsePrincipal(principal); err != nil {
		return "", TokenRecord{}, err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", TokenRecord{}, err
	}
	token := TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return "", TokenRecord{}, err
	}
	rec := TokenRecord{ID: "tok-" + hex.EncodeToString(id), Hash: HashToken(token), Principal: principal,
		Description: description, Created: time.Now().UTC()}
	err := r.Store.Update(ctx, func(tx store.Tx) error { return store.PutJSON(tx, bucketTokens, rec.Hash, rec) })
	if err != nil {
		return "", TokenRecord{}, err
	}
	return token, rec, nil
}

// LookupToken returns the record of a token, ErrNotFound for an unknown one.
func (r Records) LookupToken(ctx context.Context, token string) (TokenRecord, error) {
	var rec TokenRecord
	err := r.Store.View(ctx, func(tx store.Tx) error { return store.GetJSON(tx, bucketTokens, HashToken(token), &rec) })
	if errors.Is(err, store.ErrNotFound) {
		return TokenRecord{}, ErrNotFound
	}
	return rec, err
}

// ListTokens lists tokens, of one principal when principal is set.
func (r Records) ListTokens(ctx context.Context, principal string) ([]TokenRecord, error) {
	var out []TokenRecord
	err := r.Store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketTokens, "", "", func(_ string, v []byte) error {
			var rec TokenRecord
			if err := decode(v, &rec); err != nil {
				return err
			}
			if principal == "" || rec.Principal == principal {
				out = append(out, rec)
			}
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, err
}

// RevokeToken deletes the token with this id.
func (r Records) RevokeToken(ctx context.Context, id string) error {
	return r.Store.Update(ctx, func(tx store.Tx) error {
		found := ""
		err := tx.Scan(bucketTokens, "", "", func(k string, v []byte) error {
			var rec TokenRecord
			if err := decode(v, &rec); err != nil {
				return err
			}
			if rec.ID == id {
				found = k
				return store.ErrStopScan
			}
			return nil
		})
		if err != nil {
			return err
		}
		if found == "" {
			return fmt.Errorf("token %s: %w", id, ErrNotFound)
		}
		return tx.Delete(bucketTokens, found)
	})
}

func validPolicyName(name string) error {
	if name == "" || len(name) > 128 || strings.ContainsAny(name, " \t\n/*?") {
		return fmt.Errorf("policy name %q: 1 to 128 characters, no spaces, slashes or wildcards", name)
	}
	return nil
}

// CreatePolicy stores a new policy.
func (r Records) CreatePolicy(ctx context.Context, name, document string) (PolicyRecord, error) {
	if err := validPolicyName(name); err != nil {
		return PolicyRecord{}, err
	}
	if _, err := ParseDocument([]byte(document)); err != nil {
		return PolicyRecord{}, err
	}
	rec := PolicyRecord{Name: name, Document: document, Created: time.Now().UTC()}
	err := r.Store.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.Get(bucketPolicies, name); err == nil {
			return fmt.Errorf("policy %s: %w", name, ErrAlreadyExists)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		return store.PutJSON(tx, bucketPolicies, name, rec)
	})
	return rec, err
}

func getPolicy(tx store.Tx, name string) (PolicyRecord, error) {
	var rec PolicyRecord
	err := store.GetJSON(tx, bucketPolicies, name, &rec)
	if errors.Is(err, store.ErrNotFound) {
		return rec, fmt.Errorf("policy %s: %w", name, ErrNotFound)
	}
	return rec, err
}

// GetPolicy returns one policy.
func (r Records) GetPolicy(ctx context.Context, name string) (PolicyRecord, error) {
	var rec PolicyRecord
	err := r.Store.View(ctx, func(tx store.Tx) (err error) { rec, err = getPolicy(tx, name); return err })
	return rec, err
}

// ListPolicies lists policies, those attached to principal when it is set.
func (r Records) ListPolicies(ctx context.Context, principal string) ([]PolicyRecord, error) {
	var out []PolicyRecord
	err := r.Store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketPolicies, "", "", func(_ string, v []byte) error {
			var rec PolicyRecord
			if err := decode(v, &rec); err != nil {
				return err
			}
			if principal == "" || contains(rec.Principals, principal) {
				out = append(out, rec)
			}
			return nil
		})
	})
	return out, err
}

// DeletePolicy deletes a policy that is attached to no one.
func (r Records) DeletePolicy(ctx context.Context, name string) error {
	return r.Store.Update(ctx, func(tx store.Tx) error {
		rec, err := getPolicy(tx, name)
		if err != nil {
			return err
		}
		if len(rec.Principals) > 0 {
			return fmt.Errorf("policy %s is attached to %s (detach it first): %w", name, strings.Join(rec.Principals, ", "), ErrInUse)
		}
		return tx.Delete(bucketPolicies, name)
	})
}

// AttachPolicy attaches a policy to a principal; attaching twice is a no-op.
func (r Records) AttachPolicy(ctx context.Context, name, principal string) (PolicyRecord, error) {
	if _, err := ParsePrincipal(principal); err != nil {
		return PolicyRecord{}, err
	}
	return r.updatePolicy(ctx, name, func(rec *PolicyRecord) {
		if !contains(rec.Principals, principal) {
			rec.Principals = append(rec.Principals, principal)
			sort.Strings(rec.Principals)
		}
	})
}

// DetachPolicy detaches a policy from a principal.
func (r Records) DetachPolicy(ctx context.Context, name, principal string) (PolicyRecord, error) {
	return r.updatePolicy(ctx, name, func(rec *PolicyRecord) {
		out := rec.Principals[:0]
		for _, p := range rec.Principals {
			if p != principal {
				out = append(out, p)
			}
		}
		rec.Principals = out
	})
}

func (r Records) updatePolicy(ctx context.Context, name string, change func(*PolicyRecord)) (PolicyRecord, error) {
	var rec PolicyRecord
	err := r.Store.Update(ctx, func(tx store.Tx) (err error) {
		if rec, err = getPolicy(tx, name); err != nil {
			return err
		}
		change(&rec)
		return store.PutJSON(tx, bucketPolicies, name, rec)
	})
	return rec, err
}

// AttachedDocuments returns the documents of the policies attached to a
// principal.
func (r Records) AttachedDocuments(ctx context.Context, principal string) ([]Document, error) {
	recs, err := r.ListPolicies(ctx, principal)
	if err != nil {
		return nil, err
	}
	var docs []Document
	for _, rec := range recs {
		d, err := ParseDocument([]byte(rec.Document))
		if err != nil {
			return nil, fmt.Errorf("policy %s: %w", rec.Name, err)
		}
		docs = append(docs, d)
	}
	return docs, nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
