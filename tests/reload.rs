#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Configuration reloads while Envoy serves (file-based LDS: same VM, same shared data, only
//! `on_configure` again): a bad configuration is refused and the old one keeps serving; a new
//! configuration that keeps the epoch keeps the cache's entries and the limiter's blocks.

mod common;

use common::{Envoy, EnvoyOptions, Upstream};
use serde_json::{json, Value};

fn start(config: Value) -> (Upstream, Envoy) {
    let upstream = Upstream::start(common::api);
    let envoy = Envoy::start(EnvoyOptions {
        dynamic_listener: true,
        ..EnvoyOptions::new(upstream.port(), config)
    });
    (upstream, envoy)
}

fn assert_good_served(envoy: &Envoy) {
    let good = envoy.get("/api/me", &[("authorization", common::GOOD)]);
    assert_eq!(good.status, 200, "{good:?}");
}

#[test]
fn a_bad_reload_is_refused_and_the_old_configuration_keeps_serving() {
    let (upstream, envoy) = start(json!({"rate_limit": {"enabled": false}}));
    let bad = [("authorization", "Bearer cached")];
    envoy.miss_then_hit("/api/me", &bad);
    for refused in [
        json!({"negative_cache": {"capacity": 0}}),
        json!({"rate_limit": {"max_failures": "ten"}}),
        json!({"unknown_section": {}}),
    ] {
        let log = envoy
            .try_reconfigure(refused.clone())
            .expect_err(&format!("{refused} must be refused"));
        assert!(log.contains("negcache: invalid configuration"), "{log}");
        let hit = envoy.get("/api/me", &bad);
        assert_eq!(hit.negcache(), Some("hit"), "after {refused}: {hit:?}");
    }
    assert_good_served(&envoy);
    upstream.assert_count(2);
}

#[test]
fn a_reload_that_keeps_the_epoch_keeps_entries_and_blocks() {
    let (upstream, envoy) = start(json!({"rate_limit": {"max_failures": 1}}));
    let cached = [("authorization", "Bearer cached")];
    // The replayed 401 counts as the client's second failure: it is now blocked.
    envoy.miss_then_hit("/api/me", &cached);
    let blocked = envoy.get("/api/me", &[("authorization", "Bearer good")]);
    assert_eq!(blocked.status, 429, "{blocked:?}");

    // Another TTL and limit, same epochs: the block holds.
    envoy.reconfigure(json!({
        "negative_cache": {"statuses": {"401": {"ttl_seconds": 120}}},
        "rate_limit": {"max_failures": 5}
    }));
    let still_blocked = envoy.get("/api/me", &[("authorization", "Bearer good")]);
    assert_eq!(still_blocked.status, 429, "{still_blocked:?}");
    assert!(still_blocked.header("retry-after").is_some());

    // The limiter off, the cache's epoch kept: the entry stored before both reloads answers.
    envoy.reconfigure(json!({
        "negative_cache": {"statuses": {"401": {"ttl_seconds": 120}}},
        "rate_limit": {"enabled": false}
    }));
    let hit = envoy.get("/api/me", &cached);
    assert_eq!((hit.status, hit.negcache()), (401, Some("hit")), "{hit:?}");
    assert_good_served(&envoy);
    upstream.assert_count(2);
    assert_eq!(envoy.metric("negcache_ratelimit_blocks_total"), 1);
}
