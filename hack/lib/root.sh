# Sourced by the hack/ scripts that need root (loop devices, mounts, a
# kubelet). As root (this kind of machine: root, no sudo) it does nothing;
# as another user it runs the calling script again through sudo, so that the
# README's commands work as written on both kinds of machine.
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo --preserve-env=PATH,GOPATH,GOCACHE,GOMODCACHE,GOFLAGS,CI bash "$(cd "$(dirname "$0")" && pwd)/$(basename "$0")" "$@"
  fi
  echo "$(basename "$0"): needs root (loop devices, mounts, a kubelet), and sudo is not installed: run it as root" >&2
  exit 1
fi
