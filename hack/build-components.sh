#!/usr/bin/env bash
# Build the pinned upstream programs that `stowage up` runs (Kubernetes,
# etcd, the CSI sidecars) from the Go modules under third_party/.
# docs/building.md says what is built, from where, and how long it takes.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: hack/build-components.sh [--out DIR] [--force] [COMPONENT...]
       hack/build-components.sh --list

Builds the named components (default: every component not marked optional in
--list; "all" adds the optional ones) into DIR (default: _output/bin at the
repository root). A component whose output is newer than its module's go.mod
and go.sum is skipped; --force rebuilds it anyway.
EOF
}

# Name, module directory under third_party/, and whether it is built by default.
# The order is the build order: kube-apiserver first, because it compiles most
# of what the other Kubernetes programs share.
components=(
	"kube-apiserver          kubernetes           default"
	"kube-controller-manager kubernetes           default"
	"kube-scheduler          kubernetes           default"
	"kubelet                 kubernetes           default"
	"kube-proxy              kubernetes           default"
	"kubectl                 kubernetes           default"
	"etcd                    etcd                 default"
	"csi-provisioner         external-provisioner default"
	"csi-attacher            external-attacher    default"
	"csi-resizer             external-resizer     default"
	"csi-snapshotter         external-snapshotter default"
	"snapshot-controller     external-snapshotter default"
	"snapshot-crds           external-snapshotter default"
	"secrets-store-csi-driver secrets-store-csi-driver default"
	"secrets-store-crds      secrets-store-csi-driver default"
	"helm                    helm                 default"
	"ginkgo                  kubernetes           optional"
	"e2e.test                kubernetes           optional"
)

# The VolumeSnapshot CRDs (snapshot.storage.k8s.io/v1) that snapshot-crds
# copies into DIR/crds from the external-snapshotter client module.
snapshot_crds=(
	snapshot.storage.k8s.io_volumesnapshotclasses.yaml
	snapshot.storage.k8s.io_volumesnapshotcontents.yaml
	snapshot.storage.k8s.io_volumesnapshots.yaml
)

# The Secrets Store CSI driver's CRDs (secrets-store.csi.x-k8s.io/v1) that
# secrets-store-crds copies into DIR/crds from the driver's module.
secrets_store_crds=(
	secrets-store.csi.x-k8s.io_secretproviderclasses.yaml
	secrets-store.csi.x-k8s.io_secretproviderclasspodstatuses.yaml
)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$repo/_output/bin
force=false
list=false
requested=()
while [[ $# -gt 0 ]]; do
	case $1 in
	--out)
		[[ $# -ge 2 ]] || { usage >&2; exit 2; }
		out=$2
		shift 2
		;;
	--out=*) out=${1#--out=}; shift ;;
	--force) force=true; shift ;;
	--list) list=true; shift ;;
	-h | --help) usage; exit 0 ;;
	-*) echo "build-components: unknown flag $1" >&2; usage >&2; exit 2 ;;
	*) requested+=("$1"); shift ;;
	esac
done

if $list; then
	for c in "${components[@]}"; do
		read -r name _ kind <<<"$c"
		printf '%s\t%s\n' "$name" "$kind"
	done
	exit 0
fi

# module_of NAME prints the module directory of a component, or fails.
module_of() {
	local c name dir
	for c in "${components[@]}"; do
		read -r name dir _ <<<"$c"
		if [[ $name == "$1" ]]; then
			echo "$dir"
			return 0
		fi
	done
	return 1
}

selected=()
if [[ ${#requested[@]} -eq 0 || " ${requested[*]} " == *" all "* ]]; then
	for c in "${components[@]}"; do
		read -r name _ kind <<<"$c"
		if [[ $kind == default || ${#requested[@]} -gt 0 ]]; then
			selected+=("$name")
		fi
	done
else
	for name in "${requested[@]}"; do
		if ! module_of "$name" >/dev/null; then
			echo "build-components: unknown component '$name' (see --list)" >&2
			exit 2
		fi
		selected+=("$name")
	done
fi

# `stowage up` may run us with a minimal PATH; Go's tarball installs here.
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
	PATH=$PATH:/usr/local/go/bin
fi
if ! command -v go >/dev/null; then
	echo "build-components: go is not on PATH (install Go 1.26 or newer)" >&2
	exit 1
fi

# Each third_party module builds on its own: no workspace, static binaries,
# and go.mod/go.sum used exactly as committed (-mod=readonly on every command
# overrides a -mod in the caller's GOFLAGS).
export GOWORK=off CGO_ENABLED=0

mkdir -p "$out"
out=$(cd "$out" && pwd)

# version_of DIR MODULE prints the version of MODULE that DIR's module builds.
version_of() {
	(cd "$repo/third_party/$1" && go list -mod=readonly -m -f '{{.Version}}' "$2")
}

# kube_ldflags DIR prints the -X flags that make Kubernetes programs report
# their real version; without them they say v0.0.0 and version checks fail.
kube_ldflags() {
	local v major minor p flags=""
	v=$(version_of "$1" k8s.io/kubernetes)
	major=${v#v}
	major=${major%%.*}
	minor=${v#v*.}
	minor=${minor%%.*}
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor"
		flags+=" -X $p.gitTreeState=clean"
	done
	echo "$flags"
}

# copy_crds MODDIR MODULE SUBDIR FILE...: copies CRD files from MODULE (as
# the module cache holds it, checked against MODDIR's go.sum) into DIR/crds.
copy_crds() {
	local moddir=$1 mod=$2 sub=$3 src f
	shift 3
	src=$(cd "$moddir" && go mod download -json "$mod" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
	[[ -n $src ]] || return 1
	mkdir -p "$out/crds"
	for f in "$@"; do
		install -m 0644 "$src/$sub/$f" "$out/crds/$f.tmp.$$" &&
			mv -f "$out/crds/$f.tmp.$$" "$out/crds/$f" || return 1
	done
}

# build NAME DIR TARGET: builds one component of module DIR into TARGET.
build() {
	local name=$1 dir=$2 target=$3 mod tmp
	local moddir=$repo/third_party/$dir
	tmp=$target.tmp.$$
	case $name in
	kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy | kubectl)
		(cd "$moddir" && go build -mod=readonly -trimpath \
			-ldflags "-s -w $(kube_ldflags "$dir")" \
			-o "$tmp" "k8s.io/kubernetes/cmd/$name")
		;;
	e2e.test)
		(cd "$moddir" && go test -mod=readonly -c -trimpath \
			-ldflags "-s -w $(kube_ldflags "$dir")" \
			-o "$tmp" k8s.io/kubernetes/test/e2e)
		;;
	ginkgo)
		(cd "$moddir" && go build -mod=readonly -trimpath -ldflags "-s -w" \
			-o "$tmp" github.com/onsi/ginkgo/v2/ginkgo)
		;;
	etcd)
		# server/v3 is etcd's main package (it calls etcdmain.Main).
		(cd "$moddir" && go build -mod=readonly -trimpath -ldflags "-s -w" \
			-o "$tmp" go.etcd.io/etcd/server/v3)
		;;
	csi-provisioner | csi-attacher | csi-resizer | csi-snapshotter | snapshot-controller)
		case $name in
		csi-provisioner) mod=github.com/kubernetes-csi/external-provisioner/v5 ;;
		csi-attacher) mod=github.com/kubernetes-csi/external-attacher/v4 ;;
		csi-resizer) mod=github.com/kubernetes-csi/external-resizer ;;
		*) mod=github.com/kubernetes-csi/external-snapshotter/v8 ;;
		esac
		(cd "$moddir" && go build -mod=readonly -trimpath \
			-ldflags "-s -w -X main.version=$(version_of "$dir" "$mod")" \
			-o "$tmp" "$mod/cmd/$name")
		;;
	secrets-store-csi-driver)
		# monis.app/mlog is replaced by our shim (mlog/README.md there).
		(cd "$moddir" && go build -mod=readonly -trimpath \
			-ldflags "-s -w -X sigs.k8s.io/secrets-store-csi-driver/pkg/version.BuildVersion=$(version_of "$dir" sigs.k8s.io/secrets-store-csi-driver)" \
			-o "$tmp" sigs.k8s.io/secrets-store-csi-driver/cmd/secrets-store-csi-driver)
		;;
	helm)
		# The same -X flags as helm's Makefile: the version it reports, and
		# the Kubernetes version `helm template` and `helm lint` assume
		# (1.<minor of the client-go it builds with>).
		local hv kv kminor hp=helm.sh/helm/v3
		hv=$(version_of "$dir" helm.sh/helm/v3)
		kv=$(version_of "$dir" k8s.io/client-go)
		kminor=${kv#v0.}
		kminor=${kminor%%.*}
		(cd "$moddir" && go build -mod=readonly -trimpath \
			-ldflags "-s -w -X $hp/internal/version.version=$hv -X $hp/internal/version.gitTreeState=clean \
-X $hp/pkg/lint/rules.k8sVersionMajor=1 -X $hp/pkg/lint/rules.k8sVersionMinor=$kminor \
-X $hp/pkg/chartutil.k8sVersionMajor=1 -X $hp/pkg/chartutil.k8sVersionMinor=$kminor" \
			-o "$tmp" "$hp/cmd/helm")
		;;
	snapshot-crds)
		copy_crds "$moddir" github.com/kubernetes-csi/external-snapshotter/client/v8 config/crd "${snapshot_crds[@]}"
		return
		;;
	secrets-store-crds)
		copy_crds "$moddir" sigs.k8s.io/secrets-store-csi-driver config/crd/bases "${secrets_store_crds[@]}"
		return
		;;
	esac || { rm -f "$tmp"; return 1; }
	mv -f "$tmp" "$target"
}

# elapsed START prints the time since START (an $EPOCHREALTIME) as 7m18s or 4.2s.
elapsed() {
	local ms=$(((${EPOCHREALTIME/./} - ${1/./}) / 1000))
	if ((ms >= 60000)); then
		printf '%dm%02ds' $((ms / 60000)) $((ms % 60000 / 1000))
	else
		printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100))
	fi
}

total=${#selected[@]}
i=0
all_start=$EPOCHREALTIME
for name in "${selected[@]}"; do
	i=$((i + 1))
	dir=$(module_of "$name")
	moddir=$repo/third_party/$dir
	if [[ $name == snapshot-crds ]]; then
		target=$out/crds/${snapshot_crds[-1]}
	elif [[ $name == secrets-store-crds ]]; then
		target=$out/crds/${secrets_store_crds[-1]}
	else
		target=$out/$name
	fi
	if ! $force && [[ -f $target && $target -nt $moddir/go.sum && $target -nt $moddir/go.mod ]]; then
		echo "[$i/$total] $name is up to date"
		continue
	fi
	case $name in
	snapshot-crds) echo "[$i/$total] copying the VolumeSnapshot CRDs into $out/crds..." ;;
	secrets-store-crds) echo "[$i/$total] copying the Secrets Store CRDs into $out/crds..." ;;
	*) echo "[$i/$total] building $name (cold builds take minutes)..." ;;
	esac
	start=$EPOCHREALTIME
	if ! build "$name" "$dir" "$target"; then
		echo "build-components: FAILED: $name (module third_party/$dir) after $(elapsed "$start"); the go output above says why" >&2
		exit 1
	fi
	if [[ $name == *-crds ]]; then
		echo "[$i/$total] $name done in $(elapsed "$start")"
	else
		echo "[$i/$total] $name built in $(elapsed "$start") ($(du -h "$target" | cut -f1))"
	fi
done
echo "build-components: $total component(s) in $out ($(elapsed "$all_start"))"
