#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `make soak`: a bounded mixed load on a real Envoy (`--concurrency 2`) for `SOAK_SECONDS`
//! (default 120), then a report: requests by outcome, every response that contradicts the
//! filter's rules, and Envoy's memory at the start and the end. Exits non-zero on any
//! contradiction.
//!
//! The load, from `SOAK_THREADS` (default 6) threads, each a kind of client, over keep-alive
//! and fresh connections alike (so both workers serve):
//! - good clients: their own good tokens; every answer must be 200;
//! - failing clients: bad tokens until blocked; once a client has had a 429, every later
//!   request of it must be a 429 too, whatever it tries (a good token, a spoofed
//!   `cf-connecting-ip`, an exempt path with an escaped separator);
//! - spoofers: a good token with a `cf-connecting-ip` naming a blocked client, from outside the
//!   header's `from`: must be 200 (the header is ignored);
//! - sign-ups: a token fails (cached), the upstream's sign-up purges it, then it must reach the
//!   upstream and succeed;
//! - any 5xx is a contradiction (the upstream never sends one).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::load::{client_ip, rss_kib};
use common::{ClientConnection, ClientResponse, Envoy, EnvoyOptions, Request, Response, Upstream};
use serde_json::json;

const MAX_FAILURES: u32 = 5;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Tally {
    outcomes: Mutex<BTreeMap<String, u64>>,
    contradictions: Mutex<Vec<String>>,
    requests: AtomicU64,
}

impl Tally {
    fn saw(&self, kind: &str, answer: &ClientResponse) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let outcome = format!(
            "{kind}: {} {}",
            answer.status,
            answer.negcache().unwrap_or("-")
        );
        *self.outcomes.lock().unwrap().entry(outcome).or_default() += 1;
        if answer.status >= 500 {
            self.contradict(format!("{kind}: a 5xx: {answer:?}"));
        }
    }

    fn contradict(&self, what: String) {
        let mut list = self.contradictions.lock().unwrap();
        if list.len() < 50 {
            eprintln!("soak: CONTRADICTION {what}");
        }
        list.push(what);
    }
}

/// The upstream: `Bearer good-*` and tokens signed up are valid; `/signup` signs up the token
/// in `x-signup` and purges it; everything else is 401.
fn upstream() -> (Upstream, Arc<Mutex<HashSet<String>>>) {
    let signed_up = Arc::new(Mutex::new(HashSet::new()));
    let valid = Arc::clone(&signed_up);
    let upstream = Upstream::start(move |req: &Request| {
        if req.path_only() == "/signup" {
            let token = req.header("x-signup").unwrap_or_default().to_string();
            valid.lock().unwrap().insert(token.clone());
            return Response::ok().header("x-negcache-purge", &token).json("{}");
        }
        let auth = req.header("authorization").unwrap_or_default();
        if auth.starts_with("Bearer good-") || valid.lock().unwrap().contains(auth) {
            return Response::ok().json(r#"{"user":"ok"}"#);
        }
        Response::new(401).json(r#"{"error":"invalid token"}"#)
    });
    (upstream, signed_up)
}

fn headers<'a>(auth: &'a str, client: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("authorization", auth), ("x-forwarded-for", client)]
}

fn main() {
    let seconds = env_u64("SOAK_SECONDS", 120);
    let threads = env_u64("SOAK_THREADS", 6) as usize;
    let (upstream, _signed_up) = upstream();
    let envoy = Envoy::start(EnvoyOptions {
        skip_xff_append: true,
        access_log: false,
        failure_policy: common::FailurePolicy::FailOpen,
        ..EnvoyOptions::new(
            upstream.port(),
            json!({
                "exempt_paths": ["/healthz"],
                "client_ip": {
                    "trusted_proxies": ["127.0.0.1/32"],
                    "headers": [
                        {"name": "cf-connecting-ip", "from": ["203.0.113.0/24"]},
                        {"name": "x-forwarded-for"}
                    ]
                },
                "rate_limit": {"max_failures": MAX_FAILURES, "block_seconds": 3600,
                               "window_seconds": 3600}
            }),
        )
    });
    let rss_start = rss_kib(envoy.pid());
    let port = envoy.port();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let blocked_clients: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();

    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (tally, stop, blocked_list) =
                (tally.clone(), stop.clone(), blocked_clients.clone());
            thread::spawn(move || {
                let mut n: usize = 0;
                // Every other connection is fresh, so both workers serve.
                let mut keep = ClientConnection::open(port);
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mut get = |path: &str, h: &[(&str, &str)]| {
                        if n.is_multiple_of(2) {
                            keep.get(path, h)
                        } else {
                            envoy_get(port, path, h)
                        }
                    };
                    match t % 4 {
                        0 => {
                            let client = client_ip(10_000 + t * 1_000 + n % 200);
                            let auth = format!("Bearer good-{}", n % 50);
                            let answer = get("/api/me", &headers(&auth, &client));
                            tally.saw("good client", &answer);
                            if answer.status != 200 {
                                tally.contradict(format!("good token refused: {answer:?}"));
                            }
                        }
                        1 => {
                            // A failing client: bad tokens until its 429, then everything.
                            let client = client_ip(20_000 + t * 5_000 + n / 40);
                            let mut blocked = false;
                            for attempt in 0..(MAX_FAILURES as usize + 6) {
                                let auth = format!("Bearer bad-{t}-{n}-{attempt}");
                                let tries: [(&str, Vec<(&str, &str)>); 4] = [
                                    ("/api/me", headers(&auth, &client)),
                                    ("/api/me", headers("Bearer good-1", &client)),
                                    (
                                        "/api/me",
                                        vec![
                                            ("authorization", auth.as_str()),
                                            ("x-forwarded-for", client.as_str()),
                                            ("cf-connecting-ip", "192.0.2.99"),
                                        ],
                                    ),
                                    ("/healthz/..%2Fapi/me", headers(&auth, &client)),
                                ];
                                let (path, h) = &tries[if blocked { attempt % 4 } else { 0 }];
                                let answer = get(path, h);
                                tally.saw("failing client", &answer);
                                if blocked && answer.status != 429 {
                                    tally.contradict(format!(
                                        "blocked client {client} let through on {path}: {answer:?}"
                                    ));
                                }
                                if answer.status == 429 && !blocked {
                                    blocked = true;
                                    blocked_list.lock().unwrap().push(client.clone());
                                }
                            }
                            n += 40;
                        }
                        2 => {
                            // A spoofer naming a blocked client from outside the header's `from`.
                            let named = blocked_list.lock().unwrap().last().cloned();
                            let client = client_ip(90_000 + n % 500);
                            let named = named.unwrap_or_else(|| client_ip(20_000));
                            let answer = get(
                                "/api/me",
                                &[
                                    ("authorization", "Bearer good-7"),
                                    ("x-forwarded-for", &client),
                                    ("cf-connecting-ip", &named),
                                ],
                            );
                            tally.saw("spoofer", &answer);
                            if answer.status != 200 {
                                tally.contradict(format!("spoofed header obeyed: {answer:?}"));
                            }
                        }
                        _ => {
                            // A sign-up: a failing token is cached, then purged and valid.
                            let client = client_ip(100_000 + (n / 2) % 31_000);
                            let token = format!("Bearer signup-{t}-{n}");
                            let first = get("/api/me", &headers(&token, &client));
                            tally.saw("sign-up", &first);
                            let hit = get("/api/me", &headers(&token, &client));
                            tally.saw("sign-up", &hit);
                            if hit.negcache() != Some("hit") {
                                tally.contradict(format!("a failing token not cached: {hit:?}"));
                            }
                            let signup = get(
                                "/signup",
                                &[("x-signup", token.as_str()), ("x-forwarded-for", &client)],
                            );
                            tally.saw("sign-up", &signup);
                            if signup.header("x-negcache-purge").is_some() {
                                tally.contradict("the purge header reached the client".into());
                            }
                            let after = get("/api/me", &headers(&token, &client));
                            tally.saw("sign-up", &after);
                            if after.status != 200 {
                                tally
                                    .contradict(format!("a purged token still refused: {after:?}"));
                            }
                            // Two good requests per sign-up cycle keep the client under its limit.
                            n += 1;
                        }
                    }
                }
            })
        })
        .collect();

    thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("soak thread");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_end = rss_kib(envoy.pid());
    let errors = envoy.metric("negcache_errors_total");
    let contradictions = tally.contradictions.lock().unwrap().len();
    let requests = tally.requests.load(Ordering::Relaxed);

    println!("soak: {seconds} s, {threads} threads, Envoy --concurrency 2");
    println!(
        "soak: {requests} requests ({:.0}/s)",
        requests as f64 / elapsed
    );
    for (outcome, count) in tally.outcomes.lock().unwrap().iter() {
        println!("soak:   {outcome:<28} {count}");
    }
    println!(
        "soak: Envoy RSS {:.1} MiB at start, {:.1} MiB at the end",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!("soak: filter errors (negcache_errors_total) {errors}");
    println!("soak: contradictions {contradictions}");
    if contradictions > 0 || errors > 0 {
        std::process::exit(1);
    }
}

fn envoy_get(port: u16, path: &str, headers: &[(&str, &str)]) -> ClientResponse {
    common::http_request(port, "GET", path, headers, b"")
}
