#!/usr/bin/env bash
# Installs what Stowage needs on a fresh Debian machine and is missing:
# file system tools (mkfs/grow for ext4, xfs, btrfs), util-linux (losetup,
# blkid, mount), fio for benchmarks, nfs-ganesha (+ its VFS back end) that
# serves file systems over NFS, libnfs-utils (an independent user-space NFS
# client for tests). Idempotent: installs only what lacks.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "hack/setup.sh: run as root (it installs packages and Stowage uses loop devices and mounts)" >&2
  exit 1
fi

packages=(xfsprogs e2fsprogs btrfs-progs util-linux mount fio kmod bc nfs-ganesha nfs-ganesha-vfs libnfs-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Loop devices may be built into the kernel; modprobe is only a fallback.
[ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true
if [ ! -e /dev/loop-control ]; then
  echo "setup: this kernel has no loop device support (/dev/loop-control is missing); Stowage needs it" >&2
  exit 1
fi

if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    echo "setup: go is at /usr/local/go/bin; add it to PATH" >&2
  else
    echo "setup: Go is not installed; Stowage needs Go 1.26 or later" >&2
  fi
  exit 1
fi
echo "setup: ok ($(go version | cut -d' ' -f3), $(mkfs.xfs -V 2>&1 | head -1), fio $(fio --version 2>/dev/null))"
