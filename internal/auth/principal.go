// Package auth answers two questions for every Stowage API call: who is
// calling (a token, the unix socket's peer credentials, or a Kubernetes
// service-account token) and may they do this (IAM-shaped policies,
// built-in ones for Stowage's own components, default deny, explicit deny
// wins).
package auth

import (
	"context"
	"fmt"
	"strings"
)

// Kind is what sort of principal a caller is.
type Kind int

const (
	// Admin may do everything: root on the server's host over its unix
	// socket, or the holder of an admin token.
	Admin Kind = iota + 1
	// Component is one of Stowage's own drivers and plugins,
	// stowage:<name> (stowage:csi-node:<node> for a node plugin).
	Component
	// ServiceAccount is a Kubernetes service account,
	// system:serviceaccount:<ns>:<name>.
	ServiceAccount
	// User is any other named principal policies can be attached to.
	User
)

// Names of the components with built-in policies.
const (
	AdminName     = "stowage:admin"
	CSIController = "stowage:csi-controller"
	CSINodePrefix = "stowage:csi-node:"
	CSIFile       = "stowage:csi-file"
	// StorageHostPrefix + <pool> is the storage host (stowage agent) that
	// serves that pool and registers it with the server.
	StorageHostPrefix    = "stowage:storage-host:"
	SecretsProvider      = "stowage:secrets-provider"
	KMSPlugin            = "stowage:kms-plugin"
	serviceAccountPrefix = "system:serviceaccount:"
)

// Principal is a proven caller.
type Principal struct {
	Kind Kind
	// Name is the full name: stowage:admin, stowage:csi-controller,
	// stowage:csi-node:<node>, system:serviceaccount:<ns>:<name>, or a
	// user's name.
	Name string
}

func (p Principal) String() string { return p.Name }

// StorageHost is the pool of a stowage:storage-host:<pool> principal, ""
// for others.
func (p Principal) StorageHost() string {
	if p.Kind == Component && strings.HasPrefix(p.Name, StorageHostPrefix) {
		return strings.TrimPrefix(p.Name, StorageHostPrefix)
	}
	return ""
}

// Node is the node of a stowage:csi-node:<node> principal, "" for others.
func (p Principal) Node() string {
	if p.Kind == Component && strings.HasPrefix(p.Name, CSINodePrefix) {
		return strings.TrimPrefix(p.Name, CSINodePrefix)
	}
	return ""
}

// ParsePrincipal checks a principal's name and tells its kind.
func ParsePrincipal(name string) (Principal, error) {
	switch {
	case name == "":
		return Principal{}, fmt.Errorf("no principal given")
	case name == AdminName:
		return Principal{Kind: Admin, Name: name}, nil
	case strings.HasPrefix(name, serviceAccountPrefix):
		ns, sa, ok := strings.Cut(strings.TrimPrefix(name, serviceAccountPrefix), ":")
		if !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
			return Principal{}, fmt.Errorf("principal %q: a service account is system:serviceaccount:<namespace>:<name>", name)
		}
		return Principal{Kind: ServiceAccount, Name: name}, nil
	case strings.HasPrefix(name, "stowage:"):
		rest := strings.TrimPrefix(name, "stowage:")
		if rest == "" || strings.ContainsAny(rest, " \t\n*?") {
			return Principal{}, fmt.Errorf("principal %q: a component is stowage:<name>", name)
		}
		if strings.HasPrefix(name, CSINodePrefix) && strings.TrimPrefix(name, CSINodePrefix) == "" {
			return Principal{}, fmt.Errorf("principal %q: a node plugin is %s<node>", name, CSINodePrefix)
		}
		return Principal{Kind: Component, Name: name}, nil
	}
	if strings.ContainsAny(name, " \t\n*?") || strings.HasPrefix(name, "system:") {
		return Principal{}, fmt.Errorf("principal %q: not a valid name (stowage:<component>, system:serviceaccount:<ns>:<name>, or a user name without spaces or wildcards)", name)
	}
	return Principal{Kind: User, Name: name}, nil
}

// ServiceAccountPrincipal names a Kubernetes service account.
func ServiceAccountPrincipal(namespace, name string) Principal {
	return Principal{Kind: ServiceAccount, Name: serviceAccountPrefix + namespace + ":" + name}
}

type principalKey struct{}

// NewContext returns ctx carrying the caller.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the caller the interceptor proved, if any.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}
