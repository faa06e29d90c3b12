//go:build tools

// Package helm pins the Helm CLI that renders, lints and installs the chart
// in deploy/helm/stowage (test/chart runs it).
// The blank import keeps the main package's import graph in go.mod and
// go.sum, so `go build <package>` works from this module with -mod=readonly.
// hack/build-components.sh does the building.
package helm

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
