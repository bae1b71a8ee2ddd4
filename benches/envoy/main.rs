#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What negcache costs in a real Envoy, against floors that isolate its own work.
//!
//! Run with `make bench` (builds negcache and the floor filters of `bench/floor`, installs
//! `wrk`, exports the paths). Every case gets its own Envoy (`--concurrency 2`, access log off;
//! the tests' harness, `tests/common`) in front of one upstream in this process (the tests'
//! upstream in its lean mode); `wrk` (1 thread, 8 connections) measures the cases in
//! alternating rounds (A B C …, then … C B A, and so on), each measurement after a short
//! warm-up, so that drift on a shared machine hits every case alike and no case always follows
//! the same one. Ratios are medians of per-round ratios. Envoy's
//! CPU time per request (utime + stime from `/proc/<pid>/stat`) is the steadier figure on a
//! 2-core machine where wrk, the upstream and Envoy compete.
//!
//! The second part fills both slot tables many times over with distinct failing credentials
//! from distinct clients and checks that Envoy's memory stays flat.
//!
//! `cases.rs` sets the cases up, `measure.rs` measures them, `report.rs` writes
//! `bench/results.md` (or `$BENCH_RESULTS`) from what was measured. Settings, from the
//! environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_ROUNDS` | 5 | measured rounds over all cases |
//! | `BENCH_SECONDS` | 5 | length of one measurement (wrk `-d`) |
//! | `BENCH_WARMUP` | 1 | warm-up seconds before each measurement (0: none) |
//! | `BENCH_CASES` | all | comma-separated subset of the case names |
//! | `BENCH_VARIANTS` | none | `LABEL=/path/to.wasm,...`: `pass`, `hit` and `block` again with that filter, as `pass@LABEL`, ...; the report compares them |
//! | `BENCH_MEMORY` | 1 | 0 skips the memory part |
//! | `FLOOR_WASM` | `target/floor/negcache_floor.wasm` | the floor filters |
//!
//! `ENVOY_BIN` and `NEGCACHE_WASM` as for the tests.

#[path = "../../tests/common/mod.rs"]
mod common;

mod cases;
mod measure;
mod report;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use cases::Variant;
use measure::{Machine, Series};
use report::{fmt_us, mib, Report};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        _ => default,
    }
}

/// The bench's settings, from the environment.
pub struct Settings {
    pub rounds: usize,
    pub seconds: u64,
    pub warmup: u64,
    pub cases: Option<Vec<String>>,
    pub variants: Vec<Variant>,
    pub memory: bool,
    pub floor_wasm: PathBuf,
    pub negcache_wasm: PathBuf,
    pub results: PathBuf,
}

impl Settings {
    fn from_env() -> Settings {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let floor_wasm = std::env::var_os("FLOOR_WASM").map_or_else(
            || root.join("target/floor/negcache_floor.wasm"),
            PathBuf::from,
        );
        assert!(
            floor_wasm.is_file(),
            "floor filter not found at {} (set FLOOR_WASM); `make bench` builds it",
            floor_wasm.display()
        );
        let cases = std::env::var("BENCH_CASES")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.split(',').map(|c| c.trim().to_string()).collect());
        Settings {
            rounds: usize::try_from(env_u64("BENCH_ROUNDS", 5).max(1)).unwrap_or(5),
            seconds: env_u64("BENCH_SECONDS", 5).max(1),
            warmup: env_u64("BENCH_WARMUP", 1),
            cases,
            variants: variants(&std::env::var("BENCH_VARIANTS").unwrap_or_default()),
            memory: env_u64("BENCH_MEMORY", 1) != 0,
            floor_wasm,
            negcache_wasm: common::wasm_path(),
            results: std::env::var_os("BENCH_RESULTS")
                .map_or_else(|| root.join("bench/results.md"), PathBuf::from),
        }
    }

    /// Whether a case (by its own name, not a variant's) is measured. Host-call probes run
    /// only when named (`BENCH_CASES=noop-wasm,probe-headers,...`).
    pub fn wants(&self, case: &str) -> bool {
        match &self.cases {
            Some(list) => list.iter().any(|c| c == case),
            None => !case.starts_with("probe-"),
        }
    }
}

/// `BENCH_VARIANTS`: `LABEL=/path/to.wasm` items, comma-separated.
fn variants(text: &str) -> Vec<Variant> {
    let mut variants: Vec<Variant> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (label, wasm) = item
            .split_once('=')
            .map(|(l, w)| (l.trim(), PathBuf::from(w.trim())))
            .unwrap_or_else(|| panic!("BENCH_VARIANTS: {item:?} is not LABEL=/path/to.wasm"));
        assert!(
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "BENCH_VARIANTS: label {label:?} must be letters, digits, '-', '_' or '.'"
        );
        assert!(
            variants.iter().all(|v| v.label != label),
            "BENCH_VARIANTS: label {label:?} given twice"
        );
        assert!(
            wasm.is_file(),
            "BENCH_VARIANTS: {label}: no file at {}",
            wasm.display()
        );
        variants.push(Variant {
            label: label.to_string(),
            wasm,
        });
    }
    variants
}

fn main() {
    // `cargo bench` passes `--bench`: arguments are ignored, settings come from the environment.
    let started = Instant::now();
    let settings = Settings::from_env();
    let machine = Machine::probe();
    assert!(
        !machine.wrk.is_empty() && Command::new("wrk").arg("-v").output().is_ok(),
        "wrk not found: install it with `apt-get install -y wrk` (make bench does)"
    );
    let ticks_per_s = measure::clock_ticks_per_second();
    let upstream = cases::upstream();
    eprintln!(
        "bench: {} rounds of {} s (+{} s warm-up) per case; upstream on :{}",
        settings.rounds,
        settings.seconds,
        settings.warmup,
        upstream.port()
    );

    let mut notes = Vec::new();
    let cases = cases::build(&settings, upstream.port(), &mut notes);
    assert!(!cases.is_empty(), "BENCH_CASES selects no case");
    let mut series: Vec<Series> = cases.iter().map(Series::new).collect();

    let mut raw = String::new();
    for round in 1..=settings.rounds {
        let _ = writeln!(raw, "## Round {round}\n");
        // Every other round backwards: a drift within a round, or a case that leaves the
        // machine slower for the next one, then weighs on both ends of the order alike.
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for index in order {
            let (case, series) = (&cases[index], &mut series[index]);
            let m = measure::measure(case, &settings, ticks_per_s, &mut raw);
            eprintln!(
                "bench: round {round}/{} {:<13} {:>8.0} req/s  p50 {:>9}  p99 {:>9}  \
                 {:>6.1} CPU µs/req  {:>5.1} MiB  workers {}/{}  other load {:.0} %",
                settings.rounds,
                case.name,
                m.wrk.rps,
                fmt_us(m.wrk.p50_us),
                fmt_us(m.wrk.p99_us),
                m.cpu_us_per_request,
                mib(m.rss_kib),
                m.workers.0,
                m.workers.1,
                m.other_load
            );
            if !m.wrk.socket_errors.is_empty() {
                eprintln!("bench:   socket errors: {}", m.wrk.socket_errors);
            }
            series.runs.push(m);
        }
    }
    for (case, series) in cases.iter().zip(&mut series) {
        series.read_metrics(case);
        let bad = series.unexpected();
        if bad > 0 {
            eprintln!(
                "bench: WARNING {}: {bad} responses were not {}",
                series.name, series.status
            );
        }
    }
    drop(cases);

    let memory = settings
        .memory
        .then(|| measure::memory(&settings, upstream.port()));

    let report = Report {
        settings: &settings,
        machine: &machine,
        series: &series,
        notes: &notes,
        memory: memory.as_ref(),
        elapsed: started.elapsed(),
    };
    let text = report.render();
    println!("{text}");
    report::write(&settings.results, &text, &raw);
    eprintln!(
        "bench: wrote {} (raw wrk output in bench/out/wrk.md) in {:.0} s",
        settings.results.display(),
        started.elapsed().as_secs_f64()
    );
}
