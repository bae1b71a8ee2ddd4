#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What a web app sees, in a real browser: a page from one origin calls the Envoy listener on
//! another with `fetch` and an `Authorization` header (so Chromium sends a real preflight), and
//! records what JavaScript can read of a cache hit and of the limiter's 429.
//!
//! Needs headless Chromium (Debian package `chromium`, or the binary named by `CHROMIUM`).
//! Without it the trials report themselves ignored, except under CI (`CI` set, where `.ci/run`
//! installs it): there they fail. libtest cannot decide at run time that a test is ignored, so
//! this file is its own test harness (`harness = false`, libtest-mimic), with libtest's output
//! and options.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::trials::{needing, Needs};
use common::{Envoy, EnvoyOptions, Request, Response, TempDir, Upstream};
use libtest_mimic::Arguments;
use serde_json::{json, Value};

const PAGE: &str = r#"<!doctype html>
<html><body><pre id="results">pending</pre><script>
const envoy = new URLSearchParams(location.search).get("envoy");
const api = "http://127.0.0.1:" + envoy + "/api/me";
async function call(token) {
  try {
    const response = await fetch(api, {headers: {"Authorization": "Bearer " + token}});
    return {
      status: response.status,
      body: await response.text(),
      negcache: response.headers.get("x-negcache"),
      retryAfter: response.headers.get("retry-after"),
    };
  } catch (error) {
    return {error: String(error)};
  }
}
(async () => {
  const results = {};
  results.miss = await call("dead-token");
  results.hit = await call("dead-token");
  results.third = await call("dead-token");
  results.blocked = await call("dead-token");
  document.getElementById("results").textContent = JSON.stringify(results);
})();
</script></body></html>"#;

/// `$CHROMIUM` if it names a file, else the first of the usual binaries found on `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

type Body = fn(&Path);

fn main() {
    let args = Arguments::from_args();
    let browser: Needs<PathBuf> =
        chromium().ok_or_else(|| "no Chromium: apt-get install chromium, or set CHROMIUM".into());
    let trials: [(&str, Body); 3] = [
        (
            "a_web_app_reads_the_filters_replies_with_negcache_cors",
            a_web_app_reads_the_filters_replies_with_negcache_cors,
        ),
        (
            "a_web_app_reads_the_filters_replies_behind_envoys_cors_filter",
            a_web_app_reads_the_filters_replies_behind_envoys_cors_filter,
        ),
        (
            "without_cors_headers_the_browser_hides_the_replies",
            without_cors_headers_the_browser_hides_the_replies,
        ),
    ];
    let trials = trials
        .into_iter()
        .map(|(name, body)| needing(name, &browser, move |path: PathBuf| body(&path)))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

/// One scripted upstream serves the page (so the page's origin is the upstream's) and is the
/// API behind Envoy; with `answers_cors` it handles CORS itself, like an app that has CORS
/// middleware: preflights and its own responses.
fn upstream(answers_cors: bool) -> Upstream {
    let upstream = Upstream::start(|_| Response::new(500));
    let page_origin = format!("http://127.0.0.1:{}", upstream.port());
    upstream.set_handler(move |req: &Request| {
        if req.path_only() == "/page.html" {
            return Response::ok()
                .header("content-type", "text/html")
                .body(PAGE);
        }
        let response = if req.method == "OPTIONS" {
            Response::new(204)
        } else {
            Response::new(401).json(r#"{"error":"invalid token"}"#)
        };
        if !answers_cors {
            return response;
        }
        response
            .header("access-control-allow-origin", &page_origin)
            .header("access-control-allow-headers", "authorization")
            .header("access-control-allow-methods", "GET")
    });
    upstream
}

fn page_origin(upstream: &Upstream) -> String {
    format!("http://127.0.0.1:{}", upstream.port())
}

/// Loads the page in headless Chromium and returns what its script recorded.
fn run_page(browser: &Path, upstream: &Upstream, envoy: &Envoy) -> Value {
    let profile = TempDir::new("negcache-chromium");
    let url = format!("{}/page.html?envoy={}", page_origin(upstream), envoy.port());
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=20000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    let marker = "<pre id=\"results\">";
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("the page did not render: {dom}"))
        + marker.len();
    let end = dom[start..].find("</pre>").unwrap() + start;
    let text = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("results not JSON ({e}): {text}"))
}

/// The limiter blocks at the third failure: miss (1), hit (2), hit (3), then 429.
fn filter_config(cors: Value) -> Value {
    json!({"cors": cors, "rate_limit": {"max_failures": 2}})
}

fn assert_readable(results: &Value) {
    assert_eq!(results["miss"]["status"], 401, "{results}");
    let hit = &results["hit"];
    assert_eq!(hit["status"], 401, "{results}");
    assert_eq!(hit["body"], r#"{"error":"invalid token"}"#);
    assert_eq!(hit["negcache"], "hit");
    let blocked = &results["blocked"];
    assert_eq!(blocked["status"], 429, "{results}");
    let retry_after: u64 = blocked["retryAfter"].as_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert!(blocked["body"].as_str().unwrap().contains("retry_after"));
}

fn a_web_app_reads_the_filters_replies_with_negcache_cors(browser: &Path) {
    let upstream = upstream(true);
    let envoy = Envoy::start(EnvoyOptions::new(
        upstream.port(),
        filter_config(json!({"allowed_origins": [page_origin(&upstream)]})),
    ));
    let results = run_page(browser, &upstream, &envoy);
    assert_readable(&results);
    assert!(
        upstream.count_where(|r| r.method == "OPTIONS") >= 1,
        "a real preflight reached the upstream"
    );
}

fn a_web_app_reads_the_filters_replies_behind_envoys_cors_filter(browser: &Path) {
    let upstream = upstream(false);
    let envoy = Envoy::start(
        EnvoyOptions::new(upstream.port(), filter_config(json!({})))
            .with_envoy_cors(&page_origin(&upstream)),
    );
    let results = run_page(browser, &upstream, &envoy);
    assert_readable(&results);
    assert_eq!(
        upstream.count_where(|r| r.method == "OPTIONS"),
        0,
        "Envoy's CORS filter answered the preflights"
    );
}

fn without_cors_headers_the_browser_hides_the_replies(browser: &Path) {
    let upstream = upstream(true);
    let envoy = Envoy::start(EnvoyOptions::new(upstream.port(), filter_config(json!({}))));
    let results = run_page(browser, &upstream, &envoy);
    // The upstream's own 401 carries its CORS headers; negcache's replies carry none.
    assert_eq!(results["miss"]["status"], 401, "{results}");
    for reply in ["hit", "blocked"] {
        let error = results[reply]["error"].as_str().unwrap_or_default();
        assert!(error.contains("TypeError"), "{reply}: {results}");
    }
}
