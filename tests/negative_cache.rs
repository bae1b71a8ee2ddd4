#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The negative cache in a real Envoy (`--concurrency 2`): what a client sees, and what reaches
//! the upstream. Every request uses a fresh connection, so requests spread over both workers.

mod common;

use std::thread::sleep;
use std::time::Duration;

use common::{Envoy, EnvoyOptions, Request, Response, Upstream};
use serde_json::{json, Value};

/// An upstream that behaves like a small authenticated API: `Bearer good` (or `x-api-key: good`,
/// cookie, query, path segment `good`) gets 200; anything else 401 with a JSON body and a
/// challenge; paths and headers let a test ask for other answers.
fn api(req: &Request) -> Response {
    let presented = [
        req.header("authorization")
            .map(|v| v.trim_start_matches("Bearer ").to_string()),
        req.header("x-api-key").map(str::to_string),
    ];
    if presented.iter().flatten().any(|t| t == "good") {
        return Response::ok().json(r#"{"user":"good"}"#);
    }
    Response::new(401)
        .header(
            "www-authenticate",
            "Bearer realm=\"api\", error=\"invalid_token\"",
        )
        .json(r#"{"error":"invalid token"}"#)
}

/// These tests send many failing requests from one client: the failure rate limit, tested in
/// `rate_limit.rs`, is off here so it does not answer them first.
fn cache_only(mut config: Value) -> Value {
    config["rate_limit"] = json!({"enabled": false});
    config
}

fn start(config: Value, handler: fn(&Request) -> Response) -> (Upstream, Envoy) {
    let upstream = Upstream::start(handler);
    let envoy = Envoy::start(EnvoyOptions::new(upstream.port(), cache_only(config)));
    (upstream, envoy)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn a_401_is_replayed_identically_without_reaching_the_upstream() {
    let (upstream, envoy) = start(json!({}), api);
    let auth = bearer("wrong-token-1");
    let first = envoy.get("/api/me", &[("authorization", &auth)]);
    assert_eq!(first.status, 401);
    assert_eq!(first.negcache(), None);

    for _ in 0..5 {
        let hit = envoy.get("/api/me", &[("authorization", &auth)]);
        assert_eq!(hit.status, 401);
        assert_eq!(hit.body, first.body);
        assert_eq!(hit.header("content-type"), first.header("content-type"));
        assert_eq!(
            hit.header("www-authenticate"),
            first.header("www-authenticate")
        );
        assert_eq!(hit.negcache(), Some("hit"));
        let age: u64 = hit.header("age").unwrap().parse().unwrap();
        assert!(age <= 60);
        assert_eq!(hit.header_all("www-authenticate").len(), 1);
    }
    assert_eq!(upstream.count(), 1, "hits never reach the upstream");
    envoy.wait_metric("negcache_hits_total", 5);
    assert_eq!(envoy.metric("negcache_stores_total"), 1);
    assert_eq!(envoy.metric("negcache_errors_total"), 0);

    assert_eq!(envoy.count_decisions(6, "stored"), 1);
    assert_eq!(envoy.count_decisions(6, "hit"), 5);
    assert!(!envoy.log().contains("wrong-token-1"));
}

#[test]
fn entries_expire_after_their_ttl_and_hits_do_not_extend_it() {
    let config = json!({"negative_cache": {"statuses": {"401": {"ttl_seconds": 2}}}});
    let (upstream, envoy) = start(config, api);
    let auth = bearer("short-lived");
    let (miss, _) = envoy.miss_then_hit("/", &[("authorization", &auth)]);
    assert_eq!(miss.status, 401);
    upstream.assert_count(1);
    // Hits every half second for longer than the TTL: they must not keep the entry alive.
    for _ in 0..6 {
        sleep(Duration::from_millis(500));
        envoy.get("/", &[("authorization", &auth)]);
    }
    assert!(
        upstream.count() >= 2,
        "the entry expired and was asked again"
    );
}

#[test]
fn success_and_uncached_statuses_are_never_stored() {
    fn by_path(req: &Request) -> Response {
        let status = req
            .path_only()
            .trim_start_matches('/')
            .parse()
            .unwrap_or(200);
        Response::new(status).json(r#"{"x":1}"#)
    }
    let (upstream, envoy) = start(json!({}), by_path);
    for status in [200u16, 204, 302, 404, 500, 503] {
        for _ in 0..2 {
            let reply = envoy.get(&format!("/{status}"), &[("authorization", "Bearer t")]);
            assert_eq!(reply.status, status);
            assert_eq!(reply.negcache(), None);
        }
    }
    upstream.assert_count(12);
    assert_eq!(envoy.metric("negcache_stores_total"), 0);
}

#[test]
fn a_403_is_keyed_by_method_and_path() {
    fn forbidden(_: &Request) -> Response {
        Response::new(403).json(r#"{"error":"forbidden"}"#)
    }
    let (upstream, envoy) = start(json!({}), forbidden);
    let auth = bearer("reader");
    envoy.get("/admin", &[("authorization", &auth)]);
    let hit = envoy.get("/admin?page=2", &[("authorization", &auth)]);
    assert_eq!((hit.status, hit.negcache()), (403, Some("hit")));
    upstream.assert_count(1);

    let other_path = envoy.get("/public", &[("authorization", &auth)]);
    assert_eq!(other_path.negcache(), None);
    let other_method = envoy.request("POST", "/admin", &[("authorization", &auth)]);
    assert_eq!(other_method.negcache(), None);
    upstream.assert_count(3);
}

#[test]
fn a_429_lives_no_longer_than_retry_after_which_counts_down() {
    fn throttled(req: &Request) -> Response {
        let retry_after = if req.path_only() == "/date" {
            "Thu, 01 Jan 2099 00:00:00 GMT"
        } else {
            "3"
        };
        Response::new(429)
            .header("retry-after", retry_after)
            .json(r#"{"error":"slow down"}"#)
    }
    let (upstream, envoy) = start(json!({}), throttled);
    let auth = bearer("busy");
    let (first, hit) = envoy.miss_then_hit("/", &[("authorization", &auth)]);
    assert_eq!(first.header("retry-after"), Some("3"));
    let left: u64 = hit.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&left), "retry-after {left}");
    upstream.assert_count(1);

    sleep(Duration::from_millis(1_600));
    let later = envoy.get("/", &[("authorization", &auth)]);
    if later.negcache() == Some("hit") {
        let now_left: u64 = later.header("retry-after").unwrap().parse().unwrap();
        assert!(now_left < left.max(2), "{now_left} after {left}");
        assert!(now_left >= 1);
    }
    // The 10 s TTL is cut to the upstream's 3 s.
    sleep(Duration::from_millis(2_000));
    let after_reset = envoy.get("/", &[("authorization", &auth)]);
    assert_eq!(after_reset.negcache(), None);

    // An HTTP-date far away: the entry lives its 10 s TTL, and the replay never points past
    // the entry's end (from then on the upstream answers again).
    let (_, dated) = envoy.miss_then_hit("/date", &[("authorization", &bearer("dated"))]);
    let seconds: u64 = dated.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&seconds), "{seconds}");
}

#[test]
fn a_429_is_keyed_by_client_ip_by_default() {
    fn throttled(_: &Request) -> Response {
        Response::new(429).header("retry-after", "30").json("{}")
    }
    let upstream = Upstream::start(throttled);
    // Under Envoy's default (`use_remote_address: false`) the filter's source address comes
    // from X-Forwarded-For, which lets this test play two clients.
    let envoy = Envoy::start(EnvoyOptions {
        use_remote_address: false,
        ..EnvoyOptions::new(upstream.port(), cache_only(json!({})))
    });
    let auth = bearer("shared-token");
    envoy.miss_then_hit(
        "/",
        &[("authorization", &auth), ("x-forwarded-for", "192.0.2.1")],
    );
    let other = envoy.get(
        "/",
        &[("authorization", &auth), ("x-forwarded-for", "192.0.2.2")],
    );
    assert_eq!(other.negcache(), None, "another caller is not locked out");
    upstream.assert_count(2);
}

#[test]
fn an_inactive_credential_is_kept_for_the_inactive_ttl_and_the_marker_is_stripped() {
    fn inactive(req: &Request) -> Response {
        let marked = req.header("authorization") == Some("Bearer retired");
        let response = Response::new(403).json(r#"{"error":"account inactive"}"#);
        if marked {
            response.header("x-negcache-inactive", "1")
        } else {
            response
        }
    }
    let config = json!({"negative_cache": {
        "statuses": {"403": {"ttl_seconds": 1, "key": ["identity", "method", "path"]}},
        "inactive": {"header": "x-negcache-inactive", "ttl_seconds": 3600}
    }});
    let (upstream, envoy) = start(config, inactive);
    let first = envoy.get("/a", &[("authorization", "Bearer retired")]);
    assert_eq!(first.status, 403);
    assert_eq!(
        first.header("x-negcache-inactive"),
        None,
        "the marker never reaches the client"
    );
    // Keyed by identity alone: another path is a hit too.
    let hit = envoy.get("/b", &[("authorization", "Bearer retired")]);
    assert_eq!(hit.negcache(), Some("hit"));
    assert_eq!(hit.header("x-negcache-inactive"), None);

    envoy.get("/a", &[("authorization", "Bearer plain")]);
    sleep(Duration::from_millis(1_500));
    // The plain 403 expired after its 1 s; the inactive entry lives on.
    assert_eq!(
        envoy
            .get("/a", &[("authorization", "Bearer plain")])
            .negcache(),
        None
    );
    assert_eq!(
        envoy
            .get("/c", &[("authorization", "Bearer retired")])
            .negcache(),
        Some("hit")
    );
    upstream.assert_count(3);
}

#[test]
fn every_credential_source_identifies_the_caller() {
    let config = json!({"credentials": [
        {"header": "authorization"}, {"header": "x-api-key"},
        {"cookie": "sessionid"}, {"query": "api_key"}, {"path_segment": 0}
    ]});
    let (upstream, envoy) = start(config, api);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/x", vec![("authorization", "Bearer bad-a")]),
        ("/x", vec![("x-api-key", "bad-k")]),
        ("/x", vec![("cookie", "theme=dark; sessionid=bad-s")]),
        ("/x?api_key=bad-q&page=1", vec![]),
        ("/bad-p/manifest.json", vec![]),
    ];
    for (path, headers) in &cases {
        let before = upstream.count();
        envoy.miss_then_hit(path, headers);
        assert_eq!(upstream.count(), before + 1, "{path}");
    }
    // Another value in the same source is another identity.
    assert_eq!(
        envoy.get("/x", &[("cookie", "sessionid=other")]).negcache(),
        None
    );
    assert_eq!(envoy.get("/x?api_key=other", &[]).negcache(), None);
    assert_eq!(envoy.get("/other/manifest.json", &[]).negcache(), None);
    // A query credential in another parameter order is the same credential.
    assert_eq!(
        envoy.get("/x?page=1&api_key=bad-q", &[]).negcache(),
        Some("hit")
    );
}

#[test]
fn tokens_and_virtual_hosts_are_independent() {
    let (upstream, envoy) = start(json!({}), api);
    envoy.miss_then_hit(
        "/",
        &[("authorization", "Bearer one"), ("host", "a.example")],
    );
    assert_eq!(
        envoy
            .get(
                "/",
                &[("authorization", "Bearer two"), ("host", "a.example")]
            )
            .negcache(),
        None
    );
    assert_eq!(
        envoy
            .get(
                "/",
                &[("authorization", "Bearer one"), ("host", "b.example")]
            )
            .negcache(),
        None
    );
    // The good token is never affected by the bad ones.
    assert_eq!(
        envoy
            .get(
                "/",
                &[("authorization", "Bearer good"), ("host", "a.example")]
            )
            .status,
        200
    );
    upstream.assert_count(4);
}

#[test]
fn anonymous_requests_are_not_cached_by_default() {
    let (upstream, envoy) = start(json!({}), api);
    for _ in 0..3 {
        assert_eq!(envoy.get("/api/me", &[]).negcache(), None);
    }
    // A header on two lines is ambiguous: treated as absent, so not cached either.
    for _ in 0..2 {
        let reply = envoy.request_raw(
            b"GET /api/me HTTP/1.1\r\nhost: x\r\nx-api-key: a\r\nx-api-key: b\r\nconnection: close\r\n\r\n",
        );
        assert_eq!(reply.negcache(), None);
    }
    upstream.assert_count(5);
    assert_eq!(envoy.metric("negcache_stores_total"), 0);
}

#[test]
fn anonymous_caching_keys_on_method_path_and_query() {
    let (upstream, envoy) = start(json!({"negative_cache": {"cache_anonymous": true}}), api);
    envoy.miss_then_hit("/api/me?a=1", &[]);
    assert_eq!(envoy.get("/api/me?a=2", &[]).negcache(), None);
    assert_eq!(envoy.get("/api/other?a=1", &[]).negcache(), None);
    assert_eq!(envoy.request("POST", "/api/me?a=1", &[]).negcache(), None);
    upstream.assert_count(4);
}

#[test]
fn disabled_the_filter_stores_nothing_and_strips_private_headers() {
    fn purging(_: &Request) -> Response {
        Response::new(401)
            .header("x-negcache-purge", "Bearer secret-new-token")
            .header("x-negcache-inactive", "1")
            .json("{}")
    }
    let (upstream, envoy) = start(json!({"negative_cache": {"enabled": false}}), purging);
    for _ in 0..3 {
        let reply = envoy.get("/", &[("authorization", "Bearer x")]);
        assert_eq!(reply.negcache(), None);
        assert_eq!(reply.header("x-negcache-purge"), None);
        assert_eq!(reply.header("x-negcache-inactive"), None);
    }
    upstream.assert_count(3);
    assert_eq!(
        envoy.metric("negcache_misses_total"),
        0,
        "no lookups at all"
    );
}

#[test]
fn shadow_mode_looks_up_and_stores_but_never_answers() {
    let (upstream, envoy) = start(json!({"negative_cache": {"shadow": true}}), api);
    let auth = bearer("shadowed");
    assert_eq!(envoy.get("/", &[("authorization", &auth)]).negcache(), None);
    for _ in 0..3 {
        let reply = envoy.get("/", &[("authorization", &auth)]);
        assert_eq!(reply.status, 401);
        assert_eq!(reply.negcache(), Some("shadow-hit"));
        assert_eq!(reply.header("age"), None, "the upstream answered");
    }
    upstream.assert_count(4);
    envoy.wait_metric("negcache_shadow_hits_total", 3);
    assert_eq!(envoy.metric("negcache_hits_total"), 0);
    assert_eq!(envoy.count_decisions(4, "shadow-hit"), 3);
}

#[test]
fn a_purge_header_clears_the_credential_and_never_reaches_the_client() {
    fn signup(req: &Request) -> Response {
        if req.path_only() == "/signup" {
            return Response::ok()
                .header("x-negcache-purge", "Bearer fresh-token")
                .json(r#"{"ok":true}"#);
        }
        if req.path_only() == "/healthz" {
            return Response::ok()
                .header("x-negcache-purge", "Bearer x")
                .text("ok");
        }
        api(req)
    }
    let config = json!({"exempt_paths": ["/healthz"]});
    let (upstream, envoy) = start(config, signup);
    let auth = bearer("fresh-token");
    envoy.miss_then_hit("/api/me", &[("authorization", &auth)]);
    let signup = envoy.request("POST", "/signup", &[]);
    assert_eq!(signup.status, 200);
    assert_eq!(signup.header("x-negcache-purge"), None);
    envoy.wait_metric("negcache_purges_total", 1);
    let after = envoy.get("/api/me", &[("authorization", &auth)]);
    assert_eq!(after.negcache(), None, "purged: asked the upstream again");
    assert_eq!(upstream.count_where(|r| r.path_only() == "/api/me"), 2);

    // Stripped on exempt paths too.
    assert_eq!(envoy.get("/healthz", &[]).header("x-negcache-purge"), None);
    assert!(!envoy.log().contains("fresh-token"));
}

#[test]
fn exempt_paths_match_whole_normalized_segments() {
    let (upstream, envoy) = start(json!({"exempt_paths": ["/healthz"]}), api);
    let auth = [("authorization", "Bearer probe")];
    for path in ["/healthz", "/healthz/live", "/%68ealthz"] {
        envoy.get(path, &auth);
        assert_eq!(envoy.get(path, &auth).negcache(), None, "{path}");
    }
    upstream.assert_count(6);
    envoy.miss_then_hit("/healthzX", &auth);
    // Not exempt, and (same credential, identity-keyed 401) already cached.
    assert_eq!(
        envoy.get("/healthz/../login", &auth).negcache(),
        Some("hit")
    );
    assert_eq!(envoy.count_decisions(9, "exempt"), 6);
}

#[test]
fn an_entry_stored_through_one_worker_is_served_by_the_other() {
    let (upstream, envoy) = start(json!({}), api);
    let auth = bearer("cross-worker");
    envoy.get("/", &[("authorization", &auth)]);
    for _ in 0..40 {
        let reply = envoy.get("/", &[("authorization", &auth)]);
        assert_eq!(reply.negcache(), Some("hit"));
    }
    let (w0, w1) = envoy.worker_connections();
    assert!(w0 > 0 && w1 > 0, "both workers served: {w0} / {w1}");
    upstream.assert_count(1);
}

#[test]
fn response_bodies_are_kept_whole_or_replaced_by_the_filters_own() {
    fn bodies(req: &Request) -> Response {
        match req.path_only() {
            "/big" => Response::new(401).json(&format!("{{\"pad\":\"{}\"}}", "x".repeat(5000))),
            "/chunked" => Response::new(401)
                .header("content-type", "text/plain")
                .chunked(&["part one, ", "part two, ", "end"]),
            "/gzip" => Response::new(401)
                .header("content-encoding", "gzip")
                .header("content-type", "application/json")
                .body(vec![0x1f, 0x8b, 8, 0]),
            "/cut" => Response::new(401).json("{\"partial\":").truncated(500),
            "/empty" => Response::new(401).header("www-authenticate", "Basic"),
            _ => api(req),
        }
    }
    let (upstream, envoy) = start(json!({}), bodies);
    let own_body = |path: &str, token: &str| {
        let (_, hit) = envoy.miss_then_hit(path, &[("authorization", &bearer(token))]);
        hit
    };

    let big = own_body("/big", "t-big");
    assert_eq!(big.header("content-type"), Some("application/json"));
    assert_eq!(
        big.json()["status"],
        401,
        "filter's own body for an oversized one"
    );
    assert!(big.body.len() < 200);

    let chunked = own_body("/chunked", "t-chunked");
    assert_eq!(chunked.body_str(), "part one, part two, end");
    assert_eq!(chunked.header("content-type"), Some("text/plain"));

    let gzip = own_body("/gzip", "t-gzip");
    assert_eq!(gzip.header("content-encoding"), None);
    assert_eq!(gzip.json()["status"], 401);

    let empty = own_body("/empty", "t-empty");
    assert!(empty.body.is_empty());
    assert_eq!(empty.header("www-authenticate"), Some("Basic"));

    // A stream that ends early: stored, but never its partial body.
    let auth = bearer("t-cut");
    let cut = envoy.get("/cut", &[("authorization", &auth)]);
    assert!(!cut.complete);
    envoy.wait_metric("negcache_stores_total", 5);
    let replay = envoy.get("/cut", &[("authorization", &auth)]);
    assert_eq!(replay.negcache(), Some("hit"));
    assert_eq!(replay.json()["status"], 401);

    // HEAD: the entry is kept without a body.
    let head_auth = bearer("t-head");
    envoy.request("HEAD", "/x", &[("authorization", &head_auth)]);
    let head_hit = envoy.request("HEAD", "/x", &[("authorization", &head_auth)]);
    assert_eq!(head_hit.negcache(), Some("hit"));
    assert!(head_hit.body.is_empty());
    upstream.assert_count(6);
}

#[test]
fn a_full_table_stays_bounded_and_keeps_working() {
    let (upstream, envoy) = start(json!({"negative_cache": {"capacity": 256}}), api);
    let mut connection = envoy.connect();
    for n in 0..5_000 {
        let auth = format!("Bearer flood-{n}");
        let reply = connection.get("/", &[("authorization", &auth)]);
        assert_eq!(reply.status, 401);
    }
    upstream.assert_count(5_000);
    let used = envoy.metric("negcache_slots_used");
    assert!(used > 0 && used <= 256, "slots used {used}");
    assert!(envoy.metric("negcache_evictions_total") > 4_000);
    assert_eq!(envoy.metric("negcache_errors_total"), 0);

    // Still caching: a new entry is a hit right after.
    envoy.miss_then_hit("/", &[("authorization", "Bearer after-flood")]);
    assert!(!envoy.log().contains("flood-"));
}

#[test]
fn hostile_requests_never_break_the_filter() {
    let (upstream, envoy) = start(
        json!({"credentials": [
            {"header": "authorization"}, {"cookie": "sid"}, {"query": "k"}, {"path_segment": 3}
        ]}),
        api,
    );
    let long = "A".repeat(50_000);
    let raw_requests: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer \xff\xfe\x80\r\nconnection: close\r\n\r\n".to_vec(),
        format!("GET / HTTP/1.1\r\nhost: x\r\nauthorization: {long}\r\nconnection: close\r\n\r\n").into_bytes(),
        b"GET /?k=%zz%&k HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
        b"GET /a/b/c/%ff%00/e HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nhost: x\r\ncookie: ;;;=;sid;sid=\r\nconnection: close\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n".to_vec(),
    ];
    for raw in &raw_requests {
        for _ in 0..2 {
            let reply = envoy.request_raw(raw);
            assert!(
                reply.status == 401 || reply.status == 400 || reply.status == 431,
                "{}",
                reply.status
            );
        }
    }
    // The filter is alive (FAIL_CLOSED would answer 503 otherwise) and still caching.
    envoy.miss_then_hit("/", &[("authorization", "Bearer after")]);
    assert!(upstream.count() >= 1);
    assert_eq!(envoy.metric("negcache_errors_total"), 0);
}

#[test]
fn responses_to_requests_the_filter_never_saw_are_left_alone() {
    let upstream = Upstream::start(api);
    // RBAC before negcache denies everything with its own 403.
    let deny_all = json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {}}
        }
    });
    let envoy = Envoy::start(EnvoyOptions {
        extra_http_filters: vec![deny_all],
        ..EnvoyOptions::new(upstream.port(), cache_only(json!({})))
    });
    for _ in 0..3 {
        let reply = envoy.get("/", &[("authorization", "Bearer denied")]);
        assert_eq!(reply.status, 403);
        assert_eq!(reply.negcache(), None);
    }
    upstream.assert_count(0);
    assert_eq!(envoy.metric("negcache_stores_total"), 0);
    assert_eq!(envoy.metric("negcache_errors_total"), 0);
}

#[test]
fn changing_the_epoch_clears_the_cache_without_a_restart() {
    let upstream = Upstream::start(api);
    let envoy = Envoy::start(EnvoyOptions {
        dynamic_listener: true,
        ..EnvoyOptions::new(upstream.port(), cache_only(json!({})))
    });
    let auth = bearer("epoch-token");
    envoy.miss_then_hit("/", &[("authorization", &auth)]);
    envoy.reconfigure(cache_only(json!({"negative_cache": {"epoch": 1}})));
    envoy.miss_then_hit("/", &[("authorization", &auth)]);
    upstream.assert_count(2);
}
