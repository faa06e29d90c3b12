//go:build tools

// Package snapshotter pins the CSI external-snapshotter sidecar and the snapshot controller.
// The blank imports keep the main packages' import graphs in go.mod and
// go.sum, so `go build <package>` works from this module with -mod=readonly.
// hack/build-components.sh does the building.
package snapshotter

import (
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller"
)
