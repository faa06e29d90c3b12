package auth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync"
	"time"
)

// DefaultReviewCacheTTL is how long a proven service-account token is
// believed without asking the apiserver again (kube-apiserver's own
// webhook token authenticator caches for 2 minutes).
const DefaultReviewCacheTTL = time.Minute

// maxCachedTokens bounds the cache; past it, expired entries go, and if
// none has expired the cache starts again empty.
const maxCachedTokens = 4096

// CachingVerifier remembers the tokens its Verifier proved, by their
// SHA-256 (the tokens themselves are not kept), for TTL or until the
// token's own expiry if that comes first. Failures are not cached: a
// refused token is reviewed again on its next use. The price: a token
// that stops being valid (its pod deleted) is still believed for up to TTL.
type CachingVerifier struct {
	Verifier Verifier
	TTL      time.Duration
	now      func() time.Time

	mu      sync.Mutex
	entries map[[32]byte]cachedAccount
}

type cachedAccount struct {
	namespace, name string
	until           time.Time
}

// NewCachingVerifier wraps v; ttl <= 0 returns v itself (no cache).
func NewCachingVerifier(v Verifier, ttl time.Duration) Verifier {
	if ttl <= 0 || v == nil {
		return v
	}
	return &CachingVerifier{Verifier: v, TTL: ttl, now: time.Now, entries: map[[32]byte]cachedAccount{}}
}

// Verify implements Verifier.
func (c *CachingVerifier) Verify(ctx context.Context, token string) (string, string, error) {
	key := sha256.Sum256([]byte(token))
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if ok && now.Before(e.until) {
		return e.namespace, e.name, nil
	}
	ns, name, err := c.Verifier.Verify(ctx, token)
	if err != nil {
		return "", "", err
	}
	until := now.Add(c.TTL)
	if exp, ok := jwtExpiry(token); ok && exp.Before(until) {
		until = exp
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= maxCachedTokens {
		for k, e := range c.entries {
			if !now.Before(e.until) {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= maxCachedTokens {
			clear(c.entries)
		}
	}
	c.entries[key] = cachedAccount{namespace: ns, name: name, until: until}
	return ns, name, nil
}

// jwtExpiry reads the exp claim of a JWT without checking its signature:
// it only shortens how long a token the apiserver already proved is
// believed.
func jwtExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(b, &claims) != nil || claims.Exp == 0 {
		return time.Time{}, false
	}
	return time.Unix(claims.Exp, 0), true
}
