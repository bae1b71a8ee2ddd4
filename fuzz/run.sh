#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS each (default 30), starting from its committed corpus
# (fuzz/corpus/TARGET), with debug assertions on so an integer overflow is a crash. New inputs
# go to a scratch corpus, never into the checkout. A crash stops the run: its input is written
# to fuzz/artifacts/TARGET/, and becomes a unit test in the module it broke.
#
#   fuzz/run.sh                  every target
#   fuzz/run.sh path http_date   only these
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${FUZZ_SECONDS:-30}"

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: SKIPPED: no nightly toolchain (cargo fuzz needs it; rustup toolchain install nightly)"
  [ -z "${CI:-}" ] || exit 1
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz
fi

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
cargo +nightly fuzz build -O --debug-assertions

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=0
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  if cargo +nightly fuzz run -O --debug-assertions "$target" "$scratch/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
    echo "fuzz: $target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -1), 0 crashes"
  else
    failed=$((failed + 1))
    echo "fuzz: $target: CRASH"
    grep -E -A12 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -40
    ls artifacts/"$target" 2>/dev/null | sed "s|^|fuzz: input: fuzz/artifacts/$target/|"
  fi
done
echo "fuzz: ${#targets[@]} targets for ${seconds} s each: $((${#targets[@]} - failed)) without a crash, $failed crashed"
[ "$failed" -eq 0 ]
