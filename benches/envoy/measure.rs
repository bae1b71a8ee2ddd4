//! Measuring: wrk's figures, Envoy's CPU time and memory from `/proc`, the machine itself.
//! Produces plain data ([`Measured`], [`MemoryResult`], [`Machine`]) for the report.

use std::fmt::Write as _;
use std::fs;
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::cases::{self, Case, CAPACITY};
use crate::common::load::rss_kib;
use crate::common::{self, METRICS_SETTLE};
use crate::Settings;

/// wrk: threads and connections.
pub const WRK_THREADS: u32 = 1;
pub const WRK_CONNECTIONS: u32 = 8;
/// Requests (distinct credentials, distinct clients) in each batch of the memory part.
pub const MEMORY_BATCH: usize = 4 * CAPACITY;

/// Output of a command, or "" when it cannot run.
pub fn command_output(program: &str, args: &[&str]) -> String {
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

/// What the report says about where it ran.
pub struct Machine {
    pub date: String,
    pub nproc: String,
    pub cpu: String,
    pub kernel: String,
    pub envoy: String,
    pub wrk: String,
    pub commit: String,
}

impl Machine {
    pub fn probe() -> Machine {
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

pub fn clock_ticks_per_second() -> u64 {
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

/// wrk's summary of one run.
#[derive(Clone, Debug, Default)]
pub struct WrkRun {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub non_2xx: u64,
    pub socket_errors: String,
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
pub fn wrk(seconds: u64, port: u16, path: &str, headers: &[(String, String)]) -> (WrkRun, String) {
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

/// One measurement of one case.
#[derive(Clone, Debug)]
pub struct Measured {
    pub wrk: WrkRun,
    pub cpu_us_per_request: f64,
    pub rss_kib: u64,
    /// Share of the machine's CPU used during the measurement by anything but Envoy, wrk and
    /// this process (other processes, hypervisor steal), in percent.
    pub other_load: f64,
    /// wrk's connections accepted by Envoy's worker 0 and worker 1.
    pub workers: (u64, u64),
}

/// One measurement of `case` (after a warm-up of the same case); wrk's whole output is
/// appended to `raw`.
pub fn measure(case: &Case, settings: &Settings, ticks_per_s: u64, raw: &mut String) -> Measured {
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

/// Envoy's memory while both tables fill up many times over.
pub struct MemoryResult {
    pub baseline_kib: u64,
    pub first_kib: u64,
    pub second_kib: u64,
    pub first_took: Duration,
    pub second_took: Duration,
    pub metrics: Vec<(String, u64)>,
}

impl MemoryResult {
    pub fn growth_percent(&self) -> f64 {
        (self.second_kib as f64 - self.first_kib as f64) * 100.0 / self.first_kib as f64
    }

    pub fn slots_within_capacity(&self) -> bool {
        self.metrics
            .iter()
            .filter(|(name, _)| name.ends_with("slots_used"))
            .all(|(_, v)| *v as usize <= CAPACITY)
    }

    pub fn passed(&self) -> bool {
        self.growth_percent() <= 5.0 && self.slots_within_capacity()
    }
}

/// The memory part: one negcache Envoy, two batches of `MEMORY_BATCH` failing credentials
/// from distinct clients, Envoy's RSS before and after each.
pub fn memory(settings: &Settings, upstream: u16) -> MemoryResult {
    let batch = MEMORY_BATCH;
    let envoy = cases::memory_envoy(upstream, &settings.negcache_wasm);
    let settle = || thread::sleep(METRICS_SETTLE);
    settle();
    let baseline_kib = rss_kib(envoy.pid());
    eprintln!("bench: memory: {batch} failing credentials from distinct clients");
    let first_took = cases::fill(&envoy, "bench-mem", 0..batch);
    settle();
    let first_kib = rss_kib(envoy.pid());
    eprintln!("bench: memory: {batch} more");
    let second_took = cases::fill(&envoy, "bench-mem", batch..2 * batch);
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

/// What was measured of one case, for the report.
pub struct Series {
    pub name: String,
    pub what: String,
    /// The status every measured response should have had.
    pub status: u16,
    /// One measurement per round.
    pub runs: Vec<Measured>,
    /// negcache's metrics at the end (set-up requests and warm-ups included); empty for the
    /// other cases.
    pub metrics: Vec<(&'static str, u64)>,
}

impl Series {
    pub fn new(case: &Case) -> Series {
        Series {
            name: case.name.clone(),
            what: case.what.clone(),
            status: case.status,
            runs: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// Reads the case's metrics once its measurements are over: its Envoy has been idle since,
    /// so the filter has handed it every update.
    pub fn read_metrics(&mut self, case: &Case) {
        self.metrics = case
            .metrics
            .iter()
            .map(|name| (*name, case.envoy.metric_now(name)))
            .collect();
    }

    /// Responses that did not have the expected status.
    pub fn unexpected(&self) -> u64 {
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
}
