#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The pure hot path, natively, without Envoy: a regression in the core shows here first.
//! `cargo bench --bench core` prints nanoseconds per operation (best of several batches).

use std::hint::black_box;
use std::time::{Duration, Instant};

use negcache::client_ip;
use negcache::config::{Config, KeyShape};
use negcache::credential;
use negcache::fingerprint::{Fingerprinter, KeyParts, Who};
use negcache::negative_cache::{Decoded, Record};
use negcache::rate_limit;
use negcache::request::Headers;

/// Runs `op` in batches for about half a second and returns the best ns per call.
fn measure(name: &str, mut op: impl FnMut()) {
    let batch = 10_000;
    let mut best = f64::MAX;
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        let start = Instant::now();
        for _ in 0..batch {
            op();
        }
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(batch));
    }
    println!("{name:<36} {best:>9.1} ns/op");
}

fn lines(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn main() {
    let config =
        Config::parse(br#"{"client_ip": {"trusted_proxies": ["10.0.0.0/8", "127.0.0.1/32"]}}"#)
            .unwrap();
    let hasher = Fingerprinter::from_secret(b"a benchmark secret of enough bytes");
    let request = lines(&[
        (":authority", "api.example.com"),
        (":path", "/api/me?page=2"),
        (":method", "GET"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        (
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc",
        ),
        ("x-forwarded-for", "198.51.100.7, 10.0.0.9"),
    ]);
    let headers = Headers::from_pairs(&request);

    measure("credential extract", || {
        black_box(credential::extract(
            black_box(&config.credentials),
            &headers,
            "/api/me?page=2",
        ));
    });
    measure("identity fingerprint", || {
        black_box(hasher.identity(
            b"api.example.com",
            Who::Credential {
                source: "header:authorization",
                value: black_box(b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc"),
            },
        ));
    });
    let identity = hasher.identity(
        b"h",
        Who::Anonymous {
            client_ip: "1.2.3.4",
        },
    );
    let shape = KeyShape {
        method: true,
        path: true,
        ..KeyShape::IDENTITY_ONLY
    };
    let parts = KeyParts {
        method: "GET",
        path: "/api/me",
        query: "page=2",
        client_ip: "198.51.100.7",
    };
    measure("entry fingerprint (method+path)", || {
        black_box(hasher.entry(black_box(&identity), shape, &parts));
    });
    let table = negcache::negative_cache::CacheTables::new(16_384);
    measure("slot index (two candidates)", || {
        black_box(table.records.candidates(black_box(&identity)));
    });
    let record = Record {
        inactive: false,
        anonymous: false,
        status: 401,
        shape: 0,
        epoch: 0,
        stored_ms: 1,
        expires_ms: 2,
        reset_ms: 0,
        identity,
        key: identity,
    }
    .encode(&negcache::negative_cache::ReplayBody {
        content_type: Some(b"application/json".to_vec()),
        www_authenticate: Some(b"Bearer".to_vec()),
        body: Some(br#"{"error":"invalid token"}"#.to_vec()),
        ..Default::default()
    })
    .0;
    measure("cache slot decode (record, inline replay)", || {
        assert!(matches!(
            Record::decode(black_box(&record)),
            Decoded::Record(_)
        ));
    });
    measure("client IP: trusted XFF walk", || {
        black_box(client_ip::resolve(
            &config.client_ip,
            Some(black_box("127.0.0.1:50000")),
            &headers,
        ));
    });
    let long_chain: String = (0..200)
        .map(|n| format!("192.0.2.{}", n % 250))
        .collect::<Vec<_>>()
        .join(", ");
    let hostile = lines(&[("x-forwarded-for", &long_chain)]);
    let hostile_headers = Headers::from_pairs(&hostile);
    measure("client IP: 200-entry XFF", || {
        black_box(client_ip::resolve(
            &config.client_ip,
            Some("127.0.0.1:50000"),
            black_box(&hostile_headers),
        ));
    });
    measure("client fingerprint", || {
        black_box(hasher.client(black_box("198.51.100.7")));
    });
    let _ = rate_limit::table(65_536);
}
