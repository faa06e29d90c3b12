package auth

import "testing"

// Each storage host's token is its own: stable for its pool, different
// for every other pool and every other cluster token, and not the
// cluster token itself.
func TestStorageHostAgentToken_OnePerPool(t *testing.T) {
	a := StorageHostAgentToken("cluster-secret", "pool-a")
	if a != StorageHostAgentToken("cluster-secret", "pool-a") {
		t.Fatal("not stable")
	}
	for _, other := range []string{StorageHostAgentToken("cluster-secret", "pool-b"), StorageHostAgentToken("other-secret", "pool-a"), "cluster-secret"} {
		if other == a {
			t.Errorf("token %q of pool-a equals another's", a)
		}
	}
	if len(a) != 43 {
		t.Errorf("token %q: want 43 characters (32 bytes, base64url)", a)
	}
}
