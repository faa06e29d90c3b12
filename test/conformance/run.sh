#!/usr/bin/env bash
# Run the Kubernetes external storage suite (e2e.test of Kubernetes v1.33.13,
# "External Storage [Driver: block.csi.stowage.io]") against the block CSI
# driver on the local cluster of `stowage up`, and write a summary.
#
#   bash test/conformance/run.sh            # everything that can run here
#   bash test/conformance/run.sh --ci       # the subset CI runs
#   bash test/conformance/run.sh --focus 'volume-expand' --skip 'block volmode'
#
# Steps: build e2e.test and ginkgo if missing (hack/build-components.sh),
# bin/stowage if missing; `stowage up` unless the cluster runs; build and
# import the test images (hack/e2e-images.sh); run ginkgo; summarize.
# The results and every skip's reason are in docs/conformance.md.
set -euo pipefail
source "$(dirname "$0")/../../hack/lib/root.sh"

usage() {
	cat <<'EOF'
usage: test/conformance/run.sh [--ci] [--driver block|file] [--focus REGEX] [--skip REGEX] [--procs N]
                               [--report-dir DIR] [--data-dir DIR] [--nodes N --zones Z,...]
                               [--install processes|chart] [--keep-cluster] [--dry-run]

  --ci          the CI subset: the suites provisioning, volumes, volumeMode,
                multiVolume, snapshottable, volume-expand, volume-modify,
                read-write-once-pod, fsgroupchangepolicy, topology, volumeLimits,
                capacity (not subPath, ephemeral, volumeIO)
  --driver      only this driver's specs (default: both, block.csi.stowage.io and
                file.csi.stowage.io)
  --focus       a further regex the spec text must match (ANDed with the run's focus)
  --skip        a further regex of specs to skip (reason "--skip on the command line")
  --procs       parallel ginkgo processes (default 3, with --ci 4; [Serial] specs
                run alone at the end)
  --report-dir  where reports go (default _output/conformance/<UTC time>)
  --data-dir    the cluster's data directory (default /var/lib/stowage)
  --nodes, --zones  when run.sh brings the cluster up: stowage up --nodes N --zones Z,...
  --install     when run.sh brings the cluster up: stowage up --install (chart: the
                drivers as the Helm chart's pods)
                (a running cluster is used as it is). On several nodes the block
                driver is testdriver-multinode.yaml (zone topology, pods move between
                nodes of a zone)
  --keep-cluster  leave the cluster running at the end (default: as found --
                a cluster this run created is removed with stowage down --wipe,
                as test/e2e does; a stopped one is stopped again)
  --dry-run     list what would run, without a cluster
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$repo/test/conformance
bin=$repo/_output/bin
data_dir=/var/lib/stowage
report_dir=
ci=false
dry_run=false
keep_cluster=false
procs=
user_focus=
user_skip=
up_nodes=
up_zones=
up_install=
drivers='block|file'
while [[ $# -gt 0 ]]; do
	case $1 in
	--ci) ci=true; shift ;;
	--dry-run) dry_run=true; shift ;;
	--keep-cluster) keep_cluster=true; shift ;;
	--focus | --skip | --procs | --report-dir | --data-dir | --driver | --nodes | --zones | --install)
		[[ $# -ge 2 ]] || { usage >&2; exit 2; }
		case $1 in
		--focus) user_focus=$2 ;;
		--skip) user_skip=$2 ;;
		--procs) procs=$2 ;;
		--report-dir) report_dir=$2 ;;
		--data-dir) data_dir=$2 ;;
		--nodes) up_nodes=$2 ;;
		--zones) up_zones=$2 ;;
		--install) up_install=$2 ;;
		--driver)
			case $2 in block | file) drivers=$2 ;; *) echo "run.sh: --driver $2: use block or file" >&2; exit 2 ;; esac
			;;
		esac
		shift 2
		;;
	-h | --help) usage; exit 0 ;;
	*) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
	esac
done

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
	PATH=$PATH:/usr/local/go/bin
fi
# 3 processes keep 2 cores busy without starving the cluster for the full run;
# the CI subset has fewer long specs and finishes sooner with 4.
[[ -n $procs ]] || { $ci && procs=4 || procs=3; }
[[ -n $report_dir ]] || report_dir=$repo/_output/conformance/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$report_dir"
report_dir=$(cd "$report_dir" && pwd)
kubeconfig=$data_dir/kubeconfig/admin.kubeconfig

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# --- what runs, and why the rest does not ---------------------------------
# Every spec registered for the driver is "External Storage [Driver: ...]".
# A skip rule is REASON<TAB>REGEX; the summary names the reason of each
# skipped spec (rules here, or the test suite's own message when the suite
# skips a spec itself, e.g. a capability the driver does not claim).
focus="External Storage \\[Driver: ($drivers)\\.csi\\.stowage\\.io\\]"
rules=()
rule() { rules+=("$1"$'\t'"$2"); }
rule "needs SSH to the node to stop and start the kubelet with systemctl (storage/utils.KubeletCommand); the local cluster has no SSH server and its kubelet is a plain host process" '\[Disruptive\]'
rule "marked [Flaky] upstream" '\[Flaky\]'
rule "Windows only (ntfs)" '\[Feature:Windows\]'
rule "runs commands on the node through a privileged pod that enters the mount namespace of the host's PID 1 (storage/utils.HostExec: nsenter --mount=/proc/1/ns/mnt); this machine refuses that even to host root (Permission denied: PID 1 is the VM's init)" 'volumeMode should not mount / map unused volumes in a pod'
rule "deploys the volume-data-source-validator and hello-populator images of registry.k8s.io/sig-storage, which no registry can serve here and which are not built locally; the driver's part (an empty volume) is covered by the other provisioning specs" 'should provision storage with any volume data source'
# The "default fs" patterns use the class stowage-gp3, whose file system
# `stowage up` chose so that it grows online on this machine (xfs where root
# lacks CAP_SYS_RESOURCE, ext4 elsewhere): the online expansion specs run.
# --ci: the suites that exercise the driver itself (provisioning, data,
# snapshots, clones, expansion, modification, access modes, topology, limits),
# every pattern including [Slow] and [Serial] ones; left out are subPath,
# ephemeral and volumeIO (kubelet subpaths, the generic-ephemeral controller,
# file sizes: ~10 of the full run's ~40 minutes of spec time), which the full
# run covers.
if $ci; then
	focus+='.*\] (provisioning|volumes|volumeMode|multiVolume|snapshottable|volume-expand|volume-modify|read-write-once-pod|fsgroupchangepolicy|topology|volumeLimits|capacity) '
fi
# How many nodes the cluster has (or will have: --nodes), from cluster.json:
# one "podCIDR" for the machine's node and one per worker (storage hosts
# have none). Without cluster.json run.sh brings up --nodes (default 1).
cluster_nodes() {
	if [[ -r $data_dir/cluster.json ]]; then
		grep -c '"podCIDR"' "$data_dir/cluster.json" || true
	else
		echo "${up_nodes:-1}"
	fi
}
[[ -z $user_skip ]] || rule "--skip on the command line" "$user_skip"
[[ -z $user_focus ]] || focus="($focus).*($user_focus)|($user_focus).*($focus)"

skip=
: >"$report_dir/skips.tsv"
for r in "${rules[@]}"; do
	printf '%s\n' "$r" >>"$report_dir/skips.tsv"
	skip+="${skip:+|}${r#*$'\t'}"
done

# --- binaries, cluster, images ------------------------------------------------
if [[ ! -x $bin/e2e.test || ! -x $bin/ginkgo ]]; then
	log "building e2e.test and ginkgo (cold: about 10 minutes)"
	bash "$repo/hack/build-components.sh" e2e.test ginkgo
fi
(cd "$repo" && GOWORK=off go build -o "$repo/_output/e2e/summarize" ./test/conformance/summarize)

# The block driver's definition depends on the cluster's shape: on several
# nodes (stowage up --nodes N) a volume's topology is its zone and its pod
# may move to another node of the zone (testdriver-multinode.yaml says how
# that file differs). Decided again once the cluster runs.
choose_block_driver() {
	nodes=$(cluster_nodes)
	block_driver=$here/testdriver.yaml
	[[ $nodes -le 1 ]] || block_driver=$here/testdriver-multinode.yaml
	e2e_args[2]=-storage.testdriver="$block_driver"
}
e2e_args=(
	--kubeconfig="$kubeconfig"
	--provider=local
	-storage.testdriver="$here/testdriver.yaml" # e2e_args[2], set by choose_block_driver
	-storage.testdriver="$here/file-testdriver.yaml"
	--repo-root="$repo"
	--report-dir="$report_dir"
	--kubelet-root-dir="$data_dir/kubelet"
	--kubectl-path="$bin/kubectl"
	--node-os-distro=debian
	--dump-logs-on-failure=true
	--disable-log-dump=true
)
choose_block_driver
ginkgo_args=(
	--procs="$procs"
	--timeout=6h
	--output-dir="$report_dir"
	--json-report=report.json
	--junit-report=junit.xml
	--no-color
	--poll-progress-after=10m
	--focus="$focus"
	--skip="$skip"
)

# One table per driver.
summarize() {
	local d
	for d in ${drivers//|/ }; do
		"$repo/_output/e2e/summarize" --report "$report_dir/report.json" --skips "$report_dir/skips.tsv" --driver "$d.csi.stowage.io"
		echo
	done
}
if $dry_run; then
	"$bin/ginkgo" --dry-run "${ginkgo_args[@]/--procs=*/--procs=1}" "$bin/e2e.test" -- "${e2e_args[@]}" >"$report_dir/ginkgo.log" 2>&1 || true
	summarize | tee "$report_dir/summary.md"
	exit 0
fi

[[ $(id -u) == 0 ]] || { echo "run.sh: run as root (stowage up, ctr, host mounts)" >&2; exit 1; }
log "building bin/stowage"
(cd "$repo" && go build -o bin/stowage ./cmd/stowage)
# Leave the cluster as it was found: one this run creates is removed at the
# end (down --wipe), one it starts from a stopped data directory is stopped
# again (down), one that runs is left running.
found=running
if [[ ! -e $data_dir/cluster.json ]]; then
	found=none
elif ! "$repo/bin/stowage" status --data-dir "$data_dir" >/dev/null 2>&1; then
	found=stopped
fi
# other_namespaces lists namespaces that neither the system nor the e2e
# framework (label e2e-framework) made: someone else is using the cluster.
other_namespaces() {
	"$bin/kubectl" --kubeconfig="$kubeconfig" get ns -l '!e2e-framework' -o name 2>/dev/null |
		grep -v -E '^namespace/(default|kube-system|kube-public|kube-node-lease)$' | tr '\n' ' ' || true
}
teardown() {
	$keep_cluster && return 0
	[[ $found != running ]] || return 0
	# Someone else may have started using the cluster meanwhile (test/e2e
	# uses a running cluster and leaves it up): their namespaces keep it up.
	local others
	others=$(other_namespaces)
	if [[ -n $others ]]; then
		log "leaving the cluster running: namespaces this run did not make exist ($others)"
		return 0
	fi
	case $found in
	none)
		log "stowage down --wipe (this run created the cluster)"
		"$repo/bin/stowage" down --wipe --data-dir "$data_dir" || { log "FAIL: stowage down --wipe failed"; return 1; }
		;;
	stopped)
		log "stowage down (the cluster was stopped before this run)"
		"$repo/bin/stowage" down --data-dir "$data_dir" || { log "FAIL: stowage down failed"; return 1; }
		;;
	esac
}
trap teardown EXIT
if [[ $found != running ]]; then
	up_args=(--data-dir "$data_dir")
	[[ -z $up_nodes ]] || up_args+=(--nodes "$up_nodes")
	[[ -z $up_zones ]] || up_args+=(--zones "$up_zones")
	[[ -z $up_install ]] || up_args+=(--install "$up_install")
	log "bringing the cluster up (bin/stowage up ${up_args[*]})"
	"$repo/bin/stowage" up "${up_args[@]}"
fi
choose_block_driver
log "building and importing the test images"
bash "$repo/hack/e2e-images.sh" --data-dir "$data_dir"

# The part of each component log written during the run goes with the report.
declare -A log_offsets=()
for f in "$data_dir"/logs/*.log; do
	log_offsets[$f]=$(stat -c %s "$f")
done
cleanup() {
	# The run's exit status, before any command here replaces $? (taken
	# after the loop below, it was the loop's 0: a failed suite exited 0).
	local rc=$?
	mkdir -p "$report_dir/logs"
	for f in "$data_dir"/logs/*.log; do
		tail -c +$((${log_offsets[$f]:-0} + 1)) "$f" >"$report_dir/logs/$(basename "$f")" 2>/dev/null || true
	done
	# A failed teardown fails the run: the machine must be left clean.
	teardown || rc=1
	exit $rc
}
trap cleanup EXIT

log "running the suite: $procs ginkgo processes, $nodes node(s), block driver ${block_driver#$repo/}, reports in $report_dir"
start=$SECONDS
set +e
"$bin/ginkgo" "${ginkgo_args[@]}" "$bin/e2e.test" -- "${e2e_args[@]}" >"$report_dir/ginkgo.log" 2>&1
rc=$?
set -e
elapsed=$((SECONDS - start))

# The framework deletes each test's namespace without waiting; once every
# claim and volume is gone, nothing of the driver's may be left on the node:
# no loop device of a volume image, no mount under the kubelet's directory.
log "waiting for the test namespaces and volumes to be deleted"
kubectl=("$bin/kubectl" --kubeconfig="$kubeconfig")
for ((i = 0; i < 120; i++)); do
	if [[ -z $("${kubectl[@]}" get ns -l e2e-framework -o name 2>/dev/null) ]] &&
		[[ -n $(other_namespaces) || -z $("${kubectl[@]}" get pv,volumeattachments -o name 2>/dev/null) ]]; then
		break
	fi
	sleep 5
done
others=$(other_namespaces)
leftovers=
if [[ -z $others ]]; then
	leftovers=$("${kubectl[@]}" get ns -l e2e-framework -o name 2>/dev/null || true)
	leftovers+=$'\n'$("${kubectl[@]}" get pv -o name 2>/dev/null || true)
	# Volume images of any pool (the machine's, a storage host's), network
	# attachments (a loop device on an NBD client's FUSE file), and mounts
	# under any node's kubelet directory (up --nodes: <data dir>/nodes/<node>/kubelet).
	leftovers+=$'\n'$(losetup -l -n -O NAME,BACK-FILE 2>/dev/null | grep -F "$data_dir/" | grep -E '/volumes/|/fuse-loop/' || true)
	leftovers+=$'\n'$(awk -v d="$data_dir/" 'index($2, d) == 1 && (index($2, d "kubelet/") == 1 || $2 ~ "^" d "nodes/[^/]+/kubelet/") {print $2}' /proc/mounts || true)
	leftovers=$(grep -v '^$' <<<"$leftovers" || true)
fi
{
	summarize
	echo
	if [[ -n $others ]]; then
		echo "Leftovers not checked: the cluster is in use by others too ($others)."
		echo
	elif [[ -n $leftovers ]]; then
		echo "Left behind after every test namespace and volume was deleted:"
		echo
		sed 's/^/    /' <<<"$leftovers"
		echo
	else
		echo "Left behind: nothing (no volume, loop device or kubelet mount)."
		echo
	fi
	printf 'Wall time of the ginkgo run: %dm%02ds (%d processes, %s).\n' $((elapsed / 60)) $((elapsed % 60)) "$procs" "$($ci && echo --ci || echo full)"
} >"$report_dir/summary.md" || true
cat "$report_dir/summary.md"
log "ginkgo exit code $rc; log $report_dir/ginkgo.log, JUnit $report_dir/junit.xml"
if [[ $rc == 0 && -n $leftovers ]]; then
	log "FAIL: the run left volumes, loop devices or mounts behind (above)"
	rc=1
fi
exit $rc
