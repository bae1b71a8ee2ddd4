//! End-to-end test harness: a real Envoy running the filter ([`envoy`]), configured from
//! [`EnvoyOptions`] ([`bootstrap`]), in front of an HTTP/1.1 upstream ([`upstream`]), asked by
//! a small HTTP client ([`client`]).
//!
//! Each test file includes it with `mod common;` (the benchmark too). Every test starts its
//! own [`Upstream`] and [`Envoy`] (own ports, own temp dir), so tests run in parallel. Envoy
//! stops when its [`Envoy`] is dropped: never share one across tests.
//!
//! ```ignore
//! let upstream = Upstream::start(|_req| Response::new(401).json(r#"{"error":"no"}"#));
//! let envoy = Envoy::start(EnvoyOptions::new(upstream.port(), json!({ ... })));
//! let resp = envoy.get("/api/me", &[("authorization", "Bearer wrong")]);
//! assert_eq!(resp.status, 401);
//! upstream.assert_count(1);
//! ```
//!
//! To change the filter's configuration while Envoy runs (same VM, same
//! shared data, only `on_configure` again), start it with
//! `EnvoyOptions { dynamic_listener: true, .. }` and call
//! `envoy.reconfigure(json!({ ... }))` (or `try_reconfigure` for a
//! configuration the filter should refuse).
//!
//! Paths: Envoy from `ENVOY_BIN` (default `.venv/bin/envoy`), the filter
//! from `NEGCACHE_WASM` (default `target/negcache.wasm`); `make test` sets both.
//! Set `NEGCACHE_KEEP_TMP=1` to keep each test's temp dir (Envoy's `envoy.json`,
//! log, access log) for a look afterwards.

// Each test file uses a part of the harness: the rest is dead code, and unused re-exports, there.
#![allow(dead_code, unused_imports)]

mod access_log;
mod bootstrap;
mod client;
mod envoy;
mod h2;
mod http;
pub mod load;
pub mod rls;
pub mod trials;
mod upstream;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub use access_log::AccessLogEntry;
pub use bootstrap::{merge, EnvoyOptions, FailurePolicy};
pub use client::{http_request, ClientConnection, ClientResponse};
pub use envoy::{
    envoy_validate, validate_plugin_config, write_plugin_bootstrap, Envoy, METRICS_SETTLE,
};
pub use h2::{curl_get, send_raw_headers, StreamAnswer};
pub use upstream::{Request, Response, Upstream};

/// The one credential [`api`] accepts.
pub const GOOD: &str = "Bearer good";

/// An authenticated API as most tests need it: `authorization: Bearer good` gets 200, anything
/// else 401 with a JSON body.
pub fn api(req: &Request) -> Response {
    if req.header("authorization") == Some(GOOD) {
        return Response::ok().json(r#"{"user":"good"}"#);
    }
    Response::new(401).json(r#"{"error":"invalid token"}"#)
}

/// An [`Upstream`] answering with `handler`, and an [`Envoy`] with the filter configured by
/// `config` in front of it.
pub fn start<F>(handler: F, config: serde_json::Value) -> (Upstream, Envoy)
where
    F: Fn(&Request) -> Response + Send + Sync + 'static,
{
    let upstream = Upstream::start(handler);
    let envoy = Envoy::start(EnvoyOptions::new(upstream.port(), config));
    (upstream, envoy)
}

/// Upper bound for any single wait in the harness: only there to turn a
/// hang into a failure, never a performance assertion.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required_file(var: &str, default: PathBuf, what: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or(default, PathBuf::from);
    assert!(
        path.is_file(),
        "{what} not found at {} (set {var}); run `make test`, which installs \
         Envoy and builds the filter before running the tests",
        path.display()
    );
    path
}

/// The Envoy binary: `$ENVOY_BIN` or `<repo>/.venv/bin/envoy`.
pub fn envoy_bin() -> PathBuf {
    required_file(
        "ENVOY_BIN",
        manifest_dir().join(".venv/bin/envoy"),
        "Envoy binary",
    )
}

/// The filter: `$NEGCACHE_WASM`, or what `make build` ships (`target/negcache.wasm`).
pub fn wasm_path() -> PathBuf {
    required_file(
        "NEGCACHE_WASM",
        manifest_dir().join("target/negcache.wasm"),
        "negcache.wasm",
    )
}

/// The filter built with the `test-fault` feature (`make test` builds it): its VM dies on a
/// request carrying `x-negcache-test-fault`.
pub fn fault_wasm_path() -> PathBuf {
    required_file(
        "NEGCACHE_FAULT_WASM",
        manifest_dir().join("target/negcache-fault.wasm"),
        "negcache-fault.wasm",
    )
}

/// A fresh directory under the system temp dir, removed on drop (kept when
/// `NEGCACHE_KEEP_TMP` is set).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("NEGCACHE_KEEP_TMP").is_some() {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1, never handed out twice in this process:
/// Envoy listens with SO_REUSEPORT, so two test Envoys given the same port would both bind it
/// and answer each other's requests.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// Polls `cond` every 20 ms until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Every YAML document of envoy/istio/*.yaml, named `envoy/istio/<file> #<index>`.
pub fn istio_documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = fs::read_dir(manifest_dir().join("envoy/istio"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut documents = Vec::new();
    for path in files {
        let text = fs::read_to_string(&path).unwrap();
        let name = format!(
            "envoy/istio/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        for (index, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{name} #{index}: {e}"));
            documents.push((format!("{name} #{index}"), value));
        }
    }
    documents
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
