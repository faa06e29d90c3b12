#!/usr/bin/env bash
# The project's test command (README, .ci/run). Installs what is missing,
# then runs go vet and every test: unit tests, csi-sanity against the real
# driver and server, crash-recovery tests, the end-to-end suite on a local
# Kubernetes made by `stowage up`, and the CI subset of the upstream
# external storage suite on the same kind of cluster. Tests use real loop devices and
# mounts, so this runs as root. It fails if a test leaked a loop device or
# a mount.
set -euo pipefail
source "$(dirname "$0")/../hack/lib/root.sh"
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

bash hack/setup.sh

leaks() {
  { losetup -a 2>/dev/null | grep -E '/tmp/|stw|stowage' || true; grep -E ' /tmp/(stw|Test)' /proc/mounts || true; } | sort
}
before=$(leaks)

# The pinned Kubernetes, etcd and CSI sidecars (a cold build takes 20-25
# minutes on 2 cores, a warm one seconds): built before the unit tests
# because the etcd store's tests run the pinned etcd (_output/bin/etcd);
# the end-to-end suite needs all of them, brings a local cluster up with
# `stowage up` if none runs and takes it down again at the end.
echo "== building Kubernetes components (hack/build-components.sh)"
bash hack/build-components.sh
echo "== go vet"
go vet ./...
echo "== go test (unit, csi-sanity, crash recovery)"
go test -count=1 -timeout 30m ./...

# -p 1: the packages run one after the other, each on its own cluster —
# test/e2e on one node, test/e2e/multinode on three (stowage up --nodes 3
# --zones zone-a,zone-b,zone-c) — never two clusters at once.
echo "== end-to-end tests on a local Kubernetes: one node (test/e2e), then three nodes in three zones (test/e2e/multinode)"
(cd test/e2e && go vet ./... && go test -p 1 -count=1 -timeout 50m ./...)

# The Kubernetes external storage suite (e2e.test of the cluster's version)
# against block.csi.stowage.io: the CI subset of test/conformance/run.sh,
# every suite that exercises the driver (docs/conformance.md). e2e.test is
# a large build (cold: about 10 minutes).
echo "== Kubernetes external storage suite, CI subset (test/conformance/run.sh --ci)"
bash hack/build-components.sh e2e.test ginkgo
bash test/conformance/run.sh --ci

after=$(leaks)
if [ "$after" != "$before" ]; then
  echo "FAIL: tests leaked kernel state:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
