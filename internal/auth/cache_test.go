package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

type countingVerifier struct {
	calls atomic.Int32
	ok    map[string]string
}

func (v *countingVerifier) Verify(ctx context.Context, token string) (string, string, error) {
	v.calls.Add(1)
	sa, ok := v.ok[token]
	if !ok {
		return "", "", errors.New("not authenticated")
	}
	return SplitServiceAccount(sa)
}

func jwtWithExp(exp time.Time) string {
	claims := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"exp":%d,"sub":"x"}`, exp.Unix())))
	return "eyJhbGciOiJSUzI1NiJ9." + claims + ".sig"
}

func TestCachingVerifier_ProvenTokenBelievedForTTLOrItsExpiry_FailuresNotCached(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	long, short := jwtWithExp(now.Add(time.Hour)), jwtWithExp(now.Add(10*time.Second))
	inner := &countingVerifier{ok: map[string]string{
		long:  "system:serviceaccount:shop:web",
		short: "system:serviceaccount:shop:batch",
	}}
	c := NewCachingVerifier(inner, time.Minute).(*CachingVerifier)
	c.now = func() time.Time { return now }
	verify := func(tok, want string) {
		t.Helper()
		ns, name, err := c.Verify(context.Background(), tok)
		if err != nil || ns+":"+name != want {
			t.Fatalf("Verify = %s:%s, %v; want %s", ns, name, err, want)
		}
	}
	verify(long, "shop:web")
	verify(long, "shop:web")
	verify(short, "shop:batch")
	if n := inner.calls.Load(); n != 2 {
		t.Fatalf("%d reviews for 3 verifications of 2 tokens, want 2", n)
	}
	// Past the token's own expiry (10 s) it is reviewed again; the other
	// is still believed until the TTL (1 min).
	now = now.Add(30 * time.Second)
	verify(short, "shop:batch")
	verify(long, "shop:web")
	if n := inner.calls.Load(); n != 3 {
		t.Fatalf("%d reviews after the short token expired, want 3", n)
	}
	now = now.Add(31 * time.Second)
	verify(long, "shop:web")
	if n := inner.calls.Load(); n != 4 {
		t.Fatalf("%d reviews after the TTL, want 4", n)
	}
	// A refused token is asked about every time.
	for range 2 {
		if _, _, err := c.Verify(context.Background(), "bad"); err == nil {
			t.Fatal("a refused token was believed")
		}
	}
	if n := inner.calls.Load(); n != 6 {
		t.Fatalf("%d reviews after two refused calls, want 6", n)
	}
	if NewCachingVerifier(inner, 0) != Verifier(inner) {
		t.Error("TTL 0 should give the verifier itself")
	}
}
