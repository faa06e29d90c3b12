#!/usr/bin/env bash
# The project's test command (README, .ci/run). Installs what is missing,
# then runs go vet and every test: unit tests, csi-sanity against the real
# driver and server, crash-recovery tests. Tests use real loop devices and
# mounts, so this runs as root. It fails if a test leaked a loop device or
# a mount.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

bash hack/setup.sh

leaks() {
  { losetup -a 2>/dev/null | grep -E '/tmp/|stw|stowage' || true; grep -E ' /tmp/(stw|Test)' /proc/mounts || true; } | sort
}
before=$(leaks)

echo "== go vet"
go vet ./...
echo "== go test (unit, csi-sanity, crash recovery)"
go test -count=1 -timeout 30m ./...

after=$(leaks)
if [ "$after" != "$before" ]; then
  echo "FAIL: tests leaked kernel state:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
