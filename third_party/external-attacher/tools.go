//go:build tools

// Package attacher pins the CSI external-attacher sidecar.
// The blank imports keep the main packages' import graphs in go.mod and
// go.sum, so `go build <package>` works from this module with -mod=readonly.
// hack/build-components.sh does the building.
package attacher

import (
	_ "github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher"
)
