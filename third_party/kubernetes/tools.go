//go:build tools

// Package kubernetes pins the Kubernetes programs that `stowage up` runs.
// The blank imports keep every package these main packages import, and the
// modules that provide them, in go.mod and go.sum, so that
// `go build k8s.io/kubernetes/cmd/<name>` works from this module with
// -mod=readonly. hack/build-components.sh does the building.
package kubernetes

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
