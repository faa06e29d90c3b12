//go:build tools

// Package etcd pins etcd, the Kubernetes API server's store.
// The blank imports keep the main packages' import graphs in go.mod and
// go.sum, so `go build <package>` works from this module with -mod=readonly.
// hack/build-components.sh does the building.
package etcd

import (
	_ "go.etcd.io/etcd/server/v3"
)
