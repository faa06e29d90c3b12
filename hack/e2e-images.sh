#!/usr/bin/env bash
# Build the images the Kubernetes external storage suite runs its pods from
# and import them into the containerd of every node of the running
# `stowage up` cluster (one, or each of `up --nodes N`),
# under the names e2e.test (v1.33.13) asks for:
#   registry.k8s.io/e2e-test-images/busybox:1.36.1-1        busybox-static
#   registry.k8s.io/e2e-test-images/agnhost:2.53            busybox + agnhost
#   registry.k8s.io/e2e-test-images/nginx:1.14-4            busybox (httpd on :80)
#   registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7     busybox + GNU dd + dash
# internal/cluster/e2eimages.go says what is in each and why. Images whose
# content is unchanged are not imported again. Run as root.
set -euo pipefail

usage() {
	echo "usage: hack/e2e-images.sh [--data-dir DIR]   (default /var/lib/stowage)"
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data_dir=/var/lib/stowage
while [[ $# -gt 0 ]]; do
	case $1 in
	--data-dir)
		[[ $# -ge 2 ]] || { usage >&2; exit 2; }
		data_dir=$2
		shift 2
		;;
	--data-dir=*) data_dir=${1#--data-dir=}; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
	PATH=$PATH:/usr/local/go/bin
fi
out=$repo/_output/e2e
mkdir -p "$out"

# agnhost, static, from its own small module (test/conformance/agnhost: the
# pins of third_party/kubernetes plus the go.sum lines agnhost needs).
mod=$repo/test/conformance/agnhost
if [[ ! -x $out/agnhost || $mod/go.mod -nt $out/agnhost || $mod/go.sum -nt $out/agnhost ]]; then
	echo "e2e-images: building agnhost (k8s.io/kubernetes/test/images/agnhost)..."
	(cd "$mod" && GOWORK=off CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" \
		-o "$out/agnhost.tmp.$$" k8s.io/kubernetes/test/images/agnhost)
	mv -f "$out/agnhost.tmp.$$" "$out/agnhost"
fi

# Debian's busybox-static (what `stowage up` installs for its own busybox
# image); the dynamically linked busybox package would not run in an image.
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
	echo "e2e-images: installing busybox-static..."
	apt-get install -y -q busybox-static >/dev/null
fi

(cd "$repo" && GOWORK=off go build -o "$out/e2eimages" ./test/conformance/e2eimages)
"$out/e2eimages" --data-dir "$data_dir" --agnhost "$out/agnhost" --busybox /bin/busybox --dd /bin/dd --dash /bin/dash
