//! The measured cases: each one an Envoy of its own, set up and checked before measuring, with
//! the request wrk sends it.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::load::{client_ip, flood};
use crate::common::rls::rls_cluster;
use crate::common::{free_port, Envoy, EnvoyOptions, Response, Upstream, METRICS_SETTLE};
use crate::Settings;

/// Slots in both tables for `pass` and the memory part.
pub const CAPACITY: usize = 4096;
/// The credential of the measured good client, and the measured client itself (TEST-NET-3).
const GOOD_TOKEN: &str = "Bearer bench-good-token";
const GOOD_CLIENT: &str = "203.0.113.7";
/// The failing credential the `hit` and `block` cases replay.
const BAD_TOKEN: &str = "Bearer bench-bad-token";
/// The client of `hit-rl` (TEST-NET-3), resolved from a trusted X-Forwarded-For.
const FAILING_CLIENT: &str = "203.0.113.9";
/// Threads (each one keep-alive connection) that send the fill-up requests.
const FILL_THREADS: usize = 4;
/// The upstream's 401 body.
pub const FAIL_BODY: &str = r#"{"error":"invalid token"}"#;

/// The negcache cases that `BENCH_VARIANTS` repeats with another build of the filter.
pub const VARIANT_CASES: [&str; 4] = ["pass", "hit", "hit-rl", "block"];

/// Host-call probes (`bench/floor` probe mode): case name and the floor's `op`.
pub const PROBES: [(&str, &str); 13] = [
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
    ("probe-shared-get-missing", "shared_get_missing"),
    ("probe-shared-get-large", "shared_get_large"),
    ("probe-alloc", "alloc"),
];

/// The same probes making their call once per request (`"times": 1`), in `PROBES`' order: the
/// first call of a kind in a request against the ones after it.
pub const ONCE_PROBES: [(&str, &str); 13] = [
    ("probe-once-headers", "headers"),
    ("probe-once-header", "header"),
    ("probe-once-header-missing", "header_missing"),
    ("probe-once-property", "property"),
    ("probe-once-set-property", "set_property"),
    ("probe-once-set-property-new", "set_property_new"),
    ("probe-once-shared-get", "shared_get"),
    ("probe-once-shared-set", "shared_set"),
    ("probe-once-metric", "metric"),
    ("probe-once-time", "time"),
    ("probe-once-shared-get-missing", "shared_get_missing"),
    ("probe-once-shared-get-large", "shared_get_large"),
    ("probe-once-alloc", "alloc"),
];

/// The floor's mimic mode: the host calls negcache makes on a good request, and variants.
pub const PASS_CALL_PROBES: [(&str, &str); 6] = [
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
pub const REPLY_CALL_PROBES: [(&str, (&str, u16)); 2] = [
    ("probe-hit-calls", ("hit", 401)),
    ("probe-block-calls", ("block", 429)),
];

/// Calls per request in the floor's probe mode (`bench/floor/src/lib.rs`).
pub const PROBE_TIMES: f64 = 10.0;

/// negcache's metrics worth showing for its cases.
pub const CACHE_METRICS: &[&str] = &[
    "negcache_hits_total",
    "negcache_misses_total",
    "negcache_stores_total",
    "negcache_ratelimit_rejected_total",
    "negcache_errors_total",
    "negcache_slots_used",
    "negcache_ratelimit_slots_used",
];

/// One measured case: its Envoy, already set up, and the request wrk repeats.
pub struct Case {
    /// `pass`, or `pass@LABEL` for a variant.
    pub name: String,
    /// The case it repeats with another .wasm (`pass` for `pass@LABEL`), else its own name.
    pub base: &'static str,
    pub what: String,
    pub envoy: Envoy,
    pub path: &'static str,
    pub headers: Vec<(String, String)>,
    /// Every measured response must have this status.
    pub status: u16,
    /// negcache metrics worth showing for this case.
    pub metrics: &'static [&'static str],
}

impl Case {
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
        match self.base {
            "hit" | "hit-rl" | "hit-min" => {
                assert_eq!(resp.negcache(), Some("hit"), "{}: {resp:?}", self.name);
            }
            "block" | "block-min" => assert!(
                resp.header("retry-after").is_some(),
                "{}: {resp:?}",
                self.name
            ),
            "pass" => assert_eq!(resp.negcache(), None, "{}: {resp:?}", self.name),
            _ => {}
        }
    }
}

/// The upstream every case's Envoy routes to: the harness's upstream in lean mode, a fixed
/// small 200 for every path, except paths under `/fail`, which get a small 401 JSON.
pub fn upstream() -> Upstream {
    Upstream::lean(&[
        (
            "/fail",
            Response::new(401)
                .header("www-authenticate", "Bearer")
                .json(FAIL_BODY),
        ),
        ("/", Response::ok().text("ok")),
    ])
}

fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
        .collect()
}

/// Envoy as every case runs it: access log off, connections balanced over the workers, the
/// filter from `wasm` (no filter with `None`).
fn bench_options(upstream: u16, wasm: Option<&Path>, plugin_config: Value) -> EnvoyOptions {
    EnvoyOptions {
        access_log: false,
        // Kernel SO_REUSEPORT hashing spreads wrk's 8 connections unevenly (8/1 happens), which
        // swings requests/s by a third between identical runs: hand them out evenly instead.
        listener_extra: json!({"connection_balance_config": {"exact_balance": {}}}),
        with_filter: wasm.is_some(),
        wasm: wasm.map(Path::to_path_buf),
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

/// Sends `GET /fail` with credential `Bearer <prefix>-<i>` from client `client_ip(i)` for every
/// `i` in `range`, over `FILL_THREADS` keep-alive connections; every answer must be the
/// upstream's 401 (not a hit, not a 429). Returns how long it took.
pub fn fill(envoy: &Envoy, prefix: &str, range: std::ops::Range<usize>) -> Duration {
    let started = Instant::now();
    flood(
        envoy.port(),
        range,
        FILL_THREADS,
        |i| {
            let headers = vec![
                ("authorization".to_string(), format!("Bearer {prefix}-{i}")),
                ("x-forwarded-for".to_string(), client_ip(i)),
            ];
            ("/fail".to_string(), headers)
        },
        |i, resp| {
            assert_eq!(
                (resp.status, resp.negcache()),
                (401, None),
                "fill request {i} ({}) was not answered by the upstream: {resp:?}",
                client_ip(i)
            );
        },
    );
    started.elapsed()
}

/// The memory part's Envoy: both tables at `CAPACITY`, `max_failures` 10 so that no client is
/// blocked.
pub fn memory_envoy(upstream: u16, wasm: &Path) -> Envoy {
    let config = json!({
        "client_ip": {"trusted_proxies": ["127.0.0.1/32"]},
        "negative_cache": {"capacity": CAPACITY, "statuses": {"401": {"ttl_seconds": 3600}}},
        "rate_limit": {"capacity": CAPACITY, "max_failures": 10, "window_seconds": 3600},
    });
    Envoy::start(EnvoyOptions {
        skip_xff_append: true,
        ..bench_options(upstream, Some(wasm), config)
    })
}

/// How a case's Envoy is started.
#[derive(Clone, Debug)]
enum Start {
    /// No wasm filter; with `Some`, Envoy answers itself (`direct_response`, status and body).
    Plain(Option<(u16, String)>),
    /// A floor filter (bench/floor) with this configuration.
    Floor(Value),
    /// negcache, cache and rate limit on, both tables filled beforehand; with `cluster`, in
    /// cluster mode (`rate_limit.cluster`) against a rate limit service that is not there: a
    /// good request never calls it.
    Pass { cluster: bool },
    /// negcache with one failing request stored, rate limit off.
    Hit,
    /// negcache with `max_failures` 0 and one failure, so the client is blocked.
    Block,
    /// negcache with one failing request stored, rate limit on: every hit counts a failure.
    HitRl,
}

/// A case before its Envoy is started.
#[derive(Clone, Debug)]
struct Spec {
    name: String,
    base: &'static str,
    what: String,
    start: Start,
    wasm: Option<PathBuf>,
    path: &'static str,
    headers: Vec<(String, String)>,
    status: u16,
    metrics: &'static [&'static str],
}

impl Spec {
    /// The same case with the filter of `variant`.
    fn variant(&self, variant: &Variant) -> Spec {
        Spec {
            name: format!("{}@{}", self.base, variant.label),
            what: format!(
                "`{}` with the filter of variant `{}`",
                self.base, variant.label
            ),
            wasm: Some(variant.wasm.clone()),
            ..self.clone()
        }
    }

    /// An Envoy with `config` that has answered one failing request, once `metric` shows it
    /// (the entry stored, the client blocked).
    fn after_one_failure(
        &self,
        upstream: u16,
        wasm: Option<&Path>,
        config: Value,
        metric: &str,
    ) -> Envoy {
        let envoy = Envoy::start(bench_options(upstream, wasm, config));
        let first = envoy.get("/fail", &[("authorization", BAD_TOKEN)]);
        assert_eq!(
            first.status, 401,
            "{}: failing request: {first:?}",
            self.name
        );
        envoy.wait_metric(metric, 1);
        envoy
    }

    /// Starts its Envoy and sets it up; facts worth reporting go to `notes`.
    fn start(self, upstream: u16, notes: &mut Vec<String>) -> Case {
        let wasm = self.wasm.as_deref();
        let envoy = match &self.start {
            Start::Plain(direct_response) => Envoy::start(EnvoyOptions {
                direct_response: direct_response.clone(),
                ..bench_options(upstream, None, json!({}))
            }),
            Start::Floor(config) => Envoy::start(bench_options(upstream, wasm, config.clone())),
            Start::Pass { cluster } => {
                let mut config = negcache_config(json!({}));
                let mut extra_clusters = Vec::new();
                if *cluster {
                    config["rate_limit"]["cluster"] = json!({"rls_cluster": "ratelimit"});
                    extra_clusters.push(rls_cluster("ratelimit", free_port()));
                }
                let envoy = Envoy::start(EnvoyOptions {
                    skip_xff_append: true,
                    extra_clusters,
                    ..bench_options(upstream, wasm, config)
                });
                let took = fill(&envoy, "bench-fill", 0..2 * CAPACITY);
                thread::sleep(METRICS_SETTLE);
                let (cache, limiter) = (
                    envoy.metric_now("negcache_slots_used"),
                    envoy.metric_now("negcache_ratelimit_slots_used"),
                );
                notes.push(format!(
                    "`{}`: before measuring, {} distinct failing tokens from {} distinct \
                     clients (in {:.1} s) left {cache} of {CAPACITY} cache slots and {limiter} \
                     of {CAPACITY} client slots in use.",
                    self.name,
                    2 * CAPACITY,
                    2 * CAPACITY,
                    took.as_secs_f64()
                ));
                envoy
            }
            Start::Hit => {
                let mut config = negcache_config(json!({}));
                config["rate_limit"] = json!({"enabled": false});
                self.after_one_failure(upstream, wasm, config, "negcache_stores_total")
            }
            Start::HitRl => {
                // The rate limit as it ships, except that a client is never blocked: over the
                // whole run the replayed 401s stay below max_failures within one window.
                let config = negcache_config(json!({
                    "max_failures": 1_000_000,
                    "window_seconds": 10,
                }));
                self.after_one_failure(upstream, wasm, config, "negcache_stores_total")
            }
            Start::Block => self.after_one_failure(
                upstream,
                wasm,
                negcache_config(json!({"max_failures": 0, "block_seconds": 3600})),
                "negcache_ratelimit_blocks_total",
            ),
        };
        Case {
            name: self.name,
            base: self.base,
            what: self.what,
            envoy,
            path: self.path,
            headers: self.headers,
            status: self.status,
            metrics: self.metrics,
        }
    }
}

/// Every case there is, in measuring order.
fn all_specs(settings: &Settings) -> Vec<Spec> {
    let good = headers(&[
        ("authorization", GOOD_TOKEN),
        ("x-forwarded-for", GOOD_CLIENT),
    ]);
    let bad = headers(&[("authorization", BAD_TOKEN)]);
    let negcache = Some(settings.negcache_wasm.clone());
    let floor = Some(settings.floor_wasm.clone());
    let spec = |name: &'static str,
                what: &str,
                start: Start,
                wasm: &Option<PathBuf>,
                path: &'static str,
                headers: &[(String, String)],
                status: u16| Spec {
        name: name.to_string(),
        base: name,
        what: what.to_string(),
        metrics: if matches!(
            start,
            Start::Pass { .. } | Start::Hit | Start::HitRl | Start::Block
        ) {
            CACHE_METRICS
        } else {
            &[]
        },
        start,
        wasm: wasm.clone(),
        path,
        headers: headers.to_vec(),
        status,
    };
    let mut specs = vec![
        spec(
            "no-filter",
            "Envoy without a wasm filter",
            Start::Plain(None),
            &None,
            "/ok",
            &good,
            200,
        ),
        spec(
            "noop-wasm",
            "a proxy-wasm filter that does nothing (bench/floor)",
            Start::Floor(json!({"mode": "noop"})),
            &floor,
            "/ok",
            &good,
            200,
        ),
        spec(
            "noop-wasm-2",
            "the same again: the spread to noop-wasm is the noise floor",
            Start::Floor(json!({"mode": "noop"})),
            &floor,
            "/ok",
            &good,
            200,
        ),
        spec(
            "pass",
            "negcache, cache and rate limit on, good token (upstream 200) from a trusted \
             X-Forwarded-For, both tables filled beforehand",
            Start::Pass { cluster: false },
            &negcache,
            "/ok",
            &good,
            200,
        ),
        spec(
            "pass-cluster",
            "`pass` in cluster mode (`rate_limit.cluster`): a good request makes no call to the \
             rate limit service",
            Start::Pass { cluster: true },
            &negcache,
            "/ok",
            &good,
            200,
        ),
        spec(
            "hit",
            "negcache replays a cached 401 (rate limit off)",
            Start::Hit,
            &negcache,
            "/fail",
            &bad,
            401,
        ),
        spec(
            "hit-rl",
            "negcache replays a cached 401 with the rate limit on (max_failures 1000000 in a \
             10 s window): each hit also reads the client's record and counts the failure",
            Start::HitRl,
            &negcache,
            "/fail",
            &headers(&[
                ("authorization", BAD_TOKEN),
                ("x-forwarded-for", FAILING_CLIENT),
            ]),
            401,
        ),
        spec(
            "hit-min",
            "floor: the calls a correct hit needs (request header map, one shared-data read of \
             140 bytes, clock, decision to filter state) and the same 401 (bench/floor)",
            Start::Floor(json!({"mode": "mimic", "variant": "hit_min"})),
            &floor,
            "/fail",
            &bad,
            401,
        ),
        spec(
            "block",
            "negcache's 429 to a blocked client (max_failures 0, one failure first)",
            Start::Block,
            &negcache,
            "/ok",
            &headers(&[("authorization", GOOD_TOKEN)]),
            429,
        ),
        spec(
            "block-min",
            "floor: the calls a correct 429 needs (request header map, source.address, one \
             shared-data read of 116 bytes, clock, client and decision to filter state) and the \
             same 429 (bench/floor)",
            Start::Floor(json!({"mode": "mimic", "variant": "block_min"})),
            &floor,
            "/ok",
            &headers(&[("authorization", GOOD_TOKEN)]),
            429,
        ),
        spec(
            "noop-reply",
            "a proxy-wasm filter that only sends a fixed 401 (bench/floor)",
            Start::Floor(json!({"mode": "reply"})),
            &floor,
            "/fail",
            &bad,
            401,
        ),
    ];
    for (name, variant) in PASS_CALL_PROBES {
        specs.push(spec(
            name,
            "floor filter making the host calls negcache makes on a good request, and nothing else",
            Start::Floor(json!({"mode": "mimic", "variant": variant})),
            &floor,
            "/ok",
            &good,
            200,
        ));
    }
    for (name, (variant, status)) in REPLY_CALL_PROBES {
        specs.push(spec(
            name,
            "floor filter making the host calls of one of negcache's replies, then sending it",
            Start::Floor(json!({"mode": "mimic", "variant": variant})),
            &floor,
            "/fail",
            &bad,
            status,
        ));
    }
    for (name, op) in PROBES {
        specs.push(spec(
            name,
            "floor filter making one kind of host call PROBE_TIMES times per request",
            Start::Floor(json!({"mode": "probe", "op": op})),
            &floor,
            "/ok",
            &good,
            200,
        ));
    }
    for (name, op) in ONCE_PROBES {
        specs.push(spec(
            name,
            "floor filter making one kind of host call once per request",
            Start::Floor(json!({"mode": "probe", "op": op, "times": 1})),
            &floor,
            "/ok",
            &good,
            200,
        ));
    }
    specs.push(spec(
        "native-reply",
        "Envoy's own direct_response 401, no wasm filter",
        Start::Plain(Some((401, FAIL_BODY.to_string()))),
        &None,
        "/fail",
        &bad,
        401,
    ));
    specs
}

/// Every case `settings` asks for, started, set up and probed, in measuring order: each
/// variant of a negcache case right after it (`BENCH_VARIANTS`). Set-up facts worth reporting
/// go to `notes`.
pub fn build(settings: &Settings, upstream: u16, notes: &mut Vec<String>) -> Vec<Case> {
    let specs = all_specs(settings)
        .into_iter()
        .filter(|spec| settings.wants(spec.base))
        .flat_map(|spec| {
            let variants: Vec<Spec> = if VARIANT_CASES.contains(&spec.base) {
                settings.variants.iter().map(|v| spec.variant(v)).collect()
            } else {
                Vec::new()
            };
            std::iter::once(spec).chain(variants)
        });
    specs
        .map(|spec| {
            let started = Instant::now();
            let case = spec.start(upstream, notes);
            case.probe();
            eprintln!("bench: {} ready in {:.1?}", case.name, started.elapsed());
            case
        })
        .collect()
}

/// A build of the filter to compare with (`BENCH_VARIANTS`).
#[derive(Clone, Debug)]
pub struct Variant {
    pub label: String,
    pub wasm: PathBuf,
}
