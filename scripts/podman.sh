#!/usr/bin/env bash
# Runs `podman "$@"`, with a private containers.conf only where a container does not start
# without one.
#
#   scripts/podman.sh ARGS...   podman ARGS, with CONTAINERS_CONF set when needed
#   scripts/podman.sh --check   exit 0 if podman can run a container; else say why on stderr
#
# On some hosts (containers inside containers) the defaults fail: crun cannot run with hybrid
# cgroups, and the default ulimits ask for more open files than the hard limit allows. There the
# private file target/podman/containers.conf selects runc and ulimits within the hard limits.
# A host where plain podman works is left untouched. The decision is probed once (running `true`
# from a directory rootfs, no image needed) and kept in target/podman/mode (delete that
# directory to probe again).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="$root/target/podman"
conf="$state/containers.conf"
mode_file="$state/mode"

if ! command -v podman >/dev/null 2>&1; then
  echo "podman: not installed (Debian: apt-get install podman runc)" >&2
  exit 127
fi

write_conf() {
  local nofile nproc
  nofile="$(ulimit -Hn)"
  [[ "$nofile" == unlimited || "$nofile" -gt 1048576 ]] && nofile=1048576
  nproc="$(ulimit -Hu)"
  [[ "$nproc" == unlimited || "$nproc" -gt 4096 ]] && nproc=4096
  mkdir -p "$state"
  cat > "$conf" <<CONF
# Written by scripts/podman.sh: this host cannot start a container with podman's defaults.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
CONF
}

# Runs /true (the host's, with the libraries it links) from a directory rootfs.
probe() {
  local dir lib status=0
  dir="$(mktemp -d)"
  cp "$(type -P true)" "$dir/true"
  for lib in $(ldd "$dir/true" | grep -oE '/[^ ]+'); do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
  "$@" run --rm --rootfs "$dir" /true >"$dir.log" 2>&1 || status=$?
  if [[ $status -ne 0 ]]; then
    sed 's/^/  /' "$dir.log" >&2
  fi
  rm -rf "$dir" "$dir.log"
  return $status
}

mode() {
  if [[ -f "$mode_file" ]] && { [[ "$(cat "$mode_file")" == plain ]] || [[ -f "$conf" ]]; }; then
    cat "$mode_file"
    return
  fi
  mkdir -p "$state"
  if probe podman 2>/dev/null; then
    echo plain > "$mode_file"
  else
    write_conf
    if probe env CONTAINERS_CONF="$conf" podman; then
      echo private > "$mode_file"
    else
      echo "podman: cannot run a container, neither with the defaults nor with $conf" >&2
      return 1
    fi
  fi
  cat "$mode_file"
}

case "${1:-}" in
  --check)
    mode >/dev/null
    ;;
  *)
    current="$(mode)"
    if [[ "$current" == private ]]; then
      export CONTAINERS_CONF="$conf"
    fi
    exec podman "$@"
    ;;
esac
