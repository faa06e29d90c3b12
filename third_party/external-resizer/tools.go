//go:build tools

// Package resizer pins the CSI external-resizer sidecar.
// The blank imports keep the main packages' import graphs in go.mod and
// go.sum, so `go build <package>` works from this module with -mod=readonly.
// hack/build-components.sh does the building.
package resizer

import (
	_ "github.com/kubernetes-csi/external-resizer/cmd/csi-resizer"
)
