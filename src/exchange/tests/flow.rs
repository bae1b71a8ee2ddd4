//! Requests the filter takes no part in, the host calls a good request costs, and errors.

use super::harness::{get, upstream, Flight, Proxy};
use crate::exchange::{Decision, Exchange, Report};
use crate::metrics::Metric;

const BAD: &[u8] = b"{\"error\":\"invalid token\"}";

fn unauthorized() -> super::harness::Upstream {
    upstream(401)
        .header("content-type", "application/json")
        .chunk(BAD)
}

#[test]
fn a_good_request_reads_no_clock_writes_nothing_and_reads_no_full_map() {
    let mut proxy = Proxy::new("{}");
    // Another client's failures and another credential's entry are in the tables.
    proxy.host.peer = Some("198.51.100.7:1234".to_string());
    proxy.send(&get("/").token("bad"), unauthorized());
    proxy.host.peer = Some(super::harness::PEER.to_string());
    let writes = proxy.store_writes();
    let reads = proxy.clock_reads();

    let seen = proxy.send(&get("/me").token("good"), upstream(200).chunk(b"hello"));
    assert_eq!(seen.status, 200);
    assert_eq!(seen.body, b"hello");
    assert!(seen.reached_upstream);
    assert_eq!(seen.decision, Some(Decision::Miss));
    assert_eq!(seen.client.as_deref(), Some("192.0.2.1"));
    assert_eq!(proxy.clock_reads(), reads, "no clock read");
    assert_eq!(proxy.store_writes(), writes, "no shared-data write");
    assert!(!seen.full_maps_read);
    assert_eq!(seen.chunks_read, 0);
}

#[test]
fn the_peer_is_read_only_when_something_uses_the_client() {
    let mut cache_only = Proxy::new(
        r#"{"rate_limit": {"enabled": false},
            "negative_cache": {"statuses": {"401": {"ttl_seconds": 60}}}}"#,
    );
    let seen = cache_only.send(&get("/").token("t"), unauthorized());
    assert_eq!(seen.decision, Some(Decision::Stored));
    assert_eq!(cache_only.host.peer_reads.get(), 0);
    assert_eq!(seen.client, None, "nothing needed the client");

    // Entries keyed on the client IP (the default 429 rule) need it, but only a request that
    // stores or finds one: a cache-only set-up's other requests never read the peer.
    let mut keyed_on_client = Proxy::new(r#"{"rate_limit": {"enabled": false}}"#);
    let seen = keyed_on_client.send(&get("/").token("t"), upstream(200));
    assert_eq!(keyed_on_client.host.peer_reads.get(), 0);
    assert_eq!(seen.client, None);
    let seen = keyed_on_client.send(&get("/").token("t"), upstream(429));
    assert_eq!(seen.decision, Some(Decision::Stored));
    assert_eq!(keyed_on_client.host.peer_reads.get(), 1);
    assert_eq!(
        seen.client.as_deref(),
        Some("192.0.2.1"),
        "the 429's client"
    );
    let seen = keyed_on_client.send(&get("/").token("t"), upstream(200));
    assert_eq!(seen.decision, Some(Decision::Hit));
    assert_eq!(seen.status, 429);
    assert_eq!(keyed_on_client.host.peer_reads.get(), 2);
    assert_eq!(
        seen.client.as_deref(),
        Some("192.0.2.1"),
        "the hit's client"
    );
    // Another client with the same credential finds the entry and misses it.
    keyed_on_client.host.peer = Some("198.51.100.7:1234".to_string());
    let seen = keyed_on_client.send(&get("/").token("t"), upstream(200));
    assert_eq!(seen.decision, Some(Decision::Miss));
    assert_eq!(seen.status, 200);
    assert_eq!(seen.client.as_deref(), Some("198.51.100.7"));
    // A credential with no entry keyed on the client reads no peer.
    let seen = keyed_on_client.send(&get("/").token("other"), upstream(401));
    assert_eq!(seen.decision, Some(Decision::Stored));
    assert_eq!(keyed_on_client.host.peer_reads.get(), 3);
    assert_eq!(seen.client, None);

    let mut anonymous = Proxy::new(
        r#"{"rate_limit": {"enabled": false},
            "negative_cache": {"cache_anonymous": true, "statuses": {"401": {"ttl_seconds": 60}}}}"#,
    );
    anonymous.send(&get("/").token("t"), upstream(200));
    assert_eq!(
        anonymous.host.peer_reads.get(),
        0,
        "a credential needs no client"
    );
    let seen = anonymous.send(&get("/"), upstream(200));
    assert_eq!(anonymous.host.peer_reads.get(), 1);
    assert_eq!(seen.client.as_deref(), Some("192.0.2.1"));

    let mut limited = Proxy::new(r#"{"negative_cache": {"enabled": false}}"#);
    limited.send(&get("/").token("t"), upstream(200));
    assert_eq!(limited.host.peer_reads.get(), 1);

    let mut neither =
        Proxy::new(r#"{"negative_cache": {"enabled": false}, "rate_limit": {"enabled": false}}"#);
    let seen = neither.send(&get("/").token("t"), unauthorized());
    assert_eq!(neither.host.peer_reads.get(), 0);
    assert_eq!((seen.decision, seen.client), (None, None));
}

#[test]
fn an_unresolved_client_is_logged_as_such_and_never_counted() {
    let mut proxy = Proxy::new(r#"{"rate_limit": {"max_failures": 1}}"#);
    proxy.host.peer = None;
    for n in 0..5 {
        let seen = proxy.send(
            &get(&format!("/{n}")).token(&format!("t{n}")),
            unauthorized(),
        );
        assert_eq!(seen.status, 401);
        assert!(seen.reached_upstream);
        assert_eq!(seen.client.as_deref(), Some("unresolved"));
    }
    assert_eq!(proxy.count(Metric::ClientIpUnresolved), 5);
    assert_eq!(proxy.count(Metric::RateLimitFailures), 0);
}

#[test]
fn a_preflight_passes_untouched_and_its_answer_is_not_kept() {
    let mut proxy = Proxy::new(r#"{"rate_limit": {"max_failures": 0}}"#);
    let preflight = get("/api")
        .method("OPTIONS")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET");
    for _ in 0..3 {
        let seen = proxy.send(&preflight, unauthorized());
        assert!(seen.reached_upstream);
        assert_eq!(seen.status, 401);
        assert_eq!(seen.decision, Some(Decision::Preflight));
        assert_eq!(seen.client, None);
    }
    assert_eq!(proxy.count(Metric::Stores), 0);
    assert_eq!(proxy.count(Metric::RateLimitFailures), 0);
    assert_eq!(proxy.host.peer_reads.get(), 0);
    // With a credential it is an ordinary request.
    let seen = proxy.send(&preflight.clone().token("t"), unauthorized());
    assert_eq!(seen.decision, Some(Decision::Stored));
}

#[test]
fn an_exempt_path_is_never_answered_counted_or_stored() {
    let mut proxy =
        Proxy::new(r#"{"exempt_paths": ["/health"], "rate_limit": {"max_failures": 0}}"#);
    proxy.send(&get("/api").token("dead"), unauthorized());
    assert_eq!(proxy.count(Metric::RateLimitBlocks), 1);
    for path in ["/health", "/health/deep?x=1", "/api/../health"] {
        let seen = proxy.send(&get(path).token("dead"), unauthorized());
        assert!(seen.reached_upstream, "{path}");
        assert_eq!(seen.status, 401);
        assert_eq!(seen.decision, Some(Decision::Exempt));
    }
    assert_eq!(proxy.count(Metric::Stores), 1);
    assert_eq!(proxy.count(Metric::RateLimitFailures), 1);
    // Not under it: blocked.
    let seen = proxy.send(&get("/healthz").token("dead"), unauthorized());
    assert_eq!(seen.status, 429);
}

#[test]
fn a_response_to_a_request_the_filter_never_saw_is_left_alone() {
    let mut proxy = Proxy::new("{}");
    proxy.send(&get("/").token("t"), unauthorized());
    let response = unauthorized()
        .header("x-negcache-purge", "Bearer t")
        .header("x-negcache-inactive", "1");
    let seen = proxy.finish(Flight::unseen(), Some(response));
    assert_eq!(seen.header("x-negcache-purge"), Some("Bearer t"));
    assert_eq!(seen.header("x-negcache-inactive"), Some("1"));
    assert_eq!(seen.decision, None);
    assert!(!seen.full_maps_read);
    assert_eq!(proxy.count(Metric::Purges), 0);
    assert_eq!(proxy.count(Metric::Stores), 1);
    assert_eq!(proxy.count(Metric::RateLimitFailures), 1);
}

#[test]
fn the_filters_own_reply_is_not_handled_again() {
    let mut proxy = Proxy::new("{}");
    proxy.send(&get("/").token("dead"), unauthorized());
    let hit = proxy.send(&get("/").token("dead"), unauthorized());
    assert_eq!(hit.status, 401);
    assert!(!hit.reached_upstream);
    assert_eq!(hit.decision, Some(Decision::Hit));
    assert_eq!(hit.header("x-negcache"), Some("hit"));
    // Counted once (the hit), stored once (the upstream's answer), not again as a response.
    assert_eq!(proxy.count(Metric::RateLimitFailures), 2);
    assert_eq!(proxy.count(Metric::Stores), 1);
}

#[test]
fn host_errors_are_logged_as_error_and_the_request_goes_through() {
    let mut proxy = Proxy::new("{}");
    proxy.send(&get("/").token("dead"), unauthorized());
    proxy.host.store.fail_host.set(true);
    let seen = proxy.send(&get("/").token("dead"), unauthorized());
    assert!(
        seen.reached_upstream,
        "a cached credential is not answered without the store"
    );
    assert_eq!(seen.status, 401);
    assert_eq!(seen.body, BAD);
    assert_eq!(seen.decision, Some(Decision::Error));
    assert!(proxy.count(Metric::Errors) >= 1);
    proxy.host.store.fail_host.set(false);
    assert_eq!(
        proxy.send(&get("/").token("dead"), unauthorized()).decision,
        Some(Decision::Hit)
    );
}

#[test]
fn unreadable_request_headers_are_an_error_and_the_response_is_left_alone() {
    let proxy = Proxy::new("{}");
    let mut exchange = Exchange::default();
    let mut report = Report::default();
    let step = exchange.request(&proxy.filter, &proxy.host, None, &mut report);
    assert_eq!(step.verdict, crate::exchange::Verdict::Continue);
    assert_eq!(report.decision, Some(Decision::Error));
    assert_eq!(report.counts.get(Metric::Errors), 1);
    let plan = exchange.response(&proxy.filter, true, |_| -> Option<Vec<u8>> {
        panic!("a response to an unseen request is not read")
    });
    assert_eq!(plan.remove().count(), 0);
    assert!(!plan.needs_headers() && plan.tally.is_none() && plan.add.is_none());
}

#[test]
fn an_unreadable_response_map_is_an_error_and_stores_nothing() {
    let proxy = Proxy::new("{}");
    let mut exchange = Exchange::default();
    let mut report = Report::default();
    let req = get("/").token("dead");
    let headers = req.view();
    exchange.request(&proxy.filter, &proxy.host, Some(&headers), &mut report);
    let plan = exchange.response(&proxy.filter, true, |name| {
        (name == ":status").then(|| b"401".to_vec())
    });
    assert!(plan.needs_headers());
    let mut report = Report::default();
    exchange.respond(
        &proxy.filter,
        &proxy.host,
        &plan,
        None,
        Some(&headers),
        &mut report,
    );
    assert_eq!(report.decision, Some(Decision::Error));
    assert_eq!(report.counts.get(Metric::Stores), 0);
}

#[test]
fn a_reply_the_host_could_not_send_leaves_the_response_to_the_filter() {
    let mut proxy = Proxy::new("{}");
    proxy.send(&get("/").token("dead"), unauthorized());
    let req = get("/").token("dead");
    let headers = req.view();
    let mut exchange = Exchange::default();
    let mut report = Report::default();
    let step = exchange.request(&proxy.filter, &proxy.host, Some(&headers), &mut report);
    assert!(matches!(step.verdict, crate::exchange::Verdict::Reply(_)));
    exchange.reply_failed(&mut report);
    assert_eq!(report.decision, Some(Decision::Error));
    let plan = exchange.response(&proxy.filter, true, |name| {
        (name == ":status").then(|| b"401".to_vec())
    });
    assert!(plan.needs_headers(), "the upstream's 401 is stored again");
}

#[test]
fn cas_conflicts_are_retried_not_lost() {
    let mut proxy = Proxy::new(r#"{"rate_limit": {"max_failures": 1}}"#);
    proxy.host.store.conflicts.set(4);
    let seen = proxy.send(&get("/").token("dead"), unauthorized());
    assert_eq!(seen.decision, Some(Decision::Stored));
    proxy.host.store.conflicts.set(4);
    assert_eq!(
        proxy.send(&get("/").token("dead"), unauthorized()).decision,
        Some(Decision::Hit)
    );
    assert_eq!(proxy.count(Metric::RateLimitBlocks), 1);
    assert_eq!(proxy.count(Metric::Errors), 0);
}

#[test]
fn an_exempt_path_with_an_escaped_separator_is_not_a_way_around_a_block() {
    let mut proxy = Proxy::new(
        r#"{"exempt_paths": ["/healthz"], "negative_cache": {"enabled": false},
            "rate_limit": {"max_failures": 0}}"#,
    );
    let failing = upstream(401).chunk(b"{}");
    assert_eq!(proxy.send(&get("/login").token("t"), failing).status, 401);
    let healthz = proxy.send(&get("/healthz/live").token("t"), upstream(200));
    assert_eq!(healthz.decision, Some(Decision::Exempt));
    assert_eq!(healthz.status, 200);
    for sneaky in [
        "/healthz/..%2Flogin",
        "/healthz/..%5clogin",
        "/healthz/..;/login",
    ] {
        let seen = proxy.send(&get(sneaky).token("t"), upstream(200));
        assert_eq!(seen.status, 429, "{sneaky}");
        assert_eq!(seen.decision, Some(Decision::Blocked), "{sneaky}");
    }
}
