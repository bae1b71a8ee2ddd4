#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What negcache costs in a real Envoy, against floors that isolate its own work.
//!
//! Run with `make bench` (builds negcache and the floor filters of `bench/floor`, installs
//! `wrk`, exports the paths). Every case gets its own Envoy (`--concurrency 2`, access log off)
//! in front of one lean upstream in this process; `wrk` (1 thread, 8 connections) measures the
//! cases in alternating rounds (A B C … A B C …), each measurement after a short warm-up, so
//! that drift on a shared machine hits every case alike. Ratios are medians of per-round
//! ratios. Envoy's CPU time per request (utime + stime from `/proc/<pid>/stat`) is the steadier
//! figure on a 2-core machine where wrk, the upstream and Envoy compete.
//!
//! The second part fills both slot tables many times over with distinct failing credentials
//! from distinct clients and checks that Envoy's memory stays flat.
//!
//! Writes `bench/results.md` (or `$BENCH_RESULTS`). Settings, from the environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_ROUNDS` | 5 | measured rounds over all cases |
//! | `BENCH_SECONDS` | 5 | length of one measurement (wrk `-d`) |
//! | `BENCH_WARMUP` | 1 | warm-up seconds before each measurement (0: none) |
//! | `BENCH_CASES` | all | comma-separated subset of the case names |
//! | `BENCH_MEMORY` | 1 | 0 skips the memory part |
//! | `FLOOR_WASM` | `target/floor/negcache_floor.wasm` | the floor filters |
//!
//! `ENVOY_BIN` and `NEGCACHE_WASM` as for the tests.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{ClientConnection, Envoy, EnvoyOptions, METRICS_SETTLE};
use serde_json::{json, Value};

/// Slots in both tables for `pass` and the memory part.
const CAPACITY: usize = 4096;
/// wrk: threads and connections.
const WRK_THREADS: u32 = 1;
const WRK_CONNECTIONS: u32 = 8;
/// The credential of the measured good client, and the measured client itself (TEST-NET-3).
const GOOD_TOKEN: &str = "Bearer bench-good-token";
const GOOD_CLIENT: &str = "203.0.113.7";
/// The failing credential the `hit` and `block` cases replay.
const BAD_TOKEN: &str = "Bearer bench-bad-token";
/// Threads (each one keep-alive connection) that send the fill-up requests.
const FILL_THREADS: usize = 4;

// ---------------------------------------------------------------------------
// Settings and machine
// ---------------------------------------------------------------------------

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        _ => default,
    }
}

struct Settings {
    rounds: usize,
    seconds: u64,
    warmup: u64,
    cases: Option<Vec<String>>,
    memory: bool,
    floor_wasm: PathBuf,
    negcache_wasm: PathBuf,
    results: PathBuf,
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
            memory: env_u64("BENCH_MEMORY", 1) != 0,
            floor_wasm,
            negcache_wasm: common::wasm_path(),
            results: std::env::var_os("BENCH_RESULTS")
                .map_or_else(|| root.join("bench/results.md"), PathBuf::from),
        }
    }

    /// Host-call probes run only when named (`BENCH_CASES=noop-wasm,probe-headers,...`).
    fn wants(&self, case: &str) -> bool {
        match &self.cases {
            Some(list) => list.iter().any(|c| c == case),
            None => !case.starts_with("probe-"),
        }
    }
}

/// Output of a command, or "" when it cannot run.
fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text
        })
        .unwrap_or_default()
}

struct Machine {
    date: String,
    nproc: String,
    cpu: String,
    kernel: String,
    envoy: String,
    wrk: String,
    commit: String,
}

impl Machine {
    fn probe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".to_string(), |(_, v)| v.trim().to_string());
        let envoy = command_output(&common::envoy_bin().to_string_lossy(), &["--version"]);
        // "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
        let envoy = envoy
            .split_once("version:")
            .and_then(|(_, v)| v.trim().split('/').nth(1))
            .map_or_else(|| envoy.trim().to_string(), str::to_string);
        let wrk = command_output("wrk", &["-v"]);
        let wrk = wrk
            .lines()
            .next()
            .and_then(|l| l.split(" Copyright").next())
            .unwrap_or("wrk")
            .trim()
            .to_string();
        let root = env!("CARGO_MANIFEST_DIR");
        let head = command_output("git", &["-C", root, "rev-parse", "--short", "HEAD"]);
        let dirty = !command_output("git", &["-C", root, "status", "--porcelain", "src"])
            .trim()
            .is_empty();
        let commit = format!(
            "{}{}",
            head.trim(),
            if dirty {
                " (with uncommitted changes in src/)"
            } else {
                ""
            }
        );
        Machine {
            commit,
            date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
                .trim()
                .to_string(),
            nproc: command_output("nproc", &[]).trim().to_string(),
            cpu,
            kernel: command_output("uname", &["-r"]).trim().to_string(),
            envoy,
            wrk,
        }
    }
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

fn clock_ticks_per_second() -> u64 {
    command_output("getconf", &["CLK_TCK"])
        .trim()
        .parse()
        .unwrap_or(100)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("comm in /proc/pid/stat") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    let field = |n: usize| -> u64 { fields[n - 3].parse().expect("numeric stat field") };
    field(14) + field(15)
}

/// Busy and total jiffies of the whole machine (`cpu` line of `/proc/stat`; busy counts
/// user, nice, system, irq, softirq and steal).
fn machine_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .expect("cpu line in /proc/stat");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    let total = busy + get(3) + get(4);
    (busy, total)
}

/// CPU ticks of this process (the upstream, the bench) plus its reaped children (wrk).
fn own_ticks() -> u64 {
    let stat = fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let rest = &stat[stat.rfind(')').expect("comm in /proc/self/stat") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime 14, stime 15, cutime 16, cstime 17
    (14..=17)
        .map(|n| fields[n - 3].parse::<u64>().unwrap_or(0))
        .sum()
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"))
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/pid/status")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------
// A lean upstream
// ---------------------------------------------------------------------------

const OK_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
const FAIL_BODY: &str = r#"{"error":"invalid token"}"#;

fn fail_response() -> Vec<u8> {
    format!(
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
         www-authenticate: Bearer\r\ncontent-length: {}\r\n\r\n{FAIL_BODY}",
        FAIL_BODY.len()
    )
    .into_bytes()
}

/// HTTP/1.1 on 127.0.0.1, keep-alive, a thread per connection, nothing recorded: a fixed small
/// 200 for every path, except paths under `/fail`, which get a small 401 JSON. Runs until the
/// process exits.
fn start_fast_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fast upstream");
    let port = listener.local_addr().expect("fast upstream addr").port();
    let fail: &'static [u8] = Vec::leak(fail_response());
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || serve_fast(stream, fail));
        }
    });
    port
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn head_content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(colon);
            name.eq_ignore_ascii_case(b"content-length")
                .then(|| String::from_utf8_lossy(&value[1..]).trim().parse().ok())
                .flatten()
        })
        .next()
        .unwrap_or(0)
}

fn serve_fast(mut stream: TcpStream, fail: &[u8]) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut len = 0;
    loop {
        // Answer every complete request in the buffer.
        while let Some(end) = find(&buf[..len], b"\r\n\r\n") {
            let total = end + 4 + head_content_length(&buf[..end]);
            if len < total {
                break;
            }
            let path = buf[..end].split(|&b| b == b' ').nth(1).unwrap_or_default();
            let response = if path.starts_with(b"/fail") {
                fail
            } else {
                OK_RESPONSE
            };
            if stream.write_all(response).is_err() {
                return;
            }
            buf.copy_within(total..len, 0);
            len -= total;
        }
        if len == buf.len() {
            if buf.len() >= 1 << 20 {
                return;
            }
            buf.resize(buf.len() * 2, 0);
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
    }
}

// ---------------------------------------------------------------------------
// Filling the tables
// ---------------------------------------------------------------------------

/// The `i`-th distinct client address, from 198.18.0.0/15 (set aside for benchmarks; only
/// ever written into `X-Forwarded-For`).
fn client_ip(i: usize) -> String {
    assert!(i < 1 << 17, "198.18.0.0/15 has 131072 addresses");
    format!("198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 255, i & 255)
}

/// Sends `GET /fail` with credential `Bearer <prefix>-<i>` from client `client_ip(i)` for every
/// `i` in `range`, over `FILL_THREADS` keep-alive connections; every answer must be the
/// upstream's 401 (not a hit, not a 429). Returns how long it took.
fn fill(envoy: &Envoy, prefix: &str, range: std::ops::Range<usize>) -> Duration {
    let started = Instant::now();
    let port = envoy.port();
    let chunk = range.len().div_ceil(FILL_THREADS);
    let handles: Vec<_> = (0..FILL_THREADS)
        .map(|t| {
            let from = range.start + t * chunk;
            let to = (from + chunk).min(range.end);
            let prefix = prefix.to_string();
            thread::spawn(move || {
                let mut conn = ClientConnection::open(port);
                for i in from..to {
                    let token = format!("Bearer {prefix}-{i}");
                    let ip = client_ip(i);
                    let resp = conn.get(
                        "/fail",
                        &[("authorization", &token), ("x-forwarded-for", &ip)],
                    );
                    assert_eq!(
                        (resp.status, resp.header("x-negcache")),
                        (401, None),
                        "fill request {i} ({ip}) was not answered by the upstream: {resp:?}"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("fill thread");
    }
    started.elapsed()
}

// ---------------------------------------------------------------------------
// wrk
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct WrkRun {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    non_2xx: u64,
    socket_errors: String,
}

fn parse_duration_us(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    Some(number * factor)
}

fn parse_wrk(out: &str) -> Option<WrkRun> {
    let mut run = WrkRun::default();
    for line in out.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("50%") {
            run.p50_us = parse_duration_us(v)?;
        } else if let Some(v) = line.strip_prefix("99%") {
            run.p99_us = parse_duration_us(v)?;
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            run.rps = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            run.socket_errors = v.trim().to_string();
        } else if line.contains(" requests in ") {
            run.requests = line.split_whitespace().next()?.parse().ok()?;
        }
    }
    (run.requests > 0 && run.rps > 0.0).then_some(run)
}

fn wrk_args(seconds: u64, port: u16, path: &str, headers: &[(String, String)]) -> Vec<String> {
    let mut args = vec![
        format!("-t{WRK_THREADS}"),
        format!("-c{WRK_CONNECTIONS}"),
        format!("-d{seconds}s"),
        "--latency".to_string(),
    ];
    for (name, value) in headers {
        args.push("-H".to_string());
        args.push(format!("{name}: {value}"));
    }
    args.push(format!("http://127.0.0.1:{port}{path}"));
    args
}

/// Runs wrk; returns its parsed summary and its whole output.
fn wrk(seconds: u64, port: u16, path: &str, headers: &[(String, String)]) -> (WrkRun, String) {
    let out = Command::new("wrk")
        .args(wrk_args(seconds, port, path, headers))
        .output()
        .unwrap_or_else(|e| panic!("run wrk ({e}): install it with `apt-get install -y wrk`"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "wrk failed:\n{text}");
    let run = parse_wrk(&text).unwrap_or_else(|| panic!("cannot read wrk's output:\n{text}"));
    (run, text)
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

struct Case {
    name: &'static str,
    what: &'static str,
    envoy: Envoy,
    path: &'static str,
    headers: Vec<(String, String)>,
    /// Every measured response must have this status.
    status: u16,
    /// negcache metrics worth showing for this case.
    metrics: &'static [&'static str],
    runs: Vec<Measured>,
}

#[derive(Clone, Debug)]
struct Measured {
    wrk: WrkRun,
    cpu_us_per_request: f64,
    rss_kib: u64,
    /// Share of the machine's CPU used during the measurement by anything but Envoy, wrk and
    /// this process (other processes, hypervisor steal), in percent.
    other_load: f64,
    /// wrk's connections accepted by Envoy's worker 0 and worker 1.
    workers: (u64, u64),
}

impl Case {
    /// Responses that did not have the expected status.
    fn unexpected(&self) -> u64 {
        self.runs
            .iter()
            .map(|m| {
                if self.status < 300 {
                    m.wrk.non_2xx
                } else {
                    m.wrk.requests.saturating_sub(m.wrk.non_2xx)
                }
            })
            .sum()
    }

    fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    /// One request by hand before measuring: the case answers what it should.
    fn probe(&self) {
        let resp = self.envoy.get(self.path, &self.header_refs());
        assert_eq!(
            resp.status, self.status,
            "{}: probe answered {resp:?}",
            self.name
        );
        match self.name {
            "hit" => assert_eq!(resp.header("x-negcache"), Some("hit"), "hit: {resp:?}"),
            "block" => assert!(resp.header("retry-after").is_some(), "block: {resp:?}"),
            "pass" => assert_eq!(resp.header("x-negcache"), None, "pass: {resp:?}"),
            _ => {}
        }
    }
}

fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
        .collect()
}

fn bench_options(upstream: u16, plugin_config: Value) -> EnvoyOptions {
    EnvoyOptions {
        access_log: false,
        // Kernel SO_REUSEPORT hashing spreads wrk's 8 connections unevenly (8/1 happens), which
        // swings requests/s by a third between identical runs: hand them out evenly instead.
        listener_extra: "connection_balance_config: { exact_balance: {} }".to_string(),
        // The harness default FAIL_CLOSED: a crashing VM shows up as 503s, not as a fast bypass.
        ..EnvoyOptions::new(upstream, plugin_config)
    }
}

/// negcache's configuration in the negcache cases: both tables at `CAPACITY`, entries and
/// windows that outlive the run, the bench client trusted as a proxy.
fn negcache_config(rate_limit: Value) -> Value {
    let mut limit = json!({"capacity": CAPACITY, "window_seconds": 3600});
    if let (Some(limit), Some(extra)) = (limit.as_object_mut(), rate_limit.as_object()) {
        limit.extend(extra.clone());
    }
    json!({
        "client_ip": {"trusted_proxies": ["127.0.0.1/32"]},
        "negative_cache": {
            "capacity": CAPACITY,
            "statuses": {"401": {"ttl_seconds": 3600}},
        },
        "rate_limit": limit,
    })
}

const CACHE_METRICS: &[&str] = &[
    "negcache_hits_total",
    "negcache_misses_total",
    "negcache_stores_total",
    "negcache_ratelimit_rejected_total",
    "negcache_errors_total",
    "negcache_slots_used",
    "negcache_ratelimit_slots_used",
];

fn build_cases(settings: &Settings, upstream: u16, notes: &mut Vec<String>) -> Vec<Case> {
    let floor = |config: Value| EnvoyOptions {
        wasm: Some(settings.floor_wasm.clone()),
        ..bench_options(upstream, config)
    };
    let good = headers(&[
        ("authorization", GOOD_TOKEN),
        ("x-forwarded-for", GOOD_CLIENT),
    ]);
    let bad = headers(&[("authorization", BAD_TOKEN)]);
    let mut cases = Vec::new();
    let mut add = |name: &'static str,
                   what: &'static str,
                   make: &mut dyn FnMut() -> Envoy,
                   path: &'static str,
                   hdrs: &[(String, String)],
                   status: u16,
                   metrics: &'static [&'static str]| {
        if !settings.wants(name) {
            return;
        }
        let started = Instant::now();
        let envoy = make();
        let case = Case {
            name,
            what,
            envoy,
            path,
            headers: hdrs.to_vec(),
            status,
            metrics,
            runs: Vec::new(),
        };
        case.probe();
        eprintln!("bench: {name} ready in {:.1?}", started.elapsed());
        cases.push(case);
    };

    add(
        "no-filter",
        "Envoy without a wasm filter",
        &mut || Envoy::start(bench_options(upstream, json!({})).without_wasm()),
        "/ok",
        &good,
        200,
        &[],
    );
    add(
        "noop-wasm",
        "a proxy-wasm filter that does nothing (bench/floor)",
        &mut || Envoy::start(floor(json!({"mode": "noop"}))),
        "/ok",
        &good,
        200,
        &[],
    );
    add(
        "noop-wasm-2",
        "the same again: the spread to noop-wasm is the noise floor",
        &mut || Envoy::start(floor(json!({"mode": "noop"}))),
        "/ok",
        &good,
        200,
        &[],
    );
    add(
        "pass",
        "negcache, cache and rate limit on, good token (upstream 200) from a trusted \
         X-Forwarded-For, both tables filled beforehand",
        &mut || {
            let envoy = Envoy::start(EnvoyOptions {
                skip_xff_append: true,
                ..bench_options(upstream, negcache_config(json!({})))
            });
            let took = fill(&envoy, "bench-fill", 0..2 * CAPACITY);
            thread::sleep(METRICS_SETTLE);
            let (cache, limiter) = (
                envoy.metric_now("negcache_slots_used"),
                envoy.metric_now("negcache_ratelimit_slots_used"),
            );
            notes.push(format!(
                "`pass`: before measuring, {} distinct failing tokens from {} distinct clients \
                 (in {:.1} s) left {cache} of {CAPACITY} cache slots and {limiter} of \
                 {CAPACITY} client slots in use.",
                2 * CAPACITY,
                2 * CAPACITY,
                took.as_secs_f64()
            ));
            envoy
        },
        "/ok",
        &good,
        200,
        CACHE_METRICS,
    );
    add(
        "hit",
        "negcache replays a cached 401 (rate limit off)",
        &mut || {
            let mut config = negcache_config(json!({}));
            config["rate_limit"] = json!({"enabled": false});
            let envoy = Envoy::start(bench_options(upstream, config));
            let first = envoy.get("/fail", &[("authorization", BAD_TOKEN)]);
            assert_eq!(first.status, 401, "hit: storing request: {first:?}");
            envoy.wait_metric("negcache_stores_total", 1);
            envoy
        },
        "/fail",
        &bad,
        401,
        CACHE_METRICS,
    );
    add(
        "block",
        "negcache's 429 to a blocked client (max_failures 0, one failure first)",
        &mut || {
            let envoy = Envoy::start(bench_options(
                upstream,
                negcache_config(json!({"max_failures": 0, "block_seconds": 3600})),
            ));
            let first = envoy.get("/fail", &[("authorization", BAD_TOKEN)]);
            assert_eq!(first.status, 401, "block: failing request: {first:?}");
            envoy.wait_metric("negcache_ratelimit_blocks_total", 1);
            envoy
        },
        "/ok",
        &headers(&[("authorization", GOOD_TOKEN)]),
        429,
        CACHE_METRICS,
    );
    add(
        "noop-reply",
        "a proxy-wasm filter that only sends a fixed 401 (bench/floor)",
        &mut || Envoy::start(floor(json!({"mode": "reply"}))),
        "/fail",
        &bad,
        401,
        &[],
    );
    for (name, variant) in PASS_CALL_PROBES {
        add(
            name,
            "floor filter making the host calls negcache makes on a good request, and nothing else",
            &mut || Envoy::start(floor(json!({"mode": "mimic", "variant": variant}))),
            "/ok",
            &good,
            200,
            &[],
        );
    }
    for (name, (variant, status)) in REPLY_CALL_PROBES {
        add(
            name,
            "floor filter making the host calls of one of negcache's replies, then sending it",
            &mut || Envoy::start(floor(json!({"mode": "mimic", "variant": variant}))),
            "/fail",
            &bad,
            status,
            &[],
        );
    }
    for (name, op) in PROBES {
        add(
            name,
            "floor filter making one kind of host call PROBE_TIMES times per request",
            &mut || Envoy::start(floor(json!({"mode": "probe", "op": op}))),
            "/ok",
            &good,
            200,
            &[],
        );
    }
    add(
        "native-reply",
        "Envoy's own direct_response 401, no wasm filter",
        &mut || {
            Envoy::start(EnvoyOptions {
                direct_response: Some((401, FAIL_BODY.to_string())),
                ..bench_options(upstream, json!({})).without_wasm()
            })
        },
        "/fail",
        &bad,
        401,
        &[],
    );
    cases
}

trait WithoutWasm {
    fn without_wasm(self) -> Self;
}

impl WithoutWasm for EnvoyOptions {
    fn without_wasm(self) -> Self {
        EnvoyOptions {
            with_filter: false,
            ..self
        }
    }
}

// ---------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------

fn measure(case: &Case, settings: &Settings, ticks_per_s: u64, raw: &mut String) -> Measured {
    if settings.warmup > 0 {
        wrk(settings.warmup, case.envoy.port(), case.path, &case.headers);
    }
    let pid = case.envoy.pid();
    let workers_before = case.envoy.worker_connections();
    let (busy_before, total_before) = machine_ticks();
    let own_before = own_ticks();
    let before = cpu_ticks(pid);
    let (run, text) = wrk(
        settings.seconds,
        case.envoy.port(),
        case.path,
        &case.headers,
    );
    let after = cpu_ticks(pid);
    let own_after = own_ticks();
    let (busy_after, total_after) = machine_ticks();
    let workers_after = case.envoy.worker_connections();
    let envoy_ticks = after - before;
    let cpu_us = envoy_ticks as f64 * 1e6 / ticks_per_s as f64;
    let other = (busy_after - busy_before).saturating_sub(envoy_ticks + (own_after - own_before));
    let _ = writeln!(raw, "### {}\n\n```\n{}```\n", case.name, text);
    Measured {
        cpu_us_per_request: cpu_us / run.requests as f64,
        rss_kib: rss_kib(pid),
        other_load: other as f64 * 100.0 / (total_after - total_before).max(1) as f64,
        workers: (
            workers_after.0 - workers_before.0,
            workers_after.1 - workers_before.1,
        ),
        wrk: run,
    }
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

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

struct MemoryResult {
    baseline_kib: u64,
    first_kib: u64,
    second_kib: u64,
    first_took: Duration,
    second_took: Duration,
    metrics: Vec<(String, u64)>,
}

impl MemoryResult {
    fn growth_percent(&self) -> f64 {
        (self.second_kib as f64 - self.first_kib as f64) * 100.0 / self.first_kib as f64
    }

    fn slots_within_capacity(&self) -> bool {
        self.metrics
            .iter()
            .filter(|(name, _)| name.ends_with("slots_used"))
            .all(|(_, v)| *v as usize <= CAPACITY)
    }

    fn passed(&self) -> bool {
        self.growth_percent() <= 5.0 && self.slots_within_capacity()
    }
}

fn memory(upstream: u16) -> MemoryResult {
    let batch = 4 * CAPACITY;
    let config = json!({
        "client_ip": {"trusted_proxies": ["127.0.0.1/32"]},
        "negative_cache": {"capacity": CAPACITY, "statuses": {"401": {"ttl_seconds": 3600}}},
        "rate_limit": {"capacity": CAPACITY, "max_failures": 10, "window_seconds": 3600},
    });
    let envoy = Envoy::start(EnvoyOptions {
        skip_xff_append: true,
        ..bench_options(upstream, config)
    });
    let settle = || thread::sleep(METRICS_SETTLE);
    settle();
    let baseline_kib = rss_kib(envoy.pid());
    eprintln!("bench: memory: {batch} failing credentials from distinct clients");
    let first_took = fill(&envoy, "bench-mem", 0..batch);
    settle();
    let first_kib = rss_kib(envoy.pid());
    eprintln!("bench: memory: {batch} more");
    let second_took = fill(&envoy, "bench-mem", batch..2 * batch);
    settle();
    let second_kib = rss_kib(envoy.pid());
    let metrics = [
        "negcache_slots_used",
        "negcache_ratelimit_slots_used",
        "negcache_stores_total",
        "negcache_evictions_total",
        "negcache_ratelimit_failures_total",
        "negcache_ratelimit_blocks_total",
        "negcache_errors_total",
    ]
    .iter()
    .map(|name| ((*name).to_string(), envoy.metric_now(name)))
    .collect();
    MemoryResult {
        baseline_kib,
        first_kib,
        second_kib,
        first_took,
        second_took,
        metrics,
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

struct Report<'a> {
    settings: &'a Settings,
    machine: &'a Machine,
    cases: &'a [Case],
    notes: &'a [String],
    memory: Option<&'a MemoryResult>,
    elapsed: Duration,
}

impl Report<'_> {
    fn case(&self, name: &str) -> Option<&Case> {
        self.cases.iter().find(|c| c.name == name)
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
            .filter(|(name, _)| self.cases.iter().any(|c| c.name == *name))
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

    fn render(&self) -> String {
        let s = self.settings;
        let m = self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "# negcache benchmark\n");
        let cases = s
            .cases
            .as_ref()
            .map(|cases| format!("BENCH_CASES={} ", cases.join(",")))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "Written by `make bench` (`benches/envoy.rs`); every run overwrites it. \
             Reproduce with:\n\n```sh\n{cases}BENCH_ROUNDS={} BENCH_SECONDS={} BENCH_WARMUP={} make bench\n```\n",
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
             keep-alive) on 127.0.0.1, {} rounds over all cases in turn, each measurement \
             after a {} s warm-up of the same case",
            m.wrk, s.seconds, s.rounds, s.warmup
        );
        let _ = writeln!(
            out,
            "- Upstream: a lean HTTP/1.1 server in the bench process (fixed 2-byte 200; \
             `/fail` answers a {}-byte JSON 401)",
            FAIL_BODY.len()
        );
        let _ = writeln!(
            out,
            "- wasm: `{}` {} bytes, floor `{}` {} bytes (both the release profile: opt-level z, \
             LTO, stripped; `make bench` passes both through the same `wasm-opt` as `make \
             build` when it is installed)",
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
        for c in self.cases {
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
            let ratios = self.per_round(a, b, |x, y| x.wrk.rps / y.wrk.rps);
            let cells = spread_cells(&ratios, |v| format!("{v:.3}"));
            let _ = writeln!(out, "| `{a} / {b}` | {cells} |");
        }

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
            let deltas = self.per_round(a, b, |x, y| x.cpu_us_per_request - y.cpu_us_per_request);
            let cells = spread_cells(&deltas, |v| format!("{v:+.1}"));
            let _ = writeln!(out, "| `{a}` | `{b}` | {cells} |");
        }

        let probes = self.measured(&PROBES);
        if !probes.is_empty() {
            let _ = writeln!(out, "\n## What one host call costs\n");
            let _ = writeln!(
                out,
                "Envoy CPU µs per request of a floor filter making one kind of host call {PROBE_TIMES} \
                 times per request, minus `noop-wasm` in the same round, divided by {PROBE_TIMES}; \
                 the median, with the range.\n"
            );
            let _ = writeln!(out, "| host call | µs per call | min | max |");
            let _ = writeln!(out, "|---|---:|---:|---:|");
            for (name, op) in probes {
                let per_call = self.per_round(name, "noop-wasm", |x, y| {
                    (x.cpu_us_per_request - y.cpu_us_per_request) / PROBE_TIMES
                });
                let cells = spread_cells(&per_call, |v| format!("{v:.2}"));
                let _ = writeln!(out, "| `{op}` | {cells} |");
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
        for c in self.cases {
            let _ = write!(out, "| `{}` |", c.name);
            for r in &c.runs {
                let _ = write!(out, " {:.0} ({:.1}) |", r.wrk.rps, r.cpu_us_per_request);
            }
            out.push('\n');
        }
        let _ = write!(out, "| other load, max % |");
        for r in 0..s.rounds {
            let worst = self
                .cases
                .iter()
                .filter_map(|c| c.runs.get(r))
                .map(|m| m.other_load)
                .fold(0.0, f64::max);
            let _ = write!(out, " {worst:.0} |");
        }
        out.push('\n');

        let with_metrics: Vec<&Case> = self
            .cases
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
            // Each Envoy has been idle since its last measurement: its metrics are flushed.
            for metric in CACHE_METRICS {
                let _ = write!(out, "| `{metric}` |");
                for c in &with_metrics {
                    let _ = write!(out, " {} |", c.envoy.metric_now(metric));
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
                let batch = 4 * CAPACITY;
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

/// Host-call probes (`bench/floor` probe mode): case name and the floor's `op`.
const PROBES: [(&str, &str); 10] = [
    ("probe-headers", "headers"),
    ("probe-header", "header"),
    ("probe-header-missing", "header_missing"),
    ("probe-property", "property"),
    ("probe-set-property", "set_property"),
    ("probe-set-property-new", "set_property_new"),
    ("probe-shared-get", "shared_get"),
    ("probe-shared-set", "shared_set"),
    ("probe-metric", "metric"),
    ("probe-time", "time"),
];

/// The floor's mimic mode: the host calls negcache makes on a good request, and variants.
const PASS_CALL_PROBES: [(&str, &str); 6] = [
    ("probe-pass-calls", ""),
    ("probe-pass-calls-with-time", "with_time"),
    ("probe-pass-calls-response-map", "response_map"),
    ("probe-pass-calls-without-property", "without_property"),
    (
        "probe-pass-calls-without-set-property",
        "without_set_property",
    ),
    ("probe-pass-calls-without-response", "without_response"),
];

/// The floor's mimic of negcache's replies: its host calls for a hit and for a blocked client,
/// then the same reply; with the status the reply has.
const REPLY_CALL_PROBES: [(&str, (&str, u16)); 2] = [
    ("probe-hit-calls", ("hit", 401)),
    ("probe-block-calls", ("block", 429)),
];

/// Calls per request in the floor's probe mode (`bench/floor/src/lib.rs`).
const PROBE_TIMES: f64 = 10.0;

const RATIOS: [(&str, &str); 6] = [
    ("pass", "noop-wasm"),
    ("pass", "no-filter"),
    ("hit", "noop-reply"),
    ("block", "noop-reply"),
    ("hit", "native-reply"),
    ("noop-wasm-2", "noop-wasm"),
];

const CPU_DELTAS: [(&str, &str); 6] = [
    ("pass", "noop-wasm"),
    ("hit", "noop-reply"),
    ("block", "noop-reply"),
    ("noop-wasm", "no-filter"),
    ("noop-reply", "native-reply"),
    ("noop-wasm-2", "noop-wasm"),
];

/// `path` relative to the repository when it is inside it.
fn relative(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
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
    let ticks_per_s = clock_ticks_per_second();
    let upstream = start_fast_upstream();
    eprintln!(
        "bench: {} rounds of {} s (+{} s warm-up) per case; upstream on :{upstream}",
        settings.rounds, settings.seconds, settings.warmup
    );

    let mut notes = Vec::new();
    let mut cases = build_cases(&settings, upstream, &mut notes);
    assert!(!cases.is_empty(), "BENCH_CASES selects no case");

    let mut raw = String::new();
    for round in 1..=settings.rounds {
        let _ = writeln!(raw, "## Round {round}\n");
        for case in &mut cases {
            let m = measure(case, &settings, ticks_per_s, &mut raw);
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
            case.runs.push(m);
        }
    }
    for case in &cases {
        let bad = case.unexpected();
        if bad > 0 {
            eprintln!(
                "bench: WARNING {}: {bad} responses were not {}",
                case.name, case.status
            );
        }
    }

    let memory = settings.memory.then(|| memory(upstream));

    let report = Report {
        settings: &settings,
        machine: &machine,
        cases: &cases,
        notes: &notes,
        memory: memory.as_ref(),
        elapsed: started.elapsed(),
    };
    let text = report.render();
    println!("{text}");
    if let Some(dir) = settings.results.parent() {
        fs::create_dir_all(dir).expect("create results dir");
    }
    fs::write(&settings.results, &text)
        .unwrap_or_else(|e| panic!("write {}: {e}", settings.results.display()));
    let raw_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/out");
    if fs::create_dir_all(&raw_dir).is_ok() {
        let _ = fs::write(raw_dir.join("wrk.md"), raw);
    }
    eprintln!(
        "bench: wrote {} (raw wrk output in bench/out/wrk.md) in {:.0} s",
        settings.results.display(),
        started.elapsed().as_secs_f64()
    );
}
