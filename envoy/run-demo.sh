#!/usr/bin/env bash
# Foreground demo: demo upstream on 127.0.0.1:8080 + Envoy with envoy.yaml on
# 127.0.0.1:10000 (admin 127.0.0.1:9901). Ctrl-C stops both.
#
# Usage: envoy/run-demo.sh [path/to/envoy]   (run by `make run`)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
envoy_bin="${1:-${ENVOY_BIN:-$here/../.venv/bin/envoy}}"
cd "$here"

if [[ ! -f negcache.wasm ]]; then
  echo "envoy/negcache.wasm is missing: run 'make build' first" >&2
  exit 1
fi

python3 -u demo_upstream.py 8080 &
upstream_pid=$!
envoy_pid=""

cleanup() {
  trap - INT TERM EXIT
  [[ -n "$envoy_pid" ]] && kill "$envoy_pid" 2>/dev/null || true
  kill "$upstream_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

banner() {
  cat <<'TXT'

negcache demo: Envoy on 127.0.0.1:10000 (admin 127.0.0.1:9901), upstream on 127.0.0.1:8080.
From another terminal:

  curl -i -H 'authorization: Bearer wrong' localhost:10000/api/me      # miss: the upstream answers 401
  curl -i -H 'authorization: Bearer wrong' localhost:10000/api/me      # hit: Envoy answers, the upstream prints nothing
  curl -i -H 'authorization: Bearer inactive' localhost:10000/api/me   # inactive credential: cached for an hour

  curl -s localhost:9901/stats | grep negcache                         # the filter's metrics

Ctrl-C stops both.

TXT
}
banner

# setsid: Envoy gets its own session, so a terminal Ctrl-C reaches it only
# through the trap above. This shell stays its parent (Envoy exits when its
# parent does) and waits for it.
setsid "$envoy_bin" -c envoy.yaml --concurrency 2 --disable-hot-restart --log-level info \
  --file-flush-interval-msec 200 &
envoy_pid=$!

# Repeat the curl lines once Envoy listens, below its start-up log.
for _ in $(seq 1 300); do
  if ! kill -0 "$envoy_pid" 2>/dev/null; then break; fi
  if (exec 3<>/dev/tcp/127.0.0.1/10000) 2>/dev/null; then
    banner
    break
  fi
  sleep 0.1
done
wait "$envoy_pid"
