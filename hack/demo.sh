#!/usr/bin/env bash
# Sets up this machine, builds stowage, starts a Stowage server whose pool is
# an xfs file system with reflinks on a sparse image, and walks through the
# block-volume lifecycle with the CLI: create, snapshot, restore, clone,
# resize, modify, attach, delete. Everything it starts is stopped at the end.
#
#   bash hack/demo.sh            # run the walk-through, then stop
#   bash hack/demo.sh --keep     # leave the server running to try the CLI
set -euo pipefail
source "$(dirname "$0")/../hack/lib/root.sh"
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
keep=false
[ "${1:-}" = "--keep" ] && keep=true

bash hack/setup.sh
echo "== building bin/stowage"
go build -o bin/stowage ./cmd/stowage

data=${STOWAGE_DEMO_DIR:-/var/lib/stowage-demo}
sock="unix://$data/api.sock"
node=$(hostname)
mkdir -p "$data"
export STOWAGE_ENDPOINT="$sock"

echo "== starting stowage server (data in $data, log in $data/server.log)"
bin/stowage server --data-dir "$data" --listen "$sock" \
  --pool "name=pool-a,zone=zone-a,node=$node,size=64G" >"$data/server.log" 2>&1 &
pid=$!
stop() {
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "== server stopped (pid $pid)"
  fi
}
$keep || trap stop EXIT
for _ in $(seq 100); do [ -S "$data/api.sock" ] && break; sleep 0.1; done
[ -S "$data/api.sock" ] || { echo "server did not start; see $data/server.log" >&2; cat "$data/server.log" >&2; exit 1; }

run() { echo; echo "\$ stowage $*"; bin/stowage "$@"; }
run pool list
run volume create --name demo-data --size 10 --type gp3 --zone zone-a --tag app=demo
ids() { sed -n 's/.*"id": "\([a-z]*-[0-9a-f]*\)".*/\1/p'; }
vol=$(bin/stowage volume list --tag app=demo -o json | ids | head -1)
run volume create --name demo-data --size 10 --type gp3 --zone zone-a --tag app=demo   # same name: same volume
run volume attach "$vol" --node "$node"
run snapshot create "$vol" --name demo-snap-1
snap=$(bin/stowage snapshot list --volume "$vol" -o json | ids | head -1)
run volume create --name demo-restore --snapshot "$snap"
run volume create --name demo-clone --source-volume "$vol"
run volume resize "$vol" --size 20
run volume modify "$vol" --type io2 --iops 8000
echo; echo "\$ stowage volume create --size 10 --type gp3 --iops 20000   # refused: names the parameter and range"
bin/stowage volume create --size 10 --type gp3 --iops 20000 || echo "(exit code $?)"
run volume list
run volume detach "$vol" --node "$node"
if ! $keep; then
  for v in $(bin/stowage volume list -o json | ids); do run volume delete "$v"; done
  run snapshot delete "$snap"
  run pool list
else
  echo; echo "server running as pid $pid; try: STOWAGE_ENDPOINT=$sock bin/stowage volume list   (stop: kill $pid)"
fi
