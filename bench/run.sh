#!/usr/bin/env bash
# Runs the block-volume benchmarks whose results are in docs/benchmarks.md.
#
#   bash bench/run.sh                       # everything, ~20 minutes
#   bash bench/run.sh -only churn           # one benchmark (fio, snapshots, churn)
#   bash bench/run.sh -fio-runtime 5s       # any blockbench flag (-h lists them)
#
# Needs root, fio, xfsprogs and e2fsprogs. Builds the stowage binary and the
# benchmark niced, then runs them; the report is printed and kept in
# bench/.out/results-<time>.md with the raw fio JSON and the daemon logs.
# blockbench removes everything it creates, also on failure and on Ctrl-C.
set -euo pipefail
source "$(dirname "$0")/../hack/lib/root.sh"
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "bench/run.sh: needs root (loop devices, mounts, blkio rules)" >&2
	exit 1
fi
for tool in go fio mkfs.xfs mkfs.ext4 filefrag; do
	command -v "$tool" >/dev/null || { echo "bench/run.sh: needs $tool" >&2; exit 1; }
done

echo "== building bench/.bin/stowage and bench/.bin/blockbench (niced)" >&2
mkdir -p bench/.bin
nice -n 10 go build -o bench/.bin/stowage ./cmd/stowage
nice -n 10 go build -o bench/.bin/blockbench ./bench/blockbench

echo "== load before: $(uptime)" >&2
# blockbench's defaults are -stowage bench/.bin/stowage -out bench/.out.
exec bench/.bin/blockbench "$@"
