#!/usr/bin/env bash
# Copy the replace directives of an upstream module version into one of our
# third_party modules, so that building its main packages resolves the same
# dependency graph upstream builds with.
#
#   third_party/sync-replaces.sh DIR MODULE@VERSION [STAGING_VERSION]
#
# Replaces that point at a local directory cannot be copied as they are:
#   - "=> ./staging/src/k8s.io/NAME" (k8s.io/kubernetes) becomes
#     "k8s.io/NAME => k8s.io/NAME STAGING_VERSION" when STAGING_VERSION is given;
#   - every other local replace ("=> ./client", "=> ../api") is skipped and
#     reported, and the module it names must be required at a published
#     version instead.
#
# Only `go mod edit` touches DIR/go.mod; run `go mod tidy` in DIR afterwards.
# Examples (how the committed go.mod files were produced):
#   third_party/sync-replaces.sh third_party/kubernetes k8s.io/kubernetes@v1.33.13 v0.33.13
#   third_party/sync-replaces.sh third_party/external-snapshotter \
#       github.com/kubernetes-csi/external-snapshotter/v8@v8.2.0
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
	sed -n '5,7p' "$0" >&2
	exit 2
fi
dir=$1 modver=$2 staging=${3:-}

export GOWORK=off
# The .mod file of MODULE@VERSION, fetched through the proxy and verified
# against the checksum database like any other download.
gomod=$(cd "$dir" && go mod download -json "$modver" |
	sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
if [[ -z $gomod || ! -f $gomod ]]; then
	echo "sync-replaces: could not download the go.mod of $modver" >&2
	exit 1
fi

# `go mod edit -print` normalises the file, so each replace is one line of
# the form "OLD [OLDVER] => NEW [NEWVER]", with or without a leading "replace".
n=0
while read -r old oldver new newver; do
	# "-" marks a missing version (awk prints it so that read keeps the fields apart).
	[[ $oldver == - ]] && oldver=
	[[ $newver == - ]] && newver=
	from=$old${oldver:+@$oldver}
	case $new in
	./staging/src/*)
		if [[ -z $staging ]]; then
			echo "sync-replaces: $old => $new needs STAGING_VERSION" >&2
			exit 1
		fi
		to=$old@$staging
		;;
	./* | ../* | /*)
		echo "sync-replaces: skipped local replace $old => $new" >&2
		continue
		;;
	*)
		to=$new${newver:+@$newver}
		;;
	esac
	(cd "$dir" && go mod edit -replace="$from=$to")
	n=$((n + 1))
done < <(go mod edit -print "$gomod" | awk '
	/^replace \($/ { inblock = 1; next }
	inblock && /^\)$/ { inblock = 0; next }
	inblock || /^replace / {
		sub(/^replace /, ""); sub(/[[:space:]]*\/\/.*$/, "")
		gsub(/^[[:space:]]+|[[:space:]]+$/, "")
		split($0, side, /[[:space:]]*=>[[:space:]]*/)
		nl = split(side[1], l, /[[:space:]]+/); nr = split(side[2], r, /[[:space:]]+/)
		printf "%s %s %s %s\n", l[1], (nl > 1 ? l[2] : "-"), r[1], (nr > 1 ? r[2] : "-")
	}')
echo "sync-replaces: $n replace directives from $modver written to $dir/go.mod" >&2
