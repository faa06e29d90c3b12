//go:build tools

// Package secretsstore pins the Secrets Store CSI driver (the upstream driver
// that mounts SecretProviderClass volumes and calls Stowage's provider).
// The blank import keeps the main package's import graph in go.mod and
// go.sum, so `go build <package>` works from this module with -mod=readonly.
// hack/build-components.sh does the building.
package secretsstore

import (
	_ "sigs.k8s.io/secrets-store-csi-driver/cmd/secrets-store-csi-driver"
)
