//! The failure rate limit: what counts, the block and its 429, shadow mode, and the places
//! requests of a failing client hold while under way.

use super::harness::{get, upstream, Proxy, Upstream, T0};
use crate::exchange::Decision;
use crate::metrics::Metric;
use crate::rate_limit;
use crate::slots::memory::MemoryStore;

fn unauthorized() -> Upstream {
    upstream(401).chunk(b"{\"error\":\"invalid token\"}")
}

/// The cache out of the way: every request reaches the upstream until the block.
const NO_CACHE: &str = r#""negative_cache": {"enabled": false}"#;

fn limiter(settings: &str) -> Proxy {
    Proxy::new(&format!(r#"{{{NO_CACHE}, "rate_limit": {{{settings}}}}}"#))
}

#[test]
fn a_client_failing_past_the_limit_gets_a_429_with_retry_after() {
    let mut proxy = limiter(r#""max_failures": 2"#);
    for n in 0..3 {
        let seen = proxy.send(&get("/").token(&format!("t{n}")), unauthorized());
        assert_eq!(seen.status, 401, "failure {n} reaches the upstream");
    }
    assert_eq!(proxy.count(Metric::RateLimitFailures), 3);
    assert_eq!(proxy.count(Metric::RateLimitBlocks), 1);
    assert_eq!(proxy.count(Metric::RateLimitSlotsUsed), 1);

    proxy.advance(1_500);
    let blocked = proxy.send(&get("/").token("good"), upstream(200));
    assert!(!blocked.reached_upstream);
    assert_eq!(blocked.status, 429);
    assert_eq!(blocked.decision, Some(Decision::Blocked));
    assert_eq!(blocked.header("retry-after"), Some("299"));
    assert_eq!(blocked.header("ratelimit"), None);
    let body: serde_json::Value = serde_json::from_slice(&blocked.body).unwrap();
    assert_eq!(body["retry_after"], 299);
    assert_eq!(proxy.count(Metric::RateLimitRejected), 1);

    // Another client is not blocked; the block ends.
    proxy.host.peer = Some("198.51.100.9:1".to_string());
    assert_eq!(proxy.send(&get("/").token("t"), upstream(200)).status, 200);
    proxy.host.peer = Some(super::harness::PEER.to_string());
    proxy.advance(298_500);
    assert_eq!(proxy.send(&get("/").token("t"), upstream(200)).status, 200);
}

#[test]
fn the_429_carries_the_ratelimit_fields_and_cors_headers_when_configured() {
    let mut proxy = Proxy::new(&format!(
        r#"{{{NO_CACHE}, "rate_limit": {{"max_failures": 0, "ratelimit_headers": true}},
            "cors": {{"allowed_origins": ["https://app.example.com"]}}}}"#
    ));
    proxy.send(&get("/").token("t"), unauthorized());
    let blocked = proxy.send(
        &get("/")
            .token("t")
            .header("origin", "https://app.example.com"),
        upstream(200),
    );
    assert_eq!(blocked.status, 429);
    assert_eq!(
        blocked.header("ratelimit-policy"),
        Some("\"auth-failures\";q=0;w=60")
    );
    assert_eq!(
        blocked.header("ratelimit"),
        Some("\"auth-failures\";r=0;t=300")
    );
    assert_eq!(
        blocked.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

#[test]
fn hits_replaying_a_failure_count_and_lead_to_the_block() {
    let mut proxy = Proxy::new(r#"{"rate_limit": {"max_failures": 2}}"#);
    let stored = proxy.send(&get("/").token("dead"), unauthorized());
    assert_eq!(stored.decision, Some(Decision::Stored));
    for _ in 0..2 {
        let hit = proxy.send(&get("/").token("dead"), upstream(200));
        assert_eq!((hit.status, hit.decision), (401, Some(Decision::Hit)));
    }
    assert_eq!(proxy.count(Metric::RateLimitFailures), 3);
    assert_eq!(proxy.count(Metric::RateLimitBlocks), 1);
    let blocked = proxy.send(&get("/").token("dead"), upstream(200));
    assert_eq!(
        (blocked.status, blocked.decision),
        (429, Some(Decision::Blocked))
    );
}

#[test]
fn a_hit_of_a_status_that_is_no_failure_is_not_counted() {
    let mut proxy = Proxy::new("{}");
    proxy.send(&get("/admin").token("t"), upstream(403));
    let hit = proxy.send(&get("/admin").token("t"), upstream(200));
    assert_eq!((hit.status, hit.decision), (403, Some(Decision::Hit)));
    assert_eq!(proxy.count(Metric::RateLimitFailures), 0);
}

#[test]
fn only_failure_statuses_count() {
    let mut proxy = limiter(r#""max_failures": 0, "failure_statuses": [401, 403]"#);
    for status in [200, 404, 429, 500] {
        proxy.send(&get("/").token("t"), upstream(status));
    }
    assert_eq!(proxy.count(Metric::RateLimitFailures), 0);
    proxy.send(&get("/").token("t"), upstream(403));
    assert_eq!(proxy.count(Metric::RateLimitFailures), 1);
    assert_eq!(proxy.send(&get("/").token("t"), upstream(200)).status, 429);
}

#[test]
fn with_the_limiter_off_failures_never_block() {
    let mut proxy = Proxy::new(&format!(
        r#"{{{NO_CACHE}, "rate_limit": {{"enabled": false, "max_failures": 0}}}}"#
    ));
    for _ in 0..20 {
        let seen = proxy.send(&get("/").token("t"), unauthorized());
        assert_eq!(seen.status, 401);
        assert_eq!(seen.decision, None);
    }
    assert_eq!(proxy.count(Metric::RateLimitFailures), 0);
    assert_eq!(proxy.host.peer_reads.get(), 0);
}

#[test]
fn in_shadow_mode_a_blocked_client_is_let_through_and_logged() {
    let mut proxy = limiter(r#""max_failures": 0, "shadow": true"#);
    proxy.send(&get("/").token("t"), unauthorized());
    assert_eq!(proxy.count(Metric::RateLimitBlocks), 1);
    let seen = proxy.send(&get("/").token("t"), upstream(200));
    assert!(seen.reached_upstream);
    assert_eq!(seen.status, 200);
    assert_eq!(seen.decision, Some(Decision::ShadowBlocked));
    assert_eq!(proxy.count(Metric::RateLimitShadowRejected), 1);
    assert_eq!(proxy.count(Metric::RateLimitRejected), 0);
}

#[test]
fn anonymous_failures_count_only_when_configured() {
    let mut off = limiter(r#""max_failures": 0"#);
    for _ in 0..3 {
        assert_eq!(off.send(&get("/"), unauthorized()).status, 401);
    }
    assert_eq!(off.count(Metric::RateLimitFailures), 0);

    let mut on = limiter(r#""max_failures": 0, "count_anonymous": true"#);
    on.send(&get("/"), unauthorized());
    assert_eq!(on.count(Metric::RateLimitFailures), 1);
    assert_eq!(on.send(&get("/"), upstream(200)).status, 429);
}

#[test]
fn exempt_clients_are_never_counted() {
    let mut proxy = limiter(r#""max_failures": 0, "exempt_cidrs": ["192.0.2.0/24"]"#);
    for _ in 0..3 {
        let seen = proxy.send(&get("/").token("t"), unauthorized());
        assert_eq!(seen.status, 401);
        assert_eq!(seen.client.as_deref(), Some("192.0.2.1"));
    }
    assert_eq!(proxy.count(Metric::RateLimitFailures), 0);
}

/// One failure: the window is live and requests of this client reserve a place; with
/// `max_failures: 2`, two may be under way at once.
fn failing_client() -> Proxy {
    let mut proxy = limiter(r#""max_failures": 2"#);
    proxy.send(&get("/").token("t"), unauthorized());
    proxy
}

#[test]
fn requests_of_a_failing_client_hold_a_place_while_under_way() {
    let mut proxy = failing_client();
    let first = proxy.start(&get("/").token("t"));
    let second = proxy.start(&get("/").token("t"));
    assert!(!first.verdict_was_reply() && !second.verdict_was_reply());
    let third = proxy.start(&get("/").token("t"));
    assert!(third.verdict_was_reply());
    assert_eq!(third.seen().status, 429);
    assert_eq!(third.seen().header("retry-after"), Some("1"));
    assert_eq!(third.seen().decision, Some(Decision::Blocked));
    for flight in [first, second] {
        proxy.finish(flight, Some(upstream(200)));
    }
}

#[test]
fn a_good_response_gives_its_place_back() {
    let mut proxy = failing_client();
    let first = proxy.start(&get("/").token("t"));
    let second = proxy.start(&get("/").token("t"));
    assert_eq!(proxy.finish(first, Some(upstream(200))).status, 200);
    let third = proxy.start(&get("/").token("t"));
    assert!(
        !third.verdict_was_reply(),
        "the first one's place is free again"
    );
    assert_eq!(proxy.count(Metric::RateLimitFailures), 1);
    proxy.finish(second, Some(upstream(200)));
    proxy.finish(third, Some(upstream(200)));
}

#[test]
fn a_reset_stream_gives_its_place_back() {
    let mut proxy = failing_client();
    let first = proxy.start(&get("/").token("t"));
    let second = proxy.start(&get("/").token("t"));
    let reset = proxy.finish(first, None);
    assert!(!reset.reached_upstream);
    let third = proxy.start(&get("/").token("t"));
    assert!(
        !third.verdict_was_reply(),
        "the reset one's place is free again"
    );
    proxy.finish(second, Some(upstream(200)));
    proxy.finish(third, Some(upstream(200)));
}

#[test]
fn a_failure_under_way_is_counted_once_and_frees_its_place() {
    let mut proxy = limiter(r#""max_failures": 3"#);
    proxy.send(&get("/").token("t"), unauthorized());
    let first = proxy.start(&get("/").token("t"));
    let second = proxy.start(&get("/").token("t"));
    proxy.finish(first, Some(unauthorized()));
    assert_eq!(proxy.count(Metric::RateLimitFailures), 2);
    // Two failures of four: two places; the second request holds one, so one more fits.
    let third = proxy.start(&get("/").token("t"));
    assert!(!third.verdict_was_reply());
    let fourth = proxy.start(&get("/").token("t"));
    assert!(fourth.verdict_was_reply(), "both places taken");
    proxy.finish(second, Some(upstream(200)));
    proxy.finish(third, Some(upstream(200)));
    assert_eq!(proxy.count(Metric::RateLimitFailures), 2);
}

#[test]
fn requests_that_can_never_fail_hold_no_place() {
    let mut proxy = failing_client();
    let anonymous: Vec<_> = (0..5).map(|_| proxy.start(&get("/"))).collect();
    assert!(anonymous.iter().all(|flight| !flight.verdict_was_reply()));
    let first = proxy.start(&get("/").token("t"));
    let second = proxy.start(&get("/").token("t"));
    assert!(!first.verdict_was_reply() && !second.verdict_was_reply());
    for flight in anonymous.into_iter().chain([first, second]) {
        proxy.finish(flight, Some(upstream(200)));
    }
}

#[test]
fn failures_with_an_ambiguous_or_blank_credential_count_like_any_other() {
    let mut proxy = limiter(r#""max_failures": 1"#);
    let doubled = get("/")
        .header("authorization", "Bearer a")
        .another("authorization", "Bearer b");
    assert_eq!(proxy.send(&doubled, unauthorized()).status, 401);
    let blank = get("/").header("authorization", " ");
    assert_eq!(proxy.send(&blank, unauthorized()).status, 401);
    assert_eq!(proxy.count(Metric::RateLimitFailures), 2);
    assert_eq!(proxy.send(&get("/").token("t"), upstream(200)).status, 429);
}

/// The cache and the limiter both on: a failing client's dead credential is replayed.
fn failing_client_with_cache() -> Proxy {
    let mut proxy = Proxy::new(r#"{"rate_limit": {"max_failures": 5}}"#);
    proxy.send(&get("/").token("dead"), unauthorized());
    proxy
}

#[test]
fn a_hit_replaying_a_failure_reads_and_writes_its_clients_bucket_once() {
    let mut proxy = failing_client_with_cache();
    let (reads, writes) = (proxy.store_reads(), proxy.store_writes());
    let hit = proxy.send(&get("/").token("dead"), upstream(200));
    assert_eq!(hit.decision, Some(Decision::Hit));
    assert_eq!(proxy.count(Metric::RateLimitFailures), 2, "the hit counts");
    assert_eq!(
        (proxy.store_reads() - reads, proxy.store_writes() - writes),
        (2, 1),
        "the client's bucket and the cache's slot read once each; the client's bucket written once"
    );
    // The hit left no place held: all four the two failures leave under max_failures 5 are
    // free (6 − 2), and a fifth request under way is refused.
    let flights: Vec<_> = (0..4).map(|_| proxy.start(&get("/").token("t"))).collect();
    assert!(flights.iter().all(|flight| !flight.verdict_was_reply()));
    let fifth = proxy.start(&get("/").token("t"));
    assert!(fifth.verdict_was_reply());
    proxy.finish(fifth, None);
    for flight in flights {
        proxy.finish(flight, Some(upstream(200)));
    }
}

#[test]
fn a_hit_whose_client_changed_since_its_admission_counts_once_from_a_fresh_read() {
    let mut proxy = failing_client_with_cache();
    // Another worker rewrites the bucket between this request's read and its write.
    proxy.host.store.conflicts.set(1);
    let hit = proxy.send(&get("/").token("dead"), upstream(200));
    assert_eq!(hit.decision, Some(Decision::Hit));
    assert_eq!(proxy.count(Metric::RateLimitFailures), 2);
    assert_eq!(proxy.count(Metric::Errors), 0);
    // The replays go on counting to the block: failures 3 to 6, then the 429.
    for _ in 0..4 {
        assert_eq!(
            proxy.send(&get("/").token("dead"), upstream(200)).status,
            401
        );
    }
    let blocked = proxy.send(&get("/").token("dead"), upstream(200));
    assert_eq!(
        (blocked.status, blocked.decision),
        (429, Some(Decision::Blocked))
    );
}

#[test]
fn a_request_whose_client_was_blocked_since_its_admission_is_refused() {
    let mut proxy = limiter(r#""max_failures": 1"#);
    let first = proxy.send(&get("/").token("t"), unauthorized());
    let client = proxy.filter.hasher.client(first.client.as_deref().unwrap());
    let (table, config) = (
        proxy.filter.clients.clone(),
        proxy.filter.config.rate_limit.clone(),
    );
    // Between this request's admission (one failure: it may go on) and the write of its place,
    // another worker blocks the client.
    *proxy.host.store.interloper.borrow_mut() = Some(Box::new(move |store: &MemoryStore| {
        rate_limit::block(store, &table, &config, &client, T0).unwrap();
    }));
    let refused = proxy.send(&get("/").token("t"), upstream(200));
    assert!(!refused.reached_upstream);
    assert_eq!(
        (refused.status, refused.decision),
        (429, Some(Decision::Blocked))
    );
}
