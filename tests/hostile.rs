#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Requests and upstream answers an attacker (or a broken peer) sends, in a real Envoy: each
//! gets an answer, Envoy keeps serving, the filter reports no error the input did not justify,
//! and none of them is a way around a block or a way to block someone else.

mod common;

use std::time::Duration;

use common::{ClientResponse, Envoy, EnvoyOptions, Request, Response, Upstream};
use serde_json::{json, Value};

/// `Bearer good` gets 200; `/signup` answers 200 and purges the credential its `x-purge` names;
/// `/throttled` answers 429 with the `Retry-After` its `x-retry-after` asks for; anything else
/// without the good token gets 401.
fn api(req: &Request) -> Response {
    if req.path_only() == "/signup" {
        let mut response = Response::ok().json("{}");
        if let Some(credential) = req.header("x-purge") {
            response = response.header("x-negcache-purge", credential);
        }
        return response;
    }
    if req.path_only() == "/throttled" {
        let retry_after = req.header("x-retry-after").unwrap_or("1");
        return Response::new(429)
            .header("retry-after", retry_after)
            .json(r#"{"error":"slow down"}"#);
    }
    common::api(req)
}

fn start(config: Value) -> (Upstream, Envoy) {
    common::start(api, config)
}

/// Envoy still answers a plain request, and the filter counted no error.
fn assert_still_serving(envoy: &Envoy) {
    let good = envoy.get("/api/me", &[("authorization", "Bearer good")]);
    assert_eq!(good.status, 200, "{good:?}");
    assert_eq!(envoy.metric("negcache_errors_total"), 0);
}

/// A client blocked behind an Envoy with `connection_manager` settings merged into the harness's,
/// then trying `sneaky` paths under the exempt `/healthz`: each one is refused and none reaches
/// the upstream.
fn assert_no_way_around_a_block(connection_manager: Value, sneaky: &[&str]) {
    let upstream = Upstream::start(api);
    let envoy = Envoy::start(EnvoyOptions {
        connection_manager_extra: connection_manager,
        ..EnvoyOptions::new(
            upstream.port(),
            json!({
                "exempt_paths": ["/healthz"],
                "negative_cache": {"enabled": false},
                "rate_limit": {"max_failures": 1}
            }),
        )
    });
    let bad = [("authorization", "Bearer stolen")];
    assert_eq!(envoy.get("/login", &bad).status, 401);
    assert_eq!(envoy.get("/login", &bad).status, 401);
    assert_eq!(
        envoy.get("/login", &bad).status,
        429,
        "the second failure blocks"
    );

    // The exempt path itself still works for the blocked client.
    assert_eq!(envoy.get("/healthz/live", &bad).status, 401);
    let before = upstream.count();
    for path in sneaky {
        let answer = envoy.get(path, &bad);
        assert_eq!(answer.status, 429, "{path}: {answer:?}");
    }
    assert_eq!(
        upstream.count(),
        before,
        "no sneaky path reached the upstream"
    );
}

#[test]
fn an_escaped_separator_in_an_exempt_path_is_no_way_around_a_block() {
    // normalize_path and merge_slashes on (the harness's), path_with_escaped_slashes_action at
    // Envoy's default (KEEP_UNCHANGED): %2F reaches the filter and the upstream as sent.
    assert_no_way_around_a_block(
        json!({}),
        &[
            "/healthz/..%2Flogin",
            "/healthz/..%2flogin",
            "/healthz/..%5Clogin",
            "/healthz/%2E%2E%2Flogin",
            "/healthz/..%252Flogin",
            "/healthz/..%3B/login",
            "/healthz;a=b/../login",
        ],
    );
}

#[test]
fn an_exempt_path_is_no_way_around_a_block_with_envoys_path_defaults() {
    // normalize_path and merge_slashes off (Envoy's defaults): dot segments and empty segments
    // reach the filter as sent; an upstream that merges slashes first reads `//../` differently.
    assert_no_way_around_a_block(
        json!({"normalize_path": false, "merge_slashes": false}),
        &[
            "/healthz/../login",
            "/healthz//../login",
            "/healthz/x//../../login",
            "/healthz/..%2Flogin",
            "/healthz/%2e%2e/login",
        ],
    );
}

#[test]
fn a_purge_clears_a_credential_whatever_the_case_of_its_scheme() {
    let (upstream, envoy) = start(json!({"rate_limit": {"enabled": false}}));
    let lower = [("authorization", "bearer fresh-signup")];
    envoy.miss_then_hit("/api/me", &lower);
    let signup = envoy.get("/signup", &[("x-purge", "Bearer   fresh-signup")]);
    assert_eq!(signup.status, 200);
    assert_eq!(
        signup.header("x-negcache-purge"),
        None,
        "never reaches the client"
    );
    assert_eq!(envoy.metric("negcache_purges_total"), 1);
    let count = upstream.count();
    let after = envoy.get("/api/me", &lower);
    assert_eq!(after.negcache(), None, "{after:?}");
    assert_eq!(
        upstream.count(),
        count + 1,
        "the purged credential reaches the upstream"
    );
}

#[test]
fn a_victims_key_behind_an_ambiguous_first_source_is_never_cached() {
    // The upstream reads `authorization` first and `x-api-key` only without it, as many do.
    let upstream = Upstream::start(|req: &Request| {
        match (req.header("authorization"), req.header("x-api-key")) {
            (None, Some("victim-key")) => Response::ok().json(r#"{"user":"victim"}"#),
            _ => Response::new(401).json(r#"{"error":"invalid token"}"#),
        }
    });
    let envoy = Envoy::start(EnvoyOptions::new(
        upstream.port(),
        json!({"rate_limit": {"enabled": false}}),
    ));
    const ATTACK: &[u8] = b"GET /api/me HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer x\r\n\
          authorization: Bearer y\r\nx-api-key: victim-key\r\nconnection: close\r\n\r\n";
    let attack = envoy.request_raw(ATTACK);
    assert_eq!(attack.status, 401);
    // Envoy joins the two `authorization` lines into one value (`Bearer x,Bearer y`) before
    // any filter runs: that value is the credential, an entry of its own, never the victim's.
    let again = envoy.request_raw(ATTACK);
    assert_eq!(again.negcache(), Some("hit"));
    let blank = envoy.get(
        "/api/me",
        &[("authorization", ""), ("x-api-key", "victim-key")],
    );
    assert_eq!(blank.status, 401);
    for _ in 0..2 {
        let victim = envoy.get("/api/me", &[("x-api-key", "victim-key")]);
        assert_eq!(victim.status, 200, "{victim:?}");
    }
    assert_eq!(upstream.count(), 4);
}

#[test]
fn hostile_retry_after_dates_are_refused_and_never_replayed_past_the_entry() {
    let (_upstream, envoy) = start(json!({"rate_limit": {"enabled": false}}));
    for (n, retry_after) in [
        "Sun, 06 Nov 1994 -9223372036854775808:00:00 GMT",
        "Sun, 06 Nov 1994 -5:00:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "99999999999999999999999999",
    ]
    .into_iter()
    .enumerate()
    {
        let token = format!("Bearer throttled-{n}");
        let headers = [
            ("authorization", token.as_str()),
            ("x-retry-after", retry_after),
        ];
        let (_, hit) = envoy.miss_then_hit("/throttled", &headers);
        assert_eq!(hit.status, 429);
        if let Some(seconds) = hit.header("retry-after") {
            let seconds: u64 = seconds.parse().unwrap();
            assert!((1..=10).contains(&seconds), "{retry_after}: {seconds}");
        }
    }
    assert_still_serving(&envoy);
}

#[test]
fn credentials_of_every_size_get_an_answer() {
    let upstream = Upstream::start(api);
    let envoy = Envoy::start(EnvoyOptions {
        // Envoy's default limit (60 KiB) would answer 431 before the filter runs.
        connection_manager_extra: json!({"max_request_headers_kb": 96}),
        ..EnvoyOptions::new(upstream.port(), json!({"rate_limit": {"enabled": false}}))
    });
    for size in [0, 1, 59 * 1024, 80 * 1024] {
        let token = "t".repeat(size);
        let headers = [("authorization", token.as_str())];
        let first = envoy.get("/api/me", &headers);
        assert_eq!(first.status, 401, "{size} B");
        let second = envoy.get("/api/me", &headers);
        assert_eq!(second.status, 401, "{size} B");
        // An empty value is no credential: never cached. Any other is.
        let expected = (size > 0).then_some("hit");
        assert_eq!(second.negcache(), expected, "{size} B");
    }
    assert_still_serving(&envoy);
}

#[test]
fn raw_bytes_nul_and_long_forwarding_chains_get_an_answer() {
    let upstream = Upstream::start(api);
    let envoy = Envoy::start(EnvoyOptions {
        // The test client is the trusted proxy: Envoy must not append its own address.
        skip_xff_append: true,
        ..EnvoyOptions::new(
            upstream.port(),
            json!({
                "credentials": [{"header": "authorization"}, {"cookie": "session"}],
                "client_ip": {"trusted_proxies": ["127.0.0.1/32"]}
            }),
        )
    });
    let mut high = b"GET /api/\x80\xff HTTP/1.1\r\nhost: localhost\r\n".to_vec();
    high.extend_from_slice(b"authorization: Bearer \x80\x9f\xfe\xff\r\n");
    high.extend_from_slice(b"cookie: a=\xc3\x28; session=\xf0\x90\x80\r\n");
    high.extend_from_slice(b"x-forwarded-for: 198.51.100.\xff, \x80\r\nconnection: close\r\n\r\n");
    let answers: Vec<ClientResponse> = vec![
        envoy.request_raw(&high),
        envoy.request_raw(
            b"GET /api/me HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer \x80\xff\r\n\
              cookie: session=\xfe\r\nconnection: close\r\n\r\n",
        ),
        envoy.request_raw(
            b"GET /api/%00me HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        ),
        envoy.request_raw(
            b"GET /api/me?k=%00 HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer %00\r\n\
              connection: close\r\n\r\n",
        ),
    ];
    for answer in &answers {
        assert!(
            answer.status == 400 || answer.status == 401,
            "an answer, from Envoy's codec or the upstream: {answer:?}"
        );
    }
    // 200 entries in 50 header lines from a trusted peer: only the rightmost 64 are read.
    let lines: Vec<String> = (0..50)
        .map(|line| {
            (0..4)
                .map(|entry| format!("203.0.113.{}", (line * 4 + entry) % 250))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    let mut headers: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| ("x-forwarded-for", l.as_str()))
        .collect();
    headers.push(("authorization", "Bearer long-chain"));
    let answer = envoy.get("/api/me", &headers);
    assert_eq!(answer.status, 401);
    common::wait_until("the long chain's access log line", common::WAIT, || {
        envoy
            .access_log_entries()
            .iter()
            .any(|entry| entry.client.as_deref() == Some("203.0.113.199"))
    });
    assert_still_serving(&envoy);
}

#[test]
fn an_upstream_that_is_down_slow_or_failing_is_never_cached_or_counted() {
    // A 503 from the upstream, a refused connection, and a route timeout (Envoy's 504).
    let upstream = Upstream::start(|req: &Request| match req.path_only() {
        "/slow" => Response::new(401).delay(Duration::from_secs(3)),
        _ => Response::new(503).json(r#"{"error":"down"}"#),
    });
    let refused_port = common::free_port();
    let routes = json!([
        {"match": {"prefix": "/refused"}, "route": {"cluster": "refused"}},
        {"match": {"prefix": "/slow"}, "route": {"cluster": "upstream", "timeout": "0.3s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}
    ]);
    let envoy = Envoy::start(EnvoyOptions {
        virtual_host_extra: json!({"routes": routes}),
        extra_clusters: vec![json!({
            "name": "refused",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "refused", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": refused_port
                }}}}
            ]}]}
        })],
        ..EnvoyOptions::new(
            upstream.port(),
            json!({"rate_limit": {"max_failures": 0, "failure_statuses": [401, 403]}}),
        )
    });
    let token = [("authorization", "Bearer unlucky")];
    for (path, status) in [("/down", 503), ("/refused", 503), ("/slow", 504)] {
        for _ in 0..3 {
            let answer = envoy.get(path, &token);
            assert_eq!(answer.status, status, "{path}: {answer:?}");
            assert_eq!(answer.negcache(), None, "{path}");
        }
    }
    assert_eq!(envoy.metric("negcache_stores_total"), 0);
    assert_eq!(envoy.metric_now("negcache_ratelimit_failures_total"), 0);
    assert_eq!(envoy.metric_now("negcache_ratelimit_blocks_total"), 0);
    assert_eq!(envoy.metric_now("negcache_errors_total"), 0);
}
