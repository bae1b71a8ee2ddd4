#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! HTTP/2 clients (cleartext, prior knowledge) in a real Envoy: the cache and the limiter work
//! as over HTTP/1.1, and what is particular to HTTP/2 is handled: cookie crumbs, repeated
//! fields, and header names HTTP/2 forbids (refused by Envoy's codec before any filter runs).

mod common;

use common::{curl_get, send_raw_headers, Envoy, Request, Response, StreamAnswer, Upstream};
use serde_json::{json, Value};

/// `Bearer good`, or `x-api-key: good` without `authorization`, get 200; everything else 401.
fn api(req: &Request) -> Response {
    if req.header("authorization").is_none() && req.header("x-api-key") == Some("good") {
        return Response::ok().json(r#"{"user":"good"}"#);
    }
    common::api(req)
}

fn start(config: Value) -> (Upstream, Envoy) {
    common::start(api, config)
}

#[test]
fn a_401_is_cached_and_a_failing_client_blocked_over_http2() {
    let (upstream, envoy) = start(json!({"rate_limit": {"max_failures": 2}}));
    let bad = [("authorization", "Bearer h2-bad")];
    let miss = curl_get(envoy.port(), "/api/me", &bad);
    assert_eq!((miss.status, miss.negcache()), (401, None));
    let hit = curl_get(envoy.port(), "/api/me", &bad);
    assert_eq!((hit.status, hit.negcache()), (401, Some("hit")));
    // The hit was failure 2; failure 3 (another hit) starts the block.
    assert_eq!(curl_get(envoy.port(), "/api/me", &bad).status, 401);
    let blocked = curl_get(envoy.port(), "/api/me", &[("authorization", "Bearer good")]);
    assert_eq!(blocked.status, 429, "{blocked:?}");
    assert!(blocked.header("retry-after").is_some());
    upstream.assert_count(1);
}

#[test]
fn a_credential_cookie_in_a_later_crumb_is_found() {
    let (upstream, envoy) = start(json!({
        "credentials": [{"cookie": "session"}],
        "rate_limit": {"enabled": false}
    }));
    // HTTP/2 clients may send each cookie as its own field; Envoy joins them with "; ".
    let crumbs = [("cookie", "theme=dark"), ("cookie", "session=crumb-token")];
    let miss = curl_get(envoy.port(), "/api/me", &crumbs);
    assert_eq!((miss.status, miss.negcache()), (401, None));
    let hit = curl_get(envoy.port(), "/api/me", &crumbs);
    assert_eq!((hit.status, hit.negcache()), (401, Some("hit")));
    // The same session in one field is the same credential.
    let joined = [("cookie", "session=crumb-token; theme=light")];
    assert_eq!(
        curl_get(envoy.port(), "/api/me", &joined).negcache(),
        Some("hit")
    );
    upstream.assert_count(1);
}

#[test]
fn repeated_authorization_fields_are_one_joined_credential_never_a_later_source() {
    let (upstream, envoy) = start(json!({"rate_limit": {"enabled": false}}));
    let attack = [
        ("authorization", "Bearer x"),
        ("authorization", "Bearer y"),
        ("x-api-key", "good"),
    ];
    assert_eq!(curl_get(envoy.port(), "/api/me", &attack).status, 401);
    // Envoy joins the two fields (`Bearer x,Bearer y`): that value is the credential.
    let again = curl_get(envoy.port(), "/api/me", &attack);
    assert_eq!((again.status, again.negcache()), (401, Some("hit")));
    for _ in 0..2 {
        let owner = curl_get(envoy.port(), "/api/me", &[("x-api-key", "good")]);
        assert_eq!((owner.status, owner.negcache()), (200, None));
    }
    upstream.assert_count(3);
}

#[test]
fn header_names_http2_forbids_are_refused_before_the_filter() {
    let (upstream, envoy) = start(json!({}));
    let base = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/api/me"),
        (":authority", "localhost"),
    ];
    let accepted = [base.as_slice(), &[("authorization", "Bearer raw")]].concat();
    assert_eq!(
        send_raw_headers(envoy.port(), &accepted),
        StreamAnswer::Headers
    );
    upstream.assert_count(1);
    for forbidden in [
        ("Authorization", "Bearer raw"),
        ("x-Api-Key", "raw"),
        ("connection", "keep-alive"),
        ("keep-alive", "1"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("te", "gzip"),
    ] {
        let fields = [base.as_slice(), &[forbidden]].concat();
        let answer = send_raw_headers(envoy.port(), &fields);
        assert_ne!(answer, StreamAnswer::Headers, "{forbidden:?}");
    }
    upstream.assert_count(1);
    // Only the accepted stream reached the filter; Envoy logged the others as protocol errors.
    let entries = envoy.wait_access_log(9);
    let decided: Vec<_> = entries.iter().filter(|e| e.decision.is_some()).collect();
    assert_eq!(decided.len(), 1, "{}", envoy.access_log());
    let refused = entries
        .iter()
        .filter(|e| e.raw["details"] == "http2.invalid.header.field")
        .count();
    assert_eq!(refused, 8, "{}", envoy.access_log());
    assert_eq!(envoy.metric("negcache_errors_total"), 0);
}
