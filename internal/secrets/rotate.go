package secrets

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/stowage-io/stowage/internal/store"
)

const (
	alnum       = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
)

func (g Generator) withDefaults() Generator {
	if g.Length == 0 {
		g.Length = DefaultPasswordLength
	}
	if g.JSONKey == "" && !g.WholeValue {
		g.JSONKey = "password"
	}
	return g
}

func (g Generator) password() (string, error) {
	if g.Length < 1 || g.Length > 4096 {
		return "", fmt.Errorf("%w: password length %d is not 1–4096", ErrInvalid, g.Length)
	}
	chars := alnum
	if !g.ExcludePunctuation {
		chars += punctuation
	}
	return randomString(g.Length, chars), nil
}

// Rotate makes a new AWSCURRENT version with the generator (nil: the
// settings of the last rotation, else a 32-character password in key
// "password" of a JSON object).
//
// It takes two transactions, so that a crash leaves either the old or the
// new version current: first the new version is written as AWSPENDING
// (the old one stays AWSCURRENT); then AWSCURRENT moves to it in one
// transaction. A crash in between leaves a stale AWSPENDING version that
// the next rotation replaces.
func (s *Service) Rotate(ctx context.Context, ref string, gen *Generator, token string) (*Secret, string, error) {
	if err := validToken(token); err != nil {
		return nil, "", err
	}
	sec, err := s.get(ctx, ref)
	if err != nil {
		return nil, "", err
	}
	if err := notDeleted(sec); err != nil {
		return nil, "", err
	}
	g := Generator{}
	switch {
	case gen != nil:
		g = *gen
	case sec.Rotation != nil:
		g = *sec.Rotation
	}
	g = g.withDefaults()
	pw, err := g.password()
	if err != nil {
		return nil, "", err
	}
	next := pw
	if !g.WholeValue {
		obj := map[string]any{}
		if cur := sec.stageHolder(StageCurrent); cur != nil {
			val, err := s.open(ctx, sec, cur)
			if err != nil {
				return nil, "", err
			}
			// The value is never part of the error: only its shape.
			if val.String == nil || json.Unmarshal([]byte(*val.String), &obj) != nil || obj == nil {
				return nil, "", fmt.Errorf("%w: secret %s: the current value is not a JSON object, so the generator cannot set key %q in it (rotate the whole value instead)", ErrInvalid, sec.Name, g.JSONKey)
			}
		}
		obj[g.JSONKey] = pw
		b, err := json.Marshal(obj)
		if err != nil {
			return nil, "", err
		}
		next = string(b)
	}
	if token == "" {
		token = newVersionID()
	}
	env, err := s.kms.Seal(ctx, sec.KMSKeyID, []byte(next), encContext(sec.ARN, token))
	if err != nil {
		return nil, "", fmt.Errorf("secret %s: %w", sec.Name, err)
	}
	_, err = s.update(ctx, sec.ARN, func(tx store.Tx, sec *Secret) error {
		if err := notDeleted(sec); err != nil {
			return err
		}
		if sec.version(token) != nil {
			return fmt.Errorf("%w: version %s of secret %s exists", ErrExists, token, sec.Name)
		}
		sec.Rotation = &g
		return s.addVersion(tx, sec, token, env, false, []string{StagePending})
	})
	if err != nil {
		return nil, "", err
	}
	// This is where a custom rotation would set and test the new value on
	// its database before finishing.
	if s.afterPending != nil {
		if err := s.afterPending(); err != nil {
			return nil, "", err
		}
	}
	sec, err = s.update(ctx, sec.ARN, func(_ store.Tx, sec *Secret) error {
		if sec.version(token) == nil {
			return fmt.Errorf("%w: version %s of secret %s went away during rotation", ErrNotFound, token, sec.Name)
		}
		sec.moveStage(StageCurrent, token)
		sec.removeStage(StagePending, token)
		sec.LastRotated = s.now().UTC()
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return sec, token, nil
}
