#!/usr/bin/env bash
# Build Stowage's container images on this machine (no registry, no Docker):
# localhost/stowage/stowage:<tag> and one image per upstream sidecar, as OCI
# archives in _output/images, and import them into the local cluster's
# containerd when one runs (stowage up). See docs/images.md.
#
#   bash hack/images.sh [--tag T]     # default tag: the git commit
set -euo pipefail
source "$(dirname "$0")/../hack/lib/root.sh"
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

tag=$(git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
[[ ${1:-} == --tag && -n ${2:-} ]] && tag=$2

bash hack/setup.sh
bash hack/build-components.sh
go build -o bin/stowage ./cmd/stowage
args=(--bin-dir _output/bin --out _output/images --tag "$tag")
sock=/var/lib/stowage/run/containerd/containerd.sock
if [[ -S $sock ]]; then
	args+=(--containerd-socket "$sock")
fi
bin/stowage images build "${args[@]}"
