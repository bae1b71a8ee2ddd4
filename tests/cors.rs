#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! CORS headers on the filter's own replies (cache hits, the limiter's 429), with negcache's
//! `cors` section or with Envoy's CORS filter in front of it. `tests/browser.rs` shows what a
//! real browser makes of them.

mod common;

use common::{ClientResponse, Envoy, EnvoyOptions, Request, Response, Upstream};
use serde_json::{json, Value};

const APP: &str = "https://app.example.com";

/// An upstream whose 401 carries CORS headers for an origin of its own choosing: a replay must
/// never carry them.
fn api(_: &Request) -> Response {
    Response::new(401)
        .header(
            "access-control-allow-origin",
            "https://first-caller.example",
        )
        .header("access-control-allow-credentials", "true")
        .json(r#"{"error":"invalid token"}"#)
}

fn config(cors: Value) -> Value {
    json!({"cors": cors, "rate_limit": {"max_failures": 2}})
}

fn start(config: Value) -> (Upstream, Envoy) {
    let upstream = Upstream::start(api);
    let envoy = Envoy::start(EnvoyOptions::new(upstream.port(), config));
    (upstream, envoy)
}

/// The headers of a call with `Bearer <token>` (as `auth`) and, when given, an `origin`.
fn headers<'a>(auth: &'a str, origin: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    let mut headers = vec![("authorization", auth)];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    headers
}

fn get(envoy: &Envoy, token: &str, origin: Option<&str>) -> ClientResponse {
    let auth = format!("Bearer {token}");
    envoy.get("/api/me", &headers(&auth, origin))
}

/// The same call twice: the upstream's reply, then the replayed one.
fn miss_then_hit(
    envoy: &Envoy,
    token: &str,
    origin: Option<&str>,
) -> (ClientResponse, ClientResponse) {
    let auth = format!("Bearer {token}");
    envoy.miss_then_hit("/api/me", &headers(&auth, origin))
}

#[test]
fn local_replies_carry_the_cors_headers_of_the_requests_origin() {
    let (_upstream, envoy) = start(config(
        json!({"allowed_origins": [APP, "https://*.example.org"]}),
    ));
    let (_, hit) = miss_then_hit(&envoy, "dead", Some(APP));
    assert_eq!(
        hit.header_all("access-control-allow-origin"),
        vec![APP],
        "exactly one, ours"
    );
    assert_eq!(
        hit.header("access-control-allow-credentials"),
        None,
        "not configured, not replayed"
    );
    assert_eq!(
        hit.header("access-control-expose-headers"),
        Some("retry-after, ratelimit, ratelimit-policy, x-negcache")
    );
    assert_eq!(hit.header("vary"), Some("origin"));

    let sub = get(&envoy, "dead", Some("https://eu.example.org"));
    assert_eq!(
        sub.header_all("access-control-allow-origin"),
        vec!["https://eu.example.org"]
    );

    // Failures so far: 3 > max_failures 2: the limiter answers, with CORS headers too.
    let blocked = get(&envoy, "dead", Some(APP));
    assert_eq!(blocked.status, 429);
    assert_eq!(blocked.header_all("access-control-allow-origin"), vec![APP]);
    assert!(blocked.header("retry-after").is_some());
}

#[test]
fn origins_not_allowed_get_no_cors_headers() {
    let mut limitless = config(json!({"allowed_origins": [APP]}));
    limitless["rate_limit"] = json!({"enabled": false});
    let (_upstream, envoy) = start(limitless);
    get(&envoy, "dead", None);
    for origin in [
        None,
        Some("https://evil.example"),
        Some("null"),
        Some("https://app.example.com.evil.example"),
    ] {
        let hit = get(&envoy, "dead", origin);
        assert_eq!(hit.negcache(), Some("hit"), "{origin:?}");
        assert!(
            hit.header("access-control-allow-origin").is_none(),
            "{origin:?}"
        );
        assert!(hit.header("access-control-expose-headers").is_none());
    }
}

#[test]
fn any_origin_is_answered_with_a_star_and_credentials_need_an_explicit_list() {
    let (_upstream, envoy) = start(config(json!({"allowed_origins": ["*"]})));
    get(&envoy, "dead", Some(APP));
    let hit = get(&envoy, "dead", Some("https://anyone.example"));
    assert_eq!(hit.header_all("access-control-allow-origin"), vec!["*"]);

    let (_upstream2, credentialed) = start(config(
        json!({"allowed_origins": [APP], "allow_credentials": true}),
    ));
    let (_, hit) = miss_then_hit(&credentialed, "dead", Some(APP));
    assert_eq!(hit.header_all("access-control-allow-origin"), vec![APP]);
    assert_eq!(hit.header("access-control-allow-credentials"), Some("true"));
}

#[test]
fn without_cors_configured_local_replies_add_nothing() {
    let (_upstream, envoy) = start(config(json!({})));
    let (_, hit) = miss_then_hit(&envoy, "dead", Some(APP));
    assert!(hit.header("access-control-allow-origin").is_none());
}

#[test]
fn beside_envoys_cors_filter_local_replies_carry_one_allow_origin() {
    let upstream = Upstream::start(|req| {
        if req.method == "OPTIONS" {
            return Response::new(404);
        }
        Response::new(401).json(r#"{"error":"invalid token"}"#)
    });
    // Envoy's CORS filter before negcache, negcache's own `cors` empty.
    let envoy =
        Envoy::start(EnvoyOptions::new(upstream.port(), config(json!({}))).with_envoy_cors(APP));
    let (miss, hit) = miss_then_hit(&envoy, "dead", Some(APP));
    assert_eq!(miss.header_all("access-control-allow-origin"), vec![APP]);
    assert_eq!(
        hit.header_all("access-control-allow-origin"),
        vec![APP],
        "added once, by Envoy's filter"
    );
    assert_eq!(
        hit.header("access-control-expose-headers"),
        Some("retry-after, x-negcache")
    );
    get(&envoy, "dead", Some(APP));
    let blocked = get(&envoy, "dead", Some(APP));
    assert_eq!(blocked.status, 429);
    assert_eq!(blocked.header_all("access-control-allow-origin"), vec![APP]);

    // Envoy's filter answers the preflight; negcache never sees it.
    let preflight = envoy.request(
        "OPTIONS",
        "/api/me",
        &[
            ("origin", APP),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ],
    );
    assert_eq!(preflight.status, 200);
    assert_eq!(
        preflight.header_all("access-control-allow-origin"),
        vec![APP]
    );
    assert_eq!(upstream.count_where(|r| r.method == "OPTIONS"), 0);
}
