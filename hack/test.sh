#!/usr/bin/env bash
# The project's test command (README, .ci/run). Installs what is missing,
# then runs go vet and every test: unit tests, csi-sanity against the real
# driver and server, crash-recovery tests, the Helm chart's render and
# schema tests, the end-to-end suite on a local
# Kubernetes made by `stowage up`, and the CI subset of the upstream
# external storage suite on the same kind of cluster. Tests use real loop devices and
# mounts, so this runs as root. It fails if a test leaked a loop device or
# a mount.
set -euo pipefail
source "$(dirname "$0")/../hack/lib/root.sh"
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

# One test run at a time on a machine: two would share the one local
# cluster (/var/lib/stowage) and each other's objects. A second run waits.
# (A pid file, not flock: an inherited lock descriptor would stay held by
# every daemon the run starts.)
lock=/run/lock/stowage-tests.pid
while ! (set -o noclobber; echo $$ >"$lock") 2>/dev/null; do
  holder=$(cat "$lock" 2>/dev/null || true)
  if [[ -n $holder ]] && ! kill -0 "$holder" 2>/dev/null; then
    rm -f "$lock" # its run ended without removing it
    continue
  fi
  echo "== another test run (pid ${holder:-?}) holds $lock; waiting for it to end"
  sleep 1
  while [[ -n $holder ]] && kill -0 "$holder" 2>/dev/null; do sleep 5; done
done
trap 'rm -f "$lock"' EXIT

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
echo "== the Helm chart (test/chart: helm lint, helm template with strict decoding, the schema)"
(cd test/chart && go vet ./... && go test -count=1 .)
echo "== go vet"
go vet ./...
echo "== go test (unit, csi-sanity, crash recovery)"
go test -count=1 -timeout 30m ./...

# The one-node suite, then the multi-node one (4 nodes in 3 zones and 2
# storage hosts, brought up and taken down by the suite itself).
echo "== end-to-end tests on a local Kubernetes (test/e2e)"
(cd test/e2e && go vet ./... && go test -count=1 -timeout 45m .)
# The same one-node cluster with the drivers and the secrets provider as the
# Helm chart's pods (stowage up --install=chart, images built here): the
# chart's own faults and the block, file and snapshot scenarios, about 5
# minutes (the whole suite passes there too: docs/install.md).
echo "== end-to-end tests on the Helm chart's install (STOWAGE_E2E_INSTALL=chart)"
(cd test/e2e && STOWAGE_E2E_INSTALL=chart go test -count=1 -timeout 20m -run '^(TestChart_.*|TestScenario[1235]_.*|TestK11_.*)$' .)
echo "== end-to-end tests on a multi-node local Kubernetes (test/e2e/multinode)"
(cd test/e2e && go test -count=1 -timeout 30m ./multinode/)

# The Kubernetes external storage suite (e2e.test of the cluster's version)
# against block.csi.stowage.io: the CI subset of test/conformance/run.sh,
# every suite that exercises the driver (docs/conformance.md). e2e.test is
# a large build (cold: about 10 minutes).
echo "== Kubernetes external storage suite, CI subset (test/conformance/run.sh --ci)"
bash hack/build-components.sh e2e.test ginkgo
bash test/conformance/run.sh --ci
# Its multi-node specs, which skip on one node, on 4 nodes in 3 zones (run.sh
# brings the cluster up and takes it down): two volumes' pod recreated on the
# other node of its zone (multiVolume "on different node", attached there over
# NBD), allowedTopologies in both binding modes, and the CSIStorageCapacity
# objects of the zones (capacity); about 4 minutes.
echo "== Kubernetes external storage suite, multi-node specs (test/conformance/run.sh --nodes 4)"
bash test/conformance/run.sh --driver block --nodes 4 --zones zone-a,zone-b,zone-c --focus 'on different node|topology|capacity'

after=$(leaks)
if [ "$after" != "$before" ]; then
  echo "FAIL: tests leaked kernel state:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
