#!/usr/bin/env bash
# Runs the shared-file-system benchmarks whose results are in
# docs/benchmarks.md ("Shared file systems").
#
#   bash bench/files.sh                        # everything, ~15 minutes
#   bash bench/files.sh -only small            # one benchmark (small, seq, libnfs)
#   bash bench/files.sh -rounds 5 -files 1000  # any filebench flag (-h lists them)
#
# Needs root, xfsprogs, nfs-ganesha + nfs-ganesha-vfs and libnfs-utils. Builds
# the stowage binary (its nfs-mount command is the FUSE client) and the
# benchmark niced, then runs them; the report is printed and kept in
# bench/.out/files-<time>.md with ganesha's and the client's logs.
# filebench removes everything it creates, also on failure and on Ctrl-C.
set -euo pipefail
source "$(dirname "$0")/../hack/lib/root.sh"
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "bench/files.sh: needs root (loop device, mounts, FUSE, ganesha)" >&2
	exit 1
fi
for tool in go mkfs.xfs ganesha.nfsd nfs-cp nfs-cat nfs-ls; do
	command -v "$tool" >/dev/null || { echo "bench/files.sh: needs $tool (hack/setup.sh installs it)" >&2; exit 1; }
done

echo "== building bench/.bin/stowage and bench/.bin/filebench (niced)" >&2
mkdir -p bench/.bin
nice -n 10 go build -o bench/.bin/stowage ./cmd/stowage
nice -n 10 go build -o bench/.bin/filebench ./bench/filebench

echo "== load before: $(uptime)" >&2
# filebench's defaults are -stowage bench/.bin/stowage -out bench/.out.
exec bench/.bin/filebench "$@"
