package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
)

// StorageHostAgentToken is the agent token of the storage host of pool,
// derived from the cluster's agent token (the servers' --agent-token-file):
// HMAC-SHA256 over the pool's name. A server that derives (stowage server
// --agent-token-per-host) presents each storage host its own token, so a
// storage host knows no token that opens another's agent API, and the
// servers keep one secret however many hosts there are.
func StorageHostAgentToken(clusterToken, pool string) string {
	m := hmac.New(sha256.New, []byte(clusterToken))
	m.Write([]byte("stowage agent token v1\x00" + pool))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}
