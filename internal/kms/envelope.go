package kms

import (
	"context"
	"fmt"
)

// Envelope is data encrypted with a data key of its own, stored next to
// the data key wrapped by a KMS key: what Secrets and parameters keep at
// rest. Only the KMS can unwrap DataKey, and only with the same encryption
// context.
type Envelope struct {
	KeyID      string `json:"keyId"`
	DataKey    []byte `json:"dataKey"`
	Ciphertext []byte `json:"ciphertext"`
}

// Seal encrypts plaintext of any size under a fresh data key wrapped by the
// key ref, bound to encCtx.
func (s *Service) Seal(ctx context.Context, ref string, plaintext []byte, encCtx map[string]string) (*Envelope, error) {
	dk, wrapped, keyID, err := s.GenerateDataKey(ctx, ref, 32, encCtx)
	if err != nil {
		return nil, err
	}
	defer clear(dk)
	aead, err := newAEAD(dk)
	if err != nil {
		return nil, err
	}
	ct, err := seal(aead, plaintext, contextAAD(nil, encCtx))
	if err != nil {
		return nil, err
	}
	return &Envelope{KeyID: keyID, DataKey: wrapped, Ciphertext: ct}, nil
}

// Open decrypts what Seal made, with the same encryption context. It fails
// when the KMS key is disabled or pending deletion, naming the key.
func (s *Service) Open(ctx context.Context, env *Envelope, encCtx map[string]string) ([]byte, error) {
	dk, _, err := s.Decrypt(ctx, env.DataKey, encCtx)
	if err != nil {
		return nil, err
	}
	defer clear(dk)
	aead, err := newAEAD(dk)
	if err != nil {
		return nil, err
	}
	pt, err := open(aead, env.Ciphertext, contextAAD(nil, encCtx))
	if err != nil {
		return nil, fmt.Errorf("%w: data sealed with key %s does not decrypt with its data key and the encryption context given", ErrInvalid, env.KeyID)
	}
	return pt, nil
}
