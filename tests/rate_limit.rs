#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The failure rate limit in a real Envoy (`--concurrency 2`). The test client's peer,
//! 127.0.0.1, is a trusted proxy, and each simulated client is named by `X-Forwarded-For`
//! (`skip_xff_append`: for a loopback peer Envoy would append its own host address).

mod common;

use std::sync::{Arc, Barrier};
use std::thread::sleep;
use std::time::Duration;

use common::{ClientResponse, Envoy, EnvoyOptions, Request, Response, Upstream};
use serde_json::{json, Value};

fn api(req: &Request) -> Response {
    if req.header("authorization") == Some("Bearer good") {
        return Response::ok().json(r#"{"user":"good"}"#);
    }
    if req.path_only() == "/slow" {
        return Response::new(401)
            .json("{}")
            .delay(Duration::from_millis(400));
    }
    Response::new(401)
        .header("www-authenticate", "Bearer")
        .json(r#"{"error":"invalid token"}"#)
}

/// The limiter alone (the cache would answer repeated identical failures itself), with the
/// loopback test peer trusted; `extra` is merged into `rate_limit`.
fn limiter(extra: Value) -> Value {
    let mut rate_limit = json!({"max_failures": 3, "window_seconds": 60, "block_seconds": 300});
    for (key, value) in extra.as_object().unwrap() {
        rate_limit[key] = value.clone();
    }
    json!({
        "client_ip": {"trusted_proxies": ["127.0.0.1/32", "::1/128"]},
        "negative_cache": {"enabled": false},
        "rate_limit": rate_limit
    })
}

fn options(upstream: &Upstream, config: Value) -> EnvoyOptions {
    EnvoyOptions {
        skip_xff_append: true,
        ..EnvoyOptions::new(upstream.port(), config)
    }
}

fn start(config: Value) -> (Upstream, Envoy) {
    let upstream = Upstream::start(api);
    let envoy = Envoy::start(options(&upstream, config));
    (upstream, envoy)
}

fn from(envoy: &Envoy, client: &str, token: &str) -> ClientResponse {
    let auth = format!("Bearer {token}");
    envoy.get(
        "/api/me",
        &[("authorization", &auth), ("x-forwarded-for", client)],
    )
}

fn retry_after(response: &ClientResponse) -> u64 {
    response.header("retry-after").unwrap().parse().unwrap()
}

#[test]
fn the_block_starts_exactly_at_failure_max_plus_one_across_both_workers() {
    let (upstream, envoy) = start(limiter(json!({"max_failures": 20})));
    for n in 0..21 {
        let reply = from(&envoy, "198.51.100.7", &format!("bad-{n}"));
        assert_eq!(reply.status, 401, "failure {n} reaches the upstream");
    }
    let blocked = from(&envoy, "198.51.100.7", "bad-21");
    assert_eq!(blocked.status, 429);
    assert_eq!(blocked.header("content-type"), Some("application/json"));
    let seconds = retry_after(&blocked);
    assert!((299..=300).contains(&seconds), "retry-after {seconds}");
    assert_eq!(blocked.json()["retry_after"], seconds);
    assert!(blocked.json()["error"].is_string());
    // Even the good token: the client is blocked, not the credential.
    assert_eq!(from(&envoy, "198.51.100.7", "good").status, 429);
    upstream.assert_count(21);
    let (w0, w1) = envoy.worker_connections();
    assert!(w0 > 0 && w1 > 0, "both workers counted: {w0} / {w1}");
    envoy.wait_metric("negcache_ratelimit_failures_total", 21);
    assert_eq!(envoy.metric("negcache_ratelimit_blocks_total"), 1);
    assert_eq!(envoy.metric("negcache_ratelimit_rejected_total"), 2);
    let last = envoy.access_entry(23);
    assert_eq!(last.decision.as_deref(), Some("blocked"));
    assert_eq!(last.client.as_deref(), Some("198.51.100.7"));
}

#[test]
fn other_clients_and_exempt_cidrs_are_unaffected() {
    let (upstream, envoy) = start(limiter(
        json!({"max_failures": 1, "exempt_cidrs": ["203.0.113.0/24"]}),
    ));
    for n in 0..2 {
        from(&envoy, "198.51.100.7", &format!("x{n}"));
    }
    assert_eq!(from(&envoy, "198.51.100.7", "x").status, 429);
    assert_eq!(from(&envoy, "198.51.100.8", "good").status, 200);
    assert_eq!(from(&envoy, "198.51.100.8", "bad").status, 401);
    for n in 0..10 {
        assert_eq!(
            from(&envoy, "203.0.113.9", &format!("y{n}")).status,
            401,
            "exempt"
        );
    }
    upstream.assert_count(14);
}

#[test]
fn anonymous_failures_are_not_counted_by_default() {
    let (upstream, envoy) = start(limiter(json!({"max_failures": 1})));
    for _ in 0..6 {
        let reply = envoy.get("/api/me", &[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(reply.status, 401);
    }
    upstream.assert_count(6);
    assert_eq!(envoy.metric("negcache_ratelimit_failures_total"), 0);

    let (_upstream2, counting) =
        start(limiter(json!({"max_failures": 1, "count_anonymous": true})));
    for _ in 0..2 {
        counting.get("/api/me", &[("x-forwarded-for", "198.51.100.7")]);
    }
    assert_eq!(
        counting
            .get("/api/me", &[("x-forwarded-for", "198.51.100.7")])
            .status,
        429
    );
}

#[test]
fn only_configured_statuses_are_failures() {
    fn forbidden(_: &Request) -> Response {
        Response::new(403).json("{}")
    }
    let upstream = Upstream::start(forbidden);
    let envoy = Envoy::start(EnvoyOptions::new(
        upstream.port(),
        limiter(json!({"max_failures": 1})),
    ));
    for n in 0..5 {
        assert_eq!(from(&envoy, "198.51.100.7", &format!("t{n}")).status, 403);
    }
    let opted_in = Envoy::start(options(
        &upstream,
        limiter(json!({"max_failures": 1, "failure_statuses": [401, 403]})),
    ));
    for n in 0..2 {
        from(&opted_in, "198.51.100.7", &format!("t{n}"));
    }
    assert_eq!(from(&opted_in, "198.51.100.7", "t").status, 429);
}

#[test]
fn the_block_ends_on_time_and_blocked_retries_do_not_extend_it() {
    let (upstream, envoy) = start(limiter(
        json!({"max_failures": 1, "block_seconds": 2, "escalation": null}),
    ));
    from(&envoy, "198.51.100.7", "a");
    from(&envoy, "198.51.100.7", "b");
    let first = from(&envoy, "198.51.100.7", "c");
    assert_eq!(first.status, 429);
    assert!(retry_after(&first) <= 2);
    // Hammering while blocked changes nothing.
    for _ in 0..8 {
        sleep(Duration::from_millis(150));
        let reply = from(&envoy, "198.51.100.7", "d");
        if reply.status == 429 {
            assert!(retry_after(&reply) <= 2);
        }
    }
    sleep(Duration::from_millis(2_100));
    assert_eq!(
        from(&envoy, "198.51.100.7", "good").status,
        200,
        "the block is over"
    );
    assert!(upstream.count() >= 3);
}

#[test]
fn escalation_doubles_a_repeat_block() {
    let config = limiter(json!({"max_failures": 0, "block_seconds": 1,
        "escalation": {"factor": 2, "max_block_seconds": 600}}));
    let (_upstream, envoy) = start(config);
    from(&envoy, "198.51.100.7", "a");
    let first = from(&envoy, "198.51.100.7", "b");
    assert_eq!((first.status, retry_after(&first)), (429, 1));
    sleep(Duration::from_millis(1_200));
    assert_eq!(from(&envoy, "198.51.100.7", "c").status, 401, "block over");
    let second = from(&envoy, "198.51.100.7", "d");
    assert_eq!(second.status, 429);
    assert_eq!(
        retry_after(&second),
        2,
        "the second block lasts twice the first"
    );
}

#[test]
fn a_parallel_burst_after_a_first_failure_is_bounded() {
    let (upstream, envoy) = start(limiter(json!({"max_failures": 3})));
    from(&envoy, "198.51.100.7", "first");
    let envoy = Arc::new(envoy);
    let barrier = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|n| {
            let envoy = Arc::clone(&envoy);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let auth = format!("Bearer burst-{n}");
                envoy.get(
                    "/slow",
                    &[
                        ("authorization", &auth),
                        ("x-forwarded-for", "198.51.100.7"),
                    ],
                )
            })
        })
        .collect();
    let replies: Vec<ClientResponse> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let passed = replies.iter().filter(|r| r.status == 401).count();
    let refused: Vec<&ClientResponse> = replies.iter().filter(|r| r.status == 429).collect();
    // One failure in the window: at most max_failures + 1 - 1 = 3 may be in flight.
    assert!(passed <= 3, "{passed} reached the upstream");
    assert_eq!(passed + refused.len(), 16);
    assert!(refused.iter().all(|r| retry_after(r) >= 1));
    assert!(upstream.count_where(|r| r.path_only() == "/slow") <= 3);
}

#[test]
fn shadow_mode_counts_but_never_answers() {
    let (upstream, envoy) = start(limiter(json!({"max_failures": 1, "shadow": true})));
    for n in 0..6 {
        assert_eq!(from(&envoy, "198.51.100.7", &format!("s{n}")).status, 401);
    }
    upstream.assert_count(6);
    envoy.wait_metric("negcache_ratelimit_shadow_rejected_total", 4);
    assert_eq!(envoy.metric("negcache_ratelimit_rejected_total"), 0);
    assert!(envoy.metric("negcache_ratelimit_blocks_total") >= 1);
}

#[test]
fn ratelimit_headers_describe_the_policy() {
    let (_upstream, envoy) = start(limiter(
        json!({"max_failures": 2, "window_seconds": 30, "ratelimit_headers": true}),
    ));
    for n in 0..3 {
        from(&envoy, "198.51.100.7", &format!("h{n}"));
    }
    let blocked = from(&envoy, "198.51.100.7", "h");
    assert_eq!(blocked.status, 429);
    assert_eq!(
        blocked.header("ratelimit-policy"),
        Some("\"auth-failures\";q=2;w=30")
    );
    let expected = format!("\"auth-failures\";r=0;t={}", retry_after(&blocked));
    assert_eq!(blocked.header("ratelimit"), Some(expected.as_str()));
}

#[test]
fn replayed_cache_hits_count_as_failures() {
    let mut config = limiter(json!({"max_failures": 3}));
    config["negative_cache"] = json!({"enabled": true});
    let (upstream, envoy) = start(config);
    for _ in 0..4 {
        assert_eq!(from(&envoy, "198.51.100.7", "dead-token").status, 401);
    }
    assert_eq!(upstream.count(), 1, "three of them were cache hits");
    assert_eq!(from(&envoy, "198.51.100.7", "dead-token").status, 429);
}

#[test]
fn the_cache_off_leaves_the_limiter_working() {
    // `limiter` turns the cache off: every failure above reached the upstream and was counted.
    let (upstream, envoy) = start(limiter(json!({"max_failures": 2})));
    for _ in 0..3 {
        from(&envoy, "198.51.100.7", "same-token");
    }
    upstream.assert_count(3);
    assert_eq!(from(&envoy, "198.51.100.7", "same-token").status, 429);
}

#[test]
fn preflights_pass_even_from_a_blocked_client() {
    let (upstream, envoy) = start(limiter(json!({"max_failures": 0})));
    from(&envoy, "198.51.100.7", "x");
    assert_eq!(from(&envoy, "198.51.100.7", "x").status, 429);
    let preflight = envoy.request(
        "OPTIONS",
        "/api/me",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "GET"),
            ("x-forwarded-for", "198.51.100.7"),
        ],
    );
    assert_eq!(
        preflight.status, 401,
        "answered by the upstream, not by the limiter"
    );
    assert_eq!(upstream.count_where(|r| r.method == "OPTIONS"), 1);
    // An OPTIONS that carries a credential is an ordinary request.
    let with_credential = envoy.request(
        "OPTIONS",
        "/api/me",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "GET"),
            ("authorization", "Bearer x"),
            ("x-forwarded-for", "198.51.100.7"),
        ],
    );
    assert_eq!(with_credential.status, 429);
}

#[test]
fn changing_the_epoch_unblocks_everyone() {
    let upstream = Upstream::start(api);
    let envoy = Envoy::start(EnvoyOptions {
        dynamic_listener: true,
        ..options(&upstream, limiter(json!({"max_failures": 0})))
    });
    from(&envoy, "198.51.100.7", "a");
    from(&envoy, "198.51.100.8", "b");
    assert_eq!(from(&envoy, "198.51.100.7", "good").status, 429);
    assert_eq!(from(&envoy, "198.51.100.8", "good").status, 429);
    envoy.reconfigure(limiter(json!({"max_failures": 0, "epoch": 1})));
    assert_eq!(from(&envoy, "198.51.100.7", "good").status, 200);
    assert_eq!(from(&envoy, "198.51.100.8", "good").status, 200);
}
