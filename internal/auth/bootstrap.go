package auth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// ComponentPrincipals are the token files the server keeps for its
// components (file name under the tokens directory → principal) for the
// node it runs on, and one for the administrator (for clients that reach
// the API over TCP, where there are no peer credentials).
func ComponentPrincipals(node string) map[string]string {
	return map[string]string{
		"admin":            AdminName,
		"csi-controller":   CSIController,
		"csi-node":         CSINodePrefix + node,
		"csi-file":         CSIFile,
		"secrets-provider": SecretsProvider,
		"kms-plugin":       KMSPlugin,
	}
}

// BootstrapTokens makes sure dir holds a valid token file (mode 0600) for
// each component: a file that is missing, unreadable or whose token this
// server does not know (a new metadata file) gets a new token. It returns
// the components it issued tokens for. Errors never contain a token.
func (r Records) BootstrapTokens(ctx context.Context, dir string, components map[string]string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tokens directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tokens directory: %w", err)
	}
	names := make([]string, 0, len(components))
	for n := range components {
		names = append(names, n)
	}
	sort.Strings(names)
	var issued []string
	for _, name := range names {
		principal := components[name]
		path := filepath.Join(dir, name)
		if tok, err := ReadTokenFile(path); err == nil {
			rec, err := r.LookupToken(ctx, tok)
			if err == nil && rec.Principal == principal {
				continue
			}
			if err != nil && !errors.Is(err, ErrNotFound) {
				return issued, err
			}
		}
		tok, _, err := r.CreateToken(ctx, principal, "issued at the server's start for "+name)
		if err != nil {
			return issued, fmt.Errorf("token for %s: %w", name, err)
		}
		if err := WriteTokenFile(path, tok); err != nil {
			return issued, err
		}
		issued = append(issued, name)
	}
	return issued, nil
}
