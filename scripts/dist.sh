#!/usr/bin/env bash
# Writes what a release ships, into OUT_DIR (default dist):
#
#   negcache-VERSION.wasm         the filter (the shipped build, target/negcache.wasm)
#   negcache-VERSION.wasm.sha256  its SHA-256, in sha256sum format
#   negcache-VERSION.oci/         an OCI image layout, tag VERSION: the filter as a Wasm image in
#                                 the "compat" variant Istio pulls (one tar+gzip layer holding
#                                 plugin.wasm; manifest annotation module.wasm.image/variant=compat)
#
# and prints the push command, the image's manifest digest and the .wasm's SHA-256.
#
#   scripts/dist.sh [OUT_DIR]     (`make dist` builds first, then runs this)
#
# Environment: NEGCACHE_WASM (default target/negcache.wasm). VERSION is Cargo.toml's.
#
# The layout is written with tar, gzip and sha256sum, and read back with skopeo, which checks
# every blob against its digest. Same .wasm, same manifest digest, wherever GNU tar and gzip
# run: the layer is one ustar entry with fixed owner, mode and time, compressed by `gzip -n -9`
# (no name, no time), and the JSON is fixed text. umoci is not used: Debian 12's umoci 0.4.7
# `insert` writes a layer whose tar lacks its padding and end blocks (GNU tar: "Unexpected
# EOF"), and `raw add-layer` compresses with its own gzip, so the digest would follow umoci's
# version (and its layer is 5% larger: 152,020 bytes against gzip -9's 145,164 for 0.1.0).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-dist}"
wasm="${NEGCACHE_WASM:-$root/target/negcache.wasm}"

version="$(sed -n '/^\[package\]/,/^\[/ s/^version *= *"\([^"]*\)".*/\1/p' "$root/Cargo.toml")"
if [ -z "$version" ]; then
  echo "dist: no package version in $root/Cargo.toml" >&2
  exit 1
fi
if [ ! -f "$wasm" ] || [ "$(head -c 4 "$wasm" | od -An -tx1 | tr -d ' ')" != 0061736d ]; then
  echo "dist: $wasm is not a wasm module: run make build" >&2
  exit 1
fi

if ! command -v skopeo >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "dist: installing skopeo"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq skopeo >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq skopeo >/dev/null; }
  else
    echo "dist: skopeo not found (Debian: apt-get install skopeo, as root): it checks the image" \
      "layout and pushes it to a registry" >&2
    exit 1
  fi
fi

name="negcache-$version"
layout="$out/$name.oci"
mkdir -p "$out"
work="$(mktemp -d "$out/.dist.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Stores file $1 as a blob of the new layout; prints its digest (hex).
blob() {
  local hex
  hex="$(sha256sum "$1" | cut -d' ' -f1)"
  mv "$1" "$work/oci/blobs/sha256/$hex"
  echo "$hex"
}

mkdir -p "$work/oci/blobs/sha256" "$work/layer"
cp "$wasm" "$work/layer/plugin.wasm"
tar -C "$work/layer" --format=ustar --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=0644 \
  -cf "$work/layer.tar" plugin.wasm
diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
gzip -n -9 "$work/layer.tar"
layer_size="$(wc -c < "$work/layer.tar.gz")"
layer="$(blob "$work/layer.tar.gz")"

# Wasm images name their platform wasip1/wasm (GOOS/GOARCH of Go's WASI target).
printf '{"architecture":"wasm","os":"wasip1","rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$diff_id" > "$work/config.json"
config_size="$(wc -c < "$work/config.json")"
config="$(blob "$work/config.json")"

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",%s,%s,%s}' \
  "$(printf '"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s}' "$config" "$config_size")" \
  "$(printf '"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]' "$layer" "$layer_size")" \
  '"annotations":{"module.wasm.image/variant":"compat"}' > "$work/manifest.json"
manifest_size="$(wc -c < "$work/manifest.json")"
manifest="$(blob "$work/manifest.json")"

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest" "$manifest_size" "$version" > "$work/oci/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"

# skopeo reads the image as a registry push will: a copy checks every blob against its digest,
# and the copy's manifest digest must be the one Istio will compare.
skopeo copy --quiet --insecure-policy --preserve-digests "oci:$work/oci:$version" "oci:$work/check:$version"
read_back="$(skopeo inspect --format '{{.Digest}}' "oci:$work/check:$version")"
if [ "$read_back" != "sha256:$manifest" ]; then
  echo "dist: skopeo reads the image as $read_back, not sha256:$manifest" >&2
  exit 1
fi

cp "$wasm" "$out/$name.wasm"
(cd "$out" && sha256sum "$name.wasm" > "$name.wasm.sha256")
wasm_sha="$(cut -d' ' -f1 "$out/$name.wasm.sha256")"
rm -rf "$layout"
mv "$work/oci" "$layout"

echo "dist: $out/$name.wasm ($(wc -c < "$out/$name.wasm") bytes) and $out/$name.wasm.sha256"
echo "dist: $layout: OCI image layout, tag $version, Wasm image compat variant ($layer_size-byte layer)"
echo "push: skopeo copy --preserve-digests oci:$layout:$version docker://REGISTRY/negcache:$version"
echo "image manifest digest: $manifest"
echo "  (WasmPlugin url: oci://REGISTRY/negcache:$version, sha256: the manifest digest)"
echo "wasm sha256: $wasm_sha"
echo "  (WasmPlugin url: https://.../$name.wasm, sha256: the wasm sha256)"
