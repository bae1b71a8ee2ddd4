//! The report: bench/results.md from what was measured, nothing measured here.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::cases::{
    CACHE_METRICS, CAPACITY, FAIL_BODY, ONCE_PROBES, PASS_CALL_PROBES, PROBES, PROBE_TIMES,
    REPLY_CALL_PROBES, VARIANT_CASES,
};
use crate::measure::{
    Machine, Measured, MemoryResult, Series, MEMORY_BATCH, WRK_CONNECTIONS, WRK_THREADS,
};
use crate::Settings;

/// Everything the report says.
pub struct Report<'a> {
    pub settings: &'a Settings,
    pub machine: &'a Machine,
    pub series: &'a [Series],
    pub notes: &'a [String],
    pub memory: Option<&'a MemoryResult>,
    pub elapsed: Duration,
}

impl Report<'_> {
    fn case(&self, name: &str) -> Option<&Series> {
        self.series.iter().find(|c| c.name == name)
    }

    /// Per-round values of `f(a) / f(b)`.
    fn per_round<F: Fn(&Measured, &Measured) -> f64>(&self, a: &str, b: &str, f: F) -> Vec<f64> {
        match (self.case(a), self.case(b)) {
            (Some(a), Some(b)) => a.runs.iter().zip(&b.runs).map(|(x, y)| f(x, y)).collect(),
            _ => Vec::new(),
        }
    }

    /// The entries of `list` (case name, floor setting) that this run measured.
    fn measured<T: Copy>(&self, list: &[(&'static str, T)]) -> Vec<(&'static str, T)> {
        list.iter()
            .copied()
            .filter(|(name, _)| self.case(name).is_some())
            .collect()
    }

    /// The cells "added µs/request | min | max | ratio | min | max" of a case over its floor.
    fn over_floor_cells(&self, name: &str, floor: &str) -> String {
        let added = self.per_round(name, floor, |x, y| {
            x.cpu_us_per_request - y.cpu_us_per_request
        });
        let ratio = self.per_round(name, floor, |x, y| x.wrk.rps / y.wrk.rps);
        format!(
            "{} | {}",
            spread_cells(&added, |v| format!("{v:+.1}")),
            spread_cells(&ratio, |v| format!("{v:.3}"))
        )
    }

    /// Requests/s of each negcache case over the same case with a variant's filter
    /// (`BENCH_VARIANTS`), next to the noise line; nothing without variants.
    fn variants(&self, out: &mut String) {
        let s = self.settings;
        if s.variants.is_empty() {
            return;
        }
        let _ = writeln!(out, "\n## Variants\n");
        let _ = writeln!(
            out,
            "`BENCH_VARIANTS`: `pass`, `hit` and `block` again with another build of the filter \
             (`X@LABEL`), measured in the same rounds as everything else. Requests/s of the \
             filter under test over the variant's, `X / X@LABEL`, in the same round: the median \
             of the per-round ratios, with their range. Above 1 the filter under test is \
             faster; a change that costs nothing stays within the noise line's distance from 1.\n"
        );
        let _ = writeln!(
            out,
            "- under test: `{}`, {} bytes",
            relative(&s.negcache_wasm),
            file_size(&s.negcache_wasm)
        );
        for v in &s.variants {
            let _ = writeln!(
                out,
                "- `{}`: `{}`, {} bytes",
                v.label,
                relative(&v.wasm),
                file_size(&v.wasm)
            );
        }
        let _ = writeln!(out, "\n| ratio | median | min | max |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        let rps = |x: &Measured, y: &Measured| x.wrk.rps / y.wrk.rps;
        for v in &s.variants {
            for base in VARIANT_CASES {
                let variant = format!("{base}@{}", v.label);
                if self.case(&variant).is_none() {
                    continue;
                }
                let cells =
                    spread_cells(&self.per_round(base, &variant, rps), |v| format!("{v:.3}"));
                let _ = writeln!(out, "| `{base} / {variant}` | {cells} |");
            }
        }
        let noise = self.per_round("noop-wasm-2", "noop-wasm", rps);
        let cells = spread_cells(&noise, |v| format!("{v:.3}"));
        let _ = writeln!(out, "| noise: `noop-wasm-2 / noop-wasm` | {cells} |");
    }

    /// The report as Markdown.
    pub fn render(&self) -> String {
        let s = self.settings;
        let m = self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "# negcache benchmark\n");
        let cases = s
            .cases
            .as_ref()
            .map(|cases| format!("BENCH_CASES={} ", cases.join(",")))
            .unwrap_or_default();
        let variants = if s.variants.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = s
                .variants
                .iter()
                .map(|v| format!("{}={}", v.label, v.wasm.display()))
                .collect();
            format!("BENCH_VARIANTS={} ", list.join(","))
        };
        let _ = writeln!(
            out,
            "Written by `make bench` (`benches/envoy/`); every run overwrites it. \
             Reproduce with:\n\n```sh\n{cases}{variants}BENCH_ROUNDS={} BENCH_SECONDS={} BENCH_WARMUP={} make bench\n```\n",
            s.rounds, s.seconds, s.warmup
        );
        let _ = writeln!(out, "## Set-up\n");
        let _ = writeln!(out, "- Date: {}; negcache at commit {}", m.date, m.commit);
        let _ = writeln!(
            out,
            "- Machine: {} CPUs (`nproc`), {}, Linux {}",
            m.nproc, m.cpu, m.kernel
        );
        let _ = writeln!(
            out,
            "- Envoy {}, `--concurrency 2 --disable-hot-restart`, wasm runtime V8, access log \
             off; one Envoy per case, all started first and idle while another is measured; \
             listener `connection_balance_config: exact_balance` so wrk's connections split \
             evenly over the two workers (kernel hashing gave 8/1 splits and one-third swings)",
            m.envoy
        );
        let _ = writeln!(
            out,
            "- Load: {}, `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{}s --latency` (HTTP/1.1 \
             keep-alive) on 127.0.0.1, {} rounds over all cases in turn (every other round \
             backwards), each measurement after a {} s warm-up of the same case",
            m.wrk, s.seconds, s.rounds, s.warmup
        );
        let _ = writeln!(
            out,
            "- Upstream: the tests' HTTP/1.1 upstream in its lean mode, in the bench process \
             (fixed 2-byte 200; `/fail` answers a {}-byte JSON 401)",
            FAIL_BODY.len()
        );
        let _ = writeln!(
            out,
            "- wasm: `{}` {} bytes, floor `{}` {} bytes (each crate's release profile, LTO, \
             stripped; `make bench` passes both through the same `wasm-opt` as `make build` \
             when it is installed)",
            relative(&s.negcache_wasm),
            file_size(&s.negcache_wasm),
            relative(&s.floor_wasm),
            file_size(&s.floor_wasm)
        );
        let _ = writeln!(
            out,
            "- Total run time: {:.0} s\n",
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "wrk, the upstream and Envoy share the {} cores: Envoy gets about the same CPU \
             share in every case, so requests/s follow its cost per request. **Envoy CPU µs \
             per request** (utime + stime of the Envoy process over the measurement, divided \
             by the requests) does not depend on how fast wrk and the upstream ran, but both \
             figures move together with the speed of the (virtual) machine from one \
             measurement to the next: compare cases within a round (the ratios and \
             differences below), and read `noop-wasm-2` against `noop-wasm` as the noise.\n",
            m.nproc
        );

        let _ = writeln!(out, "## Cases\n");
        let _ = writeln!(
            out,
            "Medians over the rounds. RSS is Envoy's VmRSS after the measurement.\n"
        );
        let _ = writeln!(
            out,
            "| case | what | requests/s | p50 | p99 | Envoy CPU µs/request | Envoy RSS MiB | \
             unexpected responses |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
        for c in self.series {
            let col =
                |f: &dyn Fn(&Measured) -> f64| median(&c.runs.iter().map(f).collect::<Vec<_>>());
            let _ = writeln!(
                out,
                "| `{}` | {} | {:.0} | {} | {} | {:.1} | {:.1} | {} |",
                c.name,
                c.what,
                col(&|r| r.wrk.rps),
                fmt_us(col(&|r| r.wrk.p50_us)),
                fmt_us(col(&|r| r.wrk.p99_us)),
                col(&|r| r.cpu_us_per_request),
                mib(col(&|r| r.rss_kib as f64) as u64),
                c.unexpected()
            );
        }

        let _ = writeln!(out, "\n## Ratios\n");
        let _ = writeln!(
            out,
            "Requests/s of the first case over the second, measured in the same round; the \
             median of the per-round ratios, with their range.\n"
        );
        let _ = writeln!(out, "| ratio | median | min | max |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for (a, b) in RATIOS {
            if self.case(a).is_none() || self.case(b).is_none() {
                continue;
            }
            let ratios = self.per_round(a, b, |x, y| x.wrk.rps / y.wrk.rps);
            let cells = spread_cells(&ratios, |v| format!("{v:.3}"));
            let _ = writeln!(out, "| `{a} / {b}` | {cells} |");
        }

        self.variants(&mut out);

        let _ = writeln!(out, "\n## Envoy CPU added over the matching floor\n");
        let _ = writeln!(
            out,
            "Envoy CPU µs per request of the case minus that of its floor, in the same round; \
             the median, with the range. The noise line is the same difference between two \
             identical set-ups.\n"
        );
        let _ = writeln!(out, "| case | floor | added µs/request | min | max |");
        let _ = writeln!(out, "|---|---|---:|---:|---:|");
        for (a, b) in CPU_DELTAS {
            if self.case(a).is_none() || self.case(b).is_none() {
                continue;
            }
            let deltas = self.per_round(a, b, |x, y| x.cpu_us_per_request - y.cpu_us_per_request);
            let cells = spread_cells(&deltas, |v| format!("{v:+.1}"));
            let _ = writeln!(out, "| `{a}` | `{b}` | {cells} |");
        }

        let probes = self.measured(&PROBES);
        if !probes.is_empty() {
            let _ = writeln!(out, "\n## What one host call costs\n");
            let _ = writeln!(
                out,
                "Envoy CPU µs per request of a floor filter making one kind of host call \
                 {PROBE_TIMES} times per request, minus `noop-wasm` in the same round, divided by \
                 {PROBE_TIMES}; the median, with the range. When the same call made once per \
                 request was measured too (`probe-once-...`): the first call's cost (once minus \
                 `noop-wasm`) and each further call's ((ten minus once) / {}).\n",
                PROBE_TIMES - 1.0
            );
            let _ = writeln!(
                out,
                "| host call | µs per call (of ten) | min | max | first call µs | min | max | \
                 each further call µs | min | max |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for (name, op) in probes {
                let per_call = self.per_round(name, "noop-wasm", |x, y| {
                    (x.cpu_us_per_request - y.cpu_us_per_request) / PROBE_TIMES
                });
                let once = ONCE_PROBES
                    .iter()
                    .find(|(_, once_op)| *once_op == op)
                    .map_or("", |(once, _)| *once);
                let first = self.per_round(once, "noop-wasm", |x, y| {
                    x.cpu_us_per_request - y.cpu_us_per_request
                });
                let further = self.per_round(name, once, |x, y| {
                    (x.cpu_us_per_request - y.cpu_us_per_request) / (PROBE_TIMES - 1.0)
                });
                let cell = |v: f64| format!("{v:.2}");
                let _ = writeln!(
                    out,
                    "| `{op}` | {} | {} | {} |",
                    spread_cells(&per_call, cell),
                    spread_cells(&first, cell),
                    spread_cells(&further, cell)
                );
            }
        }

        let mimics = self.measured(&PASS_CALL_PROBES);
        if !mimics.is_empty() {
            let _ = writeln!(out, "\n## negcache's host calls alone\n");
            let _ = writeln!(
                out,
                "A floor filter making the host calls negcache makes on a good request (request \
                 header map, `source.address`, two filter-state writes, two shared-data reads; on \
                 the response the purge and inactive headers and `:status`) and nothing else, and \
                 variants of it. Envoy CPU µs per request over `noop-wasm` and requests/s over \
                 `noop-wasm`, in the same round; medians, with the ranges.\n"
            );
            let _ = writeln!(
                out,
                "| case | variant | added µs/request | min | max | ÷ `noop-wasm` | min | max |"
            );
            let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
            for (name, variant) in mimics {
                let variant = match variant {
                    "" => "exactly negcache's",
                    "with_time" => "plus a clock read",
                    "response_map" => "the response's whole header map instead of three headers",
                    "without_property" => "without `source.address`",
                    "without_set_property" => "without the filter-state writes",
                    _ => "without reading the response",
                };
                let cells = self.over_floor_cells(name, "noop-wasm");
                let _ = writeln!(out, "| `{name}` | {variant} | {cells} |");
            }
        }

        let reply_mimics = self.measured(&REPLY_CALL_PROBES);
        if !reply_mimics.is_empty() {
            let _ = writeln!(out, "\n## negcache's replies' host calls alone\n");
            let _ = writeln!(
                out,
                "A floor filter making the host calls negcache makes before one of its replies \
                 (hit: request header map, two shared-data reads, a clock read, one filter-state \
                 write; block: request header map, `source.address`, two filter-state writes, \
                 one shared-data read, a clock read) and then sending the same reply, and nothing \
                 else. Envoy CPU µs per request over `noop-reply` and requests/s over \
                 `noop-reply`, in the same round; medians, with the ranges.\n"
            );
            let _ = writeln!(
                out,
                "| case | added µs/request | min | max | ÷ `noop-reply` | min | max |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
            for (name, _) in reply_mimics {
                let cells = self.over_floor_cells(name, "noop-reply");
                let _ = writeln!(out, "| `{name}` | {cells} |");
            }
        }

        let _ = writeln!(out, "\n## Per round\n");
        let _ = writeln!(
            out,
            "Requests/s (Envoy CPU µs/request) of each measurement. The last row is the largest \
             share of the machine's CPU used by anything but Envoy, wrk and the bench process \
             (other processes, hypervisor steal) during a measurement of that round.\n"
        );
        let _ = write!(out, "| case |");
        for r in 1..=s.rounds {
            let _ = write!(out, " round {r} req/s (CPU µs/req) |");
        }
        let _ = write!(out, "\n|---|");
        for _ in 0..s.rounds {
            let _ = write!(out, "---:|");
        }
        out.push('\n');
        for c in self.series {
            let _ = write!(out, "| `{}` |", c.name);
            for r in &c.runs {
                let _ = write!(out, " {:.0} ({:.1}) |", r.wrk.rps, r.cpu_us_per_request);
            }
            out.push('\n');
        }
        let _ = write!(out, "| other load, max % |");
        for r in 0..s.rounds {
            let worst = self
                .series
                .iter()
                .filter_map(|c| c.runs.get(r))
                .map(|m| m.other_load)
                .fold(0.0, f64::max);
            let _ = write!(out, " {worst:.0} |");
        }
        out.push('\n');

        let with_metrics: Vec<&Series> = self
            .series
            .iter()
            .filter(|c| !c.metrics.is_empty())
            .collect();
        if !with_metrics.is_empty() || !self.notes.is_empty() {
            let _ = writeln!(out, "\n## What negcache did\n");
            for note in self.notes {
                let _ = writeln!(out, "{note}\n");
            }
            let _ = writeln!(
                out,
                "negcache's metrics at the end (set-up requests and warm-ups included):\n"
            );
            let _ = write!(out, "| metric |");
            for c in &with_metrics {
                let _ = write!(out, " `{}` |", c.name);
            }
            let _ = write!(out, "\n|---|");
            for _ in &with_metrics {
                let _ = write!(out, "---:|");
            }
            out.push('\n');
            for metric in CACHE_METRICS {
                let _ = write!(out, "| `{metric}` |");
                for c in &with_metrics {
                    let value = c.metrics.iter().find(|(name, _)| name == metric);
                    let _ = write!(out, " {} |", value.map_or(0, |(_, v)| *v));
                }
                out.push('\n');
            }
        }

        let _ = writeln!(out, "\n## Memory under many distinct failing credentials\n");
        match self.memory {
            None => {
                let _ = writeln!(out, "Skipped (`BENCH_MEMORY=0`).");
            }
            Some(mem) => {
                let batch = MEMORY_BATCH;
                let _ = writeln!(
                    out,
                    "One Envoy, both tables at capacity {CAPACITY} (`max_failures` 10, so no \
                     client is blocked). Each batch: {batch} requests, each with its own \
                     failing credential from its own client (`X-Forwarded-For` from a trusted \
                     127.0.0.1), all answered 401 by the upstream and stored.\n"
                );
                let _ = writeln!(out, "| after | Envoy VmRSS MiB |");
                let _ = writeln!(out, "|---|---:|");
                let _ = writeln!(out, "| start | {:.1} |", mib(mem.baseline_kib));
                let _ = writeln!(
                    out,
                    "| batch 1 ({batch} credentials, {:.1} s) | {:.1} |",
                    mem.first_took.as_secs_f64(),
                    mib(mem.first_kib)
                );
                let _ = writeln!(
                    out,
                    "| batch 2 ({batch} more, {:.1} s) | {:.1} |",
                    mem.second_took.as_secs_f64(),
                    mib(mem.second_kib)
                );
                let _ = writeln!(
                    out,
                    "\nGrowth from batch 1 to batch 2: {:+.2} % (limit 5 %); slots used within \
                     capacity: {}. **{}**\n",
                    mem.growth_percent(),
                    if mem.slots_within_capacity() {
                        "yes"
                    } else {
                        "no"
                    },
                    if mem.passed() { "PASS" } else { "FAIL" }
                );
                let _ = writeln!(out, "| metric | value |");
                let _ = writeln!(out, "|---|---:|");
                for (name, value) in &mem.metrics {
                    let _ = writeln!(out, "| `{name}` | {value} |");
                }
            }
        }
        out
    }
}

const RATIOS: [(&str, &str); 15] = [
    ("pass", "noop-wasm"),
    ("pass-cluster", "pass"),
    ("pass", "probe-pass-calls"),
    ("probe-pass-calls", "noop-wasm"),
    ("hit", "hit-min"),
    ("block", "block-min"),
    ("hit", "noop-reply"),
    ("block", "noop-reply"),
    ("hit-rl", "hit-min"),
    ("hit-rl", "hit"),
    ("hit-min", "noop-reply"),
    ("block-min", "noop-reply"),
    ("pass", "no-filter"),
    ("hit", "native-reply"),
    ("noop-wasm-2", "noop-wasm"),
];

const CPU_DELTAS: [(&str, &str); 14] = [
    ("pass", "noop-wasm"),
    ("pass-cluster", "pass"),
    ("pass", "probe-pass-calls"),
    ("probe-pass-calls", "noop-wasm"),
    ("hit", "hit-min"),
    ("block", "block-min"),
    ("hit", "noop-reply"),
    ("block", "noop-reply"),
    ("hit-rl", "hit"),
    ("hit-min", "noop-reply"),
    ("block-min", "noop-reply"),
    ("noop-wasm", "no-filter"),
    ("noop-reply", "native-reply"),
    ("noop-wasm-2", "noop-wasm"),
];

/// `path` relative to the repository when it is inside it.
pub fn relative(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The `median | min | max` cells of per-round values, or `n/a | |` when there are none.
fn spread_cells(values: &[f64], cell: impl Fn(f64) -> String) -> String {
    if values.is_empty() {
        return "n/a | |".to_string();
    }
    let (lo, hi) = min_max(values);
    format!("{} | {} | {}", cell(median(values)), cell(lo), cell(hi))
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

pub fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Writes the report to `results` and wrk's whole output to `bench/out/wrk.md`.
pub fn write(results: &Path, text: &str, raw_wrk: &str) {
    if let Some(dir) = results.parent() {
        fs::create_dir_all(dir).expect("create results dir");
    }
    fs::write(results, text).unwrap_or_else(|e| panic!("write {}: {e}", results.display()));
    let raw_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/out");
    if fs::create_dir_all(&raw_dir).is_ok() {
        let _ = fs::write(raw_dir.join("wrk.md"), raw_wrk);
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
