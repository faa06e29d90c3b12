package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	stowagepb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/auth"
)

// agentTokenCacheFile is where an agent with --token-from-server keeps the
// token the servers gave it, so that it serves at its next start even while
// no server answers (its file tree's NFS exports, for one).
func agentTokenCacheFile(dataDir, pool string) string {
	return filepath.Join(dataDir, "agent-tokens", pool)
}

// agentTokenFromServer is the token the servers present to this storage
// host's agent API (GetStorageHostAgentToken), asked with the host's own
// principal (--server-token-file). A token kept from an earlier start is
// used at once and checked against the servers' in the background; with
// none, it waits for a server, telling the log. A server that refuses
// (no --agent-token-per-host, another host's principal) ends the wait with
// its reason. The token is never logged.
func agentTokenFromServer(ctx context.Context, o agentOptions, pool string, log *slog.Logger) (string, error) {
	cache := agentTokenCacheFile(o.dataDir, pool)
	if cached, err := auth.ReadTokenFile(cache); err == nil && cached != "" {
		go func() {
			token, err := fetchAgentToken(ctx, o, pool, log)
			switch {
			case err != nil:
				if ctx.Err() == nil {
					log.Warn("could not check this storage host's agent token with the Stowage server", "pool", pool, "err", err)
				}
			case token != cached:
				if err := auth.WriteTokenFile(cache, token); err != nil {
					log.Error("could not keep this storage host's new agent token", "pool", pool, "file", cache, "err", err)
				}
				log.Warn("the Stowage servers now present another agent token to this storage host; restart the agent to take it", "pool", pool, "file", cache)
			}
		}()
		return cached, nil
	}
	token, err := fetchAgentToken(ctx, o, pool, log)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(cache), 0o700); err != nil {
		return "", fmt.Errorf("keep the agent token: %w", err)
	}
	if err := auth.WriteTokenFile(cache, token); err != nil {
		return "", fmt.Errorf("keep the agent token: %w", err)
	}
	return token, nil
}

// fetchAgentToken asks the servers until one answers.
func fetchAgentToken(ctx context.Context, o agentOptions, pool string, log *slog.Logger) (string, error) {
	for attempt := 1; ; attempt++ {
		token, err := askAgentToken(ctx, o, pool)
		if err == nil {
			log.Info("agent token received from the Stowage server", "pool", pool, "server", o.server)
			return token, nil
		}
		switch status.Code(err) {
		case codes.FailedPrecondition, codes.PermissionDenied, codes.InvalidArgument, codes.Unauthenticated:
			return "", fmt.Errorf("the Stowage server at %s gives pool %s no agent token: %s", o.server, pool, status.Convert(err).Message())
		}
		log.Info("waiting for the Stowage server to give this storage host its agent token", "pool", pool, "server", o.server,
			"attempt", attempt, "err", status.Convert(err).Message())
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(5 * time.Second):
		}
	}
}

func askAgentToken(ctx context.Context, o agentOptions, pool string) (string, error) {
	conn, err := dial(o.server, o.serverTokenFile)
	if err != nil {
		// Not the server's answer: this host's own configuration.
		return "", status.Error(codes.InvalidArgument, err.Error())
	}
	defer conn.Close()
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	r, err := stowagepb.NewPoolServiceClient(conn).GetStorageHostAgentToken(rctx, &stowagepb.GetStorageHostAgentTokenRequest{Pool: pool})
	if err != nil {
		return "", err
	}
	if r.Token == "" {
		return "", status.Errorf(codes.FailedPrecondition, "the server answered with an empty token")
	}
	return r.Token, nil
}
