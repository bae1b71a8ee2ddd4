#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Cluster mode in real Envoys against a real rate limit service: Kuadrant Limitador with Redis
//! storage (two Envoy processes are two replicas), the failure limit the README states across
//! them, the breaker, and Limitador or Redis failing under it. The limits file is the one the
//! project ships (`envoy/limitador/limits.yaml`: 10 failures per 60 s), so the filter runs
//! with the matching defaults.
//!
//! The Limitador trials need `limitador-server` (`scripts/limitador.sh`, which `make test`
//! runs) and `redis-server`; without them they report themselves ignored, except under CI
//! (`CI` set), where they fail. Its own harness (libtest-mimic), like tests/browser.rs.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use common::rls::{limitador_bin, redis_available, rls_cluster, shipped_limits, Limitador, Redis};
use common::trials::{needing, plain, Needs};
use common::{ClientResponse, Envoy, EnvoyOptions, Request, Response, Upstream};
use libtest_mimic::{Arguments, Trial};
use serde_json::{json, Value};

/// The shipped limit: `max_value` 10, `seconds` 60.
const MAX_FAILURES: usize = 10;

fn api(req: &Request) -> Response {
    if req.header("authorization") == Some("Bearer good") {
        return Response::ok().json(r#"{"user":"good"}"#);
    }
    Response::new(401).json(r#"{"error":"invalid token"}"#)
}

/// The filter with the limiter's defaults (matching the shipped limits), the cache out of the
/// way, clients named by X-Forwarded-For from the trusted loopback peer; `cluster` is
/// `rate_limit.cluster` (`null`: local mode).
fn plugin(cluster: Value) -> Value {
    json!({
        "client_ip": {"trusted_proxies": ["127.0.0.1/32"]},
        "negative_cache": {"enabled": false},
        "rate_limit": {"cluster": cluster}
    })
}

/// `timeout_ms` generous for a loaded test machine: a call that timed out would be counted
/// locally only, and the bound below assumes every answer arrives.
fn cluster(breaker: Value) -> Value {
    json!({"rls_cluster": "ratelimit", "timeout_ms": 2000, "breaker": breaker})
}

/// An Envoy replica in front of `upstream` whose `ratelimit` cluster is `rls_port`.
fn replica(upstream: &Upstream, rls_port: u16, plugin_config: Value) -> Envoy {
    Envoy::start(EnvoyOptions {
        skip_xff_append: true,
        extra_clusters: vec![rls_cluster("ratelimit", rls_port)],
        ..EnvoyOptions::new(upstream.port(), plugin_config)
    })
}

fn fail(envoy: &Envoy, client: &str, n: usize) -> ClientResponse {
    let auth = format!("Bearer guess-{client}-{n}");
    envoy.get(
        "/api/me",
        &[("authorization", &auth), ("x-forwarded-for", client)],
    )
}

fn good(envoy: &Envoy, client: &str) -> ClientResponse {
    envoy.get(
        "/api/me",
        &[
            ("authorization", "Bearer good"),
            ("x-forwarded-for", client),
        ],
    )
}

/// `attempts` failures of `client`, one after another, round-robin over `fleet`; returns how
/// many reached the upstream (all replicas share `upstream`).
fn failures_reaching_upstream(
    fleet: &[&Envoy],
    upstream: &Upstream,
    client: &str,
    attempts: usize,
) -> usize {
    let before = upstream.count();
    for n in 0..attempts {
        let reply = fail(fleet[n % fleet.len()], client, n);
        assert!(
            reply.status == 401 || reply.status == 429,
            "failure {n}: {}",
            reply.status
        );
    }
    upstream.count() - before
}

struct Services {
    bin: PathBuf,
    redis: Redis,
}

impl Services {
    fn start(bin: PathBuf) -> Services {
        Services {
            bin,
            redis: Redis::start(),
        }
    }

    fn limitador(&self) -> Limitador {
        Limitador::start(&self.bin, &shipped_limits(), &self.redis)
    }
}

fn the_fleet_bound_holds_across_two_envoys_and_local_mode_exceeds_it(bin: PathBuf) {
    let services = Services::start(bin);
    let limitador = services.limitador();
    let upstream = Upstream::start(api);
    let config = plugin(cluster(json!({})));
    let a = replica(&upstream, limitador.rls_port(), config.clone());
    let b = replica(&upstream, limitador.rls_port(), config);

    // Good requests make no call.
    for n in 0..20 {
        let envoy = if n % 2 == 0 { &a } else { &b };
        assert_eq!(good(envoy, "198.51.100.20").status, 200);
    }
    assert_eq!(
        limitador.calls("negcache"),
        0,
        "good requests called the RLS"
    );

    let reached = failures_reaching_upstream(&[&a, &b], &upstream, "198.51.100.7", 30);
    assert_eq!(reached, MAX_FAILURES + 2, "max_failures + replicas");
    // The block holds on both replicas, locally: no more calls.
    let calls = limitador.calls("negcache");
    for envoy in [&a, &b] {
        let blocked = fail(envoy, "198.51.100.7", 99);
        assert_eq!(blocked.status, 429);
        assert!(blocked.header("retry-after").is_some());
        assert_eq!(good(envoy, "198.51.100.7").status, 429);
    }
    assert_eq!(limitador.calls("negcache"), calls);
    assert!(
        a.metric("negcache_cluster_over_limit_total")
            + b.metric("negcache_cluster_over_limit_total")
            >= 2
    );
    // Another client is untouched.
    assert_eq!(good(&a, "198.51.100.8").status, 200);
    assert_eq!(fail(&b, "198.51.100.8", 0).status, 401);

    // The same pattern with each replica counting alone lets more through.
    let local_a = replica(&upstream, limitador.rls_port(), plugin(Value::Null));
    let local_b = replica(&upstream, limitador.rls_port(), plugin(Value::Null));
    let reached = failures_reaching_upstream(&[&local_a, &local_b], &upstream, "198.51.100.9", 30);
    assert_eq!(
        reached,
        2 * (MAX_FAILURES + 1),
        "local mode: replicas × (max_failures + 1)"
    );
}

fn two_limitadors_over_one_redis_keep_the_bound(bin: PathBuf) {
    let services = Services::start(bin);
    let (first, second) = (services.limitador(), services.limitador());
    let upstream = Upstream::start(api);
    let config = plugin(cluster(json!({})));
    let a = replica(&upstream, first.rls_port(), config.clone());
    let b = replica(&upstream, second.rls_port(), config);
    let reached = failures_reaching_upstream(&[&a, &b], &upstream, "203.0.113.5", 30);
    assert_eq!(reached, MAX_FAILURES + 2);
    assert!(first.calls("negcache") > 0 && second.calls("negcache") > 0);
}

fn a_dead_limitador_opens_the_breaker_and_closes_it_when_back(bin: PathBuf) {
    let services = Services::start(bin);
    let mut limitador = services.limitador();
    let upstream = Upstream::start(api);
    let config = plugin(cluster(json!({"consecutive_errors": 3, "open_seconds": 2})));
    let a = replica(&upstream, limitador.rls_port(), config.clone());
    let b = replica(&upstream, limitador.rls_port(), config);
    assert_eq!(fail(&a, "192.0.2.10", 0).status, 401);
    a.wait_metric("negcache_cluster_calls_total", 1);

    limitador.kill();
    // Every failure is still answered at once, and counted locally.
    for n in 1..=6 {
        assert_eq!(fail(&a, "192.0.2.10", n).status, 401);
    }
    a.wait_metric("negcache_cluster_errors_total", 3);
    assert_eq!(a.metric("negcache_cluster_breaker_open_total"), 1);
    assert_eq!(a.metric("negcache_cluster_skipped_total"), 3);
    assert_eq!(a.metric("negcache_cluster_calls_total"), 4);
    assert_eq!(a.metric("negcache_ratelimit_failures_total"), 7);

    limitador.restart();
    // Once open_seconds have passed, a trial goes through and closes it.
    common::wait_until("the breaker to let a trial through", common::WAIT, || {
        thread::sleep(Duration::from_millis(300));
        fail(&a, "192.0.2.11", 0);
        limitador.calls("negcache") > 0
    });
    let calls = limitador.calls("negcache");
    fail(&a, "192.0.2.12", 0);
    fail(&a, "192.0.2.12", 1);
    assert_eq!(
        limitador.calls("negcache"),
        calls + 2,
        "closed again: every failure is sent"
    );

    // The fleet's count works again: b's failures put the client over the limit on a.
    let reached = failures_reaching_upstream(&[&b], &upstream, "192.0.2.13", MAX_FAILURES);
    assert_eq!(reached, MAX_FAILURES);
    assert_eq!(fail(&a, "192.0.2.13", 50).status, 401);
    assert_eq!(fail(&a, "192.0.2.13", 51).status, 429);
}

fn a_frozen_limitador_holds_the_failure_then_costs_nothing_once_the_breaker_is_open(bin: PathBuf) {
    let services = Services::start(bin);
    let limitador = services.limitador();
    let upstream = Upstream::start(api);

    // The failing response waits for the answer: not there while Limitador is frozen, there
    // once it answers.
    let patient = replica(
        &upstream,
        limitador.rls_port(),
        plugin(json!({"rls_cluster": "ratelimit", "timeout_ms": 10_000})),
    );
    limitador.freeze();
    let (done, answered) = std::sync::mpsc::channel();
    thread::scope(|scope| {
        scope.spawn(|| done.send(fail(&patient, "192.0.2.19", 0)).unwrap());
        common::wait_until("the upstream to answer", common::WAIT, || {
            upstream.count() == 1
        });
        thread::sleep(Duration::from_millis(300));
        assert!(
            answered.try_recv().is_err(),
            "the failing response went on before the rate limit service answered"
        );
        limitador.thaw();
        assert_eq!(answered.recv().unwrap().status, 401);
    });
    assert_eq!(patient.metric("negcache_cluster_errors_total"), 0);
    assert_eq!(limitador.calls("negcache"), 1);

    let config = plugin(json!({"rls_cluster": "ratelimit", "timeout_ms": 300,
        "breaker": {"consecutive_errors": 2, "open_seconds": 600}}));
    let a = replica(&upstream, limitador.rls_port(), config);
    limitador.freeze();
    for n in 0..6 {
        assert_eq!(fail(&a, "192.0.2.20", n).status, 401);
    }
    limitador.thaw();
    // Two calls waited out their timeout; the four failures after them were not sent.
    assert_eq!(a.metric("negcache_cluster_errors_total"), 2);
    assert_eq!(a.metric("negcache_cluster_calls_total"), 2);
    assert_eq!(a.metric("negcache_cluster_skipped_total"), 4);
    assert_eq!(a.metric("negcache_cluster_breaker_open_total"), 1);
}

fn redis_killed_and_restarted(bin: PathBuf) {
    let mut services = Services::start(bin);
    let mut limitador = services.limitador();
    let upstream = Upstream::start(api);
    let config = plugin(json!({"rls_cluster": "ratelimit", "timeout_ms": 500,
        "breaker": {"consecutive_errors": 3, "open_seconds": 1}}));
    let a = replica(&upstream, limitador.rls_port(), config.clone());
    let b = replica(&upstream, limitador.rls_port(), config);

    services.redis.kill();
    // Without its storage Limitador answers UNAVAILABLE, then (this version) stops answering
    // at all: failed calls either way, each failure still answered.
    for n in 0..6 {
        assert_eq!(fail(&a, "192.0.2.30", n).status, 401);
    }
    a.wait_metric("negcache_cluster_errors_total", 3);
    assert_eq!(a.metric("negcache_cluster_breaker_open_total"), 1);
    assert_eq!(a.metric("negcache_cluster_skipped_total"), 3);

    services.redis.restart();
    // Limitador does not recover from a call made while Redis was away: it is restarted too.
    limitador.restart();
    common::wait_until("the breaker to close on an answer", common::WAIT, || {
        thread::sleep(Duration::from_millis(300));
        fail(&a, "192.0.2.31", 0);
        limitador.calls("negcache") > 0
    });
    let reached = failures_reaching_upstream(&[&a, &b], &upstream, "192.0.2.32", 30);
    assert_eq!(reached, MAX_FAILURES + 2);
}

/// A rate limit service that accepts connections and never answers: every call times out.
fn silent_service() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn held_responses_reach_the_client_whole_whatever_their_size() {
    let (_silent, port) = silent_service();
    let big = vec![b'x'; 1 << 20];
    let big_body = big.clone();
    let stored: Vec<u8> = (0..40_000u32).map(|n| b'a' + (n % 26) as u8).collect();
    let stored_body = stored.clone();
    // A small first chunk, then the rest: what Envoy buffers grows while the first is held.
    fn small_then_rest(body: &[u8], rest_chunk: usize) -> Response {
        let (first, rest) = body.split_at(1024);
        let mut chunks: Vec<&[u8]> = vec![first];
        chunks.extend(rest.chunks(rest_chunk));
        Response::new(401).chunked(&chunks)
    }
    let upstream = Upstream::start(move |req: &Request| match req.path_only() {
        "/big" => Response::new(401).body(big_body.clone()),
        "/big-chunked" => small_then_rest(&big_body, 256 * 1024),
        "/stored" => small_then_rest(&stored_body, 8 * 1024),
        _ => Response::new(401).json(r#"{"error":"invalid token"}"#),
    });
    let config = json!({
        "client_ip": {"trusted_proxies": ["127.0.0.1/32"]},
        "negative_cache": {"max_body_bytes": 65536},
        "rate_limit": {"cluster": {"rls_cluster": "ratelimit", "timeout_ms": 300,
            "breaker": {"consecutive_errors": 1000}}}
    });
    let envoy = Envoy::start(EnvoyOptions {
        skip_xff_append: true,
        extra_clusters: vec![rls_cluster("ratelimit", port)],
        // Far below the 1 MiB bodies.
        listener_extra: json!({"per_connection_buffer_limit_bytes": 32768}),
        ..EnvoyOptions::new(upstream.port(), config)
    });
    let get = |path: &str, token: &str| {
        let auth = format!("Bearer {token}");
        envoy.get(
            path,
            &[("authorization", &auth), ("x-forwarded-for", "192.0.2.40")],
        )
    };
    for (n, path) in ["/big", "/big-chunked", "/small"].iter().enumerate() {
        let reply = get(path, &format!("t{n}"));
        assert_eq!(reply.status, 401, "{path}");
        assert!(reply.complete, "{path}");
        if *path == "/small" {
            assert_eq!(reply.body_str(), r#"{"error":"invalid token"}"#);
        } else {
            assert_eq!(reply.body, big, "{path}");
        }
    }
    // A held body captured for the cache (each callback sees Envoy's whole buffer so far) is
    // stored exactly, and replayed exactly.
    let miss = get("/stored", "dead");
    assert_eq!(miss.body, stored);
    let hit = get("/stored", "dead");
    assert_eq!(hit.header("x-negcache"), Some("hit"));
    assert_eq!(hit.body, stored);
    upstream.assert_count(4);
    // Every failure from the upstream was sent, and each waited out the silent service.
    assert_eq!(envoy.metric("negcache_cluster_calls_total"), 4);
    assert_eq!(envoy.metric("negcache_cluster_errors_total"), 4);
}

fn a_cluster_envoy_does_not_know_fails_every_call_at_once() {
    let upstream = Upstream::start(api);
    let config = plugin(json!({"rls_cluster": "no-such-cluster",
        "breaker": {"consecutive_errors": 2, "open_seconds": 600}}));
    let envoy = Envoy::start(EnvoyOptions {
        skip_xff_append: true,
        ..EnvoyOptions::new(upstream.port(), config)
    });
    for n in 0..4 {
        assert_eq!(fail(&envoy, "192.0.2.50", n).status, 401);
    }
    assert_eq!(envoy.metric("negcache_cluster_errors_total"), 2);
    assert_eq!(envoy.metric("negcache_cluster_skipped_total"), 2);
    assert_eq!(envoy.metric("negcache_ratelimit_failures_total"), 4);
}

fn main() {
    let args = Arguments::from_args();
    let services: Needs<PathBuf> = redis_available().and_then(|()| limitador_bin());
    type WithLimitador = fn(PathBuf);
    let with_limitador: [(&str, WithLimitador); 5] = [
        (
            "the_fleet_bound_holds_across_two_envoys_and_local_mode_exceeds_it",
            the_fleet_bound_holds_across_two_envoys_and_local_mode_exceeds_it,
        ),
        (
            "two_limitadors_over_one_redis_keep_the_bound",
            two_limitadors_over_one_redis_keep_the_bound,
        ),
        (
            "a_dead_limitador_opens_the_breaker_and_closes_it_when_back",
            a_dead_limitador_opens_the_breaker_and_closes_it_when_back,
        ),
        (
            "a_frozen_limitador_holds_the_failure_then_costs_nothing_once_the_breaker_is_open",
            a_frozen_limitador_holds_the_failure_then_costs_nothing_once_the_breaker_is_open,
        ),
        ("redis_killed_and_restarted", redis_killed_and_restarted),
    ];
    let mut trials: Vec<Trial> = with_limitador
        .into_iter()
        .map(|(name, body)| needing(name, &services, body))
        .collect();
    trials.push(plain(
        "held_responses_reach_the_client_whole_whatever_their_size",
        held_responses_reach_the_client_whole_whatever_their_size,
    ));
    trials.push(plain(
        "a_cluster_envoy_does_not_know_fails_every_call_at_once",
        a_cluster_envoy_does_not_know_fails_every_call_at_once,
    ));
    libtest_mimic::run(&args, trials).exit();
}
