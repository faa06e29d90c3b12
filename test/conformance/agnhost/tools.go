//go:build tools

// Package agnhost pins k8s.io/kubernetes/test/images/agnhost, the e2e suite's
// utility image binary, at the Kubernetes release of e2e.test. go.mod is
// third_party/kubernetes/go.mod (same pins, same staging replaces) with this
// import added and `go mod tidy` run: third_party/kubernetes's go.sum lacks
// the modules only agnhost imports (github.com/ishidawataru/sctp).
// hack/e2e-images.sh builds it with -mod=readonly.
package agnhost

import _ "k8s.io/kubernetes/test/images/agnhost"
