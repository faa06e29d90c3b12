#!/usr/bin/env bash
# Runs bench/netblockbench (network block path vs local loop vs pool file
# system); about 2 minutes. Needs root and fio. Flags go to netblockbench
# (-h lists them); the report is printed and kept in bench/.out/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/netblock.sh: needs root" >&2; exit 1; }
command -v fio >/dev/null || { echo "bench/netblock.sh: needs fio" >&2; exit 1; }
mkdir -p bench/.bin bench/.out
nice -n 10 go build -o bench/.bin/stowage ./cmd/stowage
nice -n 10 go build -o bench/.bin/netblockbench ./bench/netblockbench
echo "== load before: $(uptime)" >&2
bench/.bin/netblockbench "$@" | tee "bench/.out/netblock-$(date -u +%Y%m%dT%H%M%S).md"
