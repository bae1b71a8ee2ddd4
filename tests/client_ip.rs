#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real client IP in a real Envoy. The test client connects from 127.0.0.1; when that peer
//! is a trusted proxy, the simulated clients and proxy hops are written in `X-Forwarded-For`.
//! (Envoy with `use_remote_address: true` appends its own host address, not 127.0.0.1, for a
//! loopback peer; these listeners set `skip_xff_append` so the chain is exactly what the test
//! wrote, as behind a load balancer that appends the hop itself.)

mod common;

use common::{ClientResponse, Envoy, EnvoyOptions, Request, Response, Upstream};
use serde_json::{json, Value};

fn unauthorized(_: &Request) -> Response {
    Response::new(401).json("{}")
}

fn config(client_ip: Value, max_failures: u32) -> Value {
    json!({
        "client_ip": client_ip,
        "negative_cache": {"enabled": false},
        "rate_limit": {"max_failures": max_failures}
    })
}

/// Envoy whose loopback test peer is a trusted proxy.
fn behind_proxies(client_ip: Value, max_failures: u32) -> (Upstream, Envoy) {
    let upstream = Upstream::start(unauthorized);
    let envoy = Envoy::start(EnvoyOptions {
        skip_xff_append: true,
        ..EnvoyOptions::new(upstream.port(), config(client_ip, max_failures))
    });
    (upstream, envoy)
}

const TRUSTED: &str = "127.0.0.1/32";

/// The client negcache resolved for the `n`-th request, as the access log shows it.
fn resolved_client(envoy: &Envoy, n: usize) -> String {
    envoy.access_entry(n).client.unwrap_or_default()
}

fn get(envoy: &Envoy, headers: &[(&str, &str)]) -> ClientResponse {
    let mut all = vec![("authorization", "Bearer x")];
    all.extend_from_slice(headers);
    envoy.get("/", &all)
}

#[test]
fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let upstream = Upstream::start(unauthorized);
    let envoy = Envoy::start(EnvoyOptions::new(upstream.port(), config(json!({}), 2)));
    let mut seen = 0;
    for n in 0..3 {
        let spoofed = format!("203.0.113.{n}");
        assert_eq!(get(&envoy, &[("x-forwarded-for", &spoofed)]).status, 401);
        seen += 1;
        assert_eq!(resolved_client(&envoy, seen), "127.0.0.1");
    }
    // Rotating the header does not escape the block.
    assert_eq!(
        get(&envoy, &[("x-forwarded-for", "203.0.113.99")]).status,
        429
    );
    assert!(envoy.metric("negcache_client_ip_untrusted_header_total") >= 3);
}

#[test]
fn a_trusted_chain_resolves_the_hop_our_proxies_recorded() {
    let (_upstream, envoy) =
        behind_proxies(json!({"trusted_proxies": [TRUSTED, "10.0.0.0/8"]}), 10);
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("x-forwarded-for", "203.0.113.5")], "203.0.113.5"),
        (
            &[(
                "x-forwarded-for",
                "1.1.1.1, 203.0.113.5, 10.0.0.1, 10.0.0.2",
            )],
            "203.0.113.5",
        ),
        (
            &[("x-forwarded-for", "203.0.113.5:4711, 10.0.0.1")],
            "203.0.113.5",
        ),
        (&[("x-forwarded-for", "::ffff:203.0.113.6")], "203.0.113.6"),
        (&[("x-forwarded-for", "[2001:db8::7]:443")], "2001:db8::/64"),
    ];
    for (n, (headers, expected)) in cases.iter().enumerate() {
        get(&envoy, headers);
        assert_eq!(resolved_client(&envoy, n + 1), *expected, "{headers:?}");
    }
    // Two header lines are one list, in order.
    let reply = envoy.request_raw(
        b"GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer x\r\nx-forwarded-for: 1.1.1.1, 203.0.113.8\r\nx-forwarded-for: 10.0.0.3\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 401);
    assert_eq!(resolved_client(&envoy, cases.len() + 1), "203.0.113.8");
    // A 200-entry chain whose real hops are on the right.
    let mut chain: Vec<String> = (0..198).map(|n| format!("192.0.2.{}", n % 200)).collect();
    chain.push("203.0.113.9".into());
    chain.push("10.0.0.4".into());
    get(&envoy, &[("x-forwarded-for", &chain.join(", "))]);
    assert_eq!(resolved_client(&envoy, cases.len() + 2), "203.0.113.9");
}

#[test]
fn a_provider_header_is_believed_only_when_the_request_came_through_the_provider() {
    let client_ip = json!({
        "trusted_proxies": [TRUSTED],
        "headers": [{"name": "cf-connecting-ip", "from": ["198.51.100.0/24"]}, {"name": "x-forwarded-for"}]
    });
    let (_upstream, envoy) = behind_proxies(client_ip, 10);
    let mut n = 0;
    let mut check = |headers: &[(&str, &str)], expected: &str| {
        let reply = get(&envoy, headers);
        assert!(
            reply.status == 401 || reply.status == 400,
            "{}",
            reply.status
        );
        n += 1;
        assert_eq!(resolved_client(&envoy, n), expected, "{headers:?}");
    };
    // Through the provider's edge: the header names the client.
    check(
        &[
            ("cf-connecting-ip", "203.0.113.20"),
            ("x-forwarded-for", "203.0.113.20, 198.51.100.10"),
        ],
        "203.0.113.20",
    );
    // Straight to the load balancer: the forged header is ignored, the edge is the client.
    check(
        &[
            ("cf-connecting-ip", "203.0.113.20"),
            ("x-forwarded-for", "192.0.2.66"),
        ],
        "192.0.2.66",
    );
    // Garbage, empty, port-suffixed and duplicated values fall back to the next header.
    let edge = ("x-forwarded-for", "198.51.100.10");
    check(
        &[("cf-connecting-ip", "not an address"), edge],
        "198.51.100.10",
    );
    check(&[("cf-connecting-ip", ""), edge], "198.51.100.10");
    check(
        &[("cf-connecting-ip", "203.0.113.21:8080"), edge],
        "203.0.113.21",
    );
    check(
        &[("cf-connecting-ip", "203.0.113.22, 203.0.113.23"), edge],
        "198.51.100.10",
    );
}

#[test]
fn a_duplicated_provider_header_is_not_used() {
    let client_ip = json!({"trusted_proxies": [TRUSTED], "headers": [{"name": "x-real-ip"}, {"name": "x-forwarded-for"}]});
    let (_upstream, envoy) = behind_proxies(client_ip, 10);
    let reply = envoy.request_raw(
        b"GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer x\r\nx-real-ip: 203.0.113.30\r\nx-real-ip: 203.0.113.31\r\nx-forwarded-for: 198.51.100.11\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 401);
    assert_eq!(resolved_client(&envoy, 1), "198.51.100.11");
    get(
        &envoy,
        &[
            ("x-real-ip", "203.0.113.32"),
            ("x-forwarded-for", "198.51.100.11"),
        ],
    );
    assert_eq!(resolved_client(&envoy, 2), "203.0.113.32");
}

#[test]
fn an_unresolved_request_is_neither_counted_nor_blocked() {
    let (upstream, envoy) = behind_proxies(json!({"trusted_proxies": [TRUSTED, "10.0.0.0/8"]}), 1);
    for _ in 0..6 {
        // Only our own proxies in the chain: the client cannot be told, so nobody is blamed.
        assert_eq!(
            get(&envoy, &[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]).status,
            401
        );
        assert_eq!(get(&envoy, &[]).status, 401);
    }
    upstream.assert_count(12);
    assert_eq!(resolved_client(&envoy, 12), "unresolved");
    assert_eq!(envoy.metric("negcache_client_ip_unresolved_total"), 12);
    assert_eq!(envoy.metric("negcache_ratelimit_failures_total"), 0);
}

#[test]
fn ipv6_clients_are_grouped_by_their_prefix() {
    let (_upstream, envoy) = behind_proxies(json!({"trusted_proxies": [TRUSTED]}), 1);
    get(&envoy, &[("x-forwarded-for", "2001:db8:1:2::1")]);
    get(&envoy, &[("x-forwarded-for", "2001:db8:1:2:ffff::2")]);
    assert_eq!(
        get(&envoy, &[("x-forwarded-for", "2001:db8:1:2::3")]).status,
        429,
        "same /64"
    );
    assert_eq!(
        get(&envoy, &[("x-forwarded-for", "2001:db8:1:3::1")]).status,
        401,
        "another /64"
    );

    let (_upstream2, exact) =
        behind_proxies(json!({"trusted_proxies": [TRUSTED], "ipv6_prefix": 128}), 1);
    get(&exact, &[("x-forwarded-for", "2001:db8:1:2::1")]);
    get(&exact, &[("x-forwarded-for", "2001:db8:1:2::2")]);
    assert_eq!(
        get(&exact, &[("x-forwarded-for", "2001:db8:1:2::3")]).status,
        401,
        "exact at /128"
    );
    assert_eq!(resolved_client(&exact, 3), "2001:db8:1:2::3");
}

#[test]
fn hostile_forwarded_values_never_break_the_filter() {
    let client_ip = json!({"trusted_proxies": [TRUSTED], "headers": [{"name": "cf-connecting-ip", "from": ["198.51.100.0/24"]}, {"name": "x-forwarded-for"}]});
    let (_upstream, envoy) = behind_proxies(client_ip, 1000);
    let huge = "1".repeat(20_000);
    let commas = ",".repeat(20_000);
    for value in [
        huge.as_str(),
        commas.as_str(),
        "[",
        "[]:80",
        ":::::",
        "1.2.3.4/8",
        "\u{7f}",
        "1.2.3.4:99999",
    ] {
        let reply = get(
            &envoy,
            &[("x-forwarded-for", value), ("cf-connecting-ip", value)],
        );
        assert!(
            reply.status == 401 || reply.status == 400,
            "{value:?}: {}",
            reply.status
        );
    }
    assert_eq!(envoy.metric("negcache_errors_total"), 0);
    assert_eq!(
        get(&envoy, &[("x-forwarded-for", "203.0.113.40")]).status,
        401,
        "still alive"
    );
}

#[test]
fn envoy_defaults_are_flagged_as_header_derived() {
    let upstream = Upstream::start(unauthorized);
    let envoy = Envoy::start(EnvoyOptions {
        use_remote_address: false,
        ..EnvoyOptions::new(upstream.port(), config(json!({}), 10))
    });
    for n in 0..3 {
        let client = format!("203.0.113.{n}");
        get(&envoy, &[("x-forwarded-for", &client)]);
    }
    assert_eq!(
        envoy.metric("negcache_client_ip_header_derived_peer_total"),
        3
    );
    let log = envoy.wait_log_contains("negcache: the downstream address has port 0");
    // Once per VM (one per worker serves requests), not once per request.
    assert!(
        log.matches("negcache: the downstream address has port 0")
            .count()
            <= 2
    );
}

#[test]
fn the_client_is_resolved_only_when_a_feature_uses_it() {
    let upstream = Upstream::start(|request: &Request| {
        if request.path.starts_with("/throttled") {
            Response::new(429).json("{}")
        } else {
            unauthorized(request)
        }
    });
    let start = |negative_cache: Value| {
        Envoy::start(EnvoyOptions {
            skip_xff_append: true,
            ..EnvoyOptions::new(
                upstream.port(),
                json!({
                    "client_ip": {"trusted_proxies": [TRUSTED]},
                    "negative_cache": negative_cache,
                    "rate_limit": {"enabled": false}
                }),
            )
        })
    };
    // Cache only, entries keyed on the credential alone: nothing needs the client.
    let envoy = start(json!({"statuses": {"401": {"ttl_seconds": 60}}}));
    get(&envoy, &[("x-forwarded-for", "203.0.113.7")]);
    let entry = envoy.access_entry(1);
    assert_eq!(entry.decision.as_deref(), Some("stored"));
    assert_eq!(entry.client, None, "no feature asked for the client");
    // The default rules: a 429 is kept per client, so the client is read to store it and to
    // find it again, and only then.
    let envoy = start(json!({}));
    let from = [("x-forwarded-for", "203.0.113.7")];
    get(&envoy, &from);
    let throttled =
        |envoy: &Envoy| envoy.get("/throttled", &[("authorization", "Bearer y"), from[0]]);
    assert_eq!(throttled(&envoy).status, 429);
    let again = throttled(&envoy);
    assert_eq!((again.status, again.negcache()), (429, Some("hit")));
    let logged: Vec<_> = (1..=3).map(|n| envoy.access_entry(n)).collect();
    let seen = |n: usize| (logged[n].decision.as_deref(), logged[n].client.as_deref());
    assert_eq!(seen(0), (Some("stored"), None), "a 401 kept per credential");
    assert_eq!(seen(1), (Some("stored"), Some("203.0.113.7")));
    assert_eq!(seen(2), (Some("hit"), Some("203.0.113.7")));
    // Anonymous requests cached per client do.
    let envoy = start(json!({"cache_anonymous": true, "statuses": {"401": {"ttl_seconds": 60}}}));
    envoy.get("/", &[("x-forwarded-for", "203.0.113.7")]);
    let entry = envoy.access_entry(1);
    assert_eq!(entry.decision.as_deref(), Some("stored"));
    assert_eq!(entry.client.as_deref(), Some("203.0.113.7"));
}

#[test]
fn a_trusted_proxy_written_as_an_ipv4_mapped_network_matches_a_dual_stack_peer() {
    // A dual-stack listener: the IPv4 test client's address reaches the filter as
    // `[::ffff:127.0.0.1]:port`.
    let upstream = Upstream::start(unauthorized);
    let envoy = Envoy::start(EnvoyOptions {
        skip_xff_append: true,
        listener_extra: json!({"address": {"socket_address": {
            "address": "::ffff:127.0.0.1", "ipv4_compat": true
        }}}),
        ..EnvoyOptions::new(
            upstream.port(),
            config(json!({"trusted_proxies": ["::ffff:127.0.0.0/104"]}), 1),
        )
    });
    let spoof_free = [
        ("authorization", "Bearer t"),
        ("x-forwarded-for", "198.51.100.7"),
    ];
    get(&envoy, &spoof_free);
    let entry = envoy.access_entry(1);
    assert!(
        entry.raw["downstream"]
            .as_str()
            .unwrap_or_default()
            .contains("::ffff:127.0.0.1"),
        "the peer is IPv4-mapped: {entry:?}"
    );
    // The load balancer is recognised as trusted: the client is the hop it recorded.
    assert_eq!(resolved_client(&envoy, 1), "198.51.100.7");
}
