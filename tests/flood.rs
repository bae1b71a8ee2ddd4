#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Floods at the default capacities: 200,000 distinct failing credentials from 50,000 distinct
//! clients. The tables are bounded by design (slots created at configuration, shared data never
//! grows past them): once they are full Envoy's memory stays flat, the gauges never pass their
//! capacity, and a known-good token is served throughout.

mod common;

use common::load::{client_ip, flood, rss_kib};
use common::{Envoy, EnvoyOptions, Response, Upstream};
use serde_json::json;

const CREDENTIALS: usize = 200_000;
const CLIENTS: usize = 50_000;
/// The defaults (`negative_cache.capacity`, `rate_limit.capacity`).
const CACHE_CAPACITY: u64 = 16_384;
const LIMITER_CAPACITY: u64 = 65_536;
/// Parts of the flood; the good token is tried between them.
const WAVES: usize = 4;
const THREADS: usize = 4;

#[test]
fn a_flood_of_failing_credentials_and_clients_leaves_memory_flat() {
    // Lean: answers by path, records nothing (200,000 requests).
    let upstream = Upstream::lean(&[
        ("/good", Response::ok().json(r#"{"user":"good"}"#)),
        ("/", Response::new(401).json(r#"{"error":"invalid token"}"#)),
    ]);
    let envoy = Envoy::start(EnvoyOptions {
        // The test client is the clients' trusted proxy: each request names its client.
        skip_xff_append: true,
        access_log: false,
        ..EnvoyOptions::new(
            upstream.port(),
            json!({"client_ip": {"trusted_proxies": ["127.0.0.1/32"]}}),
        )
    });
    let good = || {
        let answer = envoy.get(
            "/good",
            &[
                ("authorization", "Bearer good"),
                ("x-forwarded-for", "192.0.2.1"),
            ],
        );
        assert_eq!(answer.status, 200, "the good token: {answer:?}");
    };

    let wave = CREDENTIALS / WAVES;
    let mut rss_after_wave = Vec::new();
    for w in 0..WAVES {
        good();
        flood(
            envoy.port(),
            w * wave..(w + 1) * wave,
            THREADS,
            // Four failures per client, under max_failures: no client is blocked.
            |i| {
                let headers = vec![
                    ("authorization".to_string(), format!("Bearer flood-{i}")),
                    ("x-forwarded-for".to_string(), client_ip(i % CLIENTS)),
                ];
                ("/api/me".to_string(), headers)
            },
            |i, answer| {
                assert_eq!(
                    (answer.status, answer.negcache()),
                    (401, None),
                    "request {i}"
                )
            },
        );
        rss_after_wave.push(rss_kib(envoy.pid()));
    }
    good();

    let cache_used = envoy.metric("negcache_slots_used");
    let limiter_used = envoy.metric_now("negcache_ratelimit_slots_used");
    assert_eq!(cache_used, CACHE_CAPACITY, "the cache table is full");
    assert!(limiter_used <= LIMITER_CAPACITY, "{limiter_used}");
    assert!(limiter_used > CLIENTS as u64 / 2, "{limiter_used}");
    assert_eq!(envoy.metric_now("negcache_errors_total"), 0);
    assert_eq!(envoy.metric_now("negcache_ratelimit_blocks_total"), 0);

    // The cache was full after the first wave (50,000 credentials into 16,384 slots); every
    // client had its record after it too. From then on memory must not grow.
    let full = rss_after_wave[0];
    let end = *rss_after_wave.last().unwrap();
    let growth = (end as f64 - full as f64) / full as f64;
    eprintln!(
        "flood: RSS after each wave (KiB): {rss_after_wave:?}; growth {:.2} %",
        growth * 100.0
    );
    assert!(
        growth < 0.05,
        "RSS grew {:.2} %: {rss_after_wave:?}",
        growth * 100.0
    );
}
