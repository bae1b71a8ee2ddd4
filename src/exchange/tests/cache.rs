//! The negative cache: misses, stores, hits, what a hit replays, the body kept for it, the
//! inactive marker, purges, shadow mode and anonymous requests.

use super::harness::{get, upstream, Proxy, Upstream};
use crate::exchange::Decision;
use crate::metrics::Metric;

const BAD: &[u8] = b"{\"error\":\"invalid token\"}";

fn unauthorized() -> Upstream {
    upstream(401)
        .header("content-type", "application/problem+json")
        .header("www-authenticate", "Bearer realm=\"api\"")
        .chunk(BAD)
}

/// The body a hit sends when the upstream's was not kept.
fn own_body(status: u16) -> Vec<u8> {
    format!("{{\"error\":\"cached upstream response\",\"status\":{status}}}").into_bytes()
}

#[test]
fn a_miss_is_stored_and_the_next_request_is_answered_with_what_was_stored() {
    let mut proxy = Proxy::new("{}");
    let first = proxy.send(&get("/a").token("dead"), unauthorized());
    assert!(first.reached_upstream);
    assert_eq!(first.decision, Some(Decision::Stored));
    assert_eq!(first.header("x-negcache"), None);
    assert_eq!(proxy.count(Metric::Misses), 1);
    assert_eq!(proxy.count(Metric::Stores), 1);
    assert_eq!(proxy.count(Metric::SlotsUsed), 1);

    proxy.advance(2_500);
    let hit = proxy.send(&get("/b").token("dead"), upstream(200));
    assert!(!hit.reached_upstream);
    assert_eq!(hit.decision, Some(Decision::Hit));
    assert_eq!(hit.status, 401);
    assert_eq!(hit.body, BAD);
    assert_eq!(hit.header("content-type"), Some("application/problem+json"));
    assert_eq!(hit.header("www-authenticate"), Some("Bearer realm=\"api\""));
    assert_eq!(hit.header("x-negcache"), Some("hit"));
    assert_eq!(hit.header("age"), Some("2"));
    assert_eq!(proxy.count(Metric::Hits), 1);

    // Another credential is a miss; the entry lapses after its TTL (60 s for 401).
    let other = proxy.send(&get("/a").token("other"), upstream(200));
    assert_eq!(other.decision, Some(Decision::Miss));
    proxy.advance(57_500);
    let lapsed = proxy.send(&get("/a").token("dead"), upstream(200));
    assert_eq!(
        (lapsed.decision, lapsed.status),
        (Some(Decision::Miss), 200)
    );
}

#[test]
fn a_hit_is_answered_from_one_shared_data_read_unless_its_body_is_large() {
    let limit_off = r#"{"rate_limit": {"enabled": false}}"#;
    let mut proxy = Proxy::new(limit_off);
    proxy.send(&get("/a").token("dead"), unauthorized());
    let reads = proxy.store_reads();
    let hit = proxy.send(&get("/a").token("dead"), upstream(200));
    assert_eq!(
        (hit.decision, hit.body.as_slice()),
        (Some(Decision::Hit), BAD)
    );
    assert_eq!(
        proxy.store_reads() - reads,
        1,
        "the slot holds record and body"
    );

    // A body too large to share the slot is read from its own key.
    let large = vec![b'x'; 1_500];
    proxy.send(
        &get("/a").token("large"),
        upstream(401)
            .header("content-type", "text/plain")
            .chunk(&large),
    );
    let reads = proxy.store_reads();
    let hit = proxy.send(&get("/a").token("large"), upstream(200));
    assert_eq!((hit.decision, hit.body), (Some(Decision::Hit), large));
    assert_eq!(proxy.store_reads() - reads, 2);
}

#[test]
fn a_forbidden_is_kept_per_method_and_path() {
    let mut proxy = Proxy::new("{}");
    proxy.send(&get("/admin").token("t"), upstream(403).chunk(b"no"));
    let hit = proxy.send(&get("/admin").token("t"), upstream(200));
    assert_eq!((hit.status, hit.decision), (403, Some(Decision::Hit)));
    assert_eq!(hit.body, b"no");
    let other_path = proxy.send(&get("/public").token("t"), upstream(200));
    assert_eq!(other_path.decision, Some(Decision::Miss));
    let other_method = proxy.send(&get("/admin").token("t").method("POST"), upstream(200));
    assert_eq!(other_method.decision, Some(Decision::Miss));
}

#[test]
fn a_throttled_answer_is_kept_per_client_until_its_retry_after() {
    let mut proxy = Proxy::new("{}");
    proxy.send(
        &get("/").token("t"),
        upstream(429).header("retry-after", "5").chunk(b"slow down"),
    );
    proxy.advance(1_000);
    let hit = proxy.send(&get("/").token("t"), upstream(200));
    assert_eq!((hit.status, hit.decision), (429, Some(Decision::Hit)));
    assert_eq!(hit.header("retry-after"), Some("4"));
    proxy.host.peer = Some("198.51.100.9:1".to_string());
    let other_client = proxy.send(&get("/").token("t"), upstream(200));
    assert_eq!(other_client.decision, Some(Decision::Miss));
    proxy.host.peer = Some(super::harness::PEER.to_string());
    proxy.advance(4_000);
    let reset = proxy.send(&get("/").token("t"), upstream(200));
    assert_eq!(reset.decision, Some(Decision::Miss));
}

#[test]
fn only_configured_client_errors_are_stored() {
    let mut proxy = Proxy::new("{}");
    for status in [200, 302, 404, 500, 503] {
        let seen = proxy.send(&get("/").token("t"), upstream(status).chunk(b"x"));
        assert_eq!(seen.decision, Some(Decision::Miss), "{status}");
        assert_eq!(seen.chunks_read, 0, "{status}");
        // Only a client error is worth the full header map.
        assert_eq!(seen.full_maps_read, status == 404, "{status}");
    }
    assert_eq!(proxy.count(Metric::Stores), 0);
}

#[test]
fn a_body_in_several_chunks_is_kept_whole() {
    let mut proxy = Proxy::new("{}");
    let chunked = upstream(401).chunk(b"{\"error\":").chunk(b"\"no\"}");
    let first = proxy.send(&get("/").token("t"), chunked);
    assert_eq!(first.body, b"{\"error\":\"no\"}");
    assert_eq!(first.chunks_read, 2);
    let hit = proxy.send(&get("/").token("t"), upstream(200));
    assert_eq!(hit.body, b"{\"error\":\"no\"}");
    assert_eq!(hit.header("content-type"), None, "the upstream sent none");
}

#[test]
fn a_body_ended_by_trailers_is_kept() {
    let mut proxy = Proxy::new("{}");
    proxy.send(&get("/").token("t"), upstream(401).chunk(b"bye").trailers());
    assert_eq!(proxy.send(&get("/").token("t"), upstream(200)).body, b"bye");
}

#[test]
fn a_response_without_a_body_is_replayed_without_one() {
    let mut proxy = Proxy::new("{}");
    let first = proxy.send(&get("/").token("t"), upstream(401));
    assert_eq!(first.decision, Some(Decision::Stored));
    let hit = proxy.send(&get("/").token("t"), upstream(200));
    assert_eq!((hit.status, hit.body.len()), (401, 0));
}

#[test]
fn a_body_over_the_limit_is_not_kept_nor_read_past_it() {
    let mut proxy = Proxy::new(r#"{"negative_cache": {"max_body_bytes": 10}}"#);
    let big = upstream(401)
        .chunk(b"0123456")
        .chunk(b"789ab")
        .chunk(b"cdef");
    let first = proxy.send(&get("/").token("t"), big);
    assert_eq!(first.body, b"0123456789abcdef", "the client gets all of it");
    assert_eq!(first.chunks_read, 1);
    assert_eq!(first.decision, Some(Decision::Stored));
    let hit = proxy.send(&get("/").token("t"), upstream(200));
    assert_eq!(hit.body, own_body(401));
    assert_eq!(hit.header("content-type"), Some("application/json"));
}

#[test]
fn a_declared_length_over_the_limit_is_not_read_at_all() {
    let mut proxy = Proxy::new(r#"{"negative_cache": {"max_body_bytes": 10}}"#);
    let declared = upstream(401)
        .header("content-length", "16")
        .chunk(b"0123456789abcdef");
    let first = proxy.send(&get("/").token("t"), declared);
    assert_eq!(first.chunks_read, 0);
    assert_eq!(first.decision, Some(Decision::Stored));
    assert_eq!(
        proxy.send(&get("/").token("t"), upstream(200)).body,
        own_body(401)
    );
}

#[test]
fn an_encoded_body_or_a_head_answer_is_replaced_by_the_filters_own() {
    let mut proxy = Proxy::new("{}");
    let gzip = upstream(401)
        .header("content-encoding", "gzip")
        .chunk(b"\x1f\x8b");
    let first = proxy.send(&get("/").token("gz"), gzip);
    assert_eq!(first.chunks_read, 0);
    assert_eq!(
        proxy.send(&get("/").token("gz"), upstream(200)).body,
        own_body(401)
    );

    let head = proxy.send(&get("/").token("head").method("HEAD"), upstream(401));
    assert_eq!(head.decision, Some(Decision::Stored));
    let hit = proxy.send(&get("/").token("head"), upstream(200));
    assert_eq!((hit.status, hit.body), (401, own_body(401)));
}

#[test]
fn a_stream_reset_mid_body_stores_the_entry_without_the_partial_body() {
    let mut proxy = Proxy::new("{}");
    let flight = proxy.start(&get("/").token("t"));
    let cut = proxy.finish_cut(flight, upstream(401).chunk(b"part").chunk(b"rest"), 1);
    assert_eq!(cut.status, 0);
    assert_eq!(cut.decision, Some(Decision::Stored));
    let hit = proxy.send(&get("/").token("t"), upstream(200));
    assert_eq!((hit.status, hit.body), (401, own_body(401)));
}

#[test]
fn the_inactive_marker_is_stripped_and_keeps_the_credential_out_for_its_ttl() {
    let mut proxy = Proxy::new("{}");
    let marked = upstream(403)
        .header("x-negcache-inactive", "1")
        .chunk(b"inactive");
    let first = proxy.send(&get("/admin").token("gone"), marked);
    assert_eq!(first.status, 403);
    assert_eq!(first.header("x-negcache-inactive"), None);
    assert_eq!(first.decision, Some(Decision::Stored));
    // Stored under the identity alone, for the inactive TTL (3600 s), not the 403 rule's 10 s.
    proxy.advance(600_000);
    let hit = proxy.send(&get("/anything").token("gone").method("PUT"), upstream(200));
    assert_eq!((hit.status, hit.decision), (403, Some(Decision::Hit)));
    assert_eq!(hit.body, b"inactive");
}

#[test]
fn the_inactive_marker_is_stripped_from_any_response() {
    let mut proxy = Proxy::new("{}");
    let seen = proxy.send(
        &get("/").token("t"),
        upstream(200).header("x-negcache-inactive", "1"),
    );
    assert_eq!(seen.header("x-negcache-inactive"), None);
    assert_eq!(seen.decision, Some(Decision::Miss));
    assert!(!seen.full_maps_read);
}

#[test]
fn the_purge_header_is_stripped_and_purges_the_credentials_entries() {
    let mut proxy = Proxy::new("{}");
    // The 403 first: the 401 is kept for every path and would answer /b.
    proxy.send(&get("/b").token("renewed"), upstream(403).chunk(b"no"));
    proxy.send(&get("/a").token("renewed"), unauthorized());
    proxy.send(&get("/a").token("other"), unauthorized());
    let purging = upstream(200).header("x-negcache-purge", "Bearer renewed");
    let seen = proxy.send(&get("/login").token("admin"), purging);
    assert_eq!(
        seen.header("x-negcache-purge"),
        None,
        "never reaches the client"
    );
    assert_eq!(seen.status, 200);
    assert_eq!(proxy.count(Metric::Stores), 3);
    assert_eq!(proxy.count(Metric::Evictions), 0);
    assert_eq!(proxy.count(Metric::Purges), 2);
    let a = proxy.send(&get("/a").token("renewed"), upstream(200));
    assert_eq!((a.decision, a.status), (Some(Decision::Miss), 200));
    let b = proxy.send(&get("/b").token("renewed"), upstream(200));
    assert_eq!(b.decision, Some(Decision::Miss));
    let other = proxy.send(&get("/a").token("other"), upstream(200));
    assert_eq!(other.decision, Some(Decision::Hit));
}

#[test]
fn with_the_cache_off_the_purge_header_is_still_stripped() {
    let mut proxy = Proxy::new(r#"{"negative_cache": {"enabled": false}}"#);
    let seen = proxy.send(
        &get("/").token("t"),
        upstream(200).header("x-negcache-purge", "Bearer t"),
    );
    assert_eq!(seen.header("x-negcache-purge"), None);
    assert!(!seen.full_maps_read);
    assert_eq!(proxy.count(Metric::Purges), 0);
}

#[test]
fn a_shadow_hit_goes_upstream_is_marked_and_does_not_refresh_the_entry() {
    let mut proxy = Proxy::new(r#"{"negative_cache": {"shadow": true}}"#);
    proxy.send(&get("/").token("dead"), unauthorized());
    proxy.advance(59_000);
    let shadow = proxy.send(&get("/").token("dead"), unauthorized());
    assert!(shadow.reached_upstream);
    assert_eq!(shadow.status, 401);
    assert_eq!(shadow.body, BAD);
    assert_eq!(shadow.header("x-negcache"), Some("shadow-hit"));
    assert_eq!(shadow.decision, Some(Decision::ShadowHit));
    assert_eq!(proxy.count(Metric::ShadowHits), 1);
    assert_eq!(proxy.count(Metric::Stores), 1);
    // Had the shadow hit stored its answer again, the entry would live until 119 s.
    proxy.advance(1_000);
    let lapsed = proxy.send(&get("/").token("dead"), upstream(200));
    assert_eq!(lapsed.decision, Some(Decision::Miss));
    assert_eq!(lapsed.header("x-negcache"), None);
}

#[test]
fn anonymous_requests_are_cached_only_when_configured_and_per_request_line_and_client() {
    let mut off = Proxy::new("{}");
    off.send(&get("/"), unauthorized());
    let again = off.send(&get("/"), unauthorized());
    assert!(again.reached_upstream);
    assert_eq!(again.decision, None);
    assert_eq!(off.count(Metric::Stores) + off.count(Metric::Misses), 0);

    let mut on = Proxy::new(r#"{"negative_cache": {"cache_anonymous": true}}"#);
    let first = on.send(&get("/me"), unauthorized());
    assert_eq!(first.decision, Some(Decision::Stored));
    let hit = on.send(&get("/me"), upstream(200));
    assert_eq!((hit.status, hit.decision), (401, Some(Decision::Hit)));
    assert_eq!(
        on.send(&get("/you"), upstream(200)).decision,
        Some(Decision::Miss)
    );
    on.host.peer = Some("198.51.100.9:1".to_string());
    assert_eq!(
        on.send(&get("/me"), upstream(200)).decision,
        Some(Decision::Miss)
    );
    // An anonymous answer cannot mark anything inactive.
    on.send(&get("/x"), upstream(403).header("x-negcache-inactive", "1"));
    on.advance(11_000);
    assert_eq!(
        on.send(&get("/x"), upstream(200)).decision,
        Some(Decision::Miss)
    );
}

#[test]
fn with_the_cache_off_nothing_is_looked_up_or_stored() {
    let mut proxy = Proxy::new(r#"{"negative_cache": {"enabled": false}}"#);
    for _ in 0..2 {
        let seen = proxy.send(&get("/").token("t"), unauthorized());
        assert!(seen.reached_upstream);
        assert_eq!(seen.decision, None);
        assert!(!seen.full_maps_read);
    }
    assert_eq!(proxy.count(Metric::Stores) + proxy.count(Metric::Misses), 0);
}

#[test]
fn corrupt_slots_are_counted_as_errors_and_overwritten() {
    let mut proxy = Proxy::new("{}");
    let identity = proxy.filter.hasher.identity(
        b"api.example.com",
        crate::fingerprint::Who::Credential {
            source: "header:authorization",
            value: b"Bearer t",
        },
    );
    // The current format's version byte (2), then too few bytes for a record.
    for index in proxy.filter.tables.records.candidates(&identity) {
        proxy
            .filter
            .tables
            .records
            .plant(&proxy.host.store, index, &[2, 2, 3]);
    }
    let seen = proxy.send(&get("/").token("t"), unauthorized());
    assert!(seen.reached_upstream);
    assert_eq!(seen.decision, Some(Decision::Stored));
    assert_eq!(
        proxy.count(Metric::Errors),
        2,
        "once on lookup, once on store"
    );
    assert_eq!(
        proxy.send(&get("/").token("t"), upstream(200)).decision,
        Some(Decision::Hit)
    );
}

#[test]
fn a_purge_finds_the_credential_whatever_the_case_of_its_scheme() {
    let mut proxy = Proxy::new("{}");
    let lower = get("/").header("authorization", "bearer T0k3n");
    proxy.send(&lower, unauthorized());
    assert_eq!(
        proxy.send(&lower, upstream(200)).decision,
        Some(Decision::Hit)
    );
    let purge = upstream(200).header("x-negcache-purge", "Bearer   T0k3n");
    proxy.send(&get("/signup"), purge);
    assert_eq!(proxy.count(Metric::Purges), 1);
    let seen = proxy.send(&lower, upstream(200));
    assert!(
        seen.reached_upstream,
        "the purged credential reaches the upstream"
    );
}

#[test]
fn a_victims_key_behind_an_ambiguous_first_source_is_never_cached() {
    let mut proxy = Proxy::new("{}");
    let attack = get("/")
        .header("authorization", "Bearer a")
        .another("authorization", "Bearer b")
        .header("x-api-key", "victim-key");
    let seen = proxy.send(&attack, unauthorized());
    assert!(seen.reached_upstream);
    assert_ne!(seen.decision, Some(Decision::Stored));
    let victim = get("/").header("x-api-key", "victim-key");
    let seen = proxy.send(&victim, upstream(200));
    assert!(
        seen.reached_upstream,
        "the victim is not answered from the cache"
    );
    assert_eq!(proxy.count(Metric::Stores), 0);
}

#[test]
fn a_hit_carries_all_its_headers_and_every_cors_header_together() {
    let mut proxy = Proxy::new(
        r#"{"cors": {"allowed_origins": ["https://app.example.com"], "allow_credentials": true}}"#,
    );
    let req = get("/a")
        .token("dead")
        .header("origin", "https://app.example.com");
    proxy.send(&req, unauthorized().header("retry-after", "30"));
    let hit = proxy.send(&req, upstream(200));
    assert_eq!(hit.decision, Some(Decision::Hit));
    let names: Vec<&str> = hit.headers.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "content-type",
            "www-authenticate",
            "x-negcache",
            "age",
            "retry-after",
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-expose-headers",
            "vary",
        ]
    );
    assert_eq!(hit.header("retry-after"), Some("30"));
    assert_eq!(hit.header("access-control-allow-credentials"), Some("true"));
}
