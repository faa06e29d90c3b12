// Package local holds the Kubernetes objects that `stowage up` applies to the
// single-node cluster it starts: the CSIDriver, the StorageClasses, the
// VolumeSnapshotClass and the RBAC rules of the controller-side sidecars.
// They are plain YAML so that `kubectl apply -f deploy/local/` works on any
// cluster whose sidecars run as the users named in rbac.yaml.
package local

import "embed"

// Manifests are the *.yaml files of this directory, applied in name order
// (the numeric prefixes give the order).
//
//go:embed *.yaml
var Manifests embed.FS
