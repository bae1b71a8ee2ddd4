#!/usr/bin/env bash
# Prints the path of a limitador-server binary built from the vendored Kuadrant Limitador
# (../shared/vendor/limitador), building it once per machine when it is missing.
#
# The build (RocksDB, a vendored OpenSSL) takes about 25 minutes on 2 cores, so it goes to a
# cache outside the checkout, keyed by a hash of the vendored sources: a new vendored commit
# builds anew, the same one is reused by every clone, worktree and CI run on the machine.
#
#   scripts/limitador.sh            build if needed, print the binary's path
#   scripts/limitador.sh --path     print the path only if it is built; exit 1 otherwise
#
# Environment: LIMITADOR_SRC (default ../shared/vendor/limitador from the checkout),
# NEGCACHE_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/negcache).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${LIMITADOR_SRC:-$root/../shared/vendor/limitador}"
cache="${NEGCACHE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/negcache}"

if [ ! -f "$src/limitador-server/Cargo.toml" ]; then
  echo "limitador: no sources at $src (a clone without ../shared: see the README, \"Cluster mode\")" >&2
  exit 1
fi

# The key: every vendored file's path and contents (read-only sources; a second or two).
key="$(cd "$src" && find . -type f ! -path './target/*' -print0 | LC_ALL=C sort -z \
        | xargs -0 sha256sum | sha256sum | cut -c1-16)"
dir="$cache/limitador-$key"
bin="$dir/bin/limitador-server"

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
if [ "${1:-}" = "--path" ]; then
  exit 1
fi

# Build-time tools of Limitador's build scripts (tonic-prost-build runs protoc; rocksdb's
# bindgen needs libclang).
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
# bindgen loads libclang.so or libclang-N.so (libclang-cpp, which other packages bring, is not it).
compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null || compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null \
  || missing+=(libclang-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "limitador: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
  else
    echo "limitador: missing ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

echo "limitador: building limitador-server into $dir (once per machine; about 25 minutes on 2 cores)" >&2
mkdir -p "$cache"
# The vendored folder is read-only in CI: the target directory lives in the cache too.
# A partial build is resumed by the next run; the binary appears only when it is complete.
# Limitador's release profile links with fat LTO in one codegen unit, minutes of a build whose
# binary only serves tests: thin local LTO in parallel units instead.
CARGO_TARGET_DIR="$cache/limitador-target" \
CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  cargo install --locked --quiet --path "$src/limitador-server" --root "$dir.partial" >&2
mkdir -p "$dir"
mv "$dir.partial/bin" "$dir/bin"
rm -rf "$dir.partial" "$cache/limitador-target"
echo "$bin"
