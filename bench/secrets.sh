#!/usr/bin/env bash
# Runs the secrets and KMS benchmarks whose results are in docs/benchmarks.md
# ("Secrets and KMS").
#
#   bash bench/secrets.sh                  # everything, ~5 minutes
#   bash bench/secrets.sh --quick          # a short run, about a minute
#   bash bench/secrets.sh -only mount      # one of: mount, getvalue, kms
#   bench/.bin/secretsbench -h             # every knob
#
# Needs etcd and kube-apiserver in _output/bin (bash hack/build-components.sh;
# /work/main/_output/bin is used when this tree has none). Builds the stowage
# binary and the benchmark niced, then runs them; the report is printed and
# kept in bench/.out/secrets-<time>.md with every process's log. secretsbench
# starts its own etcd + kube-apiserver pairs on loopback ports 22379-22380,
# 22479-22480, 16443 and 16444 (not the local cluster's), and stops every
# process it started and removes its temporary directory at the end, also on
# failure and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building bench/.bin/stowage and bench/.bin/secretsbench (niced)" >&2
mkdir -p bench/.bin
nice -n 10 go build -o bench/.bin/stowage ./cmd/stowage
nice -n 10 go build -o bench/.bin/secretsbench ./bench/secretsbench

echo "== load before: $(uptime)" >&2
# secretsbench's defaults are -stowage bench/.bin/stowage -out bench/.out.
exec bench/.bin/secretsbench "$@"
