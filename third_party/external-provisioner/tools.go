//go:build tools

// Package provisioner pins the CSI external-provisioner sidecar.
// The blank imports keep the main packages' import graphs in go.mod and
// go.sum, so `go build <package>` works from this module with -mod=readonly.
// hack/build-components.sh does the building.
package provisioner

import (
	_ "github.com/kubernetes-csi/external-provisioner/v5/cmd/csi-provisioner"
)
